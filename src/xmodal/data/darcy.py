"""Darcy Flow: our own data generator and the bundled `darcy` task.

Owns the finite-difference solver for -div(a grad u) = f on the unit square with u = 0 on the
boundary, the thresholded Gaussian-random-field coefficients of NAS-Bench-360 / FNO (a = 12 where
the field is >= 0, else 3), the on-disk cache of generated samples, and the code shared with
`darcy-nb360` (nb360/fields.py) that turns (coeff, sol) fields into a dense `TaskData`: pointwise
normalisation with train statistics plus two grid-coordinate input channels.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from ..config import TaskConfig
from ..errors import UserError
from .options import read_options
from .registry import REGISTRY, register
from .types import TaskData, TaskSpec

A_HIGH, A_LOW = 12.0, 3.0          # coefficient values above / below the threshold
NORM_EPS = 1e-5                    # added to the pointwise std (as FNO's UnitGaussianNormalizer)
CACHE_VERSION = 1                  # bump when the generator changes: old cache files are ignored
STREAM_TRAIN, STREAM_TEST = 0, 1


# ---------------------------------------------------------------- solver

def _face_mean(a1: np.ndarray, a2: np.ndarray, face: str) -> np.ndarray:
    if face == "harmonic":
        return 2.0 * a1 * a2 / (a1 + a2)
    if face == "arithmetic":
        return 0.5 * (a1 + a2)
    raise ValueError(f"face must be 'harmonic' or 'arithmetic', got {face!r}")


def face_coefficients(a: np.ndarray, face: str = "harmonic") -> tuple[np.ndarray, np.ndarray]:
    """Coefficients on the faces between neighbouring nodes: rows (s-1, s), columns (s, s-1)."""
    return _face_mean(a[1:, :], a[:-1, :], face), _face_mean(a[:, 1:], a[:, :-1], face)


def _source_field(source, s: int) -> np.ndarray:
    f = np.broadcast_to(np.asarray(source, dtype=np.float64), (s, s))
    return np.array(f)


def assemble(a: np.ndarray, face: str = "harmonic") -> sp.csr_matrix:
    """Sparse matrix of -div(a grad .) on the (s-2)^2 interior nodes of an s x s grid over
    [0, 1]^2 (spacing h = 1/(s-1)); boundary values are zero (Dirichlet)."""
    s = a.shape[0]
    m, h2 = s - 2, (1.0 / (s - 1)) ** 2
    ax, ay = face_coefficients(np.asarray(a, np.float64), face)
    idx = np.arange(m * m).reshape(m, m)
    diag = (ax[:-1, 1:-1] + ax[1:, 1:-1] + ay[1:-1, :-1] + ay[1:-1, 1:]) / h2
    vert = -ax[1:-1, 1:-1] / h2           # coupling (i, j) - (i+1, j), interior pairs only
    horiz = -ay[1:-1, 1:-1] / h2          # coupling (i, j) - (i, j+1)
    rows = [idx.ravel(), idx[:-1, :].ravel(), idx[1:, :].ravel(), idx[:, :-1].ravel(),
            idx[:, 1:].ravel()]
    cols = [idx.ravel(), idx[1:, :].ravel(), idx[:-1, :].ravel(), idx[:, 1:].ravel(),
            idx[:, :-1].ravel()]
    vals = [diag.ravel(), vert.ravel(), vert.ravel(), horiz.ravel(), horiz.ravel()]
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(m * m, m * m))


def solve(a: np.ndarray, source=1.0, face: str = "harmonic") -> np.ndarray:
    """Solve -div(a grad u) = source on the unit square, u = 0 on the boundary.

    `a` is the coefficient at the s x s grid nodes (boundary included); `source` a scalar or an
    (s, s) array. Returns u on the same grid (float64), zero on the boundary."""
    a = np.asarray(a, np.float64)
    s = a.shape[0]
    if a.ndim != 2 or a.shape[1] != s or s < 3:
        raise ValueError(f"coefficient must be a square grid of at least 3 x 3, got {a.shape}")
    f = _source_field(source, s)
    u = np.zeros((s, s))
    u[1:-1, 1:-1] = spsolve(assemble(a, face).tocsc(), f[1:-1, 1:-1].ravel()).reshape(s - 2, s - 2)
    return u


def residual(a: np.ndarray, u: np.ndarray, source=1.0, face: str = "harmonic") -> np.ndarray:
    """Pointwise residual -div(a grad u) - source on the interior nodes, from the flux form
    (independent of the matrix assembly)."""
    a, u = np.asarray(a, np.float64), np.asarray(u, np.float64)
    s = a.shape[0]
    h2 = (1.0 / (s - 1)) ** 2
    ax, ay = face_coefficients(a, face)
    flux_x = ax * (u[1:, :] - u[:-1, :])          # (s-1, s)
    flux_y = ay * (u[:, 1:] - u[:, :-1])          # (s, s-1)
    div = (flux_x[1:, 1:-1] - flux_x[:-1, 1:-1]) + (flux_y[1:-1, 1:] - flux_y[1:-1, :-1])
    return -div / h2 - _source_field(source, s)[1:-1, 1:-1]


# ---------------------------------------------------------------- random coefficients

def gaussian_field(s: int, rng: np.random.Generator, alpha: float = 2.0,
                   tau: float = 3.0) -> np.ndarray:
    """A Gaussian random field on the s x s grid of [0, 1]^2 with covariance
    (-Laplacian + tau^2)^(-alpha) (Neumann cosine series, constant mode removed)."""
    k = np.arange(s)
    x = np.linspace(0.0, 1.0, s)
    basis = np.cos(np.pi * k[:, None] * x[None, :])                  # (modes, s)
    sqrt_eig = (np.pi ** 2 * (k[:, None] ** 2 + k[None, :] ** 2) + tau ** 2) ** (-alpha / 2)
    sqrt_eig[0, 0] = 0.0
    coef = rng.standard_normal((s, s)) * sqrt_eig
    return basis.T @ coef @ basis


def random_coefficient(s: int, rng: np.random.Generator) -> np.ndarray:
    """Piecewise-constant coefficient: 12 where the random field is >= 0, else 3."""
    return np.where(gaussian_field(s, rng) >= 0, A_HIGH, A_LOW)


def generate(n: int, resolution: int, seed: int, stream: int = STREAM_TRAIN,
             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """`n` Darcy samples on a `resolution` x `resolution` grid: (coeff, sol), each float32
    (n, s, s). Sample i depends only on (seed, stream, i), so a larger n extends a smaller one."""
    from tqdm.auto import tqdm
    s = int(resolution)
    coeff = np.empty((n, s, s), np.float32)
    sol = np.empty((n, s, s), np.float32)
    bar = tqdm(range(n), desc=f"darcy: solving {n} problems at {s}x{s}", unit="sample",
               disable=None if progress else True, leave=False)
    for i in bar:
        a = random_coefficient(s, np.random.default_rng([seed, stream, i]))
        coeff[i], sol[i] = a, solve(a)
    return coeff, sol


# ---------------------------------------------------------------- cache

def cache_dir() -> Path:
    root = os.environ.get("XMODAL_CACHE") or "~/.cache/xmodal"
    return Path(root).expanduser() / "darcy"


def cache_path(n: int, resolution: int, seed: int, stream: int) -> Path:
    return cache_dir() / f"s{resolution}_n{n}_seed{seed}_stream{stream}_v{CACHE_VERSION}.npz"


def _read_cache(path: Path):
    try:
        with np.load(path, allow_pickle=False) as z:
            return z["coeff"], z["sol"]
    except Exception:  # missing, truncated or foreign file: regenerate
        return None


def _write_cache(path: Path, coeff: np.ndarray, sol: np.ndarray) -> None:
    """Atomic: write a temp file in the same folder, then os.replace it into place."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    except OSError:
        return  # unwritable cache: work without it
    os.close(fd)
    try:
        np.savez(tmp, coeff=coeff, sol=sol)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def load_or_generate(n: int, resolution: int, seed: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
    path = cache_path(n, resolution, seed, stream)
    cached = _read_cache(path) if path.is_file() else None
    if cached is not None and cached[0].shape == (n, resolution, resolution):
        return cached
    coeff, sol = generate(n, resolution, seed, stream)
    _write_cache(path, coeff, sol)
    return coeff, sol


# ---------------------------------------------------------------- shared with darcy-nb360

def grid_channels(s: int) -> np.ndarray:
    """(2, s, s) node coordinates in [0, 1], in NAS-Bench-360's order (np.meshgrid's "xy"):
    channel 0 varies along the columns (last axis), channel 1 along the rows."""
    g = np.linspace(0.0, 1.0, s, dtype=np.float32)
    return np.stack(np.meshgrid(g, g, indexing="xy"))


def _pointwise_stats(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased std + eps) over samples, as FNO's UnitGaussianNormalizer."""
    a = a.astype(np.float64)
    std = a.std(axis=0, ddof=1 if len(a) > 1 else 0)
    return a.mean(axis=0).astype(np.float32), (std + NORM_EPS).astype(np.float32)


def _inputs(coeff: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    s = coeff.shape[-1]
    norm = ((coeff - mean) / std).astype(np.float32)[:, None]
    grid = np.broadcast_to(grid_channels(s), (len(coeff), 2, s, s))
    return np.concatenate([norm, grid], axis=1)


def split_tail(n: int, fraction: float, name: str) -> int:
    """Number of training samples kept when the last `fraction` of `n` becomes validation."""
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise UserError(f"task '{name}': {n} training samples are too few to carve a "
                        f"validation split; raise option n_train")
    return n - n_val


def dense_task_data(spec: TaskSpec, train: tuple, val: tuple, test: tuple,
                    notes: list) -> TaskData:
    """(coeff, sol) pairs of (N, s, s) arrays -> normalised dense TaskData with grid channels.
    Statistics come from `train` only; y_mean / y_std let the trainer decode predictions."""
    x_mean, x_std = _pointwise_stats(train[0])
    y_mean, y_std = _pointwise_stats(train[1])

    def encode(pair):
        coeff, sol = pair
        y = ((sol - y_mean) / y_std).astype(np.float32)[:, None]
        return _inputs(coeff, x_mean, x_std), y

    s = train[0].shape[-1]
    spec = replace(spec, input_shape=(3, s, s), output_shape=(1, s, s), n_out=1)
    (xtr, ytr), (xva, yva), (xte, yte) = encode(train), encode(val), encode(test)
    # the same normalisation as one (3, s, s) transform: the grid channels pass through unchanged
    x_shift = np.concatenate([x_mean[None], np.zeros((2, s, s), np.float32)])[None]
    x_scale = np.concatenate([x_std[None], np.ones((2, s, s), np.float32)])[None]
    return TaskData(spec, xtr, ytr, xva, yva, xte, yte, y_mean=y_mean[None], y_std=y_std[None],
                    x_mean=x_shift, x_std=x_scale, notes=notes + ["coeff and solution normalised pointwise with train "
                                   "mean/std; input channels: coeff, column coordinate, row coordinate"])


# ---------------------------------------------------------------- the bundled task

DARCY_DEFAULTS = {"resolution": 32, "n_train": 200, "n_test": 50, "seed": 0}


@register(TaskSpec("darcy", "Darcy Flow -div(a grad u) = 1, piecewise-constant a (12 / 3), "
                   "generated by xmodal's solver (options: resolution, n_train, n_test, seed)",
                   "2d", "dense", (3, 32, 32), 1, metric="relative-l2", output_shape=(1, 32, 32),
                   source="generated: finite differences + scipy.sparse (cached)"))
def _darcy(cfg: TaskConfig) -> TaskData:
    opt = read_options(cfg, DARCY_DEFAULTS)
    s, n_train, n_test, seed = opt["resolution"], opt["n_train"], opt["n_test"], opt["seed"]
    if s < 5:
        raise UserError(f"task 'darcy': option resolution must be >= 5, got {s}")
    if n_test < 1:
        raise UserError("task 'darcy': option n_test must be >= 1")
    coeff, sol = load_or_generate(n_train, s, seed, STREAM_TRAIN)
    k = split_tail(n_train, cfg.val_fraction, "darcy")
    test = load_or_generate(n_test, s, seed, STREAM_TEST)
    notes = [f"generated at {s}x{s}, seed {seed}: {k} train, {n_train - k} validation "
             f"(last {cfg.val_fraction:g} of the training samples), {n_test} test"]
    return dense_task_data(REGISTRY["darcy"].spec, (coeff[:k], sol[:k]),
                           (coeff[k:], sol[k:]), test, notes)
