"""The task registry (timm's habit): loaders register a `TaskSpec` with `@register(spec)`, and
`load_task` looks a name up, loads the arrays and hands them to `splits.prepare`.

The loader modules (`bundled`, `darcy`, `nb360`) are imported by the package's `__init__`, so
every task is registered once `xmodal.data` is imported; this module imports none of them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from ..config import TaskConfig
from ..config.choices import NPZ_PREFIX
from ..errors import UserError
from .npz import load_npz_task
from .options import read_options
from .splits import prepare
from .types import TaskData, TaskSpec


@dataclass(frozen=True)
class TaskEntry:
    spec: TaskSpec
    load: Callable[[TaskConfig], TaskData]


REGISTRY: dict[str, TaskEntry] = {}
NPZ_LAYOUTS = ("auto", "nhw")   # npz:PATH's task.options.layout


def register(spec: TaskSpec):
    def wrap(fn):
        REGISTRY[spec.name] = TaskEntry(spec, fn)
        return fn
    return wrap


def list_specs() -> list[TaskSpec]:
    return [entry.spec for entry in REGISTRY.values()]


def load_task(cfg: TaskConfig) -> TaskData:
    """Load, split, subsample and validate the task named by `cfg.name`."""
    if cfg.name.startswith(NPZ_PREFIX):
        layout = read_options(cfg, {"layout": "auto"})["layout"]
        if layout not in NPZ_LAYOUTS:
            raise UserError(f"task '{cfg.name}': option layout must be one of "
                            f"{', '.join(NPZ_LAYOUTS)}, got {layout!r}")
        data = load_npz_task(cfg.name[len(NPZ_PREFIX):], cfg.kind, layout)
    elif cfg.name in REGISTRY:
        data = REGISTRY[cfg.name].load(cfg)
    else:
        close = difflib.get_close_matches(cfg.name, list(REGISTRY), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise UserError(f"unknown task '{cfg.name}'{hint} (run `xmodal tasks` for the list, "
                        f"or use npz:PATH for your own data)")
    return prepare(data, cfg)
