"""Predictors: task heads on top of the body's output tokens.

Point tasks (classification, multi-label): mean-pool over tokens, then one linear layer.
Dense tasks: a per-token linear head whose outputs are laid back onto the token grid and
resized to the target field `(C_out, H, W)` or `(C_out, L)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.types import TaskSpec


class PointPredictor(nn.Module):
    def __init__(self, dim: int, n_out: int):
        super().__init__()
        self.head = nn.Linear(dim, n_out)

    def forward(self, tokens: torch.Tensor, grid: tuple) -> torch.Tensor:
        return self.head(tokens.mean(dim=1))


class DensePredictor(nn.Module):
    """Each token predicts a q x q (or q) patch of the output; patches are assembled on the
    token grid and resized to the target shape."""

    def __init__(self, dim: int, output_shape: tuple, grid: tuple):
        super().__init__()
        self.output_shape = tuple(output_shape)
        self.channels, spatial = output_shape[0], output_shape[1:]
        self.q = [max(1, math.ceil(s / g)) for s, g in zip(spatial, grid)]
        self.head = nn.Linear(dim, self.channels * math.prod(self.q))

    def forward(self, tokens: torch.Tensor, grid: tuple) -> torch.Tensor:
        b = tokens.shape[0]
        out = self.head(tokens)
        spatial = self.output_shape[1:]
        if len(grid) == 1:
            out = out.reshape(b, grid[0], self.channels, self.q[0]).permute(0, 2, 1, 3)
            out = out.reshape(b, self.channels, grid[0] * self.q[0])
            mode = "linear"
        else:
            (gh, gw), (qh, qw) = grid, self.q
            out = out.reshape(b, gh, gw, self.channels, qh, qw).permute(0, 3, 1, 4, 2, 5)
            out = out.reshape(b, self.channels, gh * qh, gw * qw)
            mode = "bilinear"
        if tuple(out.shape[2:]) != tuple(spatial):
            out = F.interpolate(out, size=spatial, mode=mode, align_corners=False)
        return out


def build_predictor(spec: TaskSpec, dim: int, grid: tuple) -> nn.Module:
    if spec.kind == "dense":
        return DensePredictor(dim, spec.output_shape, grid)
    return PointPredictor(dim, spec.n_out)
