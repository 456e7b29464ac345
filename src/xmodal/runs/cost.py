"""What a run costs before it runs: FLOPs counted on the real architecture, GPU-hours from them.

`sample_flops(cfg, spec)` builds the run's model on PyTorch's meta device (no weights, no memory,
no download: `body.pretrained` is read as false, since random weights have the same FLOPs), applies
the run's fine-tune mode and counts one training step (forward, loss, backward) and one
evaluation forward on a batch of `PROBE_BATCH` samples with `torch.utils.flop_counter`.
Everything in the forward pass scales with the batch, so the counts are per sample.

`run_cost(cfg, spec, sizes)` multiplies them by the run's work: `train.epochs` (or the automatic
budget's) x the training samples, a validation pass per epoch and the test split scored twice.
`gpu_hours(flops, tflops)` divides by a stated sustained throughput (`GPU_TFLOPS`, a flag of
`study run --dry-run`). Not counted: stage 2 (alignment trains only the embedder on
`align.maxsamples` samples per class per epoch; its Sinkhorn iterations are data dependent), data
loading and start-up.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from ..data.types import TaskSpec

PROBE_BATCH = 2
# Sustained, not peak: a fine-tuning step at batch 4 to 32 keeps a GPU far below its peak.
# 100 TFLOP/s is about 10% of an H100 SXM's dense bf16 peak (989) and 30% of an A100's (312).
GPU_TFLOPS = 100.0


@dataclass(frozen=True)
class SampleFlops:
    train: float        # one training sample: forward, loss and backward
    forward: float      # one evaluated sample


@dataclass(frozen=True)
class RunCost:
    flops: float
    epochs: int
    samples: dict       # train / val / test sizes the estimate used
    per_sample: SampleFlops


def sample_flops(cfg, spec: TaskSpec) -> SampleFlops:
    """FLOPs per sample of the run's training step and evaluation, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..model.crossmodal import build_model
    from ..model.finetune import apply_finetune_mode
    from ..stages.metrics import make_loss

    body = dataclasses.replace(cfg.body, pretrained=False)
    with torch.device("meta"):
        model, _ = build_model(spec, body, cfg.embedder, cfg.run.seed)
        model = apply_finetune_mode(model, cfg.train.finetune, cfg.train.lora_rank)
        x = torch.zeros(PROBE_BATCH, *spec.input_shape)
        with FlopCounterMode(display=False) as forward:
            with torch.no_grad():
                model.eval()(x)
        model.train()
        with FlopCounterMode(display=False) as train:
            out = model(x)
            loss = make_loss(spec.kind)(out, _target(spec, out))
            if loss.requires_grad:
                loss.backward()
    return SampleFlops(train.get_total_flops() / PROBE_BATCH,
                       forward.get_total_flops() / PROBE_BATCH)


def _target(spec: TaskSpec, out):
    import torch
    if spec.kind == "classification":
        return torch.zeros(out.shape[0], dtype=torch.long)
    return torch.zeros_like(out)


def run_cost(cfg, spec: TaskSpec, sizes: dict,
             per_sample: Optional[SampleFlops] = None) -> RunCost:
    """Total FLOPs of fine-tuning: epochs x (train samples x a training step + validation
    samples x a forward) + 2 x test samples x a forward. `sizes`: {train, val, test}."""
    from ..stages.optim import resolve_budget
    per_sample = per_sample or sample_flops(cfg, spec)
    epochs = resolve_budget(cfg.train, sizes["train"]).epochs
    flops = epochs * (sizes["train"] * per_sample.train + sizes["val"] * per_sample.forward)
    flops += 2 * sizes["test"] * per_sample.forward
    return RunCost(float(flops), epochs, dict(sizes), per_sample)


def gpu_hours(flops: float, tflops: float = GPU_TFLOPS) -> float:
    if not (math.isfinite(tflops) and tflops > 0):
        raise ValueError(f"GPU throughput must be a positive number of TFLOP/s; got {tflops}")
    return flops / (tflops * 1e12) / 3600.0
