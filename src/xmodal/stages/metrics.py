"""Losses and evaluation metrics. Every metric is computed once over the whole evaluation set
(never averaged over chunks) and is "lower is better", as in the ablation paper's tables."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, roc_auc_score

METRIC_LABELS = {
    "error": "0-1 error",
    "1-auroc": "1 - mean AUROC",
    "1-macro-f1": "1 - macro F1",
    "relative-l2": "relative L2 error",
}


def zero_one_error(logits: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, axis=1) != y))


def one_minus_macro_f1(logits: np.ndarray, y: np.ndarray) -> float:
    labels = np.arange(logits.shape[1])
    return float(1.0 - f1_score(y, np.argmax(logits, axis=1), average="macro", labels=labels,
                                zero_division=0))


def one_minus_mean_auroc(scores: np.ndarray, y: np.ndarray) -> tuple[float, list[int]]:
    """1 - mean AUROC over labels; labels with a single class in `y` are skipped (returned)."""
    aucs, skipped = [], []
    for k in range(y.shape[1]):
        if len(np.unique(y[:, k])) < 2:
            skipped.append(k)
            continue
        aucs.append(roc_auc_score(y[:, k], scores[:, k]))
    if not aucs:
        return float("nan"), skipped
    return float(1.0 - np.mean(aucs)), skipped


def relative_l2(pred: np.ndarray, y: np.ndarray) -> float:
    """Mean over samples of ||pred - y|| / ||y||, in the original (decoded) units."""
    pred = pred.reshape(len(pred), -1).astype(np.float64)
    y = y.reshape(len(y), -1).astype(np.float64)
    return float(np.mean(np.linalg.norm(pred - y, axis=1) / np.linalg.norm(y, axis=1)))


def compute_metric(name: str, outputs: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
    """Returns (value, extra info)."""
    if name == "error":
        return zero_one_error(outputs, y), {}
    if name == "1-macro-f1":
        return one_minus_macro_f1(outputs, y), {}
    if name == "1-auroc":
        value, skipped = one_minus_mean_auroc(outputs, y)
        if skipped:
            warnings.warn(f"1-auroc: skipped {len(skipped)} label(s) with one class only: {skipped}")
        return value, {"auroc_skipped_labels": skipped}
    if name == "relative-l2":
        return relative_l2(outputs, y), {}
    raise ValueError(f"unknown metric {name!r}")


def relative_l2_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    diff = (pred - y).flatten(1).norm(dim=1)
    return (diff / y.flatten(1).norm(dim=1).clamp_min(1e-8)).mean()


def make_loss(kind: str, pos_weight: float | None = None):
    if kind == "classification":
        return lambda out, y: F.cross_entropy(out, y)
    if kind == "multilabel":
        def bce(out, y):
            pw = None if pos_weight is None else torch.full_like(out[0], pos_weight)
            return F.binary_cross_entropy_with_logits(out, y, pos_weight=pw)
        return bce
    if kind == "dense":
        return relative_l2_loss
    raise ValueError(f"unknown task kind {kind!r}")
