"""The image-like NAS-Bench-360 tasks: CIFAR-100 (and CIFAR-10, also the `cifar10` alignment
proxy) from the python-pickle batches, with ORCA's training augmentation, and NinaPro sEMG
windows (16 x 52).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...config import TaskConfig
from ...errors import UserError
from ..options import read_options
from ..registry import REGISTRY, register
from ..types import TaskData, TaskSpec
from .files import _check_shape, _int_labels, _load_npy, _load_pickle, _same_length, bad_file, find_file


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
                   source="cifar-100-python/{train,test} in the data folder",
                   published_sizes=(40_000, 10_000, 10_000)))
def _cifar100(cfg: TaskConfig) -> TaskData:
    return _cifar_task(cfg, 100)


@register(TaskSpec("cifar10", "CIFAR-10, python-pickle files data_batch_1..5 / test_batch",
                   "2d", "classification", (3, 32, 32), 10, metric="error",
                   source="cifar-10-batches-py/ in the data folder"))
def _cifar10(cfg: TaskConfig) -> TaskData:
    return _cifar_task(cfg, 10)


@register(TaskSpec("ninapro", "NinaPro DB5 sEMG hand gestures (NAS-Bench-360), 16 x 52 windows",
                   "2d", "classification", (1, 16, 52), 18, metric="error",
                   source="ninapro_{train,val,test}.npy + label_{train,val,test}.npy",
                   published_sizes=(2_638, 659, 659)))
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
