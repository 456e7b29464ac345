"""NAS-Bench-360 tasks (and CIFAR-10/100) read from their published files in the user's folder.

Owns the loaders `cifar100`, `cifar10`, `ninapro`, `darcy-nb360`, `satellite`, `deepsea` and
`ecg`, the CIFAR reader `read_cifar10` used by the alignment proxy, and the CIFAR training
augmentation. Files are looked up in `task.data_dir` (`--data-dir`), else in $XMODAL_DATA_DIR;
nothing is downloaded. Every format problem becomes one `UserError` naming the file and what it
must hold. Pickled files (CIFAR batches, satellite, ECG) are read with the restricted
unpickler of `safe_pickle.py`: NumPy arrays, dicts, lists, strings and numbers only, so a
crafted file is refused instead of running code.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import TaskConfig
from .darcy import dense_task_data, read_options, split_tail
from ..errors import UserError
from .registry import REGISTRY, register
from .types import TaskData, TaskSpec

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


# ---------------------------------------------------------------- finding files

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
    from ..io.safe_pickle import load_npy
    return load_npy(path)


def _load_pickle(path: Path, encoding: str = "ASCII"):
    from ..io.safe_pickle import load_pickle
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


# ---------------------------------------------------------------- CIFAR

CIFAR_STATS = {  # per-channel mean / std of the training images, in [0, 1] units
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
CIFAR_FILES = {100: {"train": ["train"], "test": ["test"]},
               10: {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}}


def read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """One python-pickle CIFAR batch -> uint8 images (N, 3, 32, 32), int64 labels."""
    d = _load_pickle(path, encoding="bytes")
    if not isinstance(d, dict):
        raise bad_file(path, "a pickled dict with b'data' and b'" + label_key + "'",
                       type(d).__name__)
    d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
    if "data" not in d or label_key not in d:
        raise bad_file(path, f"a CIFAR batch with keys b'data' and b'{label_key}'",
                       f"keys {sorted(d)}")
    x = np.asarray(d["data"])
    _check_shape(x, path, "b'data'", (3072,))
    y = _int_labels(d[label_key], path, f"b'{label_key}'", 0, 99)
    _same_length(x, y, path, label_key)
    return x.astype(np.uint8).reshape(-1, 3, 32, 32), y


def _cifar_split(files: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [read_cifar_batch(p, label_key) for p in files]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _cifar_paths(cfg: TaskConfig, classes: int, split: str) -> list[Path]:
    task = f"cifar{classes}"
    holds = f"the CIFAR-{classes} python-pickle {split} batch (b'data' (N, 3072) uint8)"
    return [find_file(cfg, task, name, holds) for name in CIFAR_FILES[classes][split]]


def read_cifar10(folder, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from the python-pickle batches in `folder` (or its cifar-10-batches-py/):
    `split` "train" (data_batch_1..5) or "test" (test_batch). Returns float32 images in [0, 1]
    of shape (N, 3, 32, 32) and int64 labels 0..9."""
    cfg = TaskConfig(name="cifar10", data_dir=str(folder))
    x, y = _cifar_split(_cifar_paths(cfg, 10, split), "labels")
    if y.max() > 9:
        raise UserError(f"CIFAR-10 in {folder}: labels must lie in 0..9, found up to {y.max()}")
    return (x.astype(np.float32) / 255.0), y


def cifar_normalise(x: np.ndarray, classes: int) -> np.ndarray:
    mean, std = (np.asarray(v, np.float32)[None, :, None, None] for v in CIFAR_STATS[classes])
    return (x.astype(np.float32) / 255.0 - mean) / std


def random_crop_flip(x: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Per-sample random crop of the zero-padded batch (B, C, H, W) and horizontal flip with
    probability 1/2. Random numbers come from torch's global CPU generator (seeded by the
    trainer), so the result does not depend on the device."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (b,))
    left = torch.randint(0, 2 * pad + 1, (b,))
    flip = torch.rand(b) < 0.5
    rows = top[:, None] + torch.arange(h)
    cols = left[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    bidx = torch.arange(b)[:, None, None]
    dev = x.device
    out = padded[bidx.to(dev), :, rows[:, :, None].to(dev), cols[:, None, :].to(dev)]
    return out.permute(0, 3, 1, 2).contiguous()       # advanced indexing put channels last


def _cifar_task(cfg: TaskConfig, classes: int) -> TaskData:
    read_options(cfg, {})
    key = "fine_labels" if classes == 100 else "labels"
    xtr, ytr = _cifar_split(_cifar_paths(cfg, classes, "train"), key)
    xte, yte = _cifar_split(_cifar_paths(cfg, classes, "test"), key)
    for y, split in ((ytr, "train"), (yte, "test")):
        if y.max() >= classes:
            raise UserError(f"task '{cfg.name}': {split} labels must lie in 0..{classes - 1}, "
                            f"found {y.max()} (CIFAR-100 files given for CIFAR-10?)")
    return TaskData(REGISTRY[f"cifar{classes}"].spec, cifar_normalise(xtr, classes), ytr, None,
                    None, cifar_normalise(xte, classes), yte, augment=random_crop_flip,
                    notes=["per-channel standardisation with the standard CIFAR statistics; "
                           "train-time random crop (padding 4) + horizontal flip"])


@register(TaskSpec("cifar100", "CIFAR-100 (NAS-Bench-360), python-pickle files train/test",
                   "2d", "classification", (3, 32, 32), 100, metric="error",
                   source="cifar-100-python/{train,test} in the data folder"))
def _cifar100(cfg: TaskConfig) -> TaskData:
    return _cifar_task(cfg, 100)


@register(TaskSpec("cifar10", "CIFAR-10, python-pickle files data_batch_1..5 / test_batch",
                   "2d", "classification", (3, 32, 32), 10, metric="error",
                   source="cifar-10-batches-py/ in the data folder"))
def _cifar10(cfg: TaskConfig) -> TaskData:
    return _cifar_task(cfg, 10)


# ---------------------------------------------------------------- NinaPro

@register(TaskSpec("ninapro", "NinaPro DB5 sEMG hand gestures (NAS-Bench-360), 16 x 52 windows",
                   "2d", "classification", (1, 16, 52), 18, metric="error",
                   source="ninapro_{train,val,test}.npy + label_{train,val,test}.npy"))
def _ninapro(cfg: TaskConfig) -> TaskData:
    read_options(cfg, {})
    arrays = []
    for split in ("train", "val", "test"):
        xp = find_file(cfg, "ninapro", f"ninapro_{split}.npy", "float sEMG windows (N, 52, 16)")
        yp = find_file(cfg, "ninapro", f"label_{split}.npy", "integer gesture labels 0..17 (N,)")
        x, y = _load_npy(xp), _int_labels(_load_npy(yp), yp, "gesture labels", 0, 17)
        _check_shape(x, xp, "sEMG windows", (52, 16))
        _same_length(x, y, yp, "gesture")
        arrays += [np.ascontiguousarray(np.asarray(x).transpose(0, 2, 1)[:, None], np.float32), y]
    return TaskData(REGISTRY["ninapro"].spec, *arrays,
                    notes=["published train/val/test split; (N, 52, 16) -> (N, 1, 16, 52)"])


# ---------------------------------------------------------------- Darcy Flow (published files)

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
                   source="piececonst_r421_N1024_smooth{1,2}.mat"))
def _darcy_nb360(cfg: TaskConfig) -> TaskData:
    opt = read_options(cfg, {"n_train": 1000, "n_test": 100, "sub": 5})
    if min(opt.values()) < 1:
        raise UserError(f"task '{cfg.name}': options n_train, n_test and sub must be >= 1")
    holds = "fields 'coeff' and 'sol' of shape (N, 421, 421) (MATLAB v5 or v7.3)"
    trp = find_file(cfg, "darcy-nb360", DARCY_FILES["train"], holds)
    tep = find_file(cfg, "darcy-nb360", DARCY_FILES["test"], holds)
    coeff, sol = read_darcy_mat(trp, opt["n_train"], opt["sub"])
    test = read_darcy_mat(tep, opt["n_test"], opt["sub"])
    k = split_tail(opt["n_train"], cfg.val_fraction, cfg.name)
    notes = [f"train: samples 0..{k - 1} of {trp.name}, validation: {k}..{opt['n_train'] - 1}, "
             f"test: first {opt['n_test']} of {tep.name}; subsampled [::{opt['sub']}]"]
    return dense_task_data(REGISTRY["darcy-nb360"].spec, (coeff[:k], sol[:k]),
                           (coeff[k:], sol[k:]), test, notes)


# ---------------------------------------------------------------- Satellite

def _pickled_dict(path: Path, keys: tuple, obj=None) -> dict:
    obj = _load_npy(path, pickled=True) if obj is None else obj
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, dict) or any(k not in obj for k in keys):
        found = f"keys {sorted(obj)}" if isinstance(obj, dict) else type(obj).__name__
        raise bad_file(path, f"a pickled dict with keys {', '.join(keys)}", found)
    return obj


def _satellite_split(cfg: TaskConfig, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = find_file(cfg, "satellite", f"satellite_{split}.npy",
                     "a pickled dict with 'data' (N, 46) and 'label' 1..24")
    d = _pickled_dict(path, ("data", "label"))
    x = np.asarray(d["data"])
    _check_shape(x, path, "'data'", (46,))
    y = _int_labels(d["label"], path, "'label'", 1, 24)
    _same_length(x, y, path, "'label'")
    return np.ascontiguousarray(x[:, None], np.float32), y - 1


@register(TaskSpec("satellite", "Satellite image time series, 46 steps, 24 land-cover classes "
                   "(NAS-Bench-360)", "1d", "classification", (1, 46), 24, metric="error",
                   source="satellite_{train,test}.npy (pickled dicts)"))
def _satellite(cfg: TaskConfig) -> TaskData:
    read_options(cfg, {})
    (xtr, ytr), (xte, yte) = _satellite_split(cfg, "train"), _satellite_split(cfg, "test")
    return TaskData(REGISTRY["satellite"].spec, xtr, ytr, None, None, xte, yte,
                    notes=["labels 1..24 shifted to 0..23; values used as stored"])


# ---------------------------------------------------------------- DeepSEA

def _deepsea_x(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    if x.ndim == 3 and x.shape[1:] == (1000, 4):
        x = x.transpose(0, 2, 1)
    _check_shape(x, path, f"'{key}' one-hot DNA", (4, 1000))
    return np.ascontiguousarray(x, np.float32)


def _deepsea_y(y: np.ndarray, path: Path, key: str) -> np.ndarray:
    _check_shape(y, path, f"'{key}' chromatin labels", (36,))
    if not np.isin(y, (0, 1)).all():
        raise bad_file(path, f"'{key}': 0/1 labels", "other values")
    return y.astype(np.float32)


@register(TaskSpec("deepsea", "DeepSEA: 36 chromatin features from 1000 bp one-hot DNA "
                   "(NAS-Bench-360 filtered)", "1d", "multilabel", (4, 1000), 36,
                   metric="1-auroc", source="deepsea_filtered.npz"))
def _deepsea(cfg: TaskConfig) -> TaskData:
    read_options(cfg, {})
    path = find_file(cfg, "deepsea", "deepsea_filtered.npz",
                     "arrays x_{train,val,test} (N, 1000, 4) one-hot and y_* (N, 36) 0/1")
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except Exception as exc:
        raise bad_file(path, "a NumPy .npz archive", f"an unreadable file ({exc})") from None
    with z:
        need = [f"{v}_{s}" for s in ("train", "val", "test") for v in ("x", "y")]
        missing = [k for k in need if k not in keys]
        if missing:
            raise bad_file(path, f"arrays {', '.join(need)}", f"no {', '.join(missing)}")
        arrays = []
        for s in ("train", "val", "test"):
            x, y = _deepsea_x(z[f"x_{s}"], path, f"x_{s}"), _deepsea_y(z[f"y_{s}"], path, f"y_{s}")
            _same_length(x, y, path, f"y_{s}")
            arrays += [x, y]
    return TaskData(REGISTRY["deepsea"].spec, *arrays,
                    notes=["published train/val/test split; (N, 1000, 4) -> (N, 4, 1000)"])


# ---------------------------------------------------------------- ECG (PhysioNet 2017)

ECG_CLASSES = ("N", "A", "O", "~")
ECG_WINDOW = 1000
ECG_TRAIN_STRIDE = {0: 500, 1: 83, 2: 250, 3: 25}   # class-balancing strides (train only)
ECG_TEST_FRACTION, ECG_SPLIT_SEED = 0.1, 0             # recording-level split (as ORCA)


def _ecg_label(v, path: Path) -> int:
    v = v.decode() if isinstance(v, bytes) else v
    if isinstance(v, str) and v in ECG_CLASSES:
        return ECG_CLASSES.index(v)
    if isinstance(v, (int, np.integer)) and 0 <= v < 4:
        return int(v)
    raise bad_file(path, "'label' values in {N, A, O, ~}", repr(v))


def read_ecg(path: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """challenge2017.pkl -> z-scored float32 recordings and int64 labels (N, A, O, ~ = 0..3)."""
    d = _pickled_dict(path, ("data", "label"), _load_pickle(path))
    data, labels = d["data"], d["label"]
    if len(data) != len(labels) or len(data) == 0:
        raise bad_file(path, "as many 'label' entries as 'data' recordings (at least one)",
                       f"{len(data)} recordings, {len(labels)} labels")
    records = []
    for i, rec in enumerate(data):
        r = np.asarray(rec)
        if r.ndim != 1 or r.dtype == object or not np.issubdtype(r.dtype, np.number) or not len(r):
            raise bad_file(path, "'data': 1D numeric signals", f"recording {i} of shape {r.shape}")
        r = r.astype(np.float64)
        std = r.std()
        records.append(((r - r.mean()) / (std if std > 0 else 1.0)).astype(np.float32))
    return records, np.array([_ecg_label(v, path) for v in labels], np.int64)


def cut_windows(records: list, labels: np.ndarray, stride) -> tuple[np.ndarray, np.ndarray]:
    """Windows of ECG_WINDOW samples; `stride` an int or a {class: stride} dict. A recording
    shorter than one window is zero-padded to one window."""
    xs, ys = [], []
    for r, c in zip(records, labels):
        if len(r) < ECG_WINDOW:
            r = np.pad(r, (0, ECG_WINDOW - len(r)))
        step = stride[int(c)] if isinstance(stride, dict) else stride
        w = np.lib.stride_tricks.sliding_window_view(r, ECG_WINDOW)[::step]
        xs.append(w)
        ys.append(np.full(len(w), c, np.int64))
    return np.concatenate(xs)[:, None].astype(np.float32), np.concatenate(ys)


def _split_records(idx: np.ndarray, labels: np.ndarray, fraction: float, seed: int,
                   stratify: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split
    if len(idx) < 2:
        raise UserError(f"task 'ecg': {len(idx)} recording(s) are too few to split")
    if not stratify:  # ORCA's train/test split: same call, same recordings
        return train_test_split(idx, test_size=fraction, random_state=seed)
    n_val = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
    try:
        return train_test_split(idx, test_size=n_val, random_state=seed, stratify=labels[idx])
    except ValueError:  # a class with one recording: fall back to a plain random split
        return train_test_split(idx, test_size=n_val, random_state=seed)


@register(TaskSpec("ecg", "ECG: PhysioNet/CinC 2017 atrial fibrillation, windows of 1000 "
                   "(NAS-Bench-360)", "1d", "classification", (1, 1000), 4, metric="1-macro-f1",
                   source="challenge2017.pkl (pickled dict)"))
def _ecg(cfg: TaskConfig) -> TaskData:
    read_options(cfg, {})
    path = find_file(cfg, "ecg", "challenge2017.pkl",
                     "a pickled dict with 'data' (variable-length 1D signals) and 'label' "
                     "in {N, A, O, ~}")
    records, labels = read_ecg(path)
    idx = np.arange(len(records))
    train_idx, test_idx = _split_records(idx, labels, ECG_TEST_FRACTION, ECG_SPLIT_SEED, False)
    train_idx, val_idx = _split_records(train_idx, labels, cfg.val_fraction, cfg.split_seed, True)
    pick = lambda ix: ([records[i] for i in ix], labels[ix])  # noqa: E731
    xtr, ytr = cut_windows(*pick(train_idx), ECG_TRAIN_STRIDE)
    xva, yva = cut_windows(*pick(val_idx), ECG_WINDOW)
    xte, yte = cut_windows(*pick(test_idx), ECG_WINDOW)
    notes = [f"recordings: {len(train_idx)} train, {len(val_idx)} validation, {len(test_idx)} "
             f"test (split before windowing); each z-scored; train windows with class strides "
             f"{ECG_TRAIN_STRIDE}, validation/test windows non-overlapping"]
    return TaskData(REGISTRY["ecg"].spec, xtr, ytr, xva, yva, xte, yte, notes=notes)
