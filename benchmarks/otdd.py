"""Benchmark: cached OTDD (xmodal.ot.otdd.OTDD) vs the uncached reference (otdd_direct).

Workload = one ORCA alignment epoch's OTDD work: a labelled source set (n samples, 10 classes)
and 10 target classes of 128 samples; each call compares the whole source with ONE target
class (target labels all zero), forward + backward w.r.t. the target features.
Data are synthetic Gaussian class clusters (fixed seeds); see `make_data`.

    python benchmarks/otdd.py            # n = 5000, d = 384 and 768
    python benchmarks/otdd.py --quick    # n = 1000, a fast check

On a machine shared with other busy processes, OpenMP's default spin-waiting makes the many
small ops of the cached path very slow with several threads; ``--omp-passive`` (sets
OMP_WAIT_POLICY=PASSIVE before torch starts) or ``--threads 1`` avoid it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time

if "--omp-passive" in sys.argv:  # must precede the OpenMP runtime's start (import torch)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch  # noqa: E402

from xmodal.ot.otdd import OTDD, otdd_direct


def make_data(n: int, d: int, n_classes: int = 10, n_tgt: int = 128, seed: int = 0):
    """Source: class means with squared norm ~5, isotropic noise with squared norm ~10 (so
    squared distances are O(10-40) whatever d). Target: 10 classes with their own means."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(n_classes, d, generator=g) * math.sqrt(5 / d)
    ys = torch.arange(n) % n_classes
    xs = mu[ys] + torch.randn(n, d, generator=g) * math.sqrt(10 / d)
    shift = torch.randn(d, generator=g) * math.sqrt(3 / d)
    tgt = [shift + torch.randn(d, generator=g) * math.sqrt(4 / d)
           + torch.randn(n_tgt, d, generator=g) * math.sqrt(12 / d) for _ in range(n_classes)]
    return xs, ys, tgt


def timed_call(fn, x: torch.Tensor) -> tuple[float, float]:
    """(seconds for forward + backward, value)."""
    x = x.clone().requires_grad_(True)
    t = time.perf_counter()
    v = fn(x)
    v.backward()
    elapsed = time.perf_counter() - t
    assert torch.isfinite(x.grad).all()
    return elapsed, float(v.detach())


def bench_dim(n: int, d: int, n_direct: int) -> dict:
    xs, ys, tgt = make_data(n, d)
    timed_call(OTDD(xs[:500], ys[:500]), tgt[0])  # warm-up (thread pools, allocator)
    t = time.perf_counter()
    model = OTDD(xs, ys)
    pre = time.perf_counter() - t
    timed_call(model, tgt[-1])  # untimed warm-up call with the real shapes, for both methods
    cached = [timed_call(model, x) for x in tgt]
    direct_fn = lambda x: otdd_direct(xs, ys, x)  # noqa: E731
    timed_call(direct_fn, tgt[-1])
    direct = [timed_call(direct_fn, x) for x in tgt[:n_direct]]
    rel = max(abs(c[1] - r[1]) / abs(r[1]) for c, r in zip(cached, direct))
    t_call = sum(c[0] for c in cached) / len(cached)
    t_direct = sum(r[0] for r in direct) / len(direct)
    return dict(n=n, d=d, pre=pre, call=t_call, direct=t_direct, n_direct=n_direct,
                classes=len(tgt), rel=rel)


def print_table(rows: list[dict]) -> None:
    print("| n | d | cached: precompute (once) | cached: per call | direct: per call "
          "| speed-up per call | epoch (10 calls): cached incl. precompute / direct "
          "| speed-up, 60 epochs (precompute amortised) | max rel. value diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        k = r["classes"]
        ep_c, ep_d = r["pre"] + k * r["call"], k * r["direct"]
        run_c, run_d = r["pre"] + 60 * k * r["call"], 60 * ep_d
        note = "" if r["n_direct"] == k else f" (mean of {r['n_direct']} calls)"
        print(f"| {r['n']} | {r['d']} | {r['pre']:.2f} s | {r['call']:.3f} s | "
              f"{r['direct']:.2f} s{note} | {r['direct'] / r['call']:.0f}x | "
              f"{ep_c:.1f} s / {ep_d:.1f} s ({ep_d / ep_c:.1f}x) | {run_d / run_c:.0f}x | "
              f"{r['rel']:.1e} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n = 1000 instead of 5000")
    ap.add_argument("--direct-calls", type=int, default=10,
                    help="number of target classes timed with otdd_direct (default: all 10; "
                         "with fewer, the direct epoch time is extrapolated)")
    ap.add_argument("--omp-passive", action="store_true",
                    help="set OMP_WAIT_POLICY=PASSIVE (no spin-waiting OpenMP threads)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    n = 1000 if args.quick else 5000
    n_direct = max(1, min(10, args.direct_calls))
    print(f"# OTDD benchmark, {dt.date.today()}, {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, torch.get_num_threads()={torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, "
          f"torch {torch.__version__}, float32, inner=sinkhorn, eps=inner_eps=0.1, debiased")
    if hasattr(os, "getloadavg"):
        print(f"# load average at start: {os.getloadavg()[0]:.1f}")
    rows = [bench_dim(n, d, n_direct) for d in (384, 768)]
    print_table(rows)
    print("# per call = forward + backward for one target class of 128 samples; direct "
          "recomputes every source term on every call."
          + ("" if n_direct == 10 else f" Direct epoch = 10 x mean of {n_direct} timed calls "
                                       f"(extrapolated); value diff over those calls."))


if __name__ == "__main__":
    main()
