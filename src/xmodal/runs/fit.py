"""One run end to end, the run recipe: `fit(config) -> FitResult`.

The only module below the CLI that reads the whole `Config`: it resolves it, checks the run
folder before any expensive work (`check_output_dir`; a folder of another configuration or with
damaged files is an error naming `--force`), loads the task, builds embedder + body + predictor,
optionally aligns the embedder (stage 2, `stages.align`), fine-tunes (stage 3,
`stages.training`), evaluates the best-validation and the last weights on the test split, and
writes the run folder through `RunFolder` (resuming from `resume.pt` after a crash).
`preflight` holds every check made before training; a domain baseline (`baseline.method`)
runs `baselines.run_baseline` on the same split instead.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ..config import Config, check_run_name, config_hash, from_dict, load_config
from ..config.resolve import Resolved, resolve
from ..data.registry import load_task
from ..data.types import TaskData
from ..errors import RunFailed, UserError
from ..io import artifacts
from ..model.crossmodal import build_model, checkpoint_state
from ..model.finetune import apply_finetune_mode, trainable_summary
from ..ot.sinkhorn import sinkhorn_notes
from ..stages.device import resolve_device, resolve_precision
from ..stages.evaluate import evaluate
from ..stages.memory import PeakMemory
from ..stages.metrics import METRIC_LABELS
from ..stages.training import LoaderOptions, Trainer, best_model, read_resume
from .folder import RunFolder, Summary
from .predict import save_task_record


@dataclass
class FitResult:
    run_dir: Path
    status: str            # done | failed
    summary: dict          # summary.json (`Summary.to_dict()`)
    history: list
    reused: bool = False   # True: the run was already complete; fit returned its stored result

    @property
    def test_metric(self) -> Optional[float]:
        return self.summary.get("test_metric_best")


def as_config(config: Union[Config, dict, str, Path, None]) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, dict):
        return from_dict(config)
    if config is not None and not isinstance(config, (str, Path)):
        raise UserError(f"fit() takes a Config, a nested dict or a YAML path; got "
                        f"{type(config).__name__}")
    return load_config(config)


def fit(config: Union[Config, dict, str, Path, None] = None, *, progress: bool = True,
        force: bool = False, log: Callable[[str], None] = print,
        data: Optional[TaskData] = None, run_dir: Optional[Path] = None,
        stop=None) -> FitResult:
    """Train and evaluate one configuration. Re-running a finished run returns its stored
    result with `reused=True` (unless `force=True`, which retrains); re-running an interrupted
    one resumes after its last epoch. `stop` (a threading.Event): once set, the run writes its
    resume snapshot after the current epoch and raises `errors.Stopped`."""
    cfg = as_config(config)
    folder = RunFolder(check_output_dir(cfg, run_dir))   # before any expensive work
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    with folder.locked():
        return _fit_locked(cfg, folder, progress, force, log, data, stop)


def _fit_locked(cfg: Config, folder: RunFolder, progress: bool, force: bool, log,
                data: Optional[TaskData], stop) -> FitResult:
    if force:
        folder.clear_progress()
    else:
        _check_same_config(folder, cfg)
        done = _finished(folder)
        if done is not None:
            return done
    snapshot = read_resume(folder.resume)   # checked before the data are loaded
    started = time.time()
    resolved = resolve(cfg)
    checked = preflight(cfg, data)
    baseline = cfg.baseline.method != "none"
    folder.write_config(_config_doc(cfg, torch.device("cpu") if baseline else checked.device))
    if baseline:
        return _fit_baseline(cfg, checked.data, folder, started, log)
    save_task_record(folder.path, checked.data)
    return _fit_model(resolved, checked, folder, snapshot, started, progress, log, stop)


def _fit_model(resolved: Resolved, checked: "Preflight", folder: RunFolder, snapshot,
               started: float, progress: bool, log, stop=None) -> FitResult:
    cfg, device, data = resolved.config, checked.device, checked.data
    summary = _base_summary(cfg, data, folder, device, checked.notes)
    trainer = None
    peak = PeakMemory(device, checked.model)
    try:
        with peak:
            summary.align = _align(resolved, checked.model, data, device, folder, progress, log)
            model = apply_finetune_mode(checked.model, cfg.train.finetune, cfg.train.lora_rank)
            summary.parameters = trainable_summary(model)
            _log_start(log, folder, data, cfg, summary.parameters)
            trainer = _trainer(cfg, model, data, device, folder, progress, log, stop)
            summary.budget = dataclasses.asdict(trainer.budget)
            if trainer.cached:
                summary.notes = [*summary.notes, "embedder and body frozen: their outputs were "
                                 "computed once in eval mode and cached (train.cache_frozen)"]
            if trainer.load_resume(snapshot):
                log(f"resuming {folder.name} after epoch {trainer.state.epoch}")
            state = trainer.run()
            _final_eval(summary, model, state, data, cfg, device, folder, progress)
    except RunFailed as exc:
        return _failed(folder, summary, exc, started, trainer, log)
    summary.step_seconds, summary.peak_memory = trainer.step_seconds(), peak.result()
    summary.seconds = time.time() - started
    folder.write_summary(summary)
    folder.resume.unlink(missing_ok=True)
    kept = "best val" if data.selection == "best-val" else "kept"
    log(f"{folder.name}: test {summary.metric} = {summary.test_metric_best:.4f} "
        f"({kept} epoch {summary.best_epoch}); last epoch {summary.test_metric_last:.4f}")
    return FitResult(folder.path, "done", summary.to_dict(), state.history)


def _base_summary(cfg: Config, data: TaskData, folder: RunFolder, device, notes) -> Summary:
    return Summary(run_id=folder.name, task=data.spec.name, body=cfg.body.name,
                   metric=data.spec.metric, metric_label=METRIC_LABELS[data.spec.metric],
                   sizes=data.sizes(), embedder_init=notes, notes=data.notes,
                   seed=cfg.run.seed, selection=data.selection,
                   precision=resolve_precision(device, cfg.run.precision))


def _log_start(log, folder: RunFolder, data: TaskData, cfg: Config, params: dict) -> None:
    log(f"{folder.name}: task {data.spec.name} {data.sizes()}, body {cfg.body.name}, "
        f"{params['trainable']:,} of {params['total']:,} parameters trainable "
        f"({cfg.train.finetune})")


def trainer_for(cfg: Config, model, data: TaskData, device, **kwargs) -> Trainer:
    """The stage-3 `Trainer` with this config's `train` section and run settings."""
    return Trainer(model, data, cfg.train, device, seed=cfg.run.seed, precision=cfg.run.precision,
                   loader=LoaderOptions(cfg.run.num_workers, cfg.run.pin_memory),
                   resume_interval=cfg.run.resume_interval, **kwargs)


def _trainer(cfg: Config, model, data: TaskData, device, folder: RunFolder, progress: bool,
             log, stop=None) -> Trainer:
    trainer = trainer_for(cfg, model, data, device, resume_path=folder.resume, progress=progress,
                          on_epoch=lambda rec: _on_epoch(folder, trainer, rec, data, log),
                          stop=stop)
    return trainer


def _failed(folder: RunFolder, summary: Summary, exc: RunFailed, started: float, trainer,
            log) -> FitResult:
    """A run that failed on its own (divergence): stored with status `failed`."""
    summary.status, summary.error = "failed", str(exc)
    summary.seconds = time.time() - started
    folder.write_summary(summary)
    folder.resume.unlink(missing_ok=True)
    log(f"run failed: {exc}")
    history = trainer.state.history if trainer is not None else []
    return FitResult(folder.path, "failed", summary.to_dict(), history)


@dataclass
class Preflight:
    device: torch.device
    data: TaskData
    model: Optional[torch.nn.Module]   # None for a domain baseline
    notes: list            # how the embedder was initialised from the body


def preflight(cfg: Config, data: Optional[TaskData] = None) -> Preflight:
    """Every check a run makes before it trains, each a `UserError`: the device exists, the
    task's data load and validate (files present, shapes, labels), the body resolves (offline:
    a hub name must be cached) and the model builds for the task. `fit` and `--dry-run` call it."""
    device = resolve_device(cfg.run.device)
    data = data if data is not None else load_task(cfg.task)
    if cfg.train.pos_weight is not None and data.spec.kind != "multilabel":
        raise UserError(f"config key 'train.pos_weight' weighs positive labels of a multi-label "
                        f"task; task '{data.spec.name}' is {data.spec.kind}: remove it")
    if cfg.baseline.method != "none":  # a domain baseline builds no network
        from .baselines import check_method
        check_method(cfg.baseline.method, data.spec)
        return Preflight(device, data, None, [])
    model, notes = build_model(data.spec, cfg.body, cfg.embedder, cfg.run.seed)
    return Preflight(device, data, model, notes)


def check_output_dir(cfg: Config, run_dir: Optional[Path] = None) -> Path:
    """The run folder (`run.out` / `run.name`, or `run_dir`), checked before any expensive work:
    `run.name` is one plain folder name inside `run.out`, and the deepest existing part of the
    path is a folder this process can write to. Creates nothing; returns the run folder."""
    from ..config.identity import run_id
    check_run_name(cfg.run.name)
    out = Path(cfg.run.out).expanduser()
    run_dir = Path(run_dir).expanduser() if run_dir is not None else out / run_id(cfg)
    if run_dir.is_symlink():
        raise UserError(f"run folder {run_dir} is a symbolic link (to {os.readlink(run_dir)}); "
                        f"xmodal writes only inside --out: remove the link or pick another "
                        f"run.name")
    for parent in (run_dir, *run_dir.parents):
        if not parent.exists():
            continue
        if not parent.is_dir():
            raise UserError(f"output folder '{parent}' exists and is not a folder; pick another "
                            f"--out (run.out)")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to output folder '{parent}' (read-only or no "
                            f"permission); pick another --out (run.out)")
        break
    return run_dir


def _check_same_config(folder: RunFolder, cfg: Config) -> None:
    """A run folder holds one configuration: a reused `run.name` with other settings is an
    error (never the old run's result)."""
    stored = folder.config_hash()
    if stored is not None and stored != config_hash(cfg):
        raise UserError(f"run folder {folder.path} holds a run of another configuration (config "
                        f"hash {stored}, this one is {config_hash(cfg)}); use --force to "
                        f"replace it, or pick another run.name")


def _finished(folder: RunFolder) -> Optional[FitResult]:
    summary = folder.read_summary()
    if summary is None or summary.status != "done":
        return None
    return FitResult(folder.path, "done", summary.to_dict(), folder.read_history(), reused=True)


def _config_doc(cfg: Config, device: torch.device) -> dict:
    return {"config": cfg.to_dict(), "seed": cfg.run.seed, "config_hash": config_hash(cfg),
            "device": str(device), **artifacts.provenance()}


def _on_epoch(folder: RunFolder, trainer: Trainer, record: dict, data: TaskData, log) -> None:
    folder.write_history(trainer.state.history)
    if not trainer.progress:
        return
    val = record["val_metric"]
    val = f"val {data.spec.metric} {val:.4f}" if val is not None else "no validation"
    log(f"  epoch {record['epoch']}/{trainer.epochs}: train loss {record['train_loss']:.4f}, "
        f"{val}, lr {record['lr']:.2e}, {record['seconds']:.1f}s")


def _align(resolved: Resolved, model, data, device, folder: RunFolder, progress: bool,
           log) -> Optional[dict]:
    if resolved.align is None:
        return None
    from ..stages.align import run_alignment
    with sinkhorn_notes(log, "raise align.max_iter or align.eps"):
        result = run_alignment(model, data, resolved.align, device, folder.path,
                               progress=progress, log=log)
    folder.write_align_trace(result["trace"])
    return result


def _final_eval(summary: Summary, model, state, data: TaskData, cfg: Config, device,
                folder: RunFolder, progress: bool) -> None:
    def test(m, desc):
        return evaluate(m, data.x_test, data.y_test, data, device, cfg.train.eval_batch_size,
                        cfg.run.precision, progress, desc)
    summary.test_metric_last, extra = test(model, "test (last epoch)")
    if state.best_state is None or state.best_epoch == len(state.history):
        best = model       # the last epoch is the one kept: the same weights, scored once
        summary.test_metric_best, summary.extra = summary.test_metric_last, extra
    else:
        best = best_model(model, state)
        summary.test_metric_best, summary.extra = test(best, "test (best epoch)")
    if cfg.run.save_checkpoint:
        artifacts.save_safetensors(checkpoint_state(best), folder.checkpoint,
                                   {"epoch": state.best_epoch, "config_hash": config_hash(cfg)})
    summary.last_val_metric = state.history[-1]["val_metric"] if state.history else None
    summary.best_val_metric = state.best_metric if math.isfinite(state.best_metric) else None
    summary.best_epoch, summary.epochs = state.best_epoch, len(state.history)


def _fit_baseline(cfg: Config, data: TaskData, folder: RunFolder, started: float,
                  log) -> FitResult:
    """A domain baseline (`baseline.method`) in place of fine-tuning, with the same files."""
    from .baselines import run_baseline
    summary, history = run_baseline(cfg.baseline.method, data, cfg.run.seed, folder.name, started)
    folder.write_history(history)
    folder.write_summary(summary)
    log(f"{folder.name}: baseline {cfg.baseline.method}, test {data.spec.metric} = "
        f"{summary.test_metric_best:.4f}")
    return FitResult(folder.path, "done", summary.to_dict(), history)
