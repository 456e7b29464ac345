"""The user's own proxy: `npz:PATH` with features `x` (n, d = the body's input width) and
labels `y` (n,).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import UserError
from .sampling import _check_classes, _codes, sample_indices


def _check_xy(x: np.ndarray, y: np.ndarray, body, path) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise UserError(f"{path}: features must be a numeric (n, d) array, got {x.shape} {x.dtype}")
    if x.shape[1] != body.info.in_dim:
        raise UserError(f"{path}: features have width {x.shape[1]}, but the body's input "
                        f"embedding has width {body.info.in_dim}")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{path}: labels must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: labels must be integers, got {y.dtype}")
    if not np.isfinite(x).all():
        raise UserError(f"{path}: features contain NaN or inf")
    return x, y


def _npz_proxy(path: str, body, n: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from ...io.artifacts import read_features_npz
    p = Path(path).expanduser()
    x, y = read_features_npz(p, "proxy", need_y=True)
    x, y = _check_xy(x, y, body, path)
    codes, names = _codes(y, sorted(set(y.tolist())))
    yt = torch.as_tensor(codes)
    _check_classes(yt, f"proxy '{path}'")
    idx = sample_indices(codes, n)
    info = {"proxy": f"npz:{path}", "source": str(p), "level": "user", "n": int(len(idx)),
            "classes": len(names), "dim": int(x.shape[1]), "cached": False}
    return torch.as_tensor(x[idx], dtype=torch.float32), yt[idx], info
