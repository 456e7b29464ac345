"""Entropic optimal transport in torch: the solver behind OTDD.

``OT_eps(a, b) = min_P <C, P> + eps KL(P | a x b)`` over couplings P of the marginals a, b.
Each problem is solved without autograd: eps-scaling from the largest cost down to eps, then
(over-relaxed) Sinkhorn iterations until the L1 marginal error is below ``tol``, run as
stabilised scalings of a kernel rebuilt from the log-domain potentials whenever the scalings
grow (float32 never overflows; a log-domain step repairs any underflow). The symmetric problem
OT(a, a) uses the averaged log-domain fixed point. The value is the dual objective of the
converged potentials, wrapped so that its gradient with respect to the cost is the optimal plan
(envelope theorem). ``emd_cost`` is the exact (unregularised) value with the EMD plan held
fixed. Reference: Peyre & Cuturi, Computational Optimal Transport (2019), ch. 4.
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


_SCALING = 0.25  # eps-scaling factor between annealing stages


_OMEGA = 1.5  # over-relaxation of the Sinkhorn iterations at the target eps


_STAGE_STEPS = 2  # Sinkhorn iterations per eps-scaling stage


def sq_dists(x: Tensor, z: Tensor, xx: Tensor | None = None) -> Tensor:
    """Squared Euclidean distances ``||x_i - z_j||^2`` for x (n, d) and z (m, d); xx: the
    squared norms of x as (n, 1), if known."""
    xx = (x * x).sum(-1, keepdim=True) if xx is None else xx
    zz = (z * z).sum(-1)
    return torch.addmm(xx + zz, x, z.T, alpha=-2).clamp_min(0)


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
