"""Synthetic stand-ins for the published NAS-Bench-360 files (`xmodal nb360 fixtures DIR`):
small files in exactly the formats, file names, folder layout, shapes, dtypes and label sets the
loaders read, for the six tasks, CIFAR-10, and the MNIST and ORCA text-feature proxies. Values
are seeded noise: they check that a pipeline runs end to end at full input size (a smoke test),
never what a model learns.

`write_fixtures(folder)` writes them all and returns {what: [files]}; each `write_*` writes one.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np

from ...io.artifacts import atomic_write
from .fields import DARCY_FILES, FIXTURE_MARKER

CIFAR100_DIR, CIFAR10_DIR = "cifar-100-python", "cifar-10-batches-py"
ECG_CLASSES = ("N", "A", "O", "~")


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _covering(rng: np.random.Generator, n: int, classes: int, low: int = 0) -> np.ndarray:
    """n labels in low..low+classes-1 in which every class occurs (n >= classes), shuffled."""
    if n < classes:
        raise ValueError(f"{n} samples cannot hold all {classes} classes")
    return rng.permutation(np.arange(n) % classes) + low


def _save(path: Path, write: Callable) -> Path:
    """`write(file handle)` into a temp file renamed to `path`: never a half-written file."""
    def writer(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            write(fh)
    return atomic_write(path, writer)


def _pickle(path: Path, obj) -> Path:
    # protocol 2: the CIFAR batches are Python 2 pickles
    return _save(path, lambda fh: pickle.dump(obj, fh, protocol=2))


def _npy(path: Path, arr, allow_pickle: bool = False) -> Path:
    return _save(path, lambda fh: np.save(fh, arr, allow_pickle=allow_pickle))


def write_cifar100(folder: Path, n_train: int = 200, n_test: int = 100, seed: int = 0) -> list:
    """cifar-100-python/{train,test,meta}: dicts with bytes keys, b'data' (N, 3072) uint8."""
    out = Path(folder) / CIFAR100_DIR
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = _rng(seed, 10 + i)
        fine = _covering(rng, n, 100)
        files.append(_pickle(out / split, {
            b"filenames": [f"{split}_{k}.png".encode() for k in range(n)],
            b"batch_label": f"{split} batch".encode(), b"fine_labels": fine.tolist(),
            b"coarse_labels": (fine // 5).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}))
    files.append(_pickle(out / "meta", {
        b"fine_label_names": [f"class{k}".encode() for k in range(100)],
        b"coarse_label_names": [f"super{k}".encode() for k in range(20)]}))
    return files


def write_cifar10(folder: Path, n_train: int = 100, n_test: int = 50, seed: int = 0) -> list:
    """cifar-10-batches-py/data_batch_1..5, test_batch, batches.meta (also the cifar10 proxy)."""
    out = Path(folder) / CIFAR10_DIR
    out.mkdir(parents=True, exist_ok=True)
    batches = [(f"data_batch_{k}", n_train // 5) for k in range(1, 6)] + [("test_batch", n_test)]
    files = []
    for i, (name, n) in enumerate(batches):
        rng = _rng(seed, 20 + i)
        files.append(_pickle(out / name, {
            b"batch_label": name.encode(), b"labels": _covering(rng, n, 10).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{name}_{k}.png".encode() for k in range(n)]}))
    files.append(_pickle(out / "batches.meta", {
        b"label_names": [f"class{k}".encode() for k in range(10)], b"num_vis": 3072,
        b"num_cases_per_batch": n_train // 5}))
    return files


def write_ninapro(folder: Path, sizes: tuple = (72, 36, 36), seed: int = 0) -> list:
    """ninapro_{train,val,test}.npy float32 (N, 52, 16) and label_{...}.npy uint8 0..17."""
    files = []
    for i, (split, n) in enumerate(zip(("train", "val", "test"), sizes)):
        rng = _rng(seed, 30 + i)
        for name, arr in ((f"ninapro_{split}.npy", rng.normal(size=(n, 52, 16)).astype(np.float32)),
                          (f"label_{split}.npy", _covering(rng, n, 18).astype(np.uint8))):
            files.append(_npy(Path(folder) / name, arr))
    return files


def write_darcy(folder: Path, n_train: int = 10, n_test: int = 5, seed: int = 0,
                resolution: int = 421) -> list:
    """piececonst_r421_N1024_smooth{1,2}.mat (MATLAB v5): 'coeff' piecewise constant (3 or 12)
    and 'sol' (N, 421, 421) float64, and the marker file (`fields.FIXTURE_MARKER`) from which
    the loader takes these sample counts as its default n_train / n_test."""
    import json
    import scipy.io
    files = [_save(Path(folder) / FIXTURE_MARKER, lambda fh: fh.write(json.dumps(
        {"darcy-nb360": {"n_train": n_train, "n_test": n_test}}).encode()))]
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = _rng(seed, 40 + i)
        coeff = np.where(rng.normal(size=(n, resolution, resolution)) > 0, 12.0, 3.0)
        sol = rng.uniform(0.0, 0.01, (n, resolution, resolution))
        files.append(_save(Path(folder) / DARCY_FILES[split],
                           lambda fh: scipy.io.savemat(fh, {"coeff": coeff, "sol": sol})))
    return files


def write_satellite(folder: Path, n_train: int = 96, n_test: int = 48, seed: int = 0) -> list:
    """satellite_{train,test}.npy: pickled dicts, 'data' (N, 46) float64, 'label' 1..24."""
    files = []
    for i, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        rng = _rng(seed, 50 + i)
        record = {"data": rng.normal(size=(n, 46)), "label": _covering(rng, n, 24, low=1)}
        files.append(_npy(Path(folder) / f"satellite_{split}.npy", record, allow_pickle=True))
    return files


def write_deepsea(folder: Path, sizes: tuple = (64, 16, 32), seed: int = 0) -> list:
    """deepsea_filtered.npz: x_{train,val,test} one-hot (N, 1000, 4) uint8, y_* (N, 36) uint8
    with both values of every label in each split (so 1-AUROC is defined)."""
    rng, arrays = _rng(seed, 60), {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"x_{split}"] = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (n, 1000))]
        y = (rng.random((n, 36)) < 0.3).astype(np.uint8)
        y[0], y[1] = 1, 0
        arrays[f"y_{split}"] = y
    return [_save(Path(folder) / "deepsea_filtered.npz", lambda fh: np.savez(fh, **arrays))]


def write_ecg(folder: Path, n: int = 48, seed: int = 0) -> list:
    """challenge2017.pkl: a pickled dict, 'data' an object array of variable-length 1D signals
    (2,000 to 4,500 samples), 'label' N / A / O / ~ (every class 12 times with the default n)."""
    rng = _rng(seed, 70)
    data = np.empty(n, dtype=object)
    for i, length in enumerate(rng.integers(2000, 4500, n)):
        data[i] = rng.normal(50.0, 10.0, int(length))
    labels = [ECG_CLASSES[c] for c in _covering(rng, n, 4)]
    return [_pickle(Path(folder) / "challenge2017.pkl", {"data": data, "label": labels})]


def _idx(path: Path, arr: np.ndarray) -> Path:
    """An unsigned-byte IDX file (the MNIST format)."""
    head = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return _save(path, lambda fh: fh.write(head + np.ascontiguousarray(arr, np.uint8).tobytes()))


def write_mnist(folder: Path, n: int = 100, seed: int = 0) -> list:
    """train-images-idx3-ubyte (N, 28, 28) and train-labels-idx1-ubyte (N,), labels 0..9."""
    rng = _rng(seed, 80)
    return [_idx(Path(folder) / "train-images-idx3-ubyte",
                 rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            _idx(Path(folder) / "train-labels-idx1-ubyte", _covering(rng, n, 10))]


def write_text_features(folder: Path, n: int = 64, width: int = 768, seed: int = 0) -> list:
    """ORCA's precomputed CoNLL features: text_xs_32.npy (N, 32 tokens, width) float32 and
    text_ys_32.npy (N,) int64 tags 0..8. `width` is the text body's hidden size (768:
    roberta-base)."""
    rng = _rng(seed, 90)
    return [_npy(Path(folder) / "text_xs_32.npy",
                 rng.normal(size=(n, 32, width)).astype(np.float32)),
            _npy(Path(folder) / "text_ys_32.npy", _covering(rng, n, 9).astype(np.int64))]


WRITERS: dict[str, Callable] = {
    "cifar100": write_cifar100, "cifar10": write_cifar10, "ninapro": write_ninapro,
    "darcy-nb360": write_darcy, "satellite": write_satellite, "deepsea": write_deepsea,
    "ecg": write_ecg, "mnist (proxy)": write_mnist, "text features (proxy)": write_text_features,
}


def write_fixtures(folder: Path, seed: int = 0, text_width: int = 768) -> dict[str, list]:
    """Every fixture into `folder` (created; it serves as both task.data_dir and
    align.proxy_dir). Returns {what: [paths]}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for what, writer in WRITERS.items():
        kwargs = {"width": text_width} if writer is write_text_features else {}
        out[what] = writer(folder, seed=seed, **kwargs)
    return out
