"""Darcy Flow from the NAS-Bench-360 `.mat` files (MATLAB v5 or v7.3/HDF5), subsampled to 85 x 85
and prepared like the bundled `darcy` task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config import TaskConfig
from ...errors import UserError
from ..darcy import dense_task_data, split_tail
from ..options import read_options
from ..registry import REGISTRY, register
from ..types import TaskData, TaskSpec
from .files import bad_file, find_file


FIXTURE_MARKER = "xmodal-fixtures.json"   # written by `xmodal nb360 fixtures`
DARCY_FILES = {"train": "piececonst_r421_N1024_smooth1.mat",
               "test": "piececonst_r421_N1024_smooth2.mat"}


def _mat_field_hdf5(path: Path, field: str, n: int, step: int) -> np.ndarray:
    import h5py
    with h5py.File(path, "r") as f:
        if field not in f:
            raise bad_file(path, f"a field '{field}'", f"fields {sorted(f.keys())}")
        ds = f[field]
        if ds.ndim != 3:
            raise bad_file(path, f"'{field}' of shape (N, S, S)", f"shape {ds.shape[::-1]}")
        arr = ds[::step, ::step, :n]           # MATLAB v7.3 stores the axes reversed
    return np.ascontiguousarray(np.transpose(arr, (2, 1, 0)))


def _mat_field_v5(path: Path, field: str, n: int, step: int, cache: dict) -> np.ndarray:
    import scipy.io
    if "mat" not in cache:
        try:
            cache["mat"] = scipy.io.loadmat(path, variable_names=["coeff", "sol"])
        except Exception as exc:
            raise bad_file(path, "a MATLAB .mat file (v5 or v7.3)", f"unreadable ({exc})") from None
    if field not in cache["mat"]:
        raise bad_file(path, f"a field '{field}'", "no such variable")
    arr = cache["mat"][field]
    if arr.ndim != 3:
        raise bad_file(path, f"'{field}' of shape (N, S, S)", f"shape {arr.shape}")
    return np.ascontiguousarray(arr[:n, ::step, ::step])


def fixture_counts(folder: Path) -> dict:
    """The sample counts of `xmodal nb360 fixtures` files ({} for real files): the fixtures
    hold 10 and 5 fields, not the published 1000 and 100, and say so in FIXTURE_MARKER; the
    loader caps n_train / n_test (the preset's too) at them."""
    import json
    path = folder / FIXTURE_MARKER
    if not path.is_file():
        return {}
    try:
        counts = json.loads(path.read_text()).get("darcy-nb360") or {}
    except (OSError, ValueError, AttributeError):
        raise bad_file(path, "the JSON that `xmodal nb360 fixtures` writes", "unreadable") from None
    return {k: int(counts[k]) for k in ("n_train", "n_test") if k in counts}


def read_darcy_mat(path: Path, n: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """First `n` samples of `coeff` and `sol`, subsampled [::step, ::step], as float32."""
    import h5py
    cache: dict = {}
    fields = []
    for field in ("coeff", "sol"):
        if h5py.is_hdf5(path):
            arr = _mat_field_hdf5(path, field, n, step)
        else:
            arr = _mat_field_v5(path, field, n, step, cache)
        fields.append(arr.astype(np.float32))
    coeff, sol = fields
    if coeff.shape != sol.shape or coeff.shape[1] != coeff.shape[2]:
        raise bad_file(path, "'coeff' and 'sol' of the same shape (N, S, S)",
                       f"{coeff.shape} and {sol.shape} after subsampling")
    if len(coeff) < n:
        raise bad_file(path, f"at least {n} samples (options n_train / n_test)", f"{len(coeff)}")
    return coeff, sol


@register(TaskSpec("darcy-nb360", "Darcy Flow from the NAS-Bench-360 .mat files, subsampled "
                   "421 -> 85 (options: n_train, n_test, sub)", "2d", "dense", (3, 85, 85), 1,
                   metric="relative-l2", output_shape=(1, 85, 85),
                   source="piececonst_r421_N1024_smooth{1,2}.mat",
                   published_sizes=(900, 100, 100)))
def _darcy_nb360(cfg: TaskConfig) -> TaskData:
    holds = "fields 'coeff' and 'sol' of shape (N, 421, 421) (MATLAB v5 or v7.3)"
    trp = find_file(cfg, "darcy-nb360", DARCY_FILES["train"], holds)
    tep = find_file(cfg, "darcy-nb360", DARCY_FILES["test"], holds)
    held = fixture_counts(trp.parent)   # synthetic fixtures: at most what they hold
    opt = read_options(cfg, {"n_train": 1000, "n_test": 100, "sub": 5})
    opt.update({k: min(opt[k], n) for k, n in held.items()})
    if min(opt.values()) < 1:
        raise UserError(f"task '{cfg.name}': options n_train, n_test and sub must be >= 1")
    coeff, sol = read_darcy_mat(trp, opt["n_train"], opt["sub"])
    test = read_darcy_mat(tep, opt["n_test"], opt["sub"])
    k = split_tail(opt["n_train"], cfg.val_fraction, cfg.name)
    notes = [f"train: samples 0..{k - 1} of {trp.name}, validation: {k}..{opt['n_train'] - 1}, "
             f"test: first {opt['n_test']} of {tep.name}; subsampled [::{opt['sub']}]"]
    return dense_task_data(REGISTRY["darcy-nb360"].spec, (coeff[:k], sol[:k]),
                           (coeff[k:], sol[k:]), test, notes)
