"""Batched evaluation: a forward pass over a whole split (one batch on the device at a time)
and the task metric computed over the whole split, never averaged over chunks.
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.types import TaskData
from .device import autocast
from .metrics import compute_metric


EVAL_BAR_DELAY = 2.0   # seconds: quick evaluations never show a bar


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, batch_size: int, device: torch.device,
            precision: str = "fp32", progress: bool = False,
            desc: str = "evaluating") -> np.ndarray:
    """Batched forward pass; only one batch lives on the device at a time. With `progress`, a
    transient bar on a terminal once the pass has taken EVAL_BAR_DELAY seconds."""
    model.eval()
    outs = []
    starts = range(0, len(x), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, file=sys.stderr,
                      disable=not (progress and sys.stderr.isatty()), delay=EVAL_BAR_DELAY,
                      dynamic_ncols=True):
        xb = torch.from_numpy(x[start:start + batch_size]).to(device, non_blocking=True)
        with autocast(device, precision):
            outs.append(model(xb).float().cpu())
    return torch.cat(outs).numpy()


def evaluate(model, x, y, data: TaskData, device, batch_size: int, precision: str = "fp32",
             progress: bool = False, desc: str = "evaluating") -> tuple[float, dict]:
    """The task metric of `model` on (x, y), dense outputs decoded to the targets' units."""
    out = predict(model, x, batch_size, device, precision, progress, desc)
    if data.spec.kind == "dense":
        out, y = data.decode_y(out), data.decode_y(y)
    return compute_metric(data.spec.metric, out, y)
