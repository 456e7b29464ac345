"""Run artifacts on disk: atomic writes (temp file + rename), checkpoints, provenance, and the
one reader of users' labelled-feature `.npz` files (`xmodal distance`, npz proxies).

Nothing here leaves a partial file behind: every writer goes through `atomic_write`, which
writes a temporary file in the same folder and renames it over the target.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

PACKAGES = ("xmodal", "torch", "transformers", "peft", "numpy", "scikit-learn", "pot", "safetensors")


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call `writer(tmp_path)` then rename the temp file to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_user_file(path: str | Path, role: str, writer: Callable[[str], None]) -> Path:
    """`atomic_write` to a path the user named (`role`, e.g. '--output'); a folder, a parent
    that cannot be created or a file that cannot be written is one `UserError`."""
    from ..errors import UserError
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{role} {path} is a folder; give a file name inside it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder of {role} {path}: "
                        f"{exc.strerror or exc}") from None
    try:
        return atomic_write(path, writer)
    except OSError as exc:
        raise UserError(f"cannot write {role} {path}: {exc.strerror or exc}") from None


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def append_jsonl(path: str | Path, record: dict) -> None:
    """Rewrite-and-rename append, so a crash never leaves a half line."""
    path = Path(path)
    old = path.read_text() if path.exists() else ""
    write_text(path, old + json.dumps(record, default=_jsonable) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _jsonable(obj):
    if hasattr(obj, "tolist"):  # numpy / torch arrays and scalars (`item` fails on arrays)
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_safetensors(state: dict, path: str | Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {k: str(v) for k, v in (metadata or {}).items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def git_commit(start: str | Path | None = None) -> str | None:
    """The commit of the code this process runs (`-dirty` with uncommitted changes to tracked
    files), read once per process and folder: the code was imported then, so a commit made
    while a long study runs does not relabel its later runs."""
    return _git_commit(str(Path(start or Path(__file__).resolve().parent)))


@functools.lru_cache(maxsize=8)
def _git_commit(folder: str) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance() -> dict:
    import torch
    return {"versions": versions(), "git_commit": git_commit(), "platform": platform.platform(),
            "cuda": torch.version.cuda if torch.cuda.is_available() else None,
            "threads": torch.get_num_threads()}


def read_npz_arrays(path: str | Path, role: str) -> dict:
    """Every array of a user's .npz, read without unpickling; a missing or unreadable file is
    one `UserError` naming `role` (e.g. '--input') and the file."""
    import zipfile

    import numpy as np

    from ..errors import UserError
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{role} file {path} does not exist")
    try:
        loaded = np.load(p, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UserError(f"{role} file {path} is a single .npy array, not an .npz archive; "
                            f"save it with np.savez(path, x=array)")
        with loaded as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"cannot read {role} file {path} as .npz: {exc}") from None


def read_features_npz(path: str | Path, role: str, need_y: bool):
    """`x` (N, d) finite numbers and `y` (N,) integers (None when absent and not needed) from a
    user's .npz; any problem is one `UserError` naming the file, the array and the fix."""
    import numpy as np

    from ..errors import UserError
    arrays = read_npz_arrays(path, role)
    if "x" not in arrays:
        raise UserError(f"{role} file {path} has no array 'x' (N, d) (found: {sorted(arrays)})")
    if need_y and "y" not in arrays:
        raise UserError(f"{role} file {path} has no array 'y' of integer class labels (N,)")
    x, y = arrays["x"], arrays.get("y")
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
        raise UserError(f"{role} 'x' in {path} must be a real-valued (N, d) array, "
                        f"got shape {x.shape} dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise UserError(f"{role} 'x' in {path} contains NaN or inf values")
    if y is not None and (y.ndim != 1 or not np.issubdtype(y.dtype, np.integer)):
        raise UserError(f"{role} 'y' in {path} must be an integer (N,) array of class labels, "
                        f"got shape {y.shape} dtype {y.dtype}")
    if y is not None and len(y) != len(x):
        raise UserError(f"{role} file {path}: {len(y)} labels for {len(x)} feature rows")
    return x, y
