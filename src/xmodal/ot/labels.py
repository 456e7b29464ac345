"""Label-to-label distances between class point clouds, for OTDD's label term:
``W(y, y')`` is the debiased Sinkhorn divergence (``inner="sinkhorn"``) or the exact EMD
(``"exact"``) between the clouds of classes y and y', on squared Euclidean costs. All class
pairs are solved in batches of at most ``_PAIR_CHUNK`` cost entries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .sinkhorn import SolverOptions, emd_cost, sinkhorn_cost, sinkhorn_self_cost


_PAIR_CHUNK = 1 << 24  # max entries of one batched cost tensor


def _subsample(idx: Tensor, k: int | None) -> Tensor:
    """Deterministic subset of at most k of the (sorted) indices idx."""
    if k is None or len(idx) <= k:
        return idx
    g = torch.Generator().manual_seed(0)
    return idx[torch.randperm(len(idx), generator=g)[:k].sort().values.to(idx.device)]


@dataclass
class _Clouds:
    """Label-conditional point clouds as padded row indices into their set: idx (K, nmax)
    (padding: row 0), log-weights (K, nmax) with -inf on padding."""

    idx: Tensor
    logw: Tensor


def _class_clouds(codes: Tensor, k: int, maxsamples: int | None, like: Tensor) -> _Clouds:
    members = [_subsample((codes == c).nonzero().flatten(), maxsamples) for c in range(k)]
    nmax = max(len(m) for m in members)
    idx = torch.zeros(k, nmax, dtype=torch.long, device=codes.device)
    logw = torch.full((k, nmax), -math.inf, dtype=like.dtype, device=like.device)
    for c, m in enumerate(members):
        idx[c, : len(m)] = m
        logw[c, : len(m)] = -math.log(len(m))
    return _Clouds(idx, logw)


def _chunks(n_pairs: int, per_pair: int):
    step = max(1, _PAIR_CHUNK // max(per_pair, 1))
    return (slice(s, s + step) for s in range(0, n_pairs, step))


class _UniqueGather(torch.autograd.Function):
    """D[rows, cols] for index tensors that address every entry of D at most once, except at
    padding (valid False), whose gradient must be 0. The backward is then a plain scatter
    (no accumulation): deterministic whatever the thread count."""

    @staticmethod
    def forward(ctx, D: Tensor, rows: Tensor, cols: Tensor, valid: Tensor) -> Tensor:
        ctx.save_for_backward(rows, cols, valid)
        ctx.shape = D.shape
        return D[rows, cols]

    @staticmethod
    def backward(ctx, grad: Tensor):
        rows, cols, valid = ctx.saved_tensors
        rows, cols = rows.expand_as(valid)[valid], cols.expand_as(valid)[valid]
        out = grad.new_zeros(ctx.shape).index_put_((rows, cols), grad[valid])
        return out, None, None, None


def _pair_costs(D: Tensor, A: _Clouds, B: _Clouds, ia: Tensor, ib: Tensor) -> Tensor:
    """Costs (P, na, nb) between clouds A[ia[p]] and B[ib[p]], gathered from the distance
    matrix D between the two sets (the inner cost is ||x - x'||^2, not halved)."""
    rows, cols = A.idx[ia].unsqueeze(-1), B.idx[ib].unsqueeze(-2)
    valid = (torch.isfinite(A.logw[ia]).unsqueeze(-1)
             & torch.isfinite(B.logw[ib]).unsqueeze(-2))
    return _UniqueGather.apply(D, rows, cols, valid)


def _clouds_self_ot(D: Tensor, cl: _Clouds, eps: float, opts: SolverOptions) -> Tensor:
    """OT_eps(cloud_k, cloud_k) for every class k; D: distances within the set."""
    k = torch.arange(cl.idx.shape[0], device=cl.idx.device)
    return torch.cat([sinkhorn_self_cost(_pair_costs(D, cl, cl, k[c], k[c]), cl.logw[c], eps,
                                         opts) for c in _chunks(len(k), cl.idx.shape[1] ** 2)])


def _cross_pairs(ka: int, kb: int, device) -> tuple[Tensor, Tensor]:
    ia, ib = torch.meshgrid(torch.arange(ka, device=device), torch.arange(kb, device=device),
                            indexing="ij")
    return ia.flatten(), ib.flatten()


def _pairs(ka: int, kb: int, symmetric: bool, device) -> tuple[Tensor, Tensor]:
    """All class pairs, or the strict upper triangle when A and B are the same set."""
    if symmetric:
        return tuple(torch.triu_indices(ka, ka, offset=1, device=device))
    return _cross_pairs(ka, kb, device)


def _fill(vals: Tensor, ia: Tensor, ib: Tensor, ka: int, kb: int, symmetric: bool) -> Tensor:
    W = vals.new_zeros(ka, kb).index_put((ia, ib), vals)
    return W + W.T if symmetric else W


def _sinkhorn_label_matrix(D: Tensor, A: _Clouds, B: _Clouds, self_a: Tensor, self_b: Tensor,
                           eps: float, opts: SolverOptions, symmetric: bool = False) -> Tensor:
    """Debiased Sinkhorn divergences between every class of A and every class of B.
    With symmetric=True (A is B) only the upper triangle is solved and the diagonal is 0."""
    ka, kb = A.idx.shape[0], B.idx.shape[0]
    ia, ib = _pairs(ka, kb, symmetric, D.device)
    per = A.idx.shape[1] * B.idx.shape[1]
    ot_ab = [sinkhorn_cost(_pair_costs(D, A, B, ia[c], ib[c]), A.logw[ia[c]], B.logw[ib[c]],
                           eps, opts) for c in _chunks(len(ia), per)]
    vals = torch.cat(ot_ab) if ot_ab else D.new_zeros(0)
    self_terms = self_a.index_select(0, ia) + self_b.index_select(0, ib)
    return _fill(vals - 0.5 * self_terms, ia, ib, ka, kb, symmetric)


def _exact_label_matrix(D: Tensor, A: _Clouds, B: _Clouds, symmetric: bool = False) -> Tensor:
    """Exact squared 2-Wasserstein distances (EMD) between the classes of A and B."""
    ka, kb = A.idx.shape[0], B.idx.shape[0]
    ia, ib = _pairs(ka, kb, symmetric, D.device)
    vals = []
    for i, j in zip(ia.tolist(), ib.tolist()):
        ra, rb = A.idx[i][torch.isfinite(A.logw[i])], B.idx[j][torch.isfinite(B.logw[j])]
        vals.append(emd_cost(D[ra.unsqueeze(-1), rb.unsqueeze(-2)]))
    return _fill(torch.stack(vals) if vals else D.new_zeros(0), ia, ib, ka, kb, symmetric)
