"""The 1D NAS-Bench-360 tasks: Satellite (46-step series, 24 classes), DeepSEA (36 chromatin
labels from 1000 bp one-hot DNA) and ECG (PhysioNet/CinC 2017, windows of 1000).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config import TaskConfig
from ...errors import UserError
from ..options import read_options
from ..registry import REGISTRY, register
from ..types import TaskData, TaskSpec
from .files import _check_shape, _int_labels, _load_pickle, _pickled_dict, _same_length, bad_file, find_file

ECG_TEST_FRACTION, ECG_SPLIT_SEED = 0.1, 0             # recording-level split (as ORCA)


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
                   source="satellite_{train,test}.npy (pickled dicts)",
                   published_sizes=(800_000, 100_000, 100_000)))
def _satellite(cfg: TaskConfig) -> TaskData:
    read_options(cfg, {})
    (xtr, ytr), (xte, yte) = _satellite_split(cfg, "train"), _satellite_split(cfg, "test")
    return TaskData(REGISTRY["satellite"].spec, xtr, ytr, None, None, xte, yte,
                    notes=["labels 1..24 shifted to 0..23; values used as stored"])


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
                   metric="1-auroc", source="deepsea_filtered.npz",
                   published_sizes=(71_000, 2_500, 150_000)))
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


ECG_CLASSES = ("N", "A", "O", "~")


ECG_WINDOW = 1000


ECG_TRAIN_STRIDE = {0: 500, 1: 83, 2: 250, 3: 25}   # class-balancing strides (train only)


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
                   source="challenge2017.pkl (pickled dict)",
                   published_sizes=(260_000, 33_000, 33_000)))
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
