"""Stage 2 (align): train the embedder toward a proxy dataset (Algorithm 1 of arXiv 2403.13537).

`run_alignment(model, data, cfg, device, run_dir)` trains only the embedder: per embedder epoch,
visit the target classes in a random order (seeded by `run.seed`), take up to `maxsamples`
random samples of each, and add `w_i * objective(source, target class i)` with `w_i` the class
frequency; one optimizer step per epoch (ORCA), or one per class (`step_per: class`).
Dense / multi-label targets get k-means pseudo-labels. Objectives: `otdd` (Sinkhorn inner, each
target class is one label against the full labelled source, as ORCA calls it), `otdd-gaussian`,
`mmd` (Gaussian kernel, median-heuristic bandwidth) and `l2` (squared distance of the means).

The optimiser is ORCA's by default: the task's optimiser type (`align.optimizer: task`) with
betas `align.betas` (0.9, 0.98); the lr is `align.lr`, else from `train.lr` by `align.lr_rule`
(`orca`: 10x when train.lr <= 1e-3, else train.lr); a MultiStepLR multiplies it by
`align.lr_gamma` (0.2) after the embedder epochs in `align.lr_milestones` (20, 40, 60).
`align.label_grad: false` detaches OTDD's label-to-label distances, as ORCA's code does.

The embedder state after every epoch (0 = before any step) is saved as
`embedder_epoch_{k}.safetensors` in a stage folder keyed by `alignment_key(cfg)`:
`align.cache_dir/<key>/` when a cache dir is set (shared by every run with the same alignment
settings, guarded by a file lock, finished when `done.json` exists), else `run_dir/align/`.
A later run with the same key loads the state of `align.from_epoch` (default: the last) instead
of training again. The trace goes to `run_dir/align.jsonl` and into the returned dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import artifacts
from .config import LATE_KEYS
from .errors import UserError
from .proxies import proxy_features

ALIGN_VERSION = "align-v2"   # bump when the algorithm changes: invalidates stored stages
NON_KEY_ALIGN = ("from_epoch", "cache_dir")


# ----------------------------------------------------------------------------- keys & folders

ORCA_LR_LIMIT = 1e-3   # ORCA multiplies the task lr by 10 for the embedder only up to this


def resolved_lr(cfg) -> float:
    """align.lr, else `10x`: 10 x train.lr; `orca`: 10 x train.lr when train.lr <= 1e-3,
    else train.lr."""
    if cfg.align.lr is not None:
        return cfg.align.lr
    if cfg.align.lr_rule == "10x" or cfg.train.lr <= ORCA_LR_LIMIT:
        return 10.0 * cfg.train.lr
    return cfg.train.lr


def optimizer_kind(cfg) -> str:
    """adamw, adam or sgd: align.optimizer, or the task's own (train.optimizer) for `task`."""
    return cfg.train.optimizer if cfg.align.optimizer == "task" else cfg.align.optimizer


def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    """The stage-2 optimiser over the embedder's parameters."""
    lr, wd, kind = resolved_lr(cfg), cfg.train.weight_decay, optimizer_kind(cfg)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.train.momentum, weight_decay=wd)
    betas = tuple(cfg.align.betas)
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
    raise UserError(f"align.optimizer 'task' needs train.optimizer adamw, adam or sgd; got {kind!r}")


def make_schedule(opt, cfg):
    """lr x align.lr_gamma after each embedder epoch in align.lr_milestones (stepped once per
    embedder epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.align.lr_milestones),
                                                gamma=cfg.align.lr_gamma)


def alignment_identity(cfg) -> dict:
    """Everything the trained embedder depends on (and nothing that only selects from it)."""
    t = cfg.task
    return {"version": ALIGN_VERSION,
            "task": {"name": t.name, "kind": t.kind, "data_dir": t.data_dir,
                     "max_train": t.max_train, "val_fraction": t.val_fraction,
                     "split_seed": t.split_seed, "options": t.options},
            "body": dataclasses.asdict(cfg.body), "embedder": dataclasses.asdict(cfg.embedder),
            "align": {k: v for k, v in dataclasses.asdict(cfg.align).items()
                      if k not in NON_KEY_ALIGN and LATE_KEYS.get(f"align.{k}", object()) != v},
            "seed": cfg.run.seed, "lr": resolved_lr(cfg), "weight_decay": cfg.train.weight_decay,
            "optimizer": optimizer_kind(cfg), "momentum": cfg.train.momentum}


def alignment_key(cfg) -> str:
    blob = json.dumps(alignment_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_folder(cfg, run_dir: Path) -> Path:
    if cfg.align.cache_dir:
        return Path(cfg.align.cache_dir).expanduser() / alignment_key(cfg)
    return Path(run_dir) / "align"


def check_from_epoch(cfg) -> int:
    """The embedder epoch fine-tuning starts from (validated)."""
    epoch = cfg.align.from_epoch
    if epoch is None:
        return cfg.align.epochs
    if not 0 <= epoch <= cfg.align.epochs:
        raise UserError(f"align.from_epoch must lie in 0..align.epochs ({cfg.align.epochs}); "
                        f"got {epoch}")
    return epoch


@contextlib.contextmanager
def file_lock(path: Path):
    """Exclusive advisory lock (fcntl.flock) held for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def embedder_path(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"embedder_epoch_{epoch}.safetensors"


def load_embedder(model, folder: Path, epoch: int) -> None:
    from safetensors.torch import load_file
    path = embedder_path(folder, epoch)
    if not path.is_file():
        raise UserError(f"alignment stage {folder} has no embedder for epoch {epoch}")
    device = next(model.embedder.parameters()).device
    model.embedder.load_state_dict(load_file(str(path), device=str(device)))


def _read_done(folder: Path, key: str) -> Optional[dict]:
    """The stored summary of a finished stage with this key (None: train it)."""
    path = folder / "done.json"
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return stored if stored.get("key") == key else None


# ----------------------------------------------------------------------------- entry point

def run_alignment(model, data, cfg, device, run_dir, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict:
    """Align the embedder (or reuse a stored alignment) and leave it in the state of
    `align.from_epoch`. Returns a JSON-serialisable summary with the per-epoch trace."""
    epoch_used = check_from_epoch(cfg)
    run_dir = Path(run_dir)
    folder = stage_folder(cfg, run_dir)
    model.to(device)
    with file_lock(folder / ".lock"):
        stored = _read_done(folder, alignment_key(cfg))
        reused = stored is not None
        if not reused:
            (folder / "done.json").unlink(missing_ok=True)   # a stale stage is overwritten
            stored = _train(model, data, cfg, device, folder, progress, log)
    load_embedder(model, folder, epoch_used)
    result = {**stored, "epoch_used": epoch_used, "reused": reused, "folder": str(folder)}
    lines = "".join(json.dumps(rec) + "\n" for rec in result["trace"])
    artifacts.write_text(run_dir / "align.jsonl", lines)
    first, last = result["trace"][0]["otdd"], result["trace"][-1]["otdd"]
    how = "reused stored alignment" if reused else f"trained in {result['seconds']:.1f}s"
    log(f"alignment ({result['objective']}, proxy {result['proxy']}): {first:.4g} -> {last:.4g} "
        f"over {cfg.align.epochs} embedder epochs ({how}); fine-tuning from epoch {epoch_used}")
    return result


# ----------------------------------------------------------------------------- training

def _train(model, data, cfg, device, folder: Path, progress: bool, log) -> dict:
    a = cfg.align
    started = time.time()
    xs, ys, pinfo = proxy_features(a.proxy, model.body, cfg, device)
    objective = build_objective(a.objective, xs, ys, a.eps, a.inner_eps, a.max_iter, a.label_grad)
    labels, tinfo = target_labels(data, cfg)
    groups, weights = class_groups(labels)
    flags = _train_only_embedder(model)
    try:
        trace, steps = _epochs(model, data.x_train, groups, weights, objective, cfg, device,
                               folder, started, progress, log)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    summary = {"key": alignment_key(cfg), "objective": a.objective, "proxy": a.proxy,
               "epochs": a.epochs, "source_classes": int(ys.max()) + 1, "n_source": int(len(ys)),
               "source": _jsonable(pinfo), "target": tinfo, "lr": resolved_lr(cfg),
               "optimizer": optimizer_kind(cfg), "lr_milestones": list(a.lr_milestones),
               "lr_gamma": a.lr_gamma, "label_grad": a.label_grad, "step_per": a.step_per, "steps": steps, "trace": trace,
               "seconds": time.time() - started, "identity": alignment_identity(cfg)}
    artifacts.write_json(folder / "done.json", summary)
    return summary


def _epochs(model, x_train, groups, weights, objective, cfg, device, folder, started,
            progress, log) -> tuple[list, int]:
    """Trace entry k = the objective of the embedder after k epochs, and `lr`, the lr of the
    step(s) of epoch k + 1 (none after the last); saves each state."""
    from tqdm.auto import tqdm
    a = cfg.align
    rng = np.random.default_rng(cfg.run.seed)
    opt = make_optimizer(model.embedder.parameters(), cfg)
    schedule = make_schedule(opt, cfg)
    trace, steps = [], 0
    bar = tqdm(range(a.epochs + 1), desc="align", file=sys.stderr, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for k in bar:
        if k > 0 and a.step_per == "class":
            steps += _class_steps(model, x_train, groups, weights, objective, opt, rng, a, device)
            schedule.step()
        with_grad = a.step_per == "epoch" and k < a.epochs
        opt.zero_grad(set_to_none=True)
        value = epoch_value(model, x_train, groups, weights, objective, rng, a.maxsamples,
                            device, with_grad)
        trace.append({"epoch": k, "otdd": value, "seconds": round(time.time() - started, 3),
                      "lr": opt.param_groups[0]["lr"] if k < a.epochs else None})
        artifacts.save_safetensors(model.embedder.state_dict(), embedder_path(folder, k),
                                   {"epoch": k, "key": alignment_key(cfg)})
        if with_grad:
            opt.step()
            schedule.step()
            steps += 1
        bar.set_postfix({a.objective: f"{value:.4g}"})
        if progress:
            log(f"  align epoch {k}: {a.objective} {value:.4g}")
    return trace, steps


def _class_samples(groups, rng, maxsamples: int):
    """Classes in random order, each with up to `maxsamples` random members."""
    for c in rng.permutation(len(groups)):
        members = groups[c]
        take = members if len(members) <= maxsamples else \
            np.sort(rng.choice(members, maxsamples, replace=False))
        yield c, take


def _class_term(model, x_train, idx, objective, weight: float, device) -> torch.Tensor:
    xb = torch.from_numpy(np.ascontiguousarray(x_train[idx])).float().to(device)
    return weight * objective(model.embed(xb))


def epoch_value(model, x_train, groups, weights, objective, rng, maxsamples, device,
                with_grad: bool) -> float:
    """sum_i w_i * objective(source, target class i); gradients accumulated per class."""
    total = 0.0
    for c, idx in _class_samples(groups, rng, maxsamples):
        with torch.set_grad_enabled(with_grad):
            term = _class_term(model, x_train, idx, objective, weights[c], device)
            if with_grad:
                term.backward()
        total += float(term.detach())
    if not np.isfinite(total):
        raise UserError("the alignment objective became NaN/inf; lower align.lr or raise align.eps")
    return total


def _class_steps(model, x_train, groups, weights, objective, opt, rng, a, device) -> int:
    steps = 0
    for c, idx in _class_samples(groups, rng, a.maxsamples):
        opt.zero_grad(set_to_none=True)
        _class_term(model, x_train, idx, objective, weights[c], device).backward()
        opt.step()
        steps += 1
    return steps


def _train_only_embedder(model) -> dict:
    flags = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.embedder.parameters():
        p.requires_grad_(True)
    return flags


def _jsonable(info: dict) -> dict:
    return json.loads(json.dumps(info, default=str))


# ----------------------------------------------------------------------------- targets

def target_labels(data, cfg) -> tuple[np.ndarray, dict]:
    """Class labels of the training set; k-means pseudo-labels for dense / multi-label."""
    if data.spec.kind == "classification":
        return np.asarray(data.y_train), {"labels": "classes", "n": int(len(data.y_train))}
    return pseudo_labels(data.y_train, cfg.align.pseudo_labels, cfg.run.seed), \
        {"labels": f"k-means pseudo-labels (k={cfg.align.pseudo_labels})",
         "n": int(len(data.y_train))}


def pseudo_labels(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans
    flat = np.asarray(y, np.float64).reshape(len(y), -1)
    k = max(1, min(k, len(np.unique(flat, axis=0))))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(flat).astype(np.int64)


def class_groups(labels: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
    """Member indices and frequency weight of every class with >= 2 samples (the OTDD of a
    one-point class is undefined; such classes are left out, their weight with them)."""
    classes, counts = np.unique(labels, return_counts=True)
    keep = counts >= 2
    if not keep.any():
        raise UserError("alignment needs at least one target class with 2 or more samples")
    groups = [np.flatnonzero(labels == c) for c in classes[keep]]
    weights = [float(n) / len(labels) for n in counts[keep]]
    return groups, weights


# ----------------------------------------------------------------------------- objectives

def build_objective(name: str, xs: torch.Tensor, ys: torch.Tensor, eps: float,
                    inner_eps: float = 0.1, max_iter: int = 2000, label_grad: bool = True):
    """A callable target-features (m, d) -> scalar, with the source-only terms cached.
    `label_grad` False: OTDD's label-to-label distances are constants (ORCA)."""
    if name in ("otdd", "otdd-gaussian"):
        from .otdd import OTDD
        inner = "sinkhorn" if name == "otdd" else "gaussian"
        return OTDD(xs, ys, inner=inner, eps=eps, inner_eps=inner_eps, max_iter=max_iter,
                    label_grad=label_grad)
    if name == "mmd":
        return GaussianMMD(xs)
    if name == "l2":
        mean = xs.detach().mean(0)
        return lambda xt: ((xt.mean(0) - mean) ** 2).sum()
    raise UserError(f"unknown alignment objective '{name}'; valid: otdd, otdd-gaussian, mmd, l2")


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a * a).sum(1, keepdim=True) + (b * b).sum(1) - 2 * a @ b.T).clamp_min(0)


class GaussianMMD:
    """Biased MMD^2 with kernel exp(-||x - x'||^2 / h), h = median squared distance between
    source points (the median heuristic, fixed for the whole stage so that values compare
    across epochs); the source-source term is computed once."""

    def __init__(self, xs: torch.Tensor, chunk: int = 2048):
        self.xs = xs.detach()
        sub = self.xs[torch.randperm(len(xs), generator=torch.Generator().manual_seed(0))[:1000]]
        d2 = _sq_dists(sub, sub)
        off = d2[~torch.eye(len(sub), dtype=torch.bool, device=d2.device)]
        self.h = float(off.median()) if off.numel() else 1.0
        self.h = self.h if self.h > 0 else 1.0
        kxx = sum(torch.exp(-_sq_dists(self.xs[s: s + chunk], self.xs) / self.h).sum()
                  for s in range(0, len(xs), chunk))
        self.kxx = kxx / len(xs) ** 2

    def __call__(self, xt: torch.Tensor) -> torch.Tensor:
        kyy = torch.exp(-_sq_dists(xt, xt) / self.h).mean()
        kxy = torch.exp(-_sq_dists(self.xs, xt) / self.h).mean()
        return self.kxx + kyy - 2 * kxy
