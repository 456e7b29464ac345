"""xmodal: cross-modal fine-tuning with ORCA (align then refine) and its ablation study.

`xmodal.fit(config) -> FitResult` runs one configuration; `xmodal.load_config` builds a config
from YAML and `key=value` overrides. The CLI (`xmodal ...`) lives in `xmodal.cli`.
"""

from .config import Config, load_config
from .errors import UserError
from .fit import FitResult, fit

__all__ = ["Config", "FitResult", "UserError", "fit", "load_config"]
__version__ = "0.1.0"
