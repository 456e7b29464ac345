"""Stage 3's optimiser, schedule and budget, from the `train` section alone.

One optimizer group per model part (embedder and predictor at `train.lr` x their multipliers);
linear warm-up then cosine / linear decay that never goes below zero, stepped once per optimizer
step; and the automatic budget (README, "The training budget").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import TrainConfig


def param_groups(model: torch.nn.Module, cfg: TrainConfig, lr: float) -> list[dict]:
    """One group per part: embedder and predictor at `lr` x their multipliers, the rest at
    `lr` (a model without those parts is one group)."""
    mults = {"embedder": cfg.embedder_lr_mult, "predictor": cfg.predictor_lr_mult}
    groups = {name: [] for name in ("body", *mults)}
    for name, p in model.named_parameters():
        if p.requires_grad:
            part = name.split(".", 1)[0]
            groups[part if part in mults else "body"].append(p)
    return [{"params": ps, "lr": lr * mults.get(part, 1.0), "name": part}
            for part, ps in groups.items() if ps]


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """`params`: a model (grouped by `param_groups`) or an iterable of parameters."""
    if isinstance(params, torch.nn.Module):
        params = param_groups(params, cfg, lr)
    else:
        params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class Budget:
    """How long fine-tuning runs: the resolved batch size, epochs and steps per epoch."""
    batch_size: int
    epochs: int
    steps_per_epoch: int
    rule: str

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch


def resolve_budget(tc: TrainConfig, n_train: int) -> Budget:
    """The training budget for `n_train` samples (README, "The training budget").

    Unset `batch_size`: min(32, max(8, n_train // 8)), so a small set still gets about eight
    steps per epoch. Unset `epochs`: enough epochs for `min_steps` optimizer steps, at most
    `max_epochs`; a 40-sample set gets as many updates as a 40,000-sample one needs at least.
    """
    batch = tc.batch_size or min(32, max(8, n_train // 8))
    batch = max(1, min(batch, n_train))
    steps = math.ceil(math.ceil(n_train / batch) / tc.accumulate)
    if tc.epochs is not None:
        return Budget(batch, tc.epochs, steps, "train.epochs")
    epochs = min(tc.max_epochs, max(1, math.ceil(tc.min_steps / steps)))
    return Budget(batch, epochs, steps, f"auto: >= {tc.min_steps} steps, <= {tc.max_epochs} epochs")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up to 1, then cosine / linear decay to 0 at `total`; never negative."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return max(0.0, 1.0 - progress)


def make_scheduler(opt, total: int, warmup: int, schedule: str):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))
