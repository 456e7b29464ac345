"""The checks every config passes: option values (from `choices`), numeric ranges, finite
numbers and the run name. A failed check is one `UserError` naming the key.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

from ..errors import UserError
from . import choices
from .schema import TASK_KINDS, Config


CHOICES = {
    "task.kind": TASK_KINDS,
    "baseline.method": (choices.NO_BASELINE, *choices.BASELINES),
    "embedder.kind": choices.names(choices.EMBEDDER_KINDS),
    "embedder.conv_init": choices.CONV_INITS,
    "embedder.norm_order": choices.NORM_ORDERS,
    "align.objective": choices.names(choices.OBJECTIVES),
    "align.step_per": ("epoch", "class"),
    "align.lr_rule": ("orca", "10x"),
    "align.optimizer": ("task", "adamw", "adam", "sgd"),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("cosine", "linear", "constant"),
    "train.finetune": choices.names(choices.FINETUNE_MODES),
    "run.precision": ("auto", "fp32", "bf16"),
    "task.validation": ("auto", "carve", "none"),
}


POSITIVE = {"train.embedder_lr_mult": 0, "train.predictor_lr_mult": 0, "train.min_steps": 1, "train.max_epochs": 1, "task.min_val": 1, "train.accumulate": 1, "train.lr": 0,
            "embedder.seq_len": 1, "train.eval_batch_size": 1, "align.maxsamples": 2,
            "align.epochs": 0, "align.n_source": 2, "run.num_workers": 0, "align.eps": 0,
            "align.inner_eps": 0, "align.max_iter": 1,
            "align.lr_gamma": 0, "train.lora_rank": 1, "train.weight_decay": 0, "run.seed": 0}


DEVICE_NAME = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
MAX_RUN_NAME = 200       # characters; file systems allow 255 bytes per name
MAX_SEED = 2 ** 31 - 1   # seeds are combined with epoch counters into torch / numpy seeds


def _check_ranges(cfg: Config) -> None:
    """Values that pass the type check but would be ignored or silently wrong."""
    if cfg.run.seed > MAX_SEED:
        raise UserError(f"config key 'run.seed' must be between 0 and {MAX_SEED}; got {cfg.run.seed}")
    if cfg.train.decay_epochs is not None and cfg.train.decay_epochs <= 0:
        raise UserError(f"config key 'train.decay_epochs' must be > 0 (or null: the lr reaches 0 "
                        f"at the last epoch); got {cfg.train.decay_epochs!r}")
    if not 0.0 <= cfg.train.momentum < 1.0:
        raise UserError(f"config key 'train.momentum' must be in [0, 1); got {cfg.train.momentum!r}")
    if not DEVICE_NAME.match(str(cfg.run.device)):
        raise UserError(f"config key 'run.device' must be auto, cpu, cuda or cuda:N (a GPU "
                        f"index); got {cfg.run.device!r}")
    if not str(cfg.run.out).strip():
        raise UserError("config key 'run.out' (--out) is empty (an unset shell variable?); name "
                        "the folder for run folders, e.g. --out runs")


OPTIONAL_MIN = {"train.clip": 0, "run.threads": 1, "task.max_train": 1, "task.max_test": 1,
                "task.max_val": 1}   # None allowed, else >= the bound


def validate(cfg: Config) -> None:
    flat = flatten(cfg.to_dict())
    for key, choices in CHOICES.items():
        if flat[key] not in choices:
            raise UserError(f"config key '{key}' must be one of {', '.join(choices)}; got {flat[key]!r}")
    for key, value in flat.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"config key '{key}' must be a finite number; got {value!r}")
    for key, low in {**POSITIVE, "train.epochs": 0, "train.batch_size": 1}.items():
        if flat[key] is not None and flat[key] < low:
            raise UserError(f"config key '{key}' must be >= {low}; got {flat[key]!r}")
    for key, low in OPTIONAL_MIN.items():
        if flat[key] is not None and flat[key] < low:
            raise UserError(f"config key '{key}' must be >= {low} (or null); got {flat[key]!r}")
    check_run_name(cfg.run.name)
    _check_ranges(cfg)
    if not 0.0 < cfg.task.val_fraction < 1.0:
        raise UserError("config key 'task.val_fraction' must be between 0 and 1")
    if cfg.train.warmup_epochs < 0:
        raise UserError("config key 'train.warmup_epochs' must be >= 0")
    for key, betas in (("train.betas", cfg.train.betas), ("align.betas", cfg.align.betas)):
        if len(betas) != 2 or not all(isinstance(b, (int, float)) and 0.0 <= b < 1.0
                                      for b in betas):
            raise UserError(f"config key '{key}' must be two numbers in [0, 1), e.g. "
                            f"[0.9, 0.98]; got {betas!r}")
    if cfg.body.drop_path is not None and not 0.0 <= cfg.body.drop_path < 1.0:
        raise UserError(f"config key 'body.drop_path' must be in [0, 1); got {cfg.body.drop_path!r}")
    if any(m < 1 for m in cfg.align.lr_milestones):
        raise UserError(f"config key 'align.lr_milestones' must list embedder epochs >= 1 "
                        f"(or be []); got {cfg.align.lr_milestones!r}")


def check_run_name(name: Optional[str]) -> None:
    """`run.name` is one folder inside `run.out`: no path separators, not `.`/`..`."""
    if not name:
        return   # None or "": the default <task>-<body>-<hash>
    if len(name) > MAX_RUN_NAME:
        raise UserError(f"config key 'run.name' is {len(name)} characters; at most "
                        f"{MAX_RUN_NAME} (a folder name)")
    if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0") \
            or Path(name).is_absolute():
        raise UserError(f"config key 'run.name' must be a plain folder name inside run.out "
                        f"(no '/', '\\', '..' or absolute path); got {name!r}")


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "options":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
