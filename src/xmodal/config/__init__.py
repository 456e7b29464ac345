"""The config layer: the schema (`schema`), the named choices (`choices`), safe YAML
(`yamlio`), loading and overrides (`load`), the checks (`validate`), the derived values every
stage reads (`resolve`) and run identity (`identity`).

It imports nothing of xmodal but `errors`: every other layer may import it. The names below are
the public API (`xmodal.load_config` is `load_config`).
"""

from .identity import LATE_KEYS, NON_IDENTITY_KEYS, config_hash
from .load import all_keys, deep_merge, from_dict, load_config, parse_override, set_dotted, to_yaml
from .schema import (AlignConfig, BaselineConfig, BodyConfig, Config, EmbedderConfig, RunConfig,
                     TaskConfig, TrainConfig)
from .validate import check_run_name, flatten, validate
from .yamlio import parse_yaml, read_text_file, read_yaml

__all__ = ["AlignConfig", "BaselineConfig", "BodyConfig", "Config", "EmbedderConfig", "LATE_KEYS",
           "NON_IDENTITY_KEYS", "RunConfig", "TaskConfig", "TrainConfig", "all_keys",
           "check_run_name", "config_hash", "deep_merge", "flatten", "from_dict", "load_config",
           "parse_override", "parse_yaml", "read_text_file", "read_yaml", "set_dotted", "to_yaml",
           "validate"]
