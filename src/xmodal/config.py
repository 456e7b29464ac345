"""Run configuration: the schema, YAML loading, dotted overrides and validation.

A config is a tree of dataclasses (`Config`). Users give a YAML file and/or `--set a.b=value`
overrides; `load_config` merges them over the defaults, rejects unknown keys (suggesting the
closest one), checks types, and returns a frozen-in-spirit `Config`. `config_hash` gives the
stable id used for run folders and the study store.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import UserError

FINETUNE_MODES = ("all", "layernorm", "non-attn", "freeze-embedder", "freeze-body",
                  "predictor-only", "lora")
TASK_KINDS = ("auto", "classification", "multilabel", "dense")


@dataclass
class TaskConfig:
    name: str = "arrowhead"
    kind: str = "auto"              # auto | classification | multilabel | dense (npz tasks)
    data_dir: Optional[str] = None  # folder with NAS-Bench-360 / user files
    max_train: Optional[int] = None  # subsample the training set (seeded)
    max_test: Optional[int] = None   # subsample the test set (smoke runs)
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


CHOICES = {
    "task.kind": TASK_KINDS,
    "baseline.method": ("none", "logreg", "minirocket", "ridge", "mean"),
    "embedder.conv_init": ("orca", "torch", "trunc-normal"),
    "embedder.norm_order": ("pre-pos", "post-pos"),
    "align.objective": ("otdd", "otdd-gaussian", "mmd", "l2"),
    "align.step_per": ("epoch", "class"),
    "align.lr_rule": ("orca", "10x"),
    "align.optimizer": ("task", "adamw", "adam", "sgd"),
    "train.optimizer": ("adamw", "sgd"),
    "train.schedule": ("cosine", "linear", "constant"),
    "train.finetune": FINETUNE_MODES,
    "run.device": ("auto", "cpu", "cuda"),
    "run.precision": ("auto", "fp32", "bf16"),
    "task.validation": ("auto", "carve", "none"),
}
POSITIVE = {"train.embedder_lr_mult": 0, "train.predictor_lr_mult": 0, "train.min_steps": 1, "train.max_epochs": 1, "task.min_val": 1, "train.accumulate": 1, "train.lr": 0,
            "embedder.seq_len": 1, "train.eval_batch_size": 1, "align.maxsamples": 2,
            "align.epochs": 0, "align.n_source": 2, "run.num_workers": 0, "align.eps": 0,
            "align.inner_eps": 0, "align.max_iter": 1,
            "align.lr_gamma": 0}
OPTIONAL_MIN = {"train.clip": 0, "run.threads": 1}   # None allowed, else >= the bound
MAX_YAML_VALUES = 100_000   # values a YAML document may expand to through aliases


def _check_type(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)][0]
        return _check_type(value, inner, key)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is dict and isinstance(value, dict):
        return value
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    name = getattr(tp, "__name__", str(tp))
    raise UserError(f"config key '{key}' must be {name}, got {value!r} ({type(value).__name__})")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            known = [f"{prefix}{n}" for n in names]
            close = difflib.get_close_matches(full, known, n=1) or difflib.get_close_matches(
                full, all_keys(), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
            raise UserError(f"unknown config key '{full}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"config section '{full}' must be a mapping, got {value!r}")
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _check_type(value, tp, full)
    return cls(**kwargs)


def all_keys(cls: type = Config, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            out += all_keys(tp, f"{prefix}{f.name}.")
        else:
            out.append(f"{prefix}{f.name}")
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed value); the value is read as YAML (1e-3, true, null, [1,2])."""
    if "=" not in item:
        raise UserError(f"override '{item}' must look like key=value, e.g. train.lr=1e-4")
    key, raw = item.split("=", 1)
    try:
        value = parse_yaml(raw, f"override '{item}'") if raw != "" else ""
    except UserError:
        value = raw
    if isinstance(value, str) and _looks_float(raw):
        value = float(raw)
    key = key.strip()
    if isinstance(value, (bool, int, float)) and _declared_type(key) in (str, Optional[str]):
        value = raw.strip()  # `--out 2024`, `run.name=1e5`: text keys keep the text as typed
    return key, value


def _declared_type(key: str) -> Any:
    """The annotated type of a dotted schema key, or None when `key` is not a schema field."""
    tp: Any = Config
    for part in key.split("."):
        hints = typing.get_type_hints(tp) if dataclasses.is_dataclass(tp) else {}
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _looks_float(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def set_dotted(tree: dict, key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for part in parts[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise UserError(f"config key '{key}': '{part}' is not a section")
        node = nxt
    node[parts[-1]] = value


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' does not exist")
    data = parse_yaml(read_text_file(path, "config file"), f"config file '{path}'") or {}
    if not isinstance(data, dict):
        raise UserError(f"config file '{path}' must hold a mapping at the top level")
    return data


def read_text_file(path: Path, role: str) -> str:
    """The UTF-8 text of `path`; an unreadable or non-UTF-8 file is one `UserError`."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{role} '{path}' is not UTF-8 text (bad byte at offset {exc.start}); "
                        f"save it as UTF-8") from None
    except OSError as exc:
        raise UserError(f"cannot read {role} '{path}': {exc.strerror or exc}") from None


def parse_yaml(text: str, what: str) -> Any:
    """`yaml.safe_load` that refuses what would hang or crash later: recursive aliases and
    documents that expand to more than MAX_YAML_VALUES values through aliases (alias bombs).
    Every problem is one `UserError` line starting with `what`."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {}, set(), what)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise UserError(f"{what} is not valid YAML: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise UserError(f"{what} is nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict, open_: set, what: str) -> int:
    """Number of values `node` stands for once every alias is expanded (memoised per node)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise UserError(f"{what}: a YAML alias refers to its own anchor (recursive alias)")
    open_.add(key)
    children = node.value if isinstance(node.value, list) else []
    flat = [c for item in children for c in (item if isinstance(item, tuple) else (item,))]
    size = 1 + sum(_expanded_size(c, sizes, open_, what) for c in flat)
    open_.discard(key)
    if size > MAX_YAML_VALUES:
        raise UserError(f"{what}: YAML aliases expand it to more than {MAX_YAML_VALUES:,} "
                        f"values (an alias bomb?); write the values out instead")
    sizes[key] = size
    return size


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """`problem (line L, column C)` of a YAML error, on one line."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return " ".join(f"{problem}{where}".split())


def from_dict(data: dict) -> Config:
    cfg = _build(Config, data, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                base: dict | None = None) -> Config:
    """Defaults <- `base` <- YAML file <- overrides (list of 'k=v' or a flat {dotted: value})."""
    tree: dict = dict(base or {})
    if path is not None:
        tree = deep_merge(tree, read_yaml(path))
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides or [])
    for key, value in items:
        set_dotted(tree, key, value)
    return from_dict(tree)


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


# Keys that change where or how fast a run goes, not what it computes.
NON_IDENTITY_KEYS = ("run.out", "run.name", "run.num_workers", "run.pin_memory", "run.threads",
                     "run.save_checkpoint", "run.resume_interval", "align.cache_dir", "train.eval_batch_size")


# Keys added after run ids were first stored: left out of the hash at these (default) values,
# so existing run folders and study stores keep their ids.
LATE_KEYS = {"align.max_iter": 2000}


def config_hash(cfg: Config, length: int = 10) -> str:
    flat = {k: v for k, v in flatten(cfg.to_dict()).items() if k not in NON_IDENTITY_KEYS
            and not (k in LATE_KEYS and v == LATE_KEYS[k])}
    if cfg.baseline.method != "none":  # a baseline depends on the task and its seed only
        flat = {k: v for k, v in flat.items() if k.split(".")[0] in ("task", "baseline")
                or k == "run.seed"}
    blob = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
