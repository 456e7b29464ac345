"""xmodal: cross-modal fine-tuning with ORCA (align then refine) and its ablation study.

`xmodal.fit(config) -> FitResult` runs one configuration; `xmodal.load_config` builds a config
from YAML and `key=value` overrides; `xmodal.load_run(run_dir)` loads a finished run to
predict. The CLI (`xmodal ...`) lives in `xmodal.cli`.

Names are imported lazily, so `import xmodal.cli` does not import torch: the CLI sets thread
environment variables (e.g. OMP_WAIT_POLICY) before torch starts its OpenMP runtime.
"""

import importlib
import sys
import types

__all__ = ["Config", "FitResult", "LoadedRun", "UserError", "fit", "load_config", "load_run"]
__version__ = "0.1.0"

_WHERE = {"Config": "config", "load_config": "config", "UserError": "errors",
          "FitResult": "fit", "fit": "fit", "load_run": "predict", "LoadedRun": "predict"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'xmodal' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing the submodule `xmodal.fit` binds it as a package attribute; keep `xmodal.fit`
    the function (as an eager `from .fit import fit` did), or the second call would fail."""

    def __setattr__(self, name, value):
        if name == "fit" and isinstance(value, types.ModuleType):
            value = value.fit
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
