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
* :func:`label_distances`, :func:`otdd` and :func:`distance_from_npz` (for the CLI).

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

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

INNER_METHODS = ("sinkhorn", "gaussian", "exact")
OUTER_METHODS = ("sinkhorn", "exact")
_PAIR_CHUNK = 1 << 24  # max entries of one batched cost tensor
_SCALING = 0.25  # eps-scaling factor between annealing stages
_OMEGA = 1.5  # over-relaxation of the Sinkhorn iterations at the target eps
_STAGE_STEPS = 2  # Sinkhorn iterations per eps-scaling stage


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


def sq_dists(x: Tensor, z: Tensor, xx: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances ``||x_i - z_j||^2`` for x (n, d) and z (m, d); xx: the
    squared norms of x as (n, 1), if known."""
    xx = (x * x).sum(-1, keepdim=True) if xx is None else xx
    zz = (z * z).sum(-1)
    return torch.addmm(xx + zz, x, z.T, alpha=-2).clamp_min(0)


# ----------------------------------------------------------------------------- Sinkhorn


@dataclass(frozen=True)
class SolverOptions:
    """Stopping rule of the Sinkhorn loops: L1 marginal error of the plan < tol, or max_iter
    iterations at the target eps (after the eps-scaling stages). The returned value is the
    dual objective, whose error is second order in the marginal error (tol = 1e-3 gives
    relative value errors ~1e-7 on the benchmark data); the gradient (the plan) is first
    order. At eps = 0.1 on unnormalised features the last digits converge slowly (sublinearly),
    so tight tolerances cost thousands of iterations."""

    max_iter: int = 2000
    tol: float = 1e-3


def _softmin(C: Tensor, h: Tensor, logw: Tensor, eps: float, dim: int) -> Tensor:
    """``-eps log sum_k w_k exp((h_k - C_.k)/eps)``, reducing the (B, n, m) cost over ``dim``."""
    hw = (h / eps + logw).unsqueeze(-2 if dim == -1 else -1)
    return -eps * torch.logsumexp(torch.add(hw, C, alpha=-1.0 / eps), dim=dim)


def _eps_schedule(C: Tensor, eps: float) -> list[float]:
    top = float(C.detach().amax()) if C.numel() else 0.0
    stages = []
    e = top
    while e > eps:
        stages.append(e)
        e *= _SCALING
    return stages


def _marginal_err(loga: Tensor, f_old: Tensor, f_new: Tensor, eps: float) -> Tensor:
    """Per-problem L1 error of the row marginal of the plan built from (f_old, g), where
    f_new = softmin(g): row i of that plan sums to a_i exp((f_old_i - f_new_i) / eps)."""
    r = torch.exp(loga + (f_old - f_new) / eps)
    return (torch.exp(loga) - r).abs().sum(-1)


class SinkhornNotConverged(RuntimeWarning):
    """A Sinkhorn solve stopped at ``max_iter`` with marginal error ``err`` > ``tol``."""

    def __init__(self, err: float, tol: float, iterations: int):
        super().__init__(f"Sinkhorn stopped after {iterations} iterations with marginal error "
                         f"{err:.2e} > tol {tol:.1e}; raise max_iter or eps")
        self.err, self.tol, self.iterations = err, tol, iterations


def _warn_unconverged(err: float, tol: float, it: int) -> None:
    warnings.warn(SinkhornNotConverged(err, tol, it), stacklevel=5)


@contextlib.contextmanager
def sinkhorn_notes(log: Callable[[str], None], advice: str):
    """Within the block, `SinkhornNotConverged` warnings are gathered and reported as ONE
    `log` line at its end (how many solves, the worst error, then `advice`); other warnings
    pass through unchanged."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SinkhornNotConverged)
        yield
    hits = [w.message for w in caught if isinstance(w.message, SinkhornNotConverged)]
    for w in caught:
        if not isinstance(w.message, SinkhornNotConverged):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if hits:
        worst = max(hits, key=lambda h: h.err)
        log(f"note: {len(hits)} Sinkhorn solve(s) stopped at {worst.iterations} iterations "
            f"before converging (worst marginal error {worst.err:.2e} > tol {worst.tol:.1e}); "
            f"the values are approximate: {advice}")


def _plan_kernel(C: Tensor, f: Tensor, g: Tensor, loga: Tensor, logb: Tensor,
                 eps: float) -> Tensor:
    """The plan of potentials (f, g): a_i b_j exp((f_i + g_j - C_ij) / eps), 0 on padding."""
    K = (f / eps + loga).unsqueeze(-1) + (g / eps + logb).unsqueeze(-2)
    return K.add_(C, alpha=-1.0 / eps).exp_()


def _row_sums(K: Tensor, v: Tensor) -> Tensor:
    """K @ v for a batch (B, n, m) x (B, m). A loop of mat-vecs: batched (B, n, m) @ (B, m, 1)
    is several times slower on CPU for small B (on GPU the batched product is used)."""
    if K.shape[0] > 64 or K.is_cuda:
        return torch.bmm(K, v.unsqueeze(-1)).squeeze(-1)
    return torch.stack([torch.mv(k, w) for k, w in zip(K, v)])


class _Scaling:
    """Stabilised Sinkhorn on a batch (B, n, m) at one eps: the plan is
    diag(e^lu) K diag(e^lv) with K the plan of the base potentials (f, g); iterations only
    update the log-scalings lu, lv (two batched mat-vecs each), and the scalings are absorbed
    into (f, g) (one pass over K) when they grow, or when an underflow makes them non-finite."""

    _ABSORB = 20.0

    def __init__(self, C, f, g, loga, logb, eps):
        self.C, self.f, self.g, self.loga, self.logb, self.eps = C, f, g, loga, logb, eps
        self.ma, self.mb = torch.isfinite(loga), torch.isfinite(logb)
        self.a = loga.exp()
        self._rebuild()

    def _rebuild(self) -> None:
        self.K = _plan_kernel(self.C, self.f, self.g, self.loga, self.logb, self.eps)
        self.lu, self.lv = torch.zeros_like(self.f), torch.zeros_like(self.g)

    def potentials(self) -> tuple[Tensor, Tensor]:
        return self.f + self.eps * self.lu, self.g + self.eps * self.lv

    def subset(self, keep: Tensor) -> "_Scaling":
        new = object.__new__(_Scaling)
        for k in ("C", "f", "g", "loga", "logb", "ma", "mb", "a", "K", "lu", "lv"):
            setattr(new, k, getattr(self, k)[keep])
        new.eps = self.eps
        return new

    def step(self, omega: float) -> Tensor:
        """One (over-relaxed) row + column update; returns the row-marginal L1 error of the
        plan before the update, per problem."""
        s = _row_sums(self.K, self.lv.exp())
        err = (self.a - self.lu.exp() * s).abs().sum(-1)  # padding rows: 0 - 1 * 0
        lu = torch.lerp(self.lu, torch.where(self.ma, self.loga - s.log(), 0.0), omega)
        s = torch.bmm(lu.exp().unsqueeze(-2), self.K).squeeze(-2)
        lv = torch.lerp(self.lv, torch.where(self.mb, self.logb - s.log(), 0.0), omega)
        big = float(torch.maximum(lu.abs().amax(), lv.abs().amax()))
        if math.isfinite(big) and math.isfinite(float(err.sum())):
            self.lu, self.lv = lu, lv
            if big > self._ABSORB:
                self.absorb()
        else:
            self._log_step()
        return err

    def absorb(self) -> None:
        self.f, self.g = self.potentials()
        self._rebuild()

    def _log_step(self) -> None:
        """Fallback after an underflow: one log-domain update from the last finite state."""
        f, g = self.potentials()
        f = torch.where(self.ma, _softmin(self.C, g, self.logb, self.eps, -1), 0.0)
        self.g = torch.where(self.mb, _softmin(self.C, f, self.loga, self.eps, -2), 0.0)
        self.f = f
        self._rebuild()


def _converge(st: _Scaling, opts: SolverOptions) -> tuple[Tensor, Tensor]:
    """Iterate at the final eps until every problem's marginal error < tol (or max_iter);
    finished problems are set aside and the batch is compacted once half of it is done."""
    tol, out_f, out_g = opts.tol, st.f.clone(), st.g.clone()
    idx = torch.arange(st.f.shape[0], device=st.f.device)
    pending = torch.ones_like(idx, dtype=torch.bool)
    it, worst = 0, math.inf
    while it < opts.max_iter and bool(pending.any()):
        err = st.step(_OMEGA)
        it += 1
        worst = float(err[pending].amax())
        done = pending & (err < tol)
        if bool(done.any()):
            f, g = st.potentials()
            out_f[idx[done]], out_g[idx[done]] = f[done], g[done]
            pending &= ~done
            if 0 < int(pending.sum()) <= len(idx) // 2:
                st, idx, pending = st.subset(pending), idx[pending], pending[pending]
    if bool(pending.any()):
        f, g = st.potentials()
        out_f[idx[pending]], out_g[idx[pending]] = f[pending], g[pending]
        _warn_unconverged(worst, tol, it)
    return out_f, out_g


@torch.no_grad()
def _sinkhorn_potentials(C: Tensor, loga: Tensor, logb: Tensor, eps: float,
                         opts: SolverOptions) -> tuple[Tensor, Tensor]:
    """Dual potentials of OT_eps for a batch (B, n, m) of costs (detached, converged):
    eps-scaling from the largest cost down to eps, then over-relaxed iterations at eps."""
    C = C.detach()
    f, g = torch.zeros_like(loga), torch.zeros_like(logb)  # fine at eps = max C
    for e in _eps_schedule(C, eps):
        st = _Scaling(C, f, g, loga, logb, e)
        for _ in range(_STAGE_STEPS):
            st.step(1.0)
        f, g = st.potentials()
    return _converge(_Scaling(C, f, g, loga, logb, eps), opts)


@torch.no_grad()
def _sinkhorn_self_potential(C: Tensor, loga: Tensor, eps: float,
                             opts: SolverOptions) -> Tensor:
    """Symmetric potential of OT_eps(a, a) for a batch of symmetric costs (B, n, n): averaged
    log-domain iterations started from f = -eps log(a) / 2 (the value for a diagonal plan);
    they converge in a few steps."""
    C = C.detach()
    f = torch.where(torch.isfinite(loga), -0.5 * eps * loga, 0.0)
    tol, it, err = opts.tol, 0, math.inf
    while it < opts.max_iter:
        t = _softmin(C, f, loga, eps, -1)
        err = float(_marginal_err(loga, f, t, eps).amax())
        f = torch.where(torch.isfinite(loga), 0.5 * (f + t), 0.0)
        it += 1
        if err < tol:
            break
    if err >= tol:
        _warn_unconverged(err, tol, it)
    return f


class _Envelope(torch.autograd.Function):
    """Returns the (detached) optimal value; its gradient w.r.t. the cost C is the optimal
    plan P (envelope theorem)."""

    @staticmethod
    def forward(ctx, C: Tensor, value: Tensor, P: Tensor) -> Tensor:
        ctx.save_for_backward(P)
        return value.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        (P,) = ctx.saved_tensors
        return grad[:, None, None] * P, None, None


def _dual_value(C, f, g, loga, logb, eps) -> Tensor:
    """Dual objective <a, f> + <b, g> - eps (sum P - 1), differentiable w.r.t. C (grad = P)."""
    with torch.no_grad():
        P = _plan_kernel(C.detach(), f, g, loga, logb, eps)
        value = _wsum(loga, f) + _wsum(logb, g) - eps * (P.sum((-1, -2)) - 1)
    return _Envelope.apply(C, value, P) if C.requires_grad else value


def _wsum(logw: Tensor, h: Tensor) -> Tensor:
    return torch.where(torch.isfinite(logw), torch.exp(logw) * h, 0.0).sum(-1)


def sinkhorn_cost(C: Tensor, loga: Tensor, logb: Tensor, eps: float,
                  opts: SolverOptions = SolverOptions()) -> Tensor:
    """OT_eps(a, b) = min_P <C, P> + eps KL(P | a x b) for a batch of costs (B, n, m), as a
    (B,) tensor differentiable w.r.t. C (gradient = the optimal plan)."""
    f, g = _sinkhorn_potentials(C, loga, logb, eps, opts)
    return _dual_value(C, f, g, loga, logb, eps)


def sinkhorn_self_cost(C: Tensor, loga: Tensor, eps: float,
                       opts: SolverOptions = SolverOptions()) -> Tensor:
    """OT_eps(a, a) for a batch of symmetric costs (B, n, n); differentiable w.r.t. C."""
    f = _sinkhorn_self_potential(C, loga, eps, opts)
    return _dual_value(C, f, f, loga, loga, eps)


def emd_cost(C: Tensor, a: Tensor | None = None, b: Tensor | None = None) -> Tensor:
    """Exact OT value <C, P*> for one (n, m) cost; P* from POT's network simplex, held fixed."""
    import ot

    n, m = C.shape
    a_np = np.full(n, 1.0 / n) if a is None else a.detach().cpu().double().numpy()
    b_np = np.full(m, 1.0 / m) if b is None else b.detach().cpu().double().numpy()
    plan = ot.emd(a_np, b_np, C.detach().cpu().double().numpy(), numItermax=10_000_000)
    return (C * torch.as_tensor(plan, dtype=C.dtype, device=C.device)).sum()


# ----------------------------------------------------------------------------- class clouds


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


# ----------------------------------------------------------------------------- Gaussian inner


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


# ----------------------------------------------------------------------------- CLI helper


def distance_from_npz(source_path, target_path, inner: str = "sinkhorn",
                      eps: float = 0.1, max_iter: int = 2000) -> dict:
    """OTDD between two .npz files holding ``x`` (N, d) and ``y`` (N,) int (``y`` optional in
    the target: one class). Bad input raises :class:`xmodal.errors.UserError`."""
    from xmodal.errors import UserError

    from xmodal.artifacts import read_features_npz

    xs, ys = read_features_npz(source_path, "source", need_y=True)
    xt, yt = read_features_npz(target_path, "target", need_y=False)
    if xs.shape[1] != xt.shape[1]:
        raise UserError(f"source and target feature dimensions differ: "
                        f"{xs.shape[1]} vs {xt.shape[1]}")
    try:
        tx = torch.as_tensor(xt, dtype=torch.float64)
        value = otdd(torch.as_tensor(xs, dtype=torch.float64), torch.as_tensor(ys),
                     tx, None if yt is None else torch.as_tensor(yt), inner=inner, eps=eps,
                     max_iter=max_iter)
    except ValueError as e:
        raise UserError(str(e)) from None
    return {"otdd": float(value), "n_source": int(xs.shape[0]), "n_target": int(xt.shape[0]),
            "dim": int(xs.shape[1]), "inner": inner, "eps": float(eps),
            "source_classes": int(len(np.unique(ys))),
            "target_classes": 1 if yt is None else int(len(np.unique(yt)))}
