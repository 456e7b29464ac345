"""Values derived from more than one section, as pure functions of the config: the embedder lr
and optimiser of stage 2 (ORCA's rules), the epoch fine-tuning starts from, whether a run
aligns at all. `identity` and `resolve` both read them, so each rule is written once.
"""

from __future__ import annotations

from ..errors import UserError
from .choices import NO_PROXY
from .schema import Config

ORCA_LR_LIMIT = 1e-3   # ORCA multiplies the task lr by 10 for the embedder only up to this


def align_lr(cfg: Config) -> float:
    """align.lr, else `10x`: 10 x train.lr; `orca`: 10 x train.lr when train.lr <= 1e-3,
    else train.lr."""
    if cfg.align.lr is not None:
        return cfg.align.lr
    if cfg.align.lr_rule == "10x" or cfg.train.lr <= ORCA_LR_LIMIT:
        return 10.0 * cfg.train.lr
    return cfg.train.lr


def align_optimizer(cfg: Config) -> str:
    """adamw, adam or sgd: align.optimizer, or the task's own (train.optimizer) for `task`."""
    return cfg.train.optimizer if cfg.align.optimizer == "task" else cfg.align.optimizer


def from_epoch(cfg: Config) -> int:
    """The embedder epoch fine-tuning starts from (validated)."""
    epoch = cfg.align.from_epoch
    if epoch is None:
        return cfg.align.epochs
    if not 0 <= epoch <= cfg.align.epochs:
        raise UserError(f"align.from_epoch must lie in 0..align.epochs ({cfg.align.epochs}); "
                        f"got {epoch}")
    return epoch


def aligns(cfg: Config) -> bool:
    """True when the run has a stage 2 (a proxy and at least one embedder epoch)."""
    return cfg.align.proxy != NO_PROXY and cfg.align.epochs > 0
