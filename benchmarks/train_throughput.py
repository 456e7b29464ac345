"""Benchmark: samples/s of xmodal's training loop (`Trainer`) vs a bare PyTorch loop.

Both loops train the same model (embedder -> body -> predictor, built by `xmodal.build_model`;
the bare loop trains an exact copy) on batches of the same size from the same in-memory data.
The data are random series shaped like the bundled `arrowhead` task (1 channel, length 251,
3 classes; no download, fixed seed), so the embedder makes ~seq_len tokens.

- **xmodal** times `Trainer._train_epoch`, the epoch loop that `Trainer.run()` (and so
  `xmodal fit`) runs: DataLoader with seeded shuffling, per-step finiteness check, loss
  bookkeeping, gradient clipping (default train.clip = 1.0), AdamW, LR scheduler, progress bar
  (shown only when stderr is a terminal, as in `xmodal fit`). One timed epoch = `--steps` steps.
- **bare PyTorch** is `loss = cross_entropy(model(xb), yb); loss.backward(); opt.step();
  opt.zero_grad()` over the same number of pre-sliced batches (no DataLoader, no clipping, no
  scheduler), with the same AdamW settings.

Both run `--warmup` untimed steps first (thread pools, allocator, AdamW state). The timed
repeats alternate between the two (order swapped every repeat) in one process, so machine
load affects both alike; the table reports wall-clock medians over repeats and their ratio,
the median of the per-repeat ratios, and the ratio of samples per second of process CPU time
(steadier than wall time on a busy shared machine). A second table times, in isolation, each
piece of per-step work the Trainer does beyond the bare loop (`--no-breakdown` skips it).

    python benchmarks/train_throughput.py                  # minilm, batch 32, seq_len 64,
                                                           # 2 steps x 4 repeats (~1.5-2.5 min
                                                           # on 2 busy CPU cores)
    python benchmarks/train_throughput.py --threads 1      # steadier on a busy shared machine
    python benchmarks/train_throughput.py --device cuda --steps 50 --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import statistics
import sys
import time

if "--omp-passive" in sys.argv:  # must precede the OpenMP runtime's start (import torch)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from xmodal.config import load_config  # noqa: E402
from xmodal.model.finetune import apply_finetune_mode
from xmodal.model.crossmodal import build_model
from xmodal.data.registry import REGISTRY, list_specs
from xmodal.data.types import TaskData
from xmodal.runs.fit import trainer_for
from xmodal.stages.device import resolve_device

TASK = "arrowhead"  # (1, 251) series, 3 classes


def make_data(n: int, seed: int = 0) -> TaskData:
    """Random standardised series with the `arrowhead` task's spec; exactly `n` train samples."""
    list_specs()
    spec = REGISTRY[TASK].spec
    rng = np.random.default_rng(seed)
    x = lambda m: rng.standard_normal((m, *spec.input_shape), dtype=np.float32)  # noqa: E731
    y = lambda m: rng.integers(0, spec.n_out, m, dtype=np.int64)  # noqa: E731
    return TaskData(spec, x(n), y(n), x(8), y(8), x(8), y(8))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_epoch(model, opt, batches, device) -> None:
    """The baseline: a plain PyTorch training loop over pre-made batches."""
    model.train()
    for xb, yb in batches:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad()


def timed(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call of `fn`."""
    sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t, time.process_time() - c


def median_time(fn, device, k: int) -> float:
    return statistics.median(timed(fn, device)[0] for _ in range(k))


def breakdown(trainer, batches, device, k: int = 20) -> list[tuple[str, float]]:
    """Wall time of each piece of per-step work the Trainer does beyond the bare loop, each
    timed in isolation (median of `k` calls) with real gradients present. (On CUDA this does
    not capture the cost of the two host syncs per step, isfinite() and item().)"""
    xb, yb = batches[0]
    trainer.model.train()
    loss = trainer._step_loss(xb, yb)
    (loss / trainer.cfg.train.accumulate).backward()
    params = [p for p in trainer.model.parameters() if p.grad is not None]
    clip = trainer.cfg.train.clip
    n_steps = len(batches)
    loader = lambda: [b for b in trainer._loader(1)]  # noqa: E731
    sliced = lambda: [(x.to(device), y.to(device)) for x, y in batches]  # noqa: E731
    rows = [
        (f"clip_grad_norm_ (train.clip = {clip})",
         median_time(lambda: torch.nn.utils.clip_grad_norm_(params, clip), device, k)
         if clip else 0.0),
        ("LR scheduler step", median_time(trainer.sched.step, device, k)),
        ("isfinite(loss) check + loss.item() + loss / accumulate",
         median_time(lambda: (bool(torch.isfinite(loss)), loss.item(),
                              loss / trainer.cfg.train.accumulate), device, k)),
        ("DataLoader (seeded shuffle + collate), per step, minus pre-sliced batches",
         (median_time(loader, device, k) - median_time(sliced, device, k)) / n_steps),
    ]
    trainer.opt.zero_grad(set_to_none=True)
    return rows


def bench(args, device: torch.device) -> dict:
    n = args.steps * args.batch_size
    data = make_data(n)
    cfg = load_config(overrides={
        "task.name": TASK, "body.name": args.body, "embedder.seq_len": args.seq_len,
        "train.batch_size": args.batch_size, "train.epochs": args.repeats + 1,
        "run.device": str(device.type)})
    model, _ = build_model(data.spec, cfg.body, cfg.embedder, cfg.run.seed)
    model = apply_finetune_mode(model, cfg.train.finetune)
    bare_model = copy.deepcopy(model).to(device)  # same weights, same trainable set
    trainer = trainer_for(cfg, model, data, device, progress=not args.no_progress)
    bare_opt = torch.optim.AdamW([p for p in bare_model.parameters() if p.requires_grad],
                                 lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)

    xs, ys = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    batches = [(xs[i], ys[i]) for i in order.split(args.batch_size)]

    # Warm-up, untimed: the Trainer's own step methods, and the bare loop.
    warm = [batches[i % len(batches)] for i in range(args.warmup)]
    trainer.model.train()
    for xb, yb in warm:
        trainer._step_loss(xb, yb).backward()
        trainer._optimizer_step()
    bare_epoch(bare_model, bare_opt, warm, device)

    runs = {"bare": [], "xmodal": []}
    cpu = {"bare": [], "xmodal": []}
    fns = {"bare": lambda: bare_epoch(bare_model, bare_opt, batches, device),
           "xmodal": None}
    for r in range(args.repeats):
        fns["xmodal"] = lambda: trainer._train_epoch(r + 1)
        names = ("bare", "xmodal") if r % 2 == 0 else ("xmodal", "bare")
        for name in names:
            wall, cpu_s = timed(fns[name], device)
            runs[name].append(n / wall)
            cpu[name].append(n / cpu_s)
        if args.verbose:
            print(f"# repeat {r + 1}: bare {runs['bare'][-1]:.2f} samples/s, "
                  f"xmodal {runs['xmodal'][-1]:.2f} samples/s", flush=True)
    n_tokens = model.embedder.n_tokens
    return dict(setting=f"{args.body}, batch {args.batch_size}, seq_len {args.seq_len} "
                        f"({n_tokens} tokens), {args.steps} steps x {args.repeats} repeats",
                bare=statistics.median(runs["bare"]), xmodal=statistics.median(runs["xmodal"]),
                pair=statistics.median(x / b for x, b in zip(runs["xmodal"], runs["bare"])),
                cpu=statistics.median(cpu["xmodal"]) / statistics.median(cpu["bare"]),
                runs=runs, extra=[] if args.no_breakdown else breakdown(trainer, batches, device))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--body", default="minilm", help="body name (default: bundled minilm, 6 layers)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64, help="embedder.seq_len (target tokens)")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per repeat")
    ap.add_argument("--repeats", type=int, default=4, help="timed repeats of each loop, alternating")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps of each loop")
    ap.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"),
                    help="auto: cuda when available (as xmodal's run.device)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--omp-passive", action="store_true",
                    help="set OMP_WAIT_POLICY=PASSIVE (no spin-waiting OpenMP threads)")
    ap.add_argument("--no-progress", action="store_true",
                    help="Trainer(progress=False); by default the bar is on as in `xmodal fit` "
                         "(drawn only when stderr is a terminal)")
    ap.add_argument("--no-breakdown", action="store_true",
                    help="skip timing the Trainer's extra per-step work in isolation")
    ap.add_argument("--verbose", action="store_true", help="print every repeat")
    args = ap.parse_args()
    if min(args.steps, args.repeats, args.batch_size) < 1 or args.warmup < 0:
        ap.error("--steps, --repeats and --batch-size must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# training throughput, {dt.date.today()}, {platform.processor() or platform.machine()}, "
          f"os.cpu_count()={os.cpu_count()}, torch.get_num_threads()={torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(default)')}, "
          f"torch {torch.__version__}, device {dev}, float32, task shape {TASK} (random data)")
    if hasattr(os, "getloadavg"):
        print(f"# load average at start: {os.getloadavg()[0]:.1f}", flush=True)
    r = bench(args, device)
    cpu_col = f"{r['cpu']:.2f}x" if device.type == "cpu" else "n/a"
    print("| setting | bare PyTorch samples/s | xmodal samples/s | ratio (xmodal / bare) "
          "| median of per-repeat ratios | ratio by process CPU time |")
    print("|---|---|---|---|---|---|")
    print(f"| {r['setting']} | {r['bare']:.2f} | {r['xmodal']:.2f} | "
          f"{r['xmodal'] / r['bare']:.2f}x | {r['pair']:.2f}x | {cpu_col} |")
    print(f"# samples/s = wall-clock medians over repeats. Per repeat, bare: "
          f"{', '.join(f'{v:.2f}' for v in r['runs']['bare'])}; xmodal: "
          f"{', '.join(f'{v:.2f}' for v in r['runs']['xmodal'])}")
    if r["extra"]:
        step = args.batch_size / r["bare"]
        print(f"\n| xmodal's extra per-step work, timed in isolation | ms per step "
              f"| % of a bare step ({step * 1e3:.0f} ms, median) |")
        print("|---|---|---|")
        for name, sec in r["extra"]:
            print(f"| {name} | {sec * 1e3:.2f} | {100 * sec / step:.2f}% |")
        extra = sum(sec for _, sec in r["extra"])
        print(f"# xmodal's extra work per step: {extra * 1e3:.1f} ms, so the expected ratio on an "
              f"unloaded machine is about {step / (step + extra):.3f}x")
    if hasattr(os, "getloadavg"):
        print(f"# load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
