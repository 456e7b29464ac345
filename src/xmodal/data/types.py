"""What a task is: `TaskSpec` (static description, enough to list it and build a model) and
`TaskData` (its train / validation / test arrays, normalisation and label names).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np


LOSSES = {"classification": "cross-entropy", "multilabel": "bce", "dense": "relative-l2"}


DEFAULT_METRIC = {"classification": "error", "multilabel": "1-auroc", "dense": "relative-l2"}


@dataclass(frozen=True)
class TaskSpec:
    """Static description of a task: enough to list it and to build a model for it."""
    name: str
    description: str
    modality: str                  # "1d" (B, C, L) or "2d" (B, C, H, W)
    kind: str                      # classification | multilabel | dense
    input_shape: tuple             # per sample, channels first
    n_out: int                     # classes, labels, or output channels (dense)
    metric: str = ""               # error | 1-auroc | 1-macro-f1 | relative-l2
    output_shape: tuple = ()       # dense: (C_out, H, W) of the target field
    source: str = ""               # where the data come from
    # (train, validation, test) sizes of the published split, for costing a run without its
    # files (`runs.cost`); () when the sizes come only from loading the data
    published_sizes: tuple = ()

    @property
    def loss(self) -> str:
        return LOSSES[self.kind]

    def __post_init__(self):
        if not self.metric:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.kind])


@dataclass
class TaskData:
    spec: TaskSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: Optional[np.ndarray]
    y_val: Optional[np.ndarray]
    x_test: np.ndarray
    y_test: np.ndarray
    y_mean: Optional[np.ndarray] = None   # dense targets are normalised; decode before metrics
    y_std: Optional[np.ndarray] = None
    x_mean: Optional[np.ndarray] = None   # input normalisation fitted on train: (x - mean) / std,
    x_std: Optional[np.ndarray] = None    # stored in the run folder, applied by `xmodal predict`
    label_names: Optional[list] = None    # class (or label) names, index = class id
    notes: list = field(default_factory=list)
    augment: Optional[Callable] = None    # torch batch -> batch, train only (e.g. CIFAR crops)

    def decode_y(self, y: np.ndarray) -> np.ndarray:
        if self.y_mean is None:
            return y
        return y * self.y_std + self.y_mean

    @property
    def selection(self) -> str:
        """`best-val` (the best validation epoch is kept) or `last-epoch` (no validation)."""
        return "best-val" if len(self.x_val) else "last-epoch"

    def sizes(self) -> dict:
        return {"train": len(self.x_train), "val": len(self.x_val), "test": len(self.x_test)}
