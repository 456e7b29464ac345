"""From loaded arrays to a task ready to train: validation carving (`task.split_seed`, never
from test), `max_train` / `max_test` / `max_val` subsampling, and validation of shapes, labels and
finiteness. Also the input normalisation and label encoding that loaders share.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..config import TaskConfig
from ..errors import UserError
from .types import TaskData, TaskSpec


def prepare(data: TaskData, cfg: TaskConfig) -> TaskData:
    if data.x_val is None:
        data = split_validation(data, cfg)
    validate(data)   # the whole data set: a NaN is an error even where subsampling drops it
    rng = np.random.default_rng(cfg.split_seed + 1)
    if cfg.max_train is not None and cfg.max_train < len(data.x_train):
        idx = np.sort(rng.choice(len(data.x_train), cfg.max_train, replace=False))
        data = replace(data, x_train=data.x_train[idx], y_train=data.y_train[idx])
    if cfg.max_test is not None and cfg.max_test < len(data.x_test):
        idx = np.sort(rng.choice(len(data.x_test), cfg.max_test, replace=False))
        data = replace(data, x_test=data.x_test[idx], y_test=data.y_test[idx])
        vdx = np.sort(rng.choice(len(data.x_val), min(cfg.max_test, len(data.x_val)), replace=False))
        data = replace(data, x_val=data.x_val[vdx], y_val=data.y_val[vdx])
    if cfg.max_val is not None and cfg.max_val < len(data.x_val):
        vdx = np.sort(rng.choice(len(data.x_val), cfg.max_val, replace=False))
        data = replace(data, x_val=data.x_val[vdx], y_val=data.y_val[vdx])
    return data


def split_validation(data: TaskData, cfg: TaskConfig) -> TaskData:
    """The validation policy for a task without its own validation split.

    `carve` always carves `val_fraction` of train. `none` keeps every training sample for
    training and leaves validation empty: the run then keeps its last epoch. `auto` carves only
    when the carve would hold at least `min_val` samples: a handful of validation samples
    selects on noise and withholds data that small training sets cannot spare.
    """
    n_val = int(round(len(data.x_train) * cfg.val_fraction))
    if cfg.validation == "carve" or (cfg.validation == "auto" and n_val >= cfg.min_val):
        return carve_validation(data, cfg.val_fraction, cfg.split_seed)
    why = ("task.validation is 'none'" if cfg.validation == "none" else
           f"a {cfg.val_fraction:.0%} carve would hold {n_val} < task.min_val={cfg.min_val} samples")
    return replace(data, x_val=data.x_train[:0], y_val=data.y_train[:0],
                   notes=data.notes + [f"no validation split ({why}): all training samples "
                                       f"train, and the last epoch is kept"])


def carve_validation(data: TaskData, fraction: float, seed: int) -> TaskData:
    """Split a validation set off train (stratified for classification), seeded by `seed`."""
    n = len(data.x_train)
    n_val = max(1, int(round(n * fraction)))
    if n - n_val < 1:
        raise UserError(f"task '{data.spec.name}': {n} training samples are too few to carve "
                        f"a validation split; pass x_val/y_val or more data")
    rng = np.random.default_rng(seed)
    if data.spec.kind == "classification":
        val_idx = _stratified_pick(data.y_train, n_val, rng)
    else:
        val_idx = rng.choice(n, n_val, replace=False)
    mask = np.zeros(n, bool)
    mask[val_idx] = True
    return replace(data, x_train=data.x_train[~mask], y_train=data.y_train[~mask],
                   x_val=data.x_train[mask], y_val=data.y_train[mask])


def _stratified_pick(y: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    picks = []
    classes, counts = np.unique(y, return_counts=True)
    quota = np.floor(counts / len(y) * n_val).astype(int)
    for c, q, cnt in zip(classes, quota, counts):
        members = np.flatnonzero(y == c)
        picks.append(rng.choice(members, min(q, cnt - 1), replace=False))
    chosen = np.concatenate(picks) if picks else np.array([], int)
    rest = np.setdiff1d(np.arange(len(y)), chosen)
    extra = rng.choice(rest, max(0, n_val - len(chosen)), replace=False)
    return np.concatenate([chosen, extra]).astype(int)


def validate(data: TaskData) -> None:
    spec = data.spec
    for split in ("train", "val", "test"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        where = f"task '{spec.name}', {split} split"
        if len(x) != len(y):
            raise UserError(f"{where}: {len(x)} inputs but {len(y)} targets")
        if len(x) == 0 and split != "val":
            raise UserError(f"{where} is empty")
        if tuple(x.shape[1:]) != tuple(spec.input_shape):
            raise UserError(f"{where}: inputs have shape {tuple(x.shape[1:])}, "
                            f"expected {tuple(spec.input_shape)}")
        if not np.isfinite(x).all():
            raise UserError(f"{where}: inputs contain NaN or inf ({int((~np.isfinite(x)).sum())} "
                            f"values); clean or impute them first")
        if len(y):
            _validate_targets(y, spec, where)


def _validate_targets(y: np.ndarray, spec: TaskSpec, where: str) -> None:
    if spec.kind == "classification":
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{where}: classification labels must be integers of shape (N,)")
        if y.min() < 0 or y.max() >= spec.n_out:
            raise UserError(f"{where}: labels must lie in 0..{spec.n_out - 1}, "
                            f"found {int(y.min())}..{int(y.max())}")
    elif spec.kind == "multilabel":
        if y.ndim != 2 or y.shape[1] != spec.n_out or not np.isin(y, (0, 1)).all():
            raise UserError(f"{where}: multi-label targets must be a 0/1 matrix (N, {spec.n_out})")
    else:
        if not np.isfinite(y).all():
            raise UserError(f"{where}: targets contain NaN or inf")
        if tuple(y.shape[1:]) != tuple(spec.output_shape):
            raise UserError(f"{where}: dense targets have shape {tuple(y.shape[1:])}, "
                            f"expected {tuple(spec.output_shape)}")


def normalise_x(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The fitted input normalisation `(x - mean) / std` as float32 (mean / std broadcast)."""
    return ((x - mean) / std).astype(np.float32)


def encode_labels(*ys: np.ndarray) -> tuple[list[np.ndarray], list]:
    """Map arbitrary labels (strings, 1-based ints) to 0..K-1 consistently across splits."""
    classes = sorted(set(np.concatenate([np.asarray(y).ravel() for y in ys]).tolist()), key=str)
    try:
        classes = sorted(classes, key=float)
    except (TypeError, ValueError):
        pass
    lookup = {c: i for i, c in enumerate(classes)}
    return [np.array([lookup[v] for v in np.asarray(y).tolist()], dtype=np.int64) for y in ys], classes
