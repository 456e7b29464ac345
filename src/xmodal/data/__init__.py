"""The data layer: what a task is (`types`), the registry (`registry`), splitting and
validation (`splits`), the user's npz files (`npz`), the bundled sets (`bundled`), Darcy Flow
(`darcy`), the NAS-Bench-360 files (`nb360`) and the alignment proxies (`proxies`).

It may import `config`, `errors` and `io`, never a model, stage or run. Importing the package
registers every task: the loader modules are imported here, explicitly.
"""

from . import bundled, darcy, nb360  # noqa: F401 - each registers its tasks on import
