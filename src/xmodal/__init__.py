"""xmodal: cross-modal fine-tuning with ORCA (align then refine) and its ablation study.

`xmodal.fit(config) -> FitResult` runs one configuration; `xmodal.load_config` builds a config
from YAML and `key=value` overrides; `xmodal.load_run(run_dir)` loads a finished run to
predict. The CLI (`xmodal ...`) lives in `xmodal.cli`.

Names are imported lazily, so `import xmodal.cli` does not import torch: the CLI sets thread
environment variables (e.g. OMP_WAIT_POLICY) before torch starts its OpenMP runtime.
"""

import importlib

__all__ = ["Config", "FitResult", "LoadedRun", "UserError", "fit", "load_config", "load_run"]
__version__ = "0.1.0"

_WHERE = {"Config": "config", "load_config": "config", "UserError": "errors",
          "FitResult": "runs.fit", "fit": "runs.fit", "load_run": "runs.predict", "LoadedRun": "runs.predict"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'xmodal' has no attribute {name!r}")
