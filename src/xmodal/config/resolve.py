"""Derived values, resolved once: what each stage reads after `load_config`.

`resolve_align(cfg)` fills every default of stage 2 that depends on another section (the
embedder lr from `train.lr` by ORCA's rule, the optimiser type from the task's, the epoch
fine-tuning starts from) and checks them, returning an `AlignSettings` that the alignment
stage takes instead of the whole config. The `Config` itself is never changed, so its identity
hash stays what the user configured.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .derived import align_lr, align_optimizer, aligns, from_epoch
from .identity import alignment_identity, alignment_key
from .schema import Config

@dataclass(frozen=True)
class AlignSettings:
    """Stage 2's own values, every default resolved (README "Alignment")."""
    proxy: str
    epochs: int
    objective: str
    maxsamples: int
    n_source: int
    lr: float
    optimizer: str                 # adamw | adam | sgd
    betas: tuple
    momentum: float
    weight_decay: float
    lr_milestones: tuple
    lr_gamma: float
    label_grad: bool
    step_per: str
    pseudo_labels: int
    eps: float
    inner_eps: float
    max_iter: int
    from_epoch: int                # the embedder epoch fine-tuning starts from
    proxy_dir: Optional[str]
    cache_dir: Optional[str]
    seed: int
    key: str                       # the stage folder's key (`identity.alignment_key`)
    identity: dict                 # what the key hashes, recorded with the stage


def resolve_align(cfg: Config) -> AlignSettings:
    a = cfg.align
    fields = {f.name for f in dataclasses.fields(AlignSettings)}
    own = {k: v for k, v in dataclasses.asdict(a).items() if k in fields}
    return AlignSettings(**{**own, "betas": tuple(a.betas), "lr_milestones": tuple(a.lr_milestones),
                            "lr": align_lr(cfg), "optimizer": align_optimizer(cfg),
                            "momentum": cfg.train.momentum,
                            "weight_decay": cfg.train.weight_decay,
                            "from_epoch": from_epoch(cfg), "seed": cfg.run.seed,
                            "key": alignment_key(cfg), "identity": alignment_identity(cfg)})


@dataclass(frozen=True)
class Resolved:
    """A config with everything derived from it: what a recipe hands to the stages."""
    config: Config
    align: Optional[AlignSettings]   # None: no stage 2


def resolve(cfg: Config) -> Resolved:
    """Fill every derived value and make every cross-section check (`UserError` on failure)."""
    return Resolved(cfg, resolve_align(cfg) if aligns(cfg) else None)
