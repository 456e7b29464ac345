"""Gaussian label distances for OTDD (``inner="gaussian"``): each class is N(mu, Sigma) with a
shrunk covariance, and ``W(y, y') = ||mu - mu'||^2 + Bures(Sigma, Sigma')``, where
``Bures(S, S') = tr S + tr S' - 2 tr (S^1/2 S' S^1/2)^1/2``. The PSD square root has a
backward that stays finite on singular covariances; Ledoit-Wolf gives the default shrinkage.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .labels import _PAIR_CHUNK, _fill, _pairs, _subsample


class _SqrtmPSD(torch.autograd.Function):
    """Square root of symmetric PSD matrices (..., d, d) via eigh with clamped eigenvalues.
    Backward solves the Sylvester equation Y dX + dX Y = G in the eigenbasis: dX_ij =
    G'_ij / (s_i + s_j). Repeated eigenvalues are harmless; the denominator is floored so that
    (near-)zero eigenvalues give large but finite gradients."""

    @staticmethod
    def forward(ctx, M: Tensor) -> Tensor:
        lam, V = torch.linalg.eigh(0.5 * (M + M.transpose(-1, -2)))
        s = lam.clamp_min(0).sqrt()
        ctx.save_for_backward(s, V)
        return (V * s.unsqueeze(-2)) @ V.transpose(-1, -2)

    @staticmethod
    def backward(ctx, G: Tensor) -> Tensor:
        s, V = ctx.saved_tensors
        floor = s.amax(-1, keepdim=True).unsqueeze(-1) * torch.finfo(s.dtype).eps ** 0.5
        denom = (s.unsqueeze(-1) + s.unsqueeze(-2)).clamp_min(floor.clamp_min(1e-30))
        Gs = 0.5 * (G + G.transpose(-1, -2))
        inner = (V.transpose(-1, -2) @ Gs @ V) / denom
        return V @ inner @ V.transpose(-1, -2)


def sqrtm_psd(M: Tensor) -> Tensor:
    """Differentiable PSD matrix square root with finite gradients (see :class:`_SqrtmPSD`)."""
    return _SqrtmPSD.apply(M)


def ledoit_wolf_shrinkage(xc: Tensor) -> Tensor:
    """Ledoit-Wolf shrinkage intensity in [0, 1] for centred samples xc (n, d) (no gradient)."""
    xc = xc.detach()
    n, d = xc.shape
    x2 = xc * xc
    trace_diag = x2.sum(0) / n
    mu = trace_diag.sum() / d
    beta_ = (x2.T @ x2).sum()
    delta_ = ((xc.T @ xc) ** 2).sum() / n**2
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * trace_diag.sum() + d * mu**2) / d
    beta = torch.minimum(beta, delta)
    return torch.where(delta > 0, beta / delta.clamp_min(1e-300), torch.zeros_like(delta))


def _shrunk_cov(xk: Tensor, shrinkage: float | str) -> Tensor:
    """Unbiased covariance of one class, shrunk toward (tr S / d) I by the given intensity
    (a float in [0, 1], or "auto" for Ledoit-Wolf)."""
    n, d = xk.shape
    xc = xk - xk.mean(0)
    S = xc.T @ xc / (n - 1)
    s = ledoit_wolf_shrinkage(xc) if shrinkage == "auto" else torch.as_tensor(float(shrinkage))
    s = s.to(S)
    eye = torch.eye(d, dtype=S.dtype, device=S.device)
    return (1 - s) * S + s * (torch.diagonal(S).sum() / d) * eye


@dataclass
class _Gaussians:
    mean: Tensor  # (K, d)
    cov: Tensor  # (K, d, d)
    root: Tensor | None = None  # (K, d, d) sqrt of cov, computed on demand


def _class_gaussians(x: Tensor, codes: Tensor, k: int, shrinkage: float | str,
                     maxsamples: int | None) -> _Gaussians:
    members = [_subsample((codes == c).nonzero().flatten(), maxsamples) for c in range(k)]
    means = torch.stack([x.index_select(0, m).mean(0) for m in members])
    covs = torch.stack([_shrunk_cov(x.index_select(0, m), shrinkage) for m in members])
    return _Gaussians(means, covs)


def _trace(S: Tensor) -> Tensor:
    return torch.diagonal(S, dim1=-2, dim2=-1).sum(-1)


def _gaussian_pairs(A: _Gaussians, B: _Gaussians, ia: Tensor, ib: Tensor) -> Tensor:
    """||mu_a - mu_b||^2 + Bures(S_a, S_b) for the class pairs (ia, ib)."""
    if A.root is None:
        A.root = sqrtm_psd(A.cov)
    d = A.cov.shape[-1]
    step = max(1, _PAIR_CHUNK // (4 * d * d))
    out = []
    for s in range(0, len(ia), step):
        pa, pb = ia[s: s + step], ib[s: s + step]
        R, Sb = A.root.index_select(0, pa), B.cov.index_select(0, pb)
        fid = torch.diagonal(sqrtm_psd(R @ Sb @ R), dim1=-2, dim2=-1).sum(-1)
        tr = _trace(A.cov).index_select(0, pa) + _trace(B.cov).index_select(0, pb)
        mean_term = ((A.mean.index_select(0, pa) - B.mean.index_select(0, pb)) ** 2).sum(-1)
        out.append(mean_term + (tr - 2 * fid).clamp_min(0))
    return torch.cat(out) if out else A.mean.new_zeros(0)


def _gaussian_label_matrix(A: _Gaussians, B: _Gaussians, symmetric: bool = False) -> Tensor:
    ka, kb = A.mean.shape[0], B.mean.shape[0]
    ia, ib = _pairs(ka, kb, symmetric, A.mean.device)
    return _fill(_gaussian_pairs(A, B, ia, ib), ia, ib, ka, kb, symmetric)
