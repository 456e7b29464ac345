"""Tests of xmodal.ot.otdd against independent computations (POT, scipy, sklearn, finite
differences) and of the cached OTDD against the uncached reference."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import scipy.linalg
import scipy.special
import torch
from sklearn.covariance import ledoit_wolf_shrinkage as sk_lw

from xmodal.ot import gaussian as G
from xmodal.ot import otdd as O
from xmodal.ot import sinkhorn as S
from xmodal.errors import UserError
from xmodal.runs.distance import distance_from_npz
from xmodal.ot.otdd import OTDD, label_distances, otdd, otdd_direct
from xmodal.ot.sinkhorn import SolverOptions

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")  # Sinkhorn must converge

F64 = torch.float64
TIGHT = dict(tol=1e-11, max_iter=20000)


def clusters(n_per, k, d, seed, spread=1.0, shift=0.0, dtype=F64, labels=None, noise=0.15):
    """k Gaussian clusters of n_per points in R^d; returns (x, y). With the default noise the
    points of a cluster lie within a few eps = 0.1 of each other, so that Sinkhorn converges
    to tight tolerances quickly (needed for exact comparisons and gradcheck)."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(k, d, generator=g, dtype=dtype) * spread + shift
    y = torch.arange(k).repeat_interleave(n_per)
    x = mu[y] + noise * torch.randn(len(y), d, generator=g, dtype=dtype)
    if labels is not None:
        y = torch.as_tensor(labels)[y]
    return x, y


def entropic_ot_pot(x, z, eps):
    """OT_eps(a, b) = <C, P> + eps KL(P | a x b) with P from POT (log-domain Sinkhorn)."""
    C = ((x[:, None, :] - z[None, :, :]) ** 2).sum(-1).numpy()
    a, b = np.full(len(x), 1 / len(x)), np.full(len(z), 1 / len(z))
    P = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=1e-13, numItermax=200000)
    nz = P > 0
    return float((P * C).sum() + eps * (P[nz] * np.log(P[nz] / np.outer(a, b)[nz])).sum())


def sinkhorn_div_pot(x, z, eps):
    return entropic_ot_pot(x, z, eps) - 0.5 * (entropic_ot_pot(x, x, eps)
                                               + entropic_ot_pot(z, z, eps))


# ----------------------------------------------------------------------------- solvers


def test_sinkhorn_cost_matches_pot_entropic_objective():
    x, _ = clusters(12, 2, 3, 0)
    z, _ = clusters(9, 3, 3, 1, shift=0.5)
    C = S.sq_dists(x, z)[None]
    la = torch.full((1, len(x)), -math.log(len(x)), dtype=F64)
    lb = torch.full((1, len(z)), -math.log(len(z)), dtype=F64)
    for eps in (0.1, 1.0):
        v = S.sinkhorn_cost(C, la, lb, eps, SolverOptions(**TIGHT))
        assert float(v) == pytest.approx(entropic_ot_pot(x, z, eps), rel=1e-8)


def test_self_cost_equals_general_solver_and_pot():
    x, _ = clusters(6, 3, 4, 2)
    C = S.sq_dists(x, x)[None]
    la = torch.full((1, len(x)), -math.log(len(x)), dtype=F64)
    opts = SolverOptions(**TIGHT)
    v_sym = float(S.sinkhorn_self_cost(C, la, 1.0, opts))
    assert v_sym == pytest.approx(float(S.sinkhorn_cost(C, la, la, 1.0, opts)), rel=1e-9)
    assert v_sym == pytest.approx(entropic_ot_pot(x, x, 1.0), rel=1e-8)
    # eps = 0.1 (alternating Sinkhorn is slow here): plain numpy fixed point of the symmetric
    # equation f = -eps log sum_j a_j exp((f_j - C_ij) / eps), value 2 <a, f>
    Cn, a, f = C[0].numpy(), np.full(len(x), 1 / len(x)), np.zeros(len(x))
    for _ in range(500):
        f = 0.5 * (f - 0.1 * scipy.special.logsumexp(np.log(a) + (f - Cn) / 0.1, axis=1))
    v01 = float(S.sinkhorn_self_cost(C, la, 0.1, opts))
    assert v01 == pytest.approx(2 * (a * f).sum(), rel=1e-10)


def test_sinkhorn_handles_float32_large_costs():
    x, _ = clusters(100, 4, 32, 3, spread=6.0, dtype=torch.float32)
    z, _ = clusters(60, 2, 32, 4, spread=6.0, dtype=torch.float32)
    C = S.sq_dists(x, z)[None]  # costs in the thousands, eps = 0.1
    la = torch.full((1, len(x)), -math.log(len(x)))
    lb = torch.full((1, len(z)), -math.log(len(z)))
    v32 = S.sinkhorn_cost(C, la, lb, 0.1)
    v64 = S.sinkhorn_cost(C.double(), la.double(), lb.double(), 0.1, SolverOptions(tol=1e-6))
    assert torch.isfinite(v32).all()
    assert float(v32) == pytest.approx(float(v64), rel=1e-5)


def test_scaling_recovers_from_kernel_underflow():
    """Zero potentials on costs >> eps: the whole kernel underflows to 0; the solver must fall
    back to a log-domain step and still converge to the same value."""
    x, _ = clusters(8, 2, 3, 30, spread=1.0, shift=100.0)
    z, _ = clusters(6, 2, 3, 31, spread=1.0)
    C = S.sq_dists(x, z)[None]  # about 3e4 +- 1e3
    la = torch.full((1, len(x)), -math.log(len(x)), dtype=F64)
    lb = torch.full((1, len(z)), -math.log(len(z)), dtype=F64)
    st = S._Scaling(C, torch.zeros_like(la), torch.zeros_like(lb), la, lb, 20.0)
    assert (st.K == 0).all()
    opts = SolverOptions(**TIGHT)
    f, g = S._converge(st, opts)
    v = S._dual_value(C, f, g, la, lb, 20.0)
    assert float(v) == pytest.approx(float(S.sinkhorn_cost(C, la, lb, 20.0, opts)), rel=1e-12)


# ----------------------------------------------------------------------------- label distances


def test_sinkhorn_label_distances_match_pot_divergence():
    x, y = clusters(10, 3, 3, 5)
    z, yz = clusters(8, 2, 3, 6, shift=1.0)
    W = label_distances(x, y, z, yz, **TIGHT)
    for a in range(3):
        for b in range(2):
            ref = sinkhorn_div_pot(x[y == a], z[yz == b], 0.1)
            assert float(W[a, b]) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    Wxx = label_distances(x, y, **TIGHT)
    assert torch.allclose(Wxx, Wxx.T) and torch.all(torch.diagonal(Wxx) == 0)
    assert float(Wxx[0, 1]) == pytest.approx(sinkhorn_div_pot(x[y == 0], x[y == 1], 0.1),
                                             rel=1e-6)


def test_exact_label_distances_match_emd2():
    x, y = clusters(7, 3, 2, 7)
    z, yz = clusters(5, 2, 2, 8)
    W = label_distances(x, y, z, yz, inner="exact")
    for a in range(3):
        for b in range(2):
            xa, zb = x[y == a].numpy(), z[yz == b].numpy()
            ref = ot.emd2(np.full(len(xa), 1 / len(xa)), np.full(len(zb), 1 / len(zb)),
                          ot.dist(xa, zb))
            assert float(W[a, b]) == pytest.approx(ref, rel=1e-9)
    W32 = label_distances(x.float(), y, z.float(), yz, inner="exact")   # keeps the input dtype
    assert W32.dtype == torch.float32 and torch.allclose(W32.double(), W, rtol=1e-5)


def bures_scipy(S1, S2):
    r = scipy.linalg.sqrtm(S1)
    return np.trace(S1) + np.trace(S2) - 2 * np.trace(scipy.linalg.sqrtm(r @ S2 @ r)).real


def test_gaussian_label_distances_closed_form():
    x, y = clusters(60, 3, 5, 9)
    z, yz = clusters(50, 2, 5, 10)
    W = label_distances(x, y, z, yz, inner="gaussian", shrinkage=0.0)
    for a in range(3):
        for b in range(2):
            xa, zb = x[y == a].numpy(), z[yz == b].numpy()
            ref = ((xa.mean(0) - zb.mean(0)) ** 2).sum() + bures_scipy(np.cov(xa.T),
                                                                        np.cov(zb.T))
            assert float(W[a, b]) == pytest.approx(ref, rel=1e-8)
    W32 = label_distances(x.float(), y, z.float(), yz, inner="gaussian")   # Ledoit-Wolf, fp32
    assert W32.dtype == torch.float32
    assert torch.allclose(W32.double(), label_distances(x, y, z, yz, inner="gaussian"),
                          rtol=1e-4)


def test_batched_row_sums_match_einsum_on_both_paths():
    """K @ v over a batch: a loop of mat-vecs up to 64 problems on CPU, one bmm beyond."""
    from xmodal.ot.sinkhorn import _row_sums
    g = torch.Generator().manual_seed(0)
    for batch in (3, 70):
        K, v = torch.rand(batch, 5, 4, generator=g, dtype=F64), torch.rand(batch, 4, generator=g,
                                                                            dtype=F64)
        assert torch.allclose(_row_sums(K, v), torch.einsum("bnm,bm->bn", K, v), rtol=1e-12)


def test_shrinkage_intensity_matches_sklearn():
    g = torch.Generator().manual_seed(0)
    for n, d in ((30, 5), (20, 64)):
        x = torch.randn(n, d, generator=g, dtype=F64) * torch.linspace(0.5, 2, d, dtype=F64)
        xc = x - x.mean(0)
        assert float(G.ledoit_wolf_shrinkage(xc)) == pytest.approx(
            sk_lw(xc.numpy(), assume_centered=True), rel=1e-9)


def test_sqrtm_psd_and_its_gradient():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=g, dtype=F64)
    M = A @ A.T + 0.5 * torch.eye(6, dtype=F64)
    R = G.sqrtm_psd(M)
    assert torch.allclose(R @ R, M, atol=1e-10)
    assert torch.autograd.gradcheck(lambda m: G.sqrtm_psd(0.5 * (m + m.T)),
                                    (M.clone().requires_grad_(),))
    # rank-deficient with repeated zero eigenvalues: finite gradient
    B = torch.randn(6, 2, generator=g, dtype=F64)
    S = (B @ B.T).requires_grad_()
    torch.diagonal(G.sqrtm_psd(S)).sum().backward()
    assert torch.isfinite(S.grad).all()


# ----------------------------------------------------------------------------- OTDD values


def test_exact_otdd_matches_emd2_on_full_cost():
    xs, ys = clusters(6, 3, 2, 11)
    xt, yt = clusters(5, 2, 2, 12, shift=0.7)
    v = otdd(xs, ys, xt, yt, inner="exact", outer="exact")
    W = np.zeros((5, 5))
    allx, ally = torch.cat([xs, xt]).numpy(), np.concatenate([ys.numpy(), yt.numpy() + 3])
    for a in range(5):
        for b in range(5):
            pa, pb = allx[ally == a], allx[ally == b]
            W[a, b] = ot.emd2(np.full(len(pa), 1 / len(pa)), np.full(len(pb), 1 / len(pb)),
                              ot.dist(pa, pb))
    M = 0.5 * ot.dist(xs.numpy(), xt.numpy()) + 0.5 * W[ys.numpy()][:, yt.numpy() + 3]
    ref = ot.emd2(np.full(len(xs), 1 / len(xs)), np.full(len(xt), 1 / len(xt)), M)
    assert float(v) == pytest.approx(ref, rel=1e-9)
    assert float(otdd_direct(xs, ys, xt, yt, inner="exact", outer="exact")) == \
        pytest.approx(ref, rel=1e-9)


def test_plain_entropic_otdd_matches_pot_on_full_cost():
    xs, ys = clusters(6, 2, 3, 13)
    xt, yt = clusters(5, 2, 3, 14, shift=0.5)
    v = otdd(xs, ys, xt, yt, debiased=False, eps=0.5, **TIGHT)
    W = label_distances(xs, ys, xt, yt, **TIGHT).numpy()
    M = 0.5 * ot.dist(xs.numpy(), xt.numpy()) + 0.5 * W[ys.numpy()][:, yt.numpy()]
    a, b = np.full(len(xs), 1 / len(xs)), np.full(len(xt), 1 / len(xt))
    P = ot.sinkhorn(a, b, M, 0.5, method="sinkhorn_log", stopThr=1e-13, numItermax=100000)
    ref = (P * M).sum() + 0.5 * (P * np.log(P / np.outer(a, b))).sum()
    assert float(v) == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("kw", [dict(), dict(inner="gaussian"), dict(inner="exact"),
                                dict(debiased=False), dict(outer="exact"),
                                dict(maxsamples_per_class=7), dict(eps=0.5, inner_eps=0.3)])
def test_cached_equals_direct(kw):
    xs, ys = clusters(12, 3, 4, 15)
    xt, yt = clusters(9, 2, 4, 16, shift=0.3)
    model = OTDD(xs, ys, **kw, tol=1e-9)
    for tgt in ((xt, yt), (xt[:9], None), (xt + 0.2, yt)):
        v_cached = float(model(*tgt))
        v_direct = float(otdd_direct(xs, ys, *tgt, **kw, tol=1e-9))
        assert v_cached == pytest.approx(v_direct, rel=1e-7, abs=1e-9)


def test_distance_to_itself_is_zero_and_symmetric():
    xs, ys = clusters(10, 3, 4, 17)
    xt, yt = clusters(8, 2, 4, 18, shift=1.0)
    assert abs(float(otdd(xs, ys, xs, ys, **TIGHT))) < 1e-7
    ab, ba = otdd(xs, ys, xt, yt, **TIGHT), otdd(xt, yt, xs, ys, **TIGHT)
    assert float(ab) == pytest.approx(float(ba), rel=1e-8)
    assert float(ab) > 0.1


def test_labels_are_remapped_and_none_means_one_class():
    xs, ys = clusters(8, 3, 3, 19)
    xs2, ys2 = clusters(8, 3, 3, 19, labels=[7, -3, 100])
    xt, _ = clusters(10, 1, 3, 20)
    model = OTDD(xs, ys)
    assert float(model(xt)) == pytest.approx(float(OTDD(xs2, ys2)(xt)), rel=1e-6)
    zeros = torch.zeros(len(xt), dtype=torch.long)
    assert float(model(xt)) == float(model(xt, zeros)) == float(model(xt, zeros + 42))


def test_float32_close_to_float64():
    xs, ys = clusters(30, 3, 16, 21)
    xt, _ = clusters(20, 1, 16, 22, shift=0.5)
    v64 = float(otdd(xs, ys, xt, tol=1e-8))
    v32 = float(otdd(xs.float(), ys, xt.float()))
    assert v32 == pytest.approx(v64, rel=1e-4)


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("kw", [dict(), dict(inner="gaussian", shrinkage=0.1),
                                dict(inner="exact", outer="exact"), dict(debiased=False)])
def test_gradcheck_through_features_and_labels(kw):
    xs, ys = clusters(5, 2, 2, 23, noise=0.5)
    xt, yt = clusters(4, 2, 2, 24, shift=0.4, noise=0.5)
    model = OTDD(xs, ys, **kw, **TIGHT)
    xt = xt.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: model(x, yt), (xt,), atol=1e-6)
    if kw.get("outer") != "exact":  # the direct version is differentiable w.r.t. both sets
        xs = xs.clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda a, b: otdd_direct(a, ys, b, yt, **kw, **TIGHT),
                                        (xs, xt), atol=1e-6)


def test_label_term_carries_gradient(monkeypatch):
    """Moving the features of one target class changes W(target class, source classes): the
    gradient has a label-term part, and it matches finite differences."""
    xs, ys = clusters(6, 3, 3, 25)
    xt, yt = clusters(5, 2, 3, 26, shift=0.5)
    model = OTDD(xs, ys, **TIGHT)
    x = xt.clone().requires_grad_()
    (grad_full,) = torch.autograd.grad(model(x, yt), x)
    direction = torch.zeros_like(xt)
    direction[yt == 1] = torch.randn(int((yt == 1).sum()), 3, dtype=F64,
                                     generator=torch.Generator().manual_seed(0))
    h = 1e-5
    fd = (float(model(xt + h * direction, yt)) - float(model(xt - h * direction, yt))) / (2 * h)
    assert (grad_full * direction).sum().item() == pytest.approx(fd, rel=1e-5)

    original = O._label_matrix
    monkeypatch.setattr(O, "_label_matrix", lambda *a, **k: original(*a, **k).detach())
    x = xt.clone().requires_grad_()
    (grad_features_only,) = torch.autograd.grad(model(x, yt), x)
    label_part = grad_full - grad_features_only
    assert label_part[yt == 1].norm() > 1e-2 * grad_full[yt == 1].norm()


def test_gradients_are_bit_reproducible_with_threads():
    xs, ys = clusters(30, 3, 8, 34, dtype=torch.float32)
    xt, yt = clusters(20, 2, 8, 35, dtype=torch.float32, shift=0.3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for kw in (dict(), dict(inner="gaussian")):
            model, runs = OTDD(xs, ys, **kw), []
            for _ in range(2):
                x = xt.clone().requires_grad_()
                model(x, yt).backward()
                runs.append(x.grad)
            assert torch.equal(runs[0], runs[1])
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shrinkage", ["auto", 0.0])
def test_gaussian_gradients_finite_when_n_below_d(shrinkage):
    g = torch.Generator().manual_seed(3)
    xs = torch.randn(60, 96, generator=g)
    ys = torch.arange(3).repeat_interleave(20)
    xt = (torch.randn(12, 96, generator=g) + 0.3).requires_grad_()
    v = OTDD(xs, ys, inner="gaussian", shrinkage=shrinkage)(xt)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(xt.grad).all() and xt.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    xs, ys = clusters(20, 3, 8, 32, dtype=torch.float32)
    xt, _ = clusters(16, 1, 8, 33, dtype=torch.float32, shift=0.5)
    for kw in (dict(), dict(inner="gaussian")):
        cpu = float(OTDD(xs, ys, **kw)(xt))
        x = xt.cuda().requires_grad_()
        v = OTDD(xs.cuda(), ys.cuda(), **kw)(x)
        v.backward()
        assert float(v) == pytest.approx(cpu, rel=1e-4)
        assert torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- validation


def test_input_validation_messages():
    xs, ys = clusters(5, 2, 3, 27)
    model = OTDD(xs, ys)
    with pytest.raises(ValueError, match="3 vs 4"):
        model(torch.randn(5, 4, dtype=F64))
    with pytest.raises(ValueError, match="labels"):
        model(torch.randn(5, 3, dtype=F64), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((5, 3), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="at least 2 points"):
        model(torch.randn(5, 3, dtype=F64), torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match="dtype"):
        model(torch.randn(5, 3))
    with pytest.raises(ValueError, match="inner"):
        OTDD(xs, ys, inner="wasserstein")
    with pytest.raises(ValueError, match="9 labels for 10 feature rows"):
        OTDD(xs, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        OTDD(xs, ys.double())
    OTDD(xs[:3], torch.tensor([0, 1, 1]), inner="exact")  # singletons are fine for EMD


def save(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_distance_from_npz(tmp_path):
    xs, ys = clusters(10, 2, 4, 28)
    xt, _ = clusters(8, 1, 4, 29)
    src = save(tmp_path, "src.npz", x=xs.numpy(), y=ys.numpy())
    out = distance_from_npz(src, save(tmp_path, "tgt.npz", x=xt.numpy()))
    assert out["otdd"] == pytest.approx(float(otdd(xs, ys, xt)), rel=1e-6)
    assert (out["n_source"], out["n_target"], out["dim"]) == (20, 8, 4)
    assert (out["inner"], out["eps"]) == ("sinkhorn", 0.1)
    assert (out["source_classes"], out["target_classes"]) == (2, 1)
    g = distance_from_npz(src, save(tmp_path, "t2.npz", x=xt.numpy(), y=np.arange(8) % 2),
                          inner="gaussian", eps=0.5)
    assert g["inner"] == "gaussian" and math.isfinite(g["otdd"])
    assert (g["source_classes"], g["target_classes"]) == (2, 2)


@pytest.mark.parametrize("src, tgt, message", [
    (dict(y=np.zeros(4, int)), dict(x=np.ones((4, 2))), "^source file .* no array 'x'"),
    (dict(x=np.ones((4, 2)), y=np.zeros(4, int)), dict(y=np.zeros(4, int)),
     "^target file .* no array 'x'"),
    (dict(x=np.ones((4, 2))), dict(x=np.ones((4, 2))), "^source file .* no array 'y'"),
    (dict(x=np.random.rand(4, 2), y=np.zeros(3, int)), dict(x=np.ones((4, 2))),
     "^source file .* 3 labels for 4"),
    (dict(x=np.random.rand(4, 2), y=np.zeros(4, int)), dict(x=np.ones((4, 3))), "2 vs 3"),
    (dict(x=np.full((4, 2), np.nan), y=np.zeros(4, int)), dict(x=np.ones((4, 2))), "NaN"),
    (dict(x=np.random.rand(4, 2), y=np.array([0, 0, 0, 1])), dict(x=np.random.rand(4, 2)),
     "at least 2 points"),
    (dict(x=np.random.rand(4, 2), y=np.zeros(4)), dict(x=np.ones((4, 2))), "integer"),
])
def test_distance_from_npz_user_errors(tmp_path, src, tgt, message):
    with pytest.raises(UserError, match=message):
        distance_from_npz(save(tmp_path, "s.npz", **src), save(tmp_path, "t.npz", **tgt))


def test_label_distance_errors_name_the_set():
    """Errors of label_distances say which of its two sets is at fault, and the class-size
    check follows the inner method of that call (gaussian needs 2 points per class)."""
    x, y = clusters(4, 2, 3, 40)
    one = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"^first set: class 1 has 1 point"):
        label_distances(x, one)
    with pytest.raises(ValueError, match=r"^second set: class 1 has 1 point.*'gaussian'"):
        label_distances(x, y, x, one, inner="gaussian")
    with pytest.raises(ValueError, match=r"^second labels"):
        label_distances(x, y, x, y[:5])
    assert label_distances(x, y, x, one, inner="exact").shape == (2, 2)
    with pytest.raises(ValueError, match=r"^source set: class 1 has 1 point"):
        OTDD(x, one)
    with pytest.raises(ValueError, match="maxsamples_per_class must be >= 2, got 1"):
        label_distances(x, y, maxsamples_per_class=1)
    assert torch.equal(label_distances(x, y, maxsamples_per_class=2),
                       label_distances(x[[0, 1, 4, 5]], y[[0, 1, 4, 5]]))   # the first 2 of each


def test_distance_from_npz_unreadable_file(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz")
    with pytest.raises(UserError, match="cannot read"):
        distance_from_npz(bad, bad)
