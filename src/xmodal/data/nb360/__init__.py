"""NAS-Bench-360 tasks (and CIFAR-10/100) read from their published files in the user's folder.

Owns the loaders `cifar100`, `cifar10`, `ninapro`, `darcy-nb360`, `satellite`, `deepsea` and
`ecg`, the CIFAR reader `read_cifar10` used by the alignment proxy, and the CIFAR training
augmentation: `files` (finding and checking files), `images` (CIFAR, NinaPro), `fields`
(Darcy Flow), `series` (Satellite, DeepSEA, ECG). Files are looked up in `task.data_dir` (`--data-dir`), else in $XMODAL_DATA_DIR;
nothing is downloaded. Every format problem becomes one `UserError` naming the file and what it
must hold. Pickled files (CIFAR batches, satellite, ECG) are read with the restricted
unpickler of `io/safe_pickle.py`: NumPy arrays, dicts, lists, strings and numbers only, so a
crafted file is refused instead of running code.
"""

from . import fields, images, series  # noqa: F401 - each registers its tasks on import
from .images import read_cifar10

__all__ = ["read_cifar10"]
