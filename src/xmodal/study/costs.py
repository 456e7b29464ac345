"""GPU-hours of a study's plan, for `study run --dry-run`.

Each fine-tuned run is costed by `runs.cost`: FLOPs counted on its real architecture (on the
meta device: nothing is downloaded or allocated) times the samples it trains and evaluates, at
a stated sustained GPU throughput. The samples are the task's published split
(`TaskSpec.published_sizes`, the NAS-Bench-360 tasks), capped by `task.max_train` / `max_val`
/ `max_test`. A task without published sizes falls back to the spec's `gpu_hours_per_epoch`
tag x epochs, else it has no estimate. Domain baselines run on the CPU: 0 GPU-hours. Runs that
differ only in what does not change the FLOPs (seed, proxy, initialisation, learning rates)
are counted once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from ..config.choices import NO_BASELINE
from ..runs.cost import GPU_TFLOPS, gpu_hours, run_cost, sample_flops
from .plan import Plan, PlannedRun


@dataclass(frozen=True)
class PlanCost:
    hours: float          # the runs with an estimate
    unknown: int          # runs without one
    counted: int          # runs costed from counted FLOPs
    tflops: float


def plan_cost(plan: Plan, tflops: float = GPU_TFLOPS) -> PlanCost:
    cache: dict = {}
    hours, unknown, counted = 0.0, 0, 0
    for run in plan.runs:
        h, from_flops = run_hours(run, tflops, cache)
        if h is None:
            unknown += 1
        else:
            hours += h
            counted += from_flops
    return PlanCost(hours, unknown, counted, tflops)


def run_hours(run: PlannedRun, tflops: float, cache: dict) -> tuple[Optional[float], bool]:
    """(GPU-hours of one run or None, whether they come from counted FLOPs)."""
    cfg = run.config
    if cfg.baseline.method != NO_BASELINE:
        return 0.0, False
    spec = _spec(cfg.task.name)
    sizes = _sizes(cfg, spec)
    if sizes is None:
        return _tagged_hours(run), False
    key = _flops_key(cfg)
    if key not in cache:
        cache[key] = sample_flops(cfg, spec)
    return gpu_hours(run_cost(cfg, spec, sizes, cache[key]).flops, tflops), True


def _spec(name: str):
    from ..data.registry import REGISTRY
    entry = REGISTRY.get(name)
    return entry.spec if entry is not None else None


def _sizes(cfg, spec) -> Optional[dict]:
    if spec is None or not spec.published_sizes:
        return None
    caps = (cfg.task.max_train, cfg.task.max_val, cfg.task.max_test)
    return {split: n if cap is None else min(n, cap)
            for split, n, cap in zip(("train", "val", "test"), spec.published_sizes, caps)}


def _flops_key(cfg) -> str:
    """What the FLOPs per sample depend on: the task's shapes, the body's architecture and
    depth, the token count and the fine-tune mode (not initialisation, dropout or lr)."""
    b, e, t = cfg.body, cfg.embedder, cfg.train
    return json.dumps([cfg.task.name, b.name, b.num_layers, e.seq_len, e.patch, t.finetune,
                       t.lora_rank])


def _tagged_hours(run: PlannedRun) -> Optional[float]:
    """The spec's `gpu_hours_per_epoch` tag x train.epochs (a user's own estimate)."""
    per_epoch = next((m[2]["gpu_hours_per_epoch"] for m in run.members
                      if m[2].get("gpu_hours_per_epoch") is not None), None)
    if per_epoch is None or run.config.train.epochs is None:
        return None
    return float(per_epoch) * run.config.train.epochs
