"""The user's own data: `npz:PATH` with `x_train`, `y_train`, `x_test`, `y_test` (and optional
`x_val`, `y_val`), channels-first layout and task kind inferred unless given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .types import TaskData, TaskSpec


def load_npz_task(path: str, kind: str = "auto", layout: str = "auto") -> TaskData:
    """Read the user's npz. A 3D x is (N, C, L) unless its y is a field of the same (H, W)
    shape or `task.options.layout` is "nhw" (then it is (N, H, W) images)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"npz file '{path}' does not exist")
    try:
        arrays = dict(np.load(p, allow_pickle=False))
    except Exception as exc:  # zip/format errors
        raise UserError(f"could not read '{path}' as .npz: {exc}") from None
    need = ["x_train", "y_train", "x_test", "y_test"]
    missing = [k for k in need if k not in arrays]
    if missing:
        raise UserError(f"'{path}' lacks array(s) {', '.join(missing)}; an xmodal npz holds "
                        f"x_train, y_train, x_test, y_test (optional x_val, y_val)")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise UserError(f"'{path}': give both x_val and y_val, or neither")
    splits = ["train", "test"] + (["val"] if "x_val" in arrays else [])
    for s in splits:
        if len(arrays[f"x_{s}"]) == 0:
            raise UserError(f"'{path}': x_{s} has no samples; every split needs at least one")
        if len(arrays[f"x_{s}"]) != len(arrays[f"y_{s}"]):
            raise UserError(f"'{path}': x_{s} has {len(arrays[f'x_{s}'])} rows but y_{s} has "
                            f"{len(arrays[f'y_{s}'])}")
    ys = {s: arrays[f"y_{s}"] for s in splits}
    image = layout == "nhw" or (layout == "auto" and arrays["x_train"].ndim == 3
                                and ys["train"].shape[1:] == arrays["x_train"].shape[1:])
    xs = {s: _channels_first(arrays[f"x_{s}"], path, s, image) for s in splits}
    kind = _infer_kind(ys["train"], xs["train"], path) if kind == "auto" else kind
    spec, ys = _npz_spec(Path(path).stem, xs["train"], ys, kind, path)
    return TaskData(spec, xs["train"], ys["train"], xs.get("val"), ys.get("val"),
                    xs["test"], ys["test"], notes=[f"user data from {path}"])


def _channels_first(x: np.ndarray, path: str, split: str, image: bool) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_):
        raise UserError(f"'{path}': x_{split} must be numeric, got dtype {x.dtype}")
    if np.iscomplexobj(x):
        raise UserError(f"'{path}': x_{split} is complex ({x.dtype}); xmodal reads real values: "
                        f"put the real and imaginary parts in separate channels")
    if x.ndim >= 2 and 0 in x.shape[1:]:
        raise UserError(f"'{path}': x_{split} has shape {x.shape}, with no values per sample; "
                        f"every series or image needs at least one value")
    if x.ndim == 2:
        x = x[:, None, :]
    elif x.ndim == 3 and image:
        x = x[:, None]
    elif x.ndim not in (3, 4):
        raise UserError(f"'{path}': x_{split} must be (N, L), (N, C, L), (N, H, W) or "
                        f"(N, C, H, W); got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _infer_kind(y: np.ndarray, x: np.ndarray, path: str) -> str:
    if y.ndim == 1 and np.issubdtype(y.dtype, np.integer):
        return "classification"
    if y.ndim == 2 and np.isin(y, (0, 1)).all() and y.shape[1] != x.shape[-1]:
        return "multilabel"
    if np.issubdtype(y.dtype, np.floating) and tuple(y.shape[1:]) == tuple(x.shape[2:]):
        return "dense"
    raise UserError(f"'{path}': cannot tell the task kind from y_train of shape {y.shape} and "
                    f"dtype {y.dtype}: integer (N,) = classification, 0/1 (N, K) = multi-label, "
                    f"float with the input's spatial shape = dense; or set task.kind")


def _check_classes(ys: dict, path: str) -> None:
    """Training needs two classes or more, and every evaluation label must be a training class
    (a model cannot predict a class it never saw)."""
    known = np.unique(ys["train"])
    if len(known) < 2:
        raise UserError(f"'{path}': y_train holds only class {known[0]}; classification needs "
                        f"at least two classes")
    if known[-1] != len(known) - 1:   # a gap would add classes that never occur (10**9: 1.5 TB)
        shown = ", ".join(map(str, known[:6])) + (" ..." if len(known) > 6 else "")
        raise UserError(f"'{path}': y_train's classes are {shown}: class labels must be "
                        f"0..K-1 without gaps ({len(known)} classes, largest label {known[-1]}); "
                        f"renumber them, e.g. with np.unique(y, return_inverse=True)")
    for s, y in ys.items():
        unseen = np.setdiff1d(np.unique(y), known)
        if len(unseen):
            shown = ", ".join(map(str, unseen[:5])) + (" ..." if len(unseen) > 5 else "")
            raise UserError(f"'{path}': y_{s} holds class(es) {shown} that never occur in "
                            f"y_train; give training samples of every class")


def _npz_spec(name: str, x: np.ndarray, ys: dict, kind: str, path: str):
    modality = "1d" if x.ndim == 3 else "2d"
    if kind == "classification":
        for s, y in ys.items():
            if y.ndim != 1:
                raise UserError(f"'{path}': y_{s} must have shape (N,) for classification")
            if np.issubdtype(y.dtype, np.floating) and not np.all(y == np.round(y)):
                raise UserError(f"'{path}': y_{s} holds non-integer class labels")
            if (y < 0).any():
                raise UserError(f"'{path}': y_{s} holds negative class labels; labels must be 0..K-1")
        ys = {s: y.astype(np.int64) for s, y in ys.items()}
        _check_classes(ys, path)
        n_out = int(max(int(y.max()) for y in ys.values())) + 1
        out_shape = ()
    elif kind == "multilabel":
        for s, y in ys.items():
            if y.ndim != 2 or not np.isin(y, (0, 1)).all():
                raise UserError(f"'{path}': y_{s} must be a 0/1 matrix (N, K) for task.kind "
                                f"multilabel; got shape {y.shape}")
        ys = {s: y.astype(np.float32) for s, y in ys.items()}
        n_out, out_shape = int(ys["train"].shape[1]), ()
    else:
        for s, y in ys.items():
            if y.shape[-(x.ndim - 2):] != x.shape[2:] or y.ndim not in (x.ndim - 1, x.ndim):
                raise UserError(f"'{path}': y_{s} must have the inputs' spatial shape "
                                f"{x.shape[2:]} (optionally with a channel axis) for task.kind "
                                f"dense; got shape {y.shape}")
        ys = {s: (y[:, None] if y.ndim == x.ndim - 1 else y).astype(np.float32)
              for s, y in ys.items()}
        n_out, out_shape = int(ys["train"].shape[1]), tuple(ys["train"].shape[1:])
    spec = TaskSpec(name=f"npz:{name}", description=f"user data ({path})", modality=modality,
                    kind=kind, input_shape=tuple(x.shape[1:]), n_out=n_out,
                    output_shape=out_shape, source=str(path))
    return spec, ys
