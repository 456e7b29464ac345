"""The Darcy Flow solver against known solutions, the generator, its cache and the `darcy` task."""

import numpy as np
import pytest

from xmodal.data import darcy
from xmodal.config import TaskConfig
from xmodal.errors import UserError
from xmodal.data.registry import REGISTRY, load_task


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))


def series_solution(x, y, terms=201):
    """-Lap u = 1 on the unit square, u = 0 on the boundary (double sine series)."""
    u = 0.0
    for m in range(1, terms, 2):
        for n in range(1, terms, 2):
            u += (16.0 / (np.pi ** 4 * m * n * (m * m + n * n))
                  * np.sin(m * np.pi * x) * np.sin(n * np.pi * y))
    return u


def test_constant_coefficient_matches_series_solution():
    s, a = 33, 3.0
    u = darcy.solve(np.full((s, s), a))
    g = np.linspace(0, 1, s)
    for i, j in [(16, 16), (8, 8), (8, 24), (4, 16)]:
        exact = series_solution(g[i], g[j]) / a
        assert abs(u[i, j] - exact) < 2e-3 * abs(exact) + 1e-6


def _manufactured(s):
    """u = sin(pi x) sin(pi y), a = 1 + x + y^2: the source f = -div(a grad u)."""
    g = np.linspace(0, 1, s)
    x, y = np.meshgrid(g, g, indexing="ij")
    a = 1 + x + y ** 2
    u = np.sin(np.pi * x) * np.sin(np.pi * y)
    ux, uy = np.pi * np.cos(np.pi * x) * np.sin(np.pi * y), np.pi * np.sin(np.pi * x) * np.cos(np.pi * y)
    f = -(1.0 * ux + 2 * y * uy - a * 2 * np.pi ** 2 * u)
    return a, f, u


@pytest.mark.parametrize("face", ["harmonic", "arithmetic"])
def test_manufactured_solution_converges_second_order(face):
    errors = []
    for s in (17, 33):
        a, f, exact = _manufactured(s)
        errors.append(np.abs(darcy.solve(a, source=f, face=face) - exact).max())
    assert errors[1] < 2e-3
    assert errors[0] / errors[1] > 3.5          # halving h divides the error by ~4


def test_residual_is_zero_and_boundary_is_zero():
    rng = np.random.default_rng(1)
    a = darcy.random_coefficient(24, rng)
    for face in ("harmonic", "arithmetic"):
        u = darcy.solve(a, face=face)
        assert np.abs(darcy.residual(a, u, face=face)).max() < 1e-8
        assert np.all(u[0] == 0) and np.all(u[-1] == 0) and np.all(u[:, 0] == 0) and np.all(u[:, -1] == 0)
        assert np.all(u[1:-1, 1:-1] > 0)          # maximum principle for a positive source
    # the residual is an independent check: a wrong solution does not pass
    assert np.abs(darcy.residual(a, u * 1.01)).max() > 1e-3


def test_generate_shapes_values_and_prefix_stability():
    coeff, sol = darcy.generate(4, 16, seed=3, progress=False)
    assert coeff.shape == sol.shape == (4, 16, 16)
    assert coeff.dtype == sol.dtype == np.float32
    assert set(np.unique(coeff)) <= {3.0, 12.0}
    assert len(np.unique(coeff)) == 2
    again = darcy.generate(2, 16, seed=3, progress=False)
    np.testing.assert_array_equal(again[0], coeff[:2])
    other = darcy.generate(2, 16, seed=4, progress=False)
    assert not np.array_equal(other[0], coeff[:2])


def test_cache_is_written_atomically_and_reused(monkeypatch):
    first = darcy.load_or_generate(3, 12, 0, darcy.STREAM_TRAIN)
    path = darcy.cache_path(3, 12, 0, darcy.STREAM_TRAIN)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]   # no temp files left

    def boom(*args, **kwargs):
        raise AssertionError("should have used the cache")
    monkeypatch.setattr(darcy, "generate", boom)
    second = darcy.load_or_generate(3, 12, 0, darcy.STREAM_TRAIN)
    np.testing.assert_array_equal(first[1], second[1])


def test_corrupt_cache_is_regenerated():
    path = darcy.cache_path(2, 10, 0, darcy.STREAM_TEST)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not an npz")
    coeff, sol = darcy.load_or_generate(2, 10, 0, darcy.STREAM_TEST)
    assert coeff.shape == (2, 10, 10)


def test_darcy_task_shapes_normalisation_and_decoding():
    cfg = TaskConfig(name="darcy", options={"resolution": 16, "n_train": 20, "n_test": 5})
    data = load_task(cfg)
    assert data.spec.input_shape == (3, 16, 16) and data.spec.output_shape == (1, 16, 16)
    assert data.spec.kind == "dense" and data.spec.metric == "relative-l2" and data.spec.n_out == 1
    assert data.sizes() == {"train": 16, "val": 4, "test": 5}
    assert data.y_mean.shape == data.y_std.shape == (1, 16, 16)
    np.testing.assert_allclose(data.x_train[:, 0].mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(data.y_train.mean(axis=0), 0, atol=1e-5)
    g = np.linspace(0, 1, 16)
    np.testing.assert_allclose(data.x_test[3, 1, 5, :], g, atol=1e-6)   # column coordinate
    np.testing.assert_allclose(data.x_test[3, 2, :, 5], g, atol=1e-6)   # row coordinate
    _, sol = darcy.generate(5, 16, 0, darcy.STREAM_TEST, progress=False)
    np.testing.assert_allclose(data.decode_y(data.y_test)[:, 0], sol, atol=1e-6)


def test_darcy_registered_with_default_shapes():
    spec = REGISTRY["darcy"].spec
    assert spec.input_shape == (3, 32, 32) and spec.output_shape == (1, 32, 32)


def test_darcy_rejects_unknown_or_bad_options():
    with pytest.raises(UserError, match="resolutoin.*did you mean 'resolution'"):
        load_task(TaskConfig(name="darcy", options={"resolutoin": 8}))
    with pytest.raises(UserError, match="integer"):
        load_task(TaskConfig(name="darcy", options={"n_train": 2.5}))
    with pytest.raises(UserError, match="resolution"):
        load_task(TaskConfig(name="darcy", options={"resolution": 3}))
