"""Stage 2 (align): train the embedder toward a proxy dataset (Algorithm 1 of arXiv 2403.13537).

`run_alignment(model, data, settings, device, run_dir)` trains only the embedder: per embedder epoch,
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
`embedder_epoch_{k}.safetensors` in a stage folder keyed by `settings.key`
(`config.identity.alignment_key`):
`align.cache_dir/<key>/` when a cache dir is set (shared by every run with the same alignment
settings, guarded by a file lock, finished when `done.json` exists), else `run_dir/align/`.
A later run with the same key loads the state of `align.from_epoch` (default: the last) instead
of training again. The trace goes to `run_dir/align.jsonl` and into the returned dict.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..config.resolve import AlignSettings
from ..data.proxies import ProxySource, proxy_features
from ..errors import UserError
from ..io import artifacts
from ..ot.objectives import build_objective

class AlignmentDiverged(RuntimeError):
    """The alignment objective became NaN or inf: a failed run, like `TrainingDiverged`."""


# ----------------------------------------------------------------------------- optimiser

def make_optimizer(params, s: AlignSettings) -> torch.optim.Optimizer:
    """The stage-2 optimiser over the embedder's parameters (`s.optimizer`: adamw, adam, sgd)."""
    if s.optimizer == "sgd":
        return torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    if s.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=s.lr, betas=s.betas, weight_decay=s.weight_decay)
    raise ValueError(f"align.optimizer 'task' needs train.optimizer adamw, adam or sgd; "
                     f"got {s.optimizer!r}")


def make_schedule(opt, s: AlignSettings):
    """lr x align.lr_gamma after each embedder epoch in align.lr_milestones (stepped once per
    embedder epoch)."""
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(s.lr_milestones),
                                                gamma=s.lr_gamma)


# ----------------------------------------------------------------------------- stage folder

def stage_folder(s: AlignSettings, run_dir: Path) -> Path:
    if s.cache_dir:
        return Path(s.cache_dir).expanduser() / s.key
    return Path(run_dir) / "align"


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
    if stored.get("key") != key:
        return None
    for rec in stored.get("trace", []):   # stages stored before the trace was keyed "value"
        rec.setdefault("value", rec.pop("otdd", None))
    return stored


# ----------------------------------------------------------------------------- entry point

def run_alignment(model, data, s: AlignSettings, device, run_dir, progress: bool = True,
                  log: Callable[[str], None] = print) -> dict:
    """Align the embedder (or reuse a stored alignment) and leave it in the state of
    `s.from_epoch`. Returns a JSON-serialisable summary with the per-epoch trace; a NaN/inf
    objective raises `AlignmentDiverged`."""
    run_dir = Path(run_dir)
    folder = stage_folder(s, run_dir)
    model.to(device)
    with file_lock(folder / ".lock"):
        stored = _read_done(folder, s.key)
        reused = stored is not None
        if not reused:
            (folder / "done.json").unlink(missing_ok=True)   # a stale stage is overwritten
            stored = _train(model, data, s, device, folder, progress, log)
    load_embedder(model, folder, s.from_epoch)
    result = {**stored, "epoch_used": s.from_epoch, "reused": reused, "folder": str(folder)}
    log(trace_line(result))
    return result


def trace_line(result: dict) -> str:
    """One log line for a finished alignment."""
    first, last = result["trace"][0]["value"], result["trace"][-1]["value"]
    how = "reused stored alignment" if result["reused"] else f"trained in {result['seconds']:.1f}s"
    return (f"alignment ({result['objective']}, proxy {result['proxy']}): {first:.4g} -> "
            f"{last:.4g} over {result['epochs']} embedder epochs ({how}); fine-tuning from "
            f"epoch {result['epoch_used']}")


# ----------------------------------------------------------------------------- training

@dataclass
class _Loop:
    """What every embedder epoch reads: the model, the target classes and the objective."""
    model: torch.nn.Module
    x_train: np.ndarray
    groups: list
    weights: list
    objective: Callable
    device: torch.device

    def term(self, c: int, idx: np.ndarray) -> torch.Tensor:
        """w_c * objective(embedder features of the samples `idx` of class c)."""
        xb = torch.from_numpy(np.ascontiguousarray(self.x_train[idx])).float().to(self.device)
        return self.weights[c] * self.objective(self.model.embed(xb))


def _train(model, data, s: AlignSettings, device, folder: Path, progress: bool, log) -> dict:
    started = time.time()
    xs, ys, pinfo = proxy_features(s.proxy, model.body, ProxySource.of(s), device)
    objective = build_objective(s.objective, xs, ys, s.eps, s.inner_eps, s.max_iter, s.label_grad)
    labels, tinfo = target_labels(data, s.pseudo_labels, s.seed)
    groups, weights = class_groups(labels)
    loop = _Loop(model, data.x_train, groups, weights, objective, device)
    flags = _train_only_embedder(model)
    try:
        trace, steps = _epochs(loop, s, folder, started, progress, log)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    summary = {"key": s.key, "objective": s.objective, "proxy": s.proxy,
               "epochs": s.epochs, "source_classes": int(ys.max()) + 1, "n_source": int(len(ys)),
               "source": _jsonable(pinfo), "target": tinfo, "lr": s.lr,
               "optimizer": s.optimizer, "lr_milestones": list(s.lr_milestones),
               "lr_gamma": s.lr_gamma, "label_grad": s.label_grad, "step_per": s.step_per,
               "steps": steps, "trace": trace, "seconds": time.time() - started,
               "identity": s.identity}
    artifacts.write_json(folder / "done.json", summary)
    return summary


def _epochs(loop: _Loop, s: AlignSettings, folder: Path, started: float, progress: bool,
            log) -> tuple[list, int]:
    """Trace entry k = the objective of the embedder after k epochs (`value`), and `lr`, the lr
    of the step(s) of epoch k + 1 (none after the last); saves each state."""
    from tqdm.auto import tqdm
    rng = np.random.default_rng(s.seed)
    opt = make_optimizer(loop.model.embedder.parameters(), s)
    schedule = make_schedule(opt, s)
    trace, steps = [], 0
    bar = tqdm(range(s.epochs + 1), desc="align", file=sys.stderr, leave=False,
               disable=not (progress and sys.stderr.isatty()))
    for k in bar:
        if k > 0 and s.step_per == "class":
            steps += _class_steps(loop, opt, rng, s.maxsamples)
            schedule.step()
        with_grad = s.step_per == "epoch" and k < s.epochs
        opt.zero_grad(set_to_none=True)
        value = epoch_value(loop, rng, s.maxsamples, with_grad)
        trace.append({"epoch": k, "value": value, "seconds": round(time.time() - started, 3),
                      "lr": opt.param_groups[0]["lr"] if k < s.epochs else None})
        artifacts.save_safetensors(loop.model.embedder.state_dict(), embedder_path(folder, k),
                                   {"epoch": k, "key": s.key})
        if with_grad:
            opt.step()
            schedule.step()
            steps += 1
        bar.set_postfix({s.objective: f"{value:.4g}"})
        if progress:
            log(f"  align epoch {k}: {s.objective} {value:.4g}")
    return trace, steps


def _class_samples(groups, rng, maxsamples: int):
    """Classes in random order, each with up to `maxsamples` random members."""
    for c in rng.permutation(len(groups)):
        members = groups[c]
        take = members if len(members) <= maxsamples else \
            np.sort(rng.choice(members, maxsamples, replace=False))
        yield c, take


def epoch_value(loop: _Loop, rng, maxsamples: int, with_grad: bool) -> float:
    """sum_i w_i * objective(source, target class i); gradients accumulated per class."""
    total = 0.0
    for c, idx in _class_samples(loop.groups, rng, maxsamples):
        with torch.set_grad_enabled(with_grad):
            term = loop.term(c, idx)
            if with_grad:
                term.backward()
        total += float(term.detach())
    if not np.isfinite(total):
        raise AlignmentDiverged("the alignment objective became NaN/inf; lower align.lr or "
                                "raise align.eps")
    return total


def _class_steps(loop: _Loop, opt, rng, maxsamples: int) -> int:
    steps = 0
    for c, idx in _class_samples(loop.groups, rng, maxsamples):
        opt.zero_grad(set_to_none=True)
        loop.term(c, idx).backward()
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

def target_labels(data, k: int, seed: int) -> tuple[np.ndarray, dict]:
    """Class labels of the training set; k-means pseudo-labels (k clusters) for dense /
    multi-label targets."""
    if data.spec.kind == "classification":
        return np.asarray(data.y_train), {"labels": "classes", "n": int(len(data.y_train))}
    labels = pseudo_labels(data.y_train, k, seed)
    used = len(np.unique(labels))
    return labels, {"labels": f"k-means pseudo-labels (k={used}"
                              + ("" if used == k else f"; {k} asked, at most n/2") + ")",
                    "n": int(len(data.y_train))}


def pseudo_labels(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means cluster ids of the flattened targets, with at most n/2 clusters (a class needs
    two samples for OTDD: with 8 training fields, 10 clusters would all be singletons)."""
    from sklearn.cluster import KMeans
    flat = np.asarray(y, np.float64).reshape(len(y), -1)
    k = max(1, min(k, len(flat) // 2, len(np.unique(flat, axis=0))))
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
