"""Run identity: which keys decide a result, and the stable hash of them that names run
folders and keys the study store.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from pathlib import Path

from .derived import align_lr, align_optimizer
from .schema import Config
from .validate import flatten


# Keys that change where or how fast a run goes, not what it computes.
NON_IDENTITY_KEYS = ("run.out", "run.name", "run.num_workers", "run.pin_memory", "run.threads",
                     "run.save_checkpoint", "run.resume_interval", "align.cache_dir", "train.eval_batch_size")


# Keys added after run ids were first stored: left out of the hash at these (default) values,
# so existing run folders and study stores keep their ids.
LATE_KEYS = {"align.max_iter": 2000, "task.max_val": None, "embedder.kind": "conv"}


def _early(section: str, values: dict) -> dict:
    """A section's values without its late keys at their defaults."""
    return {k: v for k, v in values.items()
            if LATE_KEYS.get(f"{section}.{k}", object()) != v}


def _moot(flat: dict) -> set:
    """Keys that cannot change this configuration's result, left out of its hash."""
    return set() if flat.get("train.finetune") == "predictor-only" else {"train.cache_frozen"}


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """sha256 of a file's bytes (memoised by path, size and change times)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def data_identity(cfg: Config) -> dict:
    """What the task's data are, beyond the config's text: the content of an `npz:PATH` file
    (the same path in another folder, or the file edited in place, is other data) and the
    absolute `task.data_dir`. Empty for bundled tasks."""
    out = {}
    name = cfg.task.name
    if name.startswith("npz:"):
        path = Path(name[4:]).expanduser()
        try:
            st = path.stat()
            out["task.npz_sha256"] = _file_digest(str(path.resolve()), st.st_size, st.st_mtime_ns,
                                                  st.st_ctime_ns)
        except OSError:
            pass   # missing or unreadable: loading the task reports it
    if cfg.task.data_dir:
        out["task.data_dir"] = os.path.abspath(os.path.expanduser(cfg.task.data_dir))
    return out


def config_hash(cfg: Config, length: int = 10) -> str:
    flat = {**flatten(cfg.to_dict()), **data_identity(cfg)}
    moot = _moot(flat)
    flat = {k: v for k, v in flat.items() if k not in NON_IDENTITY_KEYS and k not in moot
            and not (k in LATE_KEYS and v == LATE_KEYS[k])}
    if cfg.baseline.method != "none":  # a baseline depends on the task and its seed only
        flat = {k: v for k, v in flat.items() if k.split(".")[0] in ("task", "baseline")
                or k == "run.seed"}
    blob = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def run_id(cfg: Config) -> str:
    """The run folder's name: `run.name`, else `<task>-<body or baseline>-<config_hash>`."""
    if cfg.run.name:
        return cfg.run.name
    task = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.task.name.removeprefix("npz:")).stem)[:80]
    model = cfg.body.name if cfg.baseline.method == "none" else cfg.baseline.method
    body = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name)[:80]
    return f"{task}-{body}-{config_hash(cfg)}"


ALIGN_VERSION = "align-v2"   # bump when the algorithm changes: invalidates stored stages
NON_KEY_ALIGN = ("from_epoch", "cache_dir")


def alignment_identity(cfg: Config) -> dict:
    """Everything the trained embedder depends on (and nothing that only selects from it)."""
    t = cfg.task
    return {"version": ALIGN_VERSION,
            "task": {"name": t.name, "kind": t.kind, "data_dir": t.data_dir,
                     "max_train": t.max_train, "val_fraction": t.val_fraction,
                     "split_seed": t.split_seed, "options": t.options},
            "body": dataclasses.asdict(cfg.body),
            "embedder": _early("embedder", dataclasses.asdict(cfg.embedder)),
            "align": _early("align", {k: v for k, v in dataclasses.asdict(cfg.align).items()
                                      if k not in NON_KEY_ALIGN}),
            "seed": cfg.run.seed, "lr": align_lr(cfg), "weight_decay": cfg.train.weight_decay,
            "optimizer": align_optimizer(cfg), "momentum": cfg.train.momentum}


def alignment_key(cfg: Config) -> str:
    """The stage folder's key: runs with the same key share one trained embedder (and the same
    data: `data_identity`, absent for bundled tasks so their keys stay as they were)."""
    ident = alignment_identity(cfg)
    data = data_identity(cfg)
    if data:
        ident["data"] = data
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
