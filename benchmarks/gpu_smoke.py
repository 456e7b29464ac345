"""Benchmark for a GPU machine: a paper study's smoke run (`xmodal study run --smoke`) on CUDA,
against the same smoke run measured on a CPU, run by run.

It runs the smoke study on the GPU (random body weights from the shipped architectures, the
synthetic NAS-Bench-360 files it writes itself unless --data gives real ones), then prints per
run the measured seconds per optimizer step and the peak memory on the GPU
(`torch.cuda.max_memory_allocated`), and, with --cpu DIR (a smoke folder made on a CPU, e.g. by
`xmodal study run paper-freezing --smoke --out DIR ...`), the CPU's figures and the ratios
GPU / CPU. No GPU: it says so and exits 2.

    python benchmarks/gpu_smoke.py --study paper-freezing --out runs/gpu-smoke \\
        [--tasks nb360/satellite,nb360/cifar100] [--data DIR] [--cpu runs/smoke-freezing]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from xmodal.config import from_dict  # noqa: E402
from xmodal.study.runner import run_study  # noqa: E402
from xmodal.study.smoke import smoke_key, smoke_rows  # noqa: E402
from xmodal.study.store import Store  # noqa: E402


def rows_by_key(folder: Path) -> dict:
    with Store(folder) as store:
        runs = store.runs()
        rows = smoke_rows(runs, store.members(), store.finals())
    configs = {r["id"]: r["config"] for r in runs}
    return {smoke_key(from_dict(configs[row["id"]])): row for row in rows}


def ratio(a, b) -> str:
    return "-" if a is None or not b else f"{a / b:.3f}"


def gb(x) -> str:
    return "-" if x is None else f"{x / 1e9:.2f}"


def sec(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="paper-freezing")
    ap.add_argument("--out", required=True, help="the GPU smoke folder (a new one)")
    ap.add_argument("--tasks", default=None, help="comma-separated tasks (default: the study's)")
    ap.add_argument("--data", default=None, help="task and proxy folder (default: fixtures)")
    ap.add_argument("--cpu", default=None, help="a CPU smoke folder of the same study")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures a GPU (see docs/benchmarks.md)",
              file=sys.stderr)
        return 2
    data = args.data
    if data is None:
        from xmodal.data.nb360.fixtures import write_fixtures
        data = tempfile.mkdtemp(prefix="nb360-fixtures-")
        write_fixtures(Path(data))
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    outcome = run_study(args.study, args.out, tasks=tasks, smoke=True, quiet=True,
                        overrides=[f"task.data_dir={data}", f"align.proxy_dir={data}",
                                   "run.device=cuda"])
    gpu = rows_by_key(Path(args.out))
    cpu = rows_by_key(Path(args.cpu)) if args.cpu else {}
    print(f"{args.study} smoke on {torch.cuda.get_device_name()}: {outcome.done}/"
          f"{outcome.total} runs done")
    head = ["task", "body", "fine-tune", "batch", "GPU s/step", "CPU s/step", "GPU/CPU",
            "GPU peak GB", "CPU peak GB", "GPU/CPU"]
    print(" | ".join(head))
    for key, g in gpu.items():
        c = cpu.get(key, {})
        print(" | ".join([g["task"], g["body"], g["finetune"], str(g["batch_size"]),
                          sec(g["step_seconds"]), sec(c.get("step_seconds")),
                          ratio(g["step_seconds"], c.get("step_seconds")),
                          gb(g["peak_bytes"]), gb(c.get("peak_bytes")),
                          ratio(g["peak_bytes"], c.get("peak_bytes"))]))
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
