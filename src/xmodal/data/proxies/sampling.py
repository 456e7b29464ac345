"""What every proxy source shares: the fixed sampling seed (a proxy is the same data in every
run), seeded class-balanced sampling, label coding and checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...errors import UserError


SEED = 0               # proxies are fixed datasets: their sampling never depends on run.seed


FAKE_CLASSES = 10


def _check_classes(y: torch.Tensor, what: str) -> None:
    counts = torch.bincount(y)
    small = (counts < 2).nonzero().flatten()
    if len(small):
        raise UserError(f"{what}: class {int(small[0])} has {int(counts[small[0]])} sample(s); "
                        f"every class needs at least 2 (raise align.n_source)")


def sample_indices(labels: np.ndarray, n: int, seed: int = SEED, floor: int = 2) -> np.ndarray:
    """`n` indices at random (seeded), but at least `floor` of every class when it has them.
    Classes with fewer than `floor` members are dropped. Returns sorted indices."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    usable = np.isin(labels, classes[counts >= floor])
    pool = np.flatnonzero(usable)
    if n >= len(pool):
        return pool
    reserved = [rng.choice(np.flatnonzero(labels == c), floor, replace=False)
                for c in classes[counts >= floor]]
    reserved = np.concatenate(reserved) if reserved else np.array([], int)
    rest = np.setdiff1d(pool, reserved)
    extra = rng.choice(rest, max(0, n - len(reserved)), replace=False)
    return np.sort(np.concatenate([reserved, extra]).astype(int))


def _codes(labels: np.ndarray, order: list) -> tuple[np.ndarray, list]:
    """Labels -> codes 0..K-1 over the classes present, in the given order."""
    present = [c for c in order if c in set(labels.tolist())]
    lookup = {c: i for i, c in enumerate(present)}
    return np.array([lookup[v] for v in labels.tolist()], dtype=np.int64), present


def _uniform_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Uniform random labels in 0..k-1 with every class present at least twice (n >= 2k)."""
    k = max(1, min(k, n // 2))
    base = np.repeat(np.arange(k), 2)
    labels = np.concatenate([base, rng.integers(0, k, n - len(base))])
    return rng.permutation(labels).astype(np.int64)


def _need_dir(name: str, folder: Optional[str]) -> Path:
    if not folder or not Path(folder).is_dir():
        what = ("train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]"
                if name == "mnist" else "the CIFAR-10 python batches (data_batch_1..5)")
        raise UserError(f"proxy '{name}' needs align.proxy_dir: a folder with {what}; "
                        f"got {folder!r}")
    return Path(folder)
