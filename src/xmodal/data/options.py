"""Task options (`task.options`): one reader that merges a loader's defaults with what the user
set, and turns unknown keys and bad counts into one clear `UserError`.
"""

from __future__ import annotations

import difflib

from ..config import TaskConfig
from ..errors import UserError


def read_options(cfg: TaskConfig, defaults: dict) -> dict:
    """`cfg.options` merged over `defaults`; unknown keys and non-integer counts are UserErrors."""
    unknown = [k for k in cfg.options if k not in defaults]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(defaults), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        known = ", ".join(defaults) or "none"
        raise UserError(f"task '{cfg.name}': unknown option '{unknown[0]}'{hint} "
                        f"(known options: {known})")
    out = {**defaults, **cfg.options}
    for key, default in defaults.items():
        value = out[key]
        if isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"task '{cfg.name}': option '{key}' must be an integer, got {value!r}")
        if isinstance(default, int) and value < 0:
            raise UserError(f"task '{cfg.name}': option '{key}' must be >= 0, got {value}")
    return out
