"""Cached body outputs: when neither the embedder nor the body trains (`predictor-only`), run
them once per split and train the predictor on what they return.

The frozen front runs in eval mode (no dropout), so a cached run trains a probe on fixed
features; `train.cache_frozen: false` keeps the old behaviour (the frozen front runs every
step in train mode, dropout on). A split whose features would take more than
`CACHE_LIMIT_BYTES`, or a task with training-time augmentation, is never cached.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .device import autocast

CACHE_LIMIT_BYTES = 2 * 1024 ** 3    # train + validation features, float32


def front_is_frozen(model: nn.Module) -> bool:
    """True when `model` is embedder -> body -> predictor and no parameter of the embedder or
    the body trains."""
    parts = [getattr(model, name, None) for name in ("embedder", "body", "predictor")]
    if any(part is None for part in parts):
        return False
    return not any(p.requires_grad for part in parts[:2] for p in part.parameters())


class OnFeatures(nn.Module):
    """The predictor alone, fed cached body outputs: `forward(tokens)` on the body's grid."""

    def __init__(self, predictor: nn.Module, grid: tuple):
        super().__init__()
        self.predictor, self.grid = predictor, tuple(grid)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.predictor(tokens, self.grid)


@torch.no_grad()
def body_outputs(model: nn.Module, x: np.ndarray, batch_size: int, device: torch.device,
                 precision: str) -> tuple[np.ndarray, tuple]:
    """The body's output tokens for every sample of `x` (float32, on the CPU) and its grid."""
    was_training = model.training
    model.eval()
    outs, grid = [], None
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start:start + batch_size]).to(device)
        with autocast(device, precision):
            tokens, grid = model.embedder(xb)
            hidden, grid = model.body(tokens, grid)
        outs.append(hidden.float().cpu())
    model.train(was_training)
    return torch.cat(outs).numpy(), tuple(grid)


def feature_bytes(model: nn.Module, n: int, device: torch.device, precision: str,
                  sample: np.ndarray) -> int:
    """Bytes that `n` samples' cached features take (from one sample's output)."""
    feats, _ = body_outputs(model, sample[:1], 1, device, precision)
    return int(n * feats[0].size * 4)
