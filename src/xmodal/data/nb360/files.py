"""Finding and checking the published NAS-Bench-360 files: the data folder (`task.data_dir`, else
$XMODAL_DATA_DIR), where each task's files come from, and the shape / label checks every
loader shares. Every problem is one `UserError` naming the file and what it must hold.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...config import TaskConfig
from ...errors import UserError
from ...io.safe_pickle import load_npy, load_pickle


ENV_VAR = "XMODAL_DATA_DIR"


S3 = "https://pde-xd.s3.amazonaws.com"


DOCS = "docs/nas-bench-360.md"


WHERE = {
    "cifar100": "the CIFAR-100 python version, https://www.cs.toronto.edu/~kriz/"
                "cifar-100-python.tar.gz (unpack it into the data folder)",
    "cifar10": "the CIFAR-10 python version, https://www.cs.toronto.edu/~kriz/"
               "cifar-10-python.tar.gz (unpack it into the data folder)",
    "ninapro": f"the NAS-Bench-360 release, {S3}/ninapro/<file>",
    "darcy-nb360": f"the NAS-Bench-360 release, {S3}/<file>",
    "satellite": f"the NAS-Bench-360 release, {S3}/satellite/<file>",
    "deepsea": f"the NAS-Bench-360 release, {S3}/deepsea/<file>",
    "ecg": f"the NAS-Bench-360 release, {S3}/ECG/<file>",
}


SUBDIRS = {"cifar100": ("cifar-100-python",), "cifar10": ("cifar-10-batches-py",),
           "ninapro": ("ninaPro", "ninapro"), "darcy-nb360": ("darcyflow", "darcy"),
           "satellite": ("satellite",), "deepsea": ("deepsea",), "ecg": ("ECG", "ecg")}


def data_root(cfg: TaskConfig) -> Path:
    raw = cfg.data_dir or os.environ.get(ENV_VAR)
    if not raw:
        raise UserError(f"task '{cfg.name}' reads its files from a data folder: pass --data-dir "
                        f"DIR (task.data_dir) or set {ENV_VAR}; see {DOCS} for the files it needs")
    root = Path(raw).expanduser()
    if not root.is_dir():
        raise UserError(f"task '{cfg.name}': data folder '{root}' does not exist (from "
                        f"{'task.data_dir' if cfg.data_dir else ENV_VAR})")
    return root


def find_file(cfg: TaskConfig, task: str, filename: str, holds: str) -> Path:
    """`filename` in the data folder or one of the task's usual subfolders; else a UserError
    naming the exact path, what the file must hold and where to get it."""
    root = data_root(cfg)
    for folder in (root, *(root / sub for sub in SUBDIRS[task])):
        if (folder / filename).is_file():
            return folder / filename
    subs = " or ".join(f"{root / sub}/" for sub in SUBDIRS[task])
    where = WHERE[task].replace("<file>", filename)
    raise UserError(f"task '{cfg.name}': missing file {root / filename} (also looked in {subs}); "
                    f"it must hold {holds}. Get it from {where}; see {DOCS}")


def bad_file(path: Path, expectation: str, found: str = "") -> UserError:
    tail = f"; found {found}" if found else ""
    return UserError(f"file {path}: expected {expectation}{tail}")


def _load_npy(path: Path, pickled: bool = False):
    """Plain arrays are memory-mapped; object arrays and pickled dicts go through the
    restricted unpickler (`safe_pickle`), which runs no code from the file."""
    return load_npy(path)


def _load_pickle(path: Path, encoding: str = "ASCII"):
    return load_pickle(path, encoding)


def _int_labels(y, path: Path, what: str, low: int, high: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.dtype == object or not np.issubdtype(y.dtype, np.number):
        raise bad_file(path, f"{what}: integer labels of shape (N,)", f"shape {y.shape}, dtype {y.dtype}")
    if len(y) and (not np.all(y == np.round(y)) or y.min() < low or y.max() > high):
        raise bad_file(path, f"{what}: integer labels in {low}..{high}",
                       f"values {y.min()}..{y.max()}")
    return y.astype(np.int64)


def _check_shape(x, path: Path, what: str, tail: tuple) -> None:
    shape = getattr(x, "shape", None)
    ok = shape is not None and len(shape) == len(tail) + 1 and all(
        t is None or s == t for s, t in zip(shape[1:], tail))
    dtype = np.asarray(x[:0]).dtype if ok else None
    if not ok or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        want = "(N, " + ", ".join("*" if t is None else str(t) for t in tail) + ")"
        raise bad_file(path, f"{what}: a numeric array of shape {want}",
                       f"shape {shape}, dtype {getattr(x, 'dtype', type(x).__name__)}")


def _same_length(x, y, path: Path, what: str) -> None:
    if len(x) != len(y):
        raise bad_file(path, f"as many {what} labels as samples", f"{len(x)} samples, {len(y)} labels")


def _pickled_dict(path: Path, keys: tuple, obj=None) -> dict:
    obj = _load_npy(path, pickled=True) if obj is None else obj
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        found = f"keys {sorted(obj)}" if isinstance(obj, dict) else type(obj).__name__
        raise bad_file(path, f"a pickled dict with keys {', '.join(keys)}", found)
    return obj
