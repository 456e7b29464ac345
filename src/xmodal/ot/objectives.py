"""The alignment objectives of stage 2: callables from target features (m, d) to a scalar,
with every source-only term computed once when the objective is built.

- `otdd`, `otdd-gaussian`: OTDD against the labelled source (`otdd.OTDD`), Sinkhorn or
  Gaussian (Bures) label-to-label distances;
- `mmd`: biased MMD^2 with a Gaussian kernel, `GaussianMMD`;
- `l2`: ||mean(x_t) - mean(x_s)||^2, `MeanL2`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..config.choices import OBJECTIVES
from .otdd import OTDD
from .sinkhorn import sq_dists


def build_objective(name: str, xs: Tensor, ys: Tensor, eps: float, inner_eps: float = 0.1,
                    max_iter: int = 2000, label_grad: bool = True):
    """The objective `name` against source features `xs` (n, d) with labels `ys` (n,).
    `label_grad` False: OTDD's label-to-label distances are constants (ORCA)."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown alignment objective '{name}'; valid: {', '.join(OBJECTIVES)}")
    inner = OBJECTIVES[name].inner
    if inner is not None:
        return OTDD(xs, ys, inner=inner, eps=eps, inner_eps=inner_eps, max_iter=max_iter,
                    label_grad=label_grad)
    return GaussianMMD(xs) if name == "mmd" else MeanL2(xs)


class MeanL2:
    """||mean(x_t) - mean(x_s)||^2: the squared distance between the two means."""

    def __init__(self, xs: Tensor):
        self.mean = xs.detach().mean(0)

    def __call__(self, xt: Tensor) -> Tensor:
        return ((xt.mean(0) - self.mean) ** 2).sum()


class GaussianMMD:
    """Biased MMD^2 = mean k(xs, xs') + mean k(xt, xt') - 2 mean k(xs, xt), with kernel
    k(x, x') = exp(-||x - x'||^2 / h), h = median squared distance between source points (the
    median heuristic on up to 1000 of them, fixed for the whole stage so that values compare
    across epochs); the source-source term is computed once."""

    def __init__(self, xs: Tensor, chunk: int = 2048):
        self.xs = xs.detach()
        sub = self.xs[torch.randperm(len(xs), generator=torch.Generator().manual_seed(0))[:1000]]
        d2 = sq_dists(sub, sub)
        off = d2[~torch.eye(len(sub), dtype=torch.bool, device=d2.device)]
        self.h = float(off.median()) if off.numel() else 1.0
        self.h = self.h if self.h > 0 else 1.0
        kxx = sum(torch.exp(-sq_dists(self.xs[s: s + chunk], self.xs) / self.h).sum()
                  for s in range(0, len(xs), chunk))
        self.kxx = kxx / len(xs) ** 2

    def __call__(self, xt: Tensor) -> Tensor:
        kyy = torch.exp(-sq_dists(xt, xt) / self.h).mean()
        kxy = torch.exp(-sq_dists(self.xs, xt) / self.h).mean()
        return self.kxx + kyy - 2 * kxy
