"""The config schema: a tree of dataclasses, one per section (`task`, `body`, `embedder`,
`align`, `train`, `run`, `baseline`). Components take their own section; only recipes and this
package read the whole `Config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional


TASK_KINDS = ("auto", "classification", "multilabel", "dense")


@dataclass
class TaskConfig:
    name: str = "arrowhead"
    kind: str = "auto"              # auto | classification | multilabel | dense (npz tasks)
    data_dir: Optional[str] = None  # folder with NAS-Bench-360 / user files
    max_train: Optional[int] = None  # subsample the training set (seeded)
    max_test: Optional[int] = None   # subsample the test set (smoke runs)
    max_val: Optional[int] = None    # subsample the validation set (it is scored every epoch)
    val_fraction: float = 0.2        # carved from train with the split seed when no val split
    validation: str = "auto"         # auto | carve | none: see `min_val` and the README
    min_val: int = 50                # auto carves only when the carve holds >= this many samples
    split_seed: int = 0              # fixed: the validation split never depends on run.seed
    options: dict = field(default_factory=dict)  # task-specific (e.g. darcy resolution, count)


@dataclass
class BodyConfig:
    name: str = "minilm"             # minilm | hub name | local folder | vit-tiny-random
    pretrained: bool = True          # False: random init from the same config (RQ4 baseline)
    dropout: Optional[float] = None  # override hidden/attention dropout
    drop_path: Optional[float] = None  # override stochastic depth (Swin drop_path_rate; ORCA: 0.1)
    num_layers: Optional[int] = None  # keep only the first k layers


@dataclass
class EmbedderConfig:
    kind: str = "conv"               # conv (ORCA) | patch-linear | linear (whole input): RQ6
    seq_len: int = 16                # target number of tokens for 1D inputs (and 2D on text bodies)
    init_from_body: bool = True      # copy position embeddings / LayerNorm / patch filters
    patch: Optional[int] = None      # 2D patch size override
    conv_init: str = "orca"          # orca (xavier, gain sqrt 2, bias 0) | torch | trunc-normal
    norm_order: str = "post-pos"     # post-pos: LN(patches + pos) | pre-pos: LN(patches) + pos (ORCA)


@dataclass
class AlignConfig:
    proxy: str = "none"              # none | digits | fakedata | cifar10 | mnist | text | fake-text | npz:PATH
    epochs: int = 0                  # embedder epochs (one optimizer step each, ORCA semantics)
    objective: str = "otdd"          # otdd | otdd-gaussian | mmd | l2
    maxsamples: int = 64             # target samples per class per epoch
    n_source: int = 5000             # proxy samples
    lr: Optional[float] = None       # default: from train.lr by align.lr_rule
    lr_rule: str = "orca"            # orca: 10 x train.lr if train.lr <= 1e-3, else train.lr | 10x
    optimizer: str = "task"          # task (train.optimizer's type, as ORCA) | adamw | adam | sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # Adam(W) betas (ORCA)
    lr_milestones: list[int] = field(default_factory=lambda: [20, 40, 60])  # embedder epochs
    lr_gamma: float = 0.2            # lr x gamma after each milestone (ORCA's StepLR)
    label_grad: bool = True          # True: gradient through OTDD's label term; False: detached (ORCA)
    step_per: str = "epoch"          # epoch (ORCA) | class
    pseudo_labels: int = 10          # k-means clusters for dense / multi-label targets
    eps: float = 0.1                 # outer Sinkhorn entropic regularisation of OTDD
    inner_eps: float = 0.1           # inner (label-to-label) Sinkhorn eps; the issue fixes 0.1
    max_iter: int = 2000             # Sinkhorn iterations at the final eps (per solve)
    from_epoch: Optional[int] = None  # fine-tune from this embedder epoch (default: last)
    proxy_dir: Optional[str] = None  # folder with cifar10 / mnist / conll files
    cache_dir: Optional[str] = None  # where proxy features and shared embedders are cached


@dataclass
class TrainConfig:
    epochs: Optional[int] = None     # None: enough epochs for `min_steps` optimizer steps
    batch_size: Optional[int] = None  # None: min(32, max(8, train size // 8))
    min_steps: int = 300             # the automatic budget's floor of optimizer steps
    max_epochs: int = 100            # the automatic budget's ceiling of epochs
    lr: float = 1e-4
    optimizer: str = "adamw"         # adamw | sgd
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # Adam betas (ORCA: 0.9, 0.98)
    embedder_lr_mult: float = 1.0    # the embedder's lr = train.lr x this
    predictor_lr_mult: float = 10.0  # the predictor's lr = train.lr x this (measured: docs/benchmarks.md)
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "cosine"         # cosine | linear | constant
    warmup_epochs: float = 0.0
    decay_epochs: Optional[float] = None  # LR reaches 0 here (default: train.epochs), then stays 0
    accumulate: int = 1
    clip: Optional[float] = 1.0      # max gradient norm; 0 or null: no clipping
    finetune: str = "all"
    lora_rank: int = 8
    pos_weight: Optional[float] = None  # multi-label BCE pos_weight (DeepSEA: 4)
    eval_batch_size: int = 128
    cache_frozen: bool = True        # predictor-only: run the frozen embedder + body once, in
                                     # eval mode, and train the predictor on their cached outputs
    test_each_epoch: bool = False    # also record the test metric per epoch (curves only; model
                                     # selection always uses validation)


@dataclass
class RunConfig:
    seed: int = 0
    device: str = "auto"             # auto | cpu | cuda
    out: str = "runs"
    name: Optional[str] = None       # run folder name (default: <task>-<body>-<hash>)
    precision: str = "auto"          # auto (bf16 where the CPU/GPU has it) | fp32 | bf16
    num_workers: int = 0
    pin_memory: bool = False
    save_checkpoint: bool = True     # write best.safetensors
    threads: Optional[int] = None    # torch CPU threads
    resume_interval: float = 60.0    # seconds between resume.pt snapshots (0: after every epoch)


@dataclass
class BaselineConfig:
    method: str = "none"             # none (fine-tune) | logreg | minirocket | ridge | mean


@dataclass
class Config:
    task: TaskConfig = field(default_factory=TaskConfig)
    body: BodyConfig = field(default_factory=BodyConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
