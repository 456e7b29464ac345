"""Optimal Transport Dataset Distance (OTDD) between labelled feature sets, in torch.

This module owns the OTDD used by the alignment stage and by ``xmodal distance``:

* the quantity: points ``z = (x, y)``, ground cost ``||x - x'||^2 / 2 + W(y, y') / 2`` where
  ``W`` is a squared 2-Wasserstein-type distance between label-conditional point clouds
  (``inner="sinkhorn"``: debiased Sinkhorn divergence, cost ``||x - x'||^2``, ``inner_eps``;
  ``"gaussian"``: ``||mu - mu'||^2 + Bures`` with shrunk covariances; ``"exact"``: EMD), and the
  outer value ``S_eps = OT_eps(a, b) - OT_eps(a, a)/2 - OT_eps(b, b)/2`` (or plain ``OT_eps`` /
  exact EMD);
* :class:`OTDD`, which computes every source-only term once (class clouds / Gaussian statistics,
  source label-to-label distances, ``OT_eps(a, a)``) and reuses it for many targets;
* :func:`otdd_direct`, the uncached reference (everything recomputed per call, as ORCA does);
* :func:`label_distances` and :func:`otdd`.

The solver is `sinkhorn.py`, the class-cloud label distances `labels.py`, the Gaussian ones
`gaussian.py`.

Gradients flow to the target features through the feature term AND the label term. Each
entropic problem is solved without autograd: eps-scaling from the largest cost down to eps, then
(over-relaxed) Sinkhorn iterations until the L1 marginal error is below ``tol``, run as
stabilised scalings of a kernel that is rebuilt from the log-domain potentials whenever the
scalings grow (so float32 never overflows; a log-domain step repairs any underflow); the
symmetric problems OT(a, a) use the averaged log-domain fixed point, which converges in a few
steps. The value is the dual objective of the converged potentials, wrapped so that its
gradient with respect to the cost is the optimal plan (envelope theorem) - exact at
convergence, with no backpropagation through the iterations. Exact problems hold the EMD plan
fixed and return ``<C, P>``. All features are centred on the source mean first (the costs are
translation invariant; this keeps float32 round-off small).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .gaussian import _class_gaussians, _gaussian_label_matrix
from .labels import (_class_clouds, _clouds_self_ot, _exact_label_matrix,
                     _sinkhorn_label_matrix)
from .sinkhorn import (SolverOptions, emd_cost, sinkhorn_cost,
                       sinkhorn_self_cost, sq_dists)

INNER_METHODS = ("sinkhorn", "gaussian", "exact")
OUTER_METHODS = ("sinkhorn", "exact")


# ----------------------------------------------------------------------------- validation


def _check_features(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, d), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: NaN or inf values")


def _check_labels(y: Tensor, n: int, name: str) -> Tensor:
    y = torch.as_tensor(y)
    if y.dim() != 1:
        raise ValueError(f"{name} must have shape (N,), got {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class labels, got {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"{name}: {y.shape[0]} labels for {n} feature rows")
    return y


def _remap(y: Tensor) -> tuple[Tensor, Tensor]:
    """Arbitrary integer labels -> codes 0..K-1 (sorted label order), plus the original labels."""
    classes, codes = torch.unique(y, sorted=True, return_inverse=True)
    return codes, classes


def _check_class_sizes(codes: Tensor, inner: str, name: str, classes: Tensor) -> None:
    if inner == "exact":
        return
    counts = torch.bincount(codes)
    small = (counts < 2).nonzero().flatten()
    if len(small):
        k = int(small[0])
        raise ValueError(f"{name}: class {int(classes[k])} has {int(counts[k])} point(s); "
                         f"inner={inner!r} needs at least 2 points per class")


def _check_options(inner: str, outer: str, eps: float, inner_eps: float) -> None:
    if inner not in INNER_METHODS:
        raise ValueError(f"inner must be one of {INNER_METHODS}, got {inner!r}")
    if outer not in OUTER_METHODS:
        raise ValueError(f"outer must be one of {OUTER_METHODS}, got {outer!r}")
    if not (eps > 0 and inner_eps > 0):
        raise ValueError(f"eps and inner_eps must be > 0, got {eps} and {inner_eps}")


def _check_pair(xs: Tensor, xt: Tensor) -> None:
    if xs.shape[1] != xt.shape[1]:
        raise ValueError(f"source and target feature dimensions differ: "
                         f"{xs.shape[1]} vs {xt.shape[1]}")
    if xs.dtype != xt.dtype or xs.device != xt.device:
        raise ValueError(f"source and target must share dtype and device, got "
                         f"{xs.dtype}/{xs.device} and {xt.dtype}/{xt.device}")


# ----------------------------------------------------------------------------- costs


# ----------------------------------------------------------------------------- Sinkhorn


# ----------------------------------------------------------------------------- class clouds


# ----------------------------------------------------------------------------- Gaussian inner


# ----------------------------------------------------------------------------- label distances


@dataclass(frozen=True)
class _Settings:
    inner: str = "sinkhorn"
    eps: float = 0.1
    inner_eps: float = 0.1
    debiased: bool = True
    outer: str = "sinkhorn"
    shrinkage: float | str = "auto"
    maxsamples_per_class: int | None = None
    solver: SolverOptions = SolverOptions()


class _ClassStats:
    """What the inner distance needs about the classes of one labelled set; D_self holds the
    squared distances within the set (needed by the cloud-based inner distances)."""

    def __init__(self, x: Tensor, codes: Tensor, k: int, st: _Settings, D_self=None):
        if st.inner == "gaussian":
            self.gauss = _class_gaussians(x, codes, k, st.shrinkage, st.maxsamples_per_class)
            return
        self.clouds = _class_clouds(codes, k, st.maxsamples_per_class, x)
        if st.inner == "sinkhorn":
            self.self_ot = _clouds_self_ot(D_self, self.clouds, st.inner_eps, st.solver)


def _label_matrix(A: _ClassStats, B: _ClassStats, st: _Settings, D_ab: Tensor | None,
                  symmetric=False) -> Tensor:
    """W between the classes of A and B; D_ab: squared distances between their sets."""
    if st.inner == "gaussian":
        return _gaussian_label_matrix(A.gauss, B.gauss, symmetric)
    if st.inner == "exact":
        return _exact_label_matrix(D_ab, A.clouds, B.clouds, symmetric)
    return _sinkhorn_label_matrix(D_ab, A.clouds, B.clouds, A.self_ot, B.self_ot,
                                  st.inner_eps, st.solver, symmetric)


def label_distances(x: Tensor, y: Tensor, x2: Tensor | None = None, y2: Tensor | None = None,
                    *, inner: str = "sinkhorn", inner_eps: float = 0.1,
                    shrinkage: float | str = "auto", maxsamples_per_class: int | None = None,
                    max_iter: int = 2000, tol: float = 1e-3) -> Tensor:
    """Matrix W[a, b] of label-to-label distances between the classes of (x, y) (rows, sorted
    label order) and those of (x2, y2) (columns; default: (x, y) itself, diagonal 0; y2 None:
    x2 is one class). Differentiable w.r.t. x and x2."""
    st = _settings(inner, 1.0, inner_eps, True, "sinkhorn", max_iter, tol, shrinkage,
                   maxsamples_per_class)
    ca, ka = _prepare(x, y, "first", inner)
    need_d = inner != "gaussian"
    D_aa = sq_dists(x, x) if need_d else None
    A = _ClassStats(x, ca, ka, st, D_aa)
    if x2 is None:
        return _label_matrix(A, A, st, D_aa, symmetric=True)
    cb, kb = _prepare(x2, y2, "second", inner)
    _check_pair(x, x2)
    B = _ClassStats(x2, cb, kb, st, sq_dists(x2, x2) if need_d else None)
    return _label_matrix(A, B, st, sq_dists(x, x2) if need_d else None)


# ----------------------------------------------------------------------------- outer problem


def _onehot(codes: Tensor, k: int, like: Tensor) -> Tensor:
    return torch.nn.functional.one_hot(codes, k).to(like.dtype)


def _outer_cost(D: Tensor, ca: Tensor, cb: Tensor, W: Tensor) -> Tensor:
    """||x - x'||^2 / 2 + W(y, y') / 2 from the squared distances D and the label matrix W
    (the lookup W[ca_i, cb_j] as one-hot products: exact, and a cheap backward)."""
    ka, kb = W.shape
    labels = _onehot(ca, ka, W) @ (W @ _onehot(cb, kb, W).T)
    return 0.5 * (D + labels)


def _uniform_log(n: int, like: Tensor) -> Tensor:
    return torch.full((1, n), -math.log(n), dtype=like.dtype, device=like.device)


def _outer_value(C: Tensor, st: _Settings) -> Tensor:
    if st.outer == "exact":
        return emd_cost(C)
    n, m = C.shape
    return sinkhorn_cost(C[None], _uniform_log(n, C), _uniform_log(m, C), st.eps, st.solver)[0]


def _outer_self_value(D: Tensor | None, codes: Tensor, W: Tensor, st: _Settings) -> Tensor:
    """OT(a, a) of one labelled set for the debiasing term (0 when not debiased, and for the
    exact outer problem); D: squared distances within the set."""
    if not st.debiased or st.outer == "exact":
        return W.new_zeros(())
    C = _outer_cost(D, codes, codes, W)
    return sinkhorn_self_cost(C[None], _uniform_log(C.shape[0], C), st.eps, st.solver)[0]


def _settings(inner, eps, inner_eps, debiased, outer, max_iter, tol, shrinkage,
              maxsamples_per_class) -> _Settings:
    _check_options(inner, outer, eps, inner_eps)
    if maxsamples_per_class is not None and maxsamples_per_class < 2:
        raise ValueError(f"maxsamples_per_class must be >= 2, got {maxsamples_per_class}")
    if shrinkage != "auto" and (isinstance(shrinkage, str) or not 0 <= shrinkage <= 1):
        raise ValueError(f"shrinkage must be 'auto' or in [0, 1], got {shrinkage!r}")
    if not (tol > 0 and max_iter >= 1):
        raise ValueError(f"tol must be > 0 and max_iter >= 1, got {tol} and {max_iter}")
    return _Settings(inner, float(eps), float(inner_eps), bool(debiased), outer, shrinkage,
                     maxsamples_per_class, SolverOptions(int(max_iter), float(tol)))


def _prepare(x: Tensor, y: Tensor | None, role: str, inner: str) -> tuple[Tensor, int]:
    """Validated class codes (0..K-1) and K for one labelled set (y None: one class)."""
    _check_features(x, f"{role} features")
    if y is None:
        codes = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        classes = torch.zeros(1, dtype=torch.long)
    else:
        codes, classes = _remap(_check_labels(y, x.shape[0], f"{role} labels").to(x.device))
    _check_class_sizes(codes, inner, f"{role} set", classes)
    return codes, len(classes)


# ----------------------------------------------------------------------------- public API


class OTDD:
    """OTDD from one fixed labelled source set to many targets, with the source-only terms
    (class statistics, source label distances, OT_eps(source, source)) computed once, here.

    ``OTDD(x_src, y_src)(x_tgt, y_tgt=None)`` returns a scalar differentiable w.r.t. ``x_tgt``
    (the source is treated as a constant). Options: ``inner`` in {"sinkhorn", "gaussian",
    "exact"}, ``eps`` (outer), ``inner_eps``, ``debiased`` (Sinkhorn divergence vs plain
    OT_eps), ``outer`` in {"sinkhorn", "exact"}, ``max_iter``/``tol`` (Sinkhorn stopping rule:
    L1 marginal error of the plan, default 1e-3; see :class:`SolverOptions`), ``shrinkage``
    ("auto" = Ledoit-Wolf, or a float in [0, 1]) for the Gaussian covariances,
    ``maxsamples_per_class`` (deterministic subsample of each class for the inner distances),
    ``label_grad`` (False: the label-to-label distances W are constants for autograd, as in
    ORCA's code, so the gradient flows only through the feature term).
    """

    def __init__(self, x_src: Tensor, y_src: Tensor, *, inner: str = "sinkhorn",
                 eps: float = 0.1, inner_eps: float = 0.1, debiased: bool = True,
                 outer: str = "sinkhorn", max_iter: int = 2000, tol: float = 1e-3,
                 shrinkage: float | str = "auto", maxsamples_per_class: int | None = None,
                 label_grad: bool = True):
        self.label_grad = label_grad
        self.settings = st = _settings(inner, eps, inner_eps, debiased, outer, max_iter, tol,
                                       shrinkage, maxsamples_per_class)
        codes, k = _prepare(x_src, y_src, "source", inner)
        with torch.no_grad():
            self.center = x_src.detach().mean(0)
            self.x, self.codes = x_src.detach() - self.center, codes
            self.sq_norms = (self.x * self.x).sum(-1, keepdim=True)
            D = sq_dists(self.x, self.x) if _needs_self_dists(st) else None
            self.stats = _ClassStats(self.x, codes, k, st, D)
            self.W_src = _label_matrix(self.stats, self.stats, st, D, symmetric=True)
            self.self_src = _outer_self_value(D, codes, self.W_src, st)

    def __call__(self, x_tgt: Tensor, y_tgt: Tensor | None = None) -> Tensor:
        st = self.settings
        codes, k = _prepare(x_tgt, y_tgt, "target", st.inner)
        _check_pair(self.x, x_tgt)
        xt = x_tgt - self.center
        D_st = sq_dists(self.x, xt, self.sq_norms)
        D_tt = sq_dists(xt, xt) if _needs_self_dists(st) else None
        tstats = _ClassStats(xt, codes, k, st, D_tt)
        W_st = self._labels(_label_matrix(self.stats, tstats, st, D_st))
        value = _outer_value(_outer_cost(D_st, self.codes, codes, W_st), st)
        if not st.debiased:
            return value
        W_tt = self._labels(_label_matrix(tstats, tstats, st, D_tt, symmetric=True))
        return value - 0.5 * self.self_src - 0.5 * _outer_self_value(D_tt, codes, W_tt, st)

    def _labels(self, W: Tensor) -> Tensor:
        return W if self.label_grad else W.detach()


def _needs_self_dists(st: _Settings) -> bool:
    return st.inner != "gaussian" or (st.debiased and st.outer == "sinkhorn")


def otdd(x_src: Tensor, y_src: Tensor, x_tgt: Tensor, y_tgt: Tensor | None = None,
         **kw) -> Tensor:
    """One-shot OTDD (see :class:`OTDD` for the options)."""
    return OTDD(x_src, y_src, **kw)(x_tgt, y_tgt)


def otdd_direct(x_src: Tensor, y_src: Tensor, x_tgt: Tensor, y_tgt: Tensor | None = None, *,
                inner: str = "sinkhorn", eps: float = 0.1, inner_eps: float = 0.1,
                debiased: bool = True, outer: str = "sinkhorn", max_iter: int = 2000,
                tol: float = 1e-3, shrinkage: float | str = "auto",
                maxsamples_per_class: int | None = None) -> Tensor:
    """Uncached reference: builds the joint labelled set (source classes, then target
    classes), all its pairwise distances, the full label-distance matrix and the three outer
    costs from scratch on every call, as ORCA does. Differentiable w.r.t. both feature sets;
    same value as :class:`OTDD` (up to float round-off)."""
    st = _settings(inner, eps, inner_eps, debiased, outer, max_iter, tol, shrinkage,
                   maxsamples_per_class)
    cs, ks = _prepare(x_src, y_src, "source", inner)
    ct, kt = _prepare(x_tgt, y_tgt, "target", inner)
    _check_pair(x_src, x_tgt)
    center = x_src.detach().mean(0)
    xs, xt = x_src - center, x_tgt - center
    x_all, c_all, n = torch.cat([xs, xt]), torch.cat([cs, ct + ks]), len(cs)
    D_st = sq_dists(xs, xt)  # the joint distance matrix, from blocks (cheaper backward)
    D = torch.cat([torch.cat([sq_dists(xs, xs), D_st], 1),
                   torch.cat([D_st.T, sq_dists(xt, xt)], 1)])
    stats = _ClassStats(x_all, c_all, ks + kt, st, D)
    W = _label_matrix(stats, stats, st, D, symmetric=True)
    value = _outer_value(_outer_cost(D[:n, n:], cs, ct + ks, W), st)
    if not st.debiased:
        return value
    self_s = _outer_self_value(D[:n, :n], cs, W, st)
    return value - 0.5 * self_s - 0.5 * _outer_self_value(D[n:, n:], ct + ks, W, st)
