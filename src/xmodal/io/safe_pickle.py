"""The one restricted unpickler: reads the published pickled data sets without running code.

Some data sets are only published as Python pickles: the CIFAR python batches (task
`cifar10` / `cifar100` and the `cifar10` alignment proxy), NAS-Bench-360's `challenge2017.pkl`
(ECG) and its satellite `.npy` files (pickled dicts in object arrays). A plain `pickle.load`
runs whatever a crafted file names in its `__reduce__`, so these files are read here, with an
unpickler whose `find_class` admits only what the published files hold: NumPy arrays, dtypes
and scalars (plus the helpers NumPy pickles them with). Dicts, lists, tuples, strings, bytes
and numbers need no lookup. Anything else is refused with one `UserError` naming the file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError


def _allowed() -> dict[tuple[str, str], Any]:
    """(module, name) -> object, under the module names old and new NumPy pickles use."""
    core = getattr(np, "_core", None) or np.core
    import codecs
    helpers = {"multiarray._reconstruct": core.multiarray._reconstruct,
               "multiarray.scalar": core.multiarray.scalar,
               "numeric._frombuffer": core.numeric._frombuffer}
    table = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
             ("_codecs", "encode"): codecs.encode}   # bytes in protocol-2 pickles
    for prefix in ("numpy.core", "numpy._core"):
        for dotted, obj in helpers.items():
            module, name = dotted.rsplit(".", 1)
            table[(f"{prefix}.{module}", name)] = obj
    return table


class _Restricted(pickle.Unpickler):
    def __init__(self, fh, path: Path, **kwargs):
        super().__init__(fh, **kwargs)
        self.path, self.table = path, _allowed()

    def find_class(self, module: str, name: str):
        obj = self.table.get((module, name))
        if obj is None:
            raise UserError(f"file {self.path}: refused to unpickle '{module}.{name}'; pickled "
                            f"data files may hold only NumPy arrays, dicts, lists, strings and "
                            f"numbers (this one may be crafted to run code); get the file again "
                            f"from its official source")
        return obj

    def persistent_load(self, pid):
        raise UserError(f"file {self.path}: refused a persistent reference in a pickled data "
                        f"file; get the file again from its official source")


def load_pickle(path: str | Path, encoding: str = "ASCII") -> Any:
    """Unpickle `path` with the restricted unpickler (`encoding="bytes"` for Python 2 files such
    as the CIFAR batches). A refused type or an unreadable file is a `UserError`."""
    path = Path(path)
    with open(path, "rb") as fh:
        return _unpickle(fh, path, encoding)


def _unpickle(fh, path: Path, encoding: str) -> Any:
    try:
        return _Restricted(fh, path, encoding=encoding).load()
    except UserError:
        raise
    except Exception as exc:  # truncated, garbage, wrong protocol ...
        raise UserError(f"file {path}: not a readable Python pickle ({type(exc).__name__}: "
                        f"{exc})") from None


def load_npy(path: str | Path) -> Any:
    """A `.npy` file: plain arrays are memory-mapped; object arrays (pickled payloads) go
    through the restricted unpickler."""
    path = Path(path)
    fmt = np.lib.format
    with open(path, "rb") as fh:
        try:
            version = fmt.read_magic(fh)
            readers = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            _shape, _fortran, dtype = readers[version](fh)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"file {path}: not a NumPy .npy file ({exc})") from None
        if dtype.hasobject:
            return _unpickle(fh, path, "ASCII")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise UserError(f"file {path}: not a readable NumPy .npy file ({exc})") from None
