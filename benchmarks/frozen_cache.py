"""Benchmark: `predictor-only` runs with the frozen embedder + body cached (`train.cache_frozen`,
the default) against the old loop that runs them every step in train mode.

Each task of the `paper-cpu` study runs that study's own `predictor-only` configuration (its
sizes, 2-layer MiniLM, 16 tokens, text-aligned embedder, >= 150 steps) with the cache on and off, for each seed, in one process and one thread, alternating which goes
first. It prints the process CPU seconds of each fit (alignment included: both pay it), the
ratio cached / uncached, and both test errors (the cached run has no dropout in the frozen body,
so its numbers differ: a probe on fixed features).

    python benchmarks/frozen_cache.py                   # osuleaf, basicmotions, dna, darcy; seeds 0 1
    python benchmarks/frozen_cache.py --tasks darcy --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from xmodal.config import from_dict  # noqa: E402
from xmodal.runs.fit import fit  # noqa: E402
from xmodal.study.plan import expand  # noqa: E402


def study_config(study: str, task: str, seed: int, out: str) -> dict:
    """The study's own `predictor-only` run with the text-aligned embedder, as a config tree."""
    plan = expand(study, out, tasks=[task], seeds=[seed])
    for run in plan.runs:
        c = run.config
        if c.train.finetune == "predictor-only" and c.align.proxy == "text":
            return c.to_dict()
    raise SystemExit(f"study {study} has no predictor-only run with a text proxy on {task}")


def one_fit(tree: dict, cached: bool, out: str) -> tuple[float, float]:
    tree = {**tree, "train": {**tree["train"], "cache_frozen": cached},
            "run": {**tree["run"], "threads": 1, "out": out, "save_checkpoint": False}}
    cfg = from_dict(tree)
    t0 = time.process_time()
    result = fit(cfg, progress=False, log=lambda m: None, force=True)
    return time.process_time() - t0, result.summary["test_metric_best"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="paper-cpu")
    ap.add_argument("--tasks", nargs="+", default=["osuleaf", "basicmotions", "dna", "darcy"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    args = ap.parse_args(argv)
    print(f"# predictor-only, cached vs uncached front ({args.study} sizes, 1 thread, "
          f"process CPU s per fit)\n")
    print("| task | seed | uncached s | cached s | cached/uncached | test uncached | test cached |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    with tempfile.TemporaryDirectory() as out:
        for name in args.tasks:
            for i, seed in enumerate(args.seeds):
                tree = study_config(args.study, name, seed, out)
                order = (True, False) if i % 2 else (False, True)
                res = {flag: one_fit(tree, flag, out) for flag in order}
                (tu, mu), (tc, mc) = res[False], res[True]
                ratios.append(tc / tu)
                print(f"| {name} | {seed} | {tu:.1f} | {tc:.1f} | {tc / tu:.2f} | {mu:.4f} | "
                      f"{mc:.4f} |", flush=True)
    print(f"\nmedian cached/uncached: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
