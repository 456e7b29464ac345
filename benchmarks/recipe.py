"""Benchmark: does the default recipe learn? xmodal's defaults against the domain baselines.

For every bundled classification task plus darcy, one process runs, in this order:
- `new`: `xmodal fit --task T` with today's defaults;
- `old`: the defaults before the recipe change (PyTorch's conv init, 3 epochs at batch 32,
  Adam betas (0.9, 0.999), fp32, always a 20% validation carve);
- `fp32` (with `--variants new,fp32`): today's defaults in fp32, to check that CPU bf16
  autocast keeps the accuracy (the column new/fp32 s is the time ratio);
- the domain baselines of `xmodal baseline` (logistic regression and MiniRocket for
  classification; ridge and the mean field for darcy);
and prints a markdown table of test errors and seconds, with the error ratios new/logreg and
new/MiniRocket (below 1: xmodal wins). `--heldout` runs the same on two sets no default was ever
tuned on (JapaneseVowels and ACSF1 from aeon, handed over as users' npz files, channels
standardised with train statistics) and prints them as a separate table.

    python benchmarks/recipe.py                        # all bundled tasks (~40 min on 2 cores)
    python benchmarks/recipe.py --tasks digits,gunpoint --variants new
    python benchmarks/recipe.py --heldout
    python benchmarks/recipe.py --variant 'lr3e-4:train.lr=3e-4'   # add a variant to compare

Times are wall-clock seconds of one run each, including data loading and evaluation, on
whatever else the machine is doing: compare columns of one run, not across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI: no spinning threads

import xmodal  # noqa: E402
from xmodal.runs.baselines import default_methods  # noqa: E402
from xmodal.data.registry import REGISTRY, list_specs

TASKS = ["digits", "arrowhead", "osuleaf", "basicmotions", "gunpoint", "italypower", "dna",
         "darcy"]
OLD = {"embedder.conv_init": "torch", "embedder.norm_order": "post-pos", "train.epochs": 3,
       "train.batch_size": 32, "train.betas": [0.9, 0.999], "run.precision": "fp32",
       "task.validation": "carve"}
VARIANTS = {"new": {}, "old": OLD, "fp32": {"run.precision": "fp32"}}
HELDOUT = {"japanesevowels": "JapaneseVowels", "acsf1": "ACSF1"}


def parse_variant(text: str) -> tuple[str, dict]:
    """'name:key=value;key=value' -> (name, overrides); values are read as YAML."""
    import yaml
    name, _, rest = text.partition(":")
    pairs = [item.split("=", 1) for item in rest.split(";") if item]
    return name, {k.strip(): yaml.safe_load(v) for k, v in pairs}


def heldout_npz(name: str, folder: Path) -> str:
    """An aeon UCR/UEA set as a user's npz: padded to equal length, standardised channels."""
    from aeon.datasets import load_classification
    xs, ys = {}, {}
    for split in ("train", "test"):
        x, y = load_classification(HELDOUT[name], split=split)
        xs[split], ys[split] = list(x), y
    length = max(x.shape[-1] for split in xs for x in xs[split])
    classes = np.unique(np.concatenate([ys["train"], ys["test"]]))
    arrays = {}
    for split in xs:
        out = np.zeros((len(xs[split]), xs[split][0].shape[0], length), np.float32)
        for i, x in enumerate(xs[split]):
            out[i, :, :x.shape[-1]] = x
        arrays[f"x_{split}"] = out
        arrays[f"y_{split}"] = np.searchsorted(classes, ys[split])
    mean = arrays["x_train"].mean(axis=(0, 2), keepdims=True)
    std = arrays["x_train"].std(axis=(0, 2), keepdims=True) + 1e-8
    for split in xs:
        arrays[f"x_{split}"] = (arrays[f"x_{split}"] - mean) / std
    path = folder / f"{name}.npz"
    np.savez(path, **arrays)
    return f"npz:{path}"


def run_one(task: str, overrides: dict, out: str, seed: int) -> tuple[float, float]:
    tree = {"task.name": task, "run.out": out, "run.seed": seed, **overrides}
    cfg = xmodal.load_config(overrides=tree)
    t0 = time.perf_counter()
    result = xmodal.fit(cfg, progress=False, log=lambda *_: None, force=True)
    seconds = time.perf_counter() - t0
    if result.status != "done":
        return float("nan"), seconds
    return result.test_metric, seconds


def bench(tasks: dict, variants: dict, seeds: list[int], out: str,
          baselines: bool = True) -> list[dict]:
    rows = []
    for label, task in tasks.items():
        spec = REGISTRY[task].spec if task in REGISTRY else None
        methods = default_methods(spec) if spec else ["logreg", "minirocket"]
        methods = methods if baselines else []
        row = {"task": label}
        for name, overrides in {**variants,
                                **{m: {"baseline.method": m} for m in methods}}.items():
            results = [run_one(task, overrides, out, s) for s in seeds]
            row[name] = float(np.mean([r[0] for r in results]))
            row[f"{name} s"] = float(np.mean([r[1] for r in results]))
            print(f"  {label:15s} {name:12s} test {row[name]:.4f}  {row[f'{name} s']:.0f}s",
                  file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict], variants: list[str]) -> str:
    cols = variants + ["logreg", "minirocket", "ridge", "mean"]
    cols = [c for c in cols if any(c in r for r in rows)]
    head = ["task"] + [f"{c} error" for c in cols] + [f"{c} s" for c in cols]
    head += ["new/logreg", "new/MiniRocket"] + (["new/fp32 s"] if "fp32" in cols else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["task"]] + [_fmt(r.get(c), 4) for c in cols] + [_fmt(r.get(f"{c} s"), 0)
                                                                  for c in cols]
        ref = r.get("new")
        for base in ("logreg", "minirocket"):
            b = r.get(base)
            cells.append("-" if ref is None or b is None else
                         ("inf" if b == 0 and ref > 0 else _fmt(ref / b if b else 1.0, 2)))
        if "fp32" in cols:
            cells.append(_fmt(r["new s"] / r["fp32 s"], 2) if "new s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(v, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--variants", default="new,old", help="built-in variants: new, old, fp32")
    ap.add_argument("--no-baselines", action="store_true", help="skip the domain baselines")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:K=V;K=V",
                    help="an extra variant of overrides over the new defaults (repeatable)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--heldout", action="store_true", help="run the held-out sets instead")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    list_specs()
    variants = {v: VARIANTS[v] for v in args.variants.split(",") if v}
    variants.update(dict(parse_variant(v) for v in args.variant))
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        if args.heldout:
            tasks = {name: heldout_npz(name, Path(tmp)) for name in HELDOUT}
        else:
            tasks = {t: t for t in args.tasks.split(",")}
        rows = bench(tasks, variants, seeds, str(Path(tmp) / "runs"), not args.no_baselines)
    print(f"# recipe benchmark, {dt.date.today()}, {platform.processor() or platform.machine()}, "
          f"{threads} torch thread(s), seeds {args.seeds}"
          f"{', held-out sets' if args.heldout else ''}\n")
    print(table(rows, list(variants)))


if __name__ == "__main__":
    main()
