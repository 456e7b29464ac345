"""One run end to end: `fit(config) -> FitResult`.

Resolve the config, check the run folder before any expensive work (`check_output_dir`; a
folder of another configuration or with damaged files is an error naming `--force`), load the
task, build embedder + body + predictor, optionally align the
embedder (stage 2, `align.py`), fine-tune (stage 3, `training.py`), evaluate the best-validation
and the last weights on the test split, and write the run folder:
`config.yaml`, `task.json` (what `xmodal predict` needs), `metrics.jsonl`, `summary.json`,
`best.safetensors` (and `resume.pt` while the run is in progress, so a crashed run continues
from its last finished epoch). `preflight` holds every check made before training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
import yaml

from . import artifacts
from .config import Config, check_run_name, config_hash, from_dict, load_config
from .errors import UserError
from .metrics import METRIC_LABELS, compute_metric
from .model import apply_finetune_mode, build_model, trainable_summary
from .predict import save_task_record
from .tasks import TaskData, load_task
from .otdd import sinkhorn_notes
from .training import (START_OVER, Trainer, TrainingDiverged, best_model, evaluate, one_line,
                       read_resume, resolve_device, resolve_precision)


@dataclass
class FitResult:
    run_dir: Path
    status: str            # done | failed
    summary: dict
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
    return load_config(config)


def run_id(cfg: Config) -> str:
    if cfg.run.name:
        return cfg.run.name
    task = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.task.name.removeprefix("npz:")).stem)
    model = cfg.body.name if cfg.baseline.method == "none" else cfg.baseline.method
    body = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name)
    return f"{task}-{body}-{config_hash(cfg)}"


def fit(config: Union[Config, dict, str, Path, None] = None, *, progress: bool = True,
        force: bool = False, log: Callable[[str], None] = print,
        data: Optional[TaskData] = None, run_dir: Optional[Path] = None) -> FitResult:
    """Train and evaluate one configuration. Re-running a finished run returns its stored
    result with `reused=True` (unless `force=True`, which retrains); re-running an interrupted
    one resumes after its last epoch."""
    cfg = as_config(config)
    run_dir = check_output_dir(cfg, run_dir)   # before any expensive work
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    if force:
        for name in ("resume.pt", "metrics.jsonl", "summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    else:
        _check_same_config(run_dir, cfg)
        done = _finished(run_dir)
        if done is not None:
            return done
    snapshot = read_resume(run_dir / "resume.pt")   # checked before the data are loaded
    started = time.time()
    checked = preflight(cfg, data)
    device, data, model, init_notes = checked.device, checked.data, checked.model, checked.notes
    if cfg.baseline.method != "none":
        return _fit_baseline(cfg, data, run_dir, started, log)
    artifacts.write_text(run_dir / "config.yaml", _config_yaml(cfg, device))  # input is valid
    save_task_record(run_dir, data)
    with sinkhorn_notes(log, "raise align.max_iter or align.eps"):
        align_info = _align(model, data, cfg, device, run_dir, progress, log)
    model = apply_finetune_mode(model, cfg.train.finetune, cfg.train.lora_rank)
    params = trainable_summary(model)
    log(f"{run_dir.name}: task {data.spec.name} {data.sizes()}, body {cfg.body.name}, "
        f"{params['trainable']:,} of {params['total']:,} parameters trainable ({cfg.train.finetune})")
    base = {"run_id": run_dir.name, "task": data.spec.name, "body": cfg.body.name,
            "metric": data.spec.metric, "metric_label": METRIC_LABELS[data.spec.metric],
            "sizes": data.sizes(), "parameters": params, "embedder_init": init_notes,
            "align": align_info, "notes": data.notes, "seed": cfg.run.seed,
            "selection": data.selection, "precision": resolve_precision(device, cfg.run.precision)}
    trainer = Trainer(model, data, cfg, device, resume_path=run_dir / "resume.pt",
                      on_epoch=lambda rec: _on_epoch(run_dir, trainer, rec, data, log),
                      progress=progress)
    base["budget"] = dataclasses.asdict(trainer.budget)
    if trainer.load_resume(snapshot):
        log(f"resuming {run_dir.name} after epoch {trainer.state.epoch}")
    try:
        state = trainer.run()
    except TrainingDiverged as exc:
        summary = {**base, "status": "failed", "error": str(exc),
                   "seconds": time.time() - started}
        artifacts.write_json(run_dir / "summary.json", summary)
        (run_dir / "resume.pt").unlink(missing_ok=True)
        log(f"run failed: {exc}")
        return FitResult(run_dir, "failed", summary, trainer.state.history)
    summary = {**base, **_final_eval(model, state, data, cfg, device, run_dir, progress),
               "status": "done", "seconds": time.time() - started}
    artifacts.write_json(run_dir / "summary.json", summary)
    (run_dir / "resume.pt").unlink(missing_ok=True)
    log(f"{run_dir.name}: test {summary['metric']} = {summary['test_metric_best']:.4f} "
        f"({'best val' if data.selection == 'best-val' else 'kept'} epoch {summary['best_epoch']}); "
        f"last epoch {summary['test_metric_last']:.4f}")
    return FitResult(run_dir, "done", summary, state.history)


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
    if cfg.baseline.method != "none":  # a domain baseline builds no network
        from .baselines import check_method
        check_method(cfg.baseline.method, data.spec)
        return Preflight(device, data, None, [])
    model, notes = build_model(data.spec, cfg)
    return Preflight(device, data, model, notes)


def check_output_dir(cfg: Config, run_dir: Optional[Path] = None) -> Path:
    """The run folder (`run.out` / `run.name`, or `run_dir`), checked before any expensive work:
    `run.name` is one plain folder name inside `run.out`, and the deepest existing part of the
    path is a folder this process can write to. Creates nothing; returns the run folder."""
    check_run_name(cfg.run.name)
    out = Path(cfg.run.out).expanduser()
    run_dir = Path(run_dir).expanduser() if run_dir is not None else out / run_id(cfg)
    for folder in (run_dir, *run_dir.parents):
        if not folder.exists():
            continue
        if not folder.is_dir():
            raise UserError(f"output folder '{folder}' exists and is not a folder; pick another "
                            f"--out (run.out)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UserError(f"cannot write to output folder '{folder}' (read-only or no "
                            f"permission); pick another --out (run.out)")
        break
    return run_dir


def _check_same_config(run_dir: Path, cfg: Config) -> None:
    """A run folder holds one configuration: a reused `run.name` with other settings is an
    error (never the old run's result)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    stored = _read_run_file(path, lambda text: yaml.safe_load(text)["config_hash"])
    if stored != config_hash(cfg):
        raise UserError(f"run folder {run_dir} holds a run of another configuration (config "
                        f"hash {stored}, this one is {config_hash(cfg)}); use --force to "
                        f"replace it, or pick another run.name")


def _read_run_file(path: Path, parse: Callable[[str], Any]) -> Any:
    """`parse(text of path)`; a damaged file is one `UserError` naming it and `--force`."""
    try:
        return parse(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise UserError(f"run folder file {path} is damaged ({one_line(exc)}); "
                        f"{START_OVER}") from None


def _finished(run_dir: Path) -> Optional[FitResult]:
    path = run_dir / "summary.json"
    if not path.is_file():
        return None
    summary = _read_run_file(path, _json_object)
    if summary.get("status") != "done":
        return None
    history = _read_run_file(run_dir / "metrics.jsonl", _json_lines) \
        if (run_dir / "metrics.jsonl").is_file() else []
    return FitResult(run_dir, "done", summary, history, reused=True)


def _json_object(text: str) -> dict:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _json_lines(text: str) -> list[dict]:
    return [_json_object(line) for line in text.splitlines() if line.strip()]


def _config_yaml(cfg: Config, device: torch.device) -> str:
    doc = {"config": cfg.to_dict(), "seed": cfg.run.seed, "config_hash": config_hash(cfg),
           "device": str(device), **artifacts.provenance()}
    return yaml.safe_dump(doc, sort_keys=False)


def _on_epoch(run_dir: Path, trainer: Trainer, record: dict, data: TaskData, log) -> None:
    lines = "".join(json.dumps(r) + "\n" for r in trainer.state.history)
    artifacts.write_text(run_dir / "metrics.jsonl", lines)
    if not trainer.progress:
        return
    val = record["val_metric"]
    val = f"val {data.spec.metric} {val:.4f}" if val is not None else "no validation"
    log(f"  epoch {record['epoch']}/{trainer.epochs}: train loss {record['train_loss']:.4f}, "
        f"{val}, lr {record['lr']:.2e}, {record['seconds']:.1f}s")


def _align(model, data, cfg: Config, device, run_dir: Path, progress: bool, log) -> Optional[dict]:
    if cfg.align.proxy == "none" or cfg.align.epochs == 0:
        return None
    from .align import run_alignment
    return run_alignment(model, data, cfg, device, run_dir, progress=progress, log=log)


def _final_eval(model, state, data: TaskData, cfg: Config, device, run_dir: Path,
                progress: bool) -> dict:
    last_test, info = evaluate(model, data.x_test, data.y_test, data, cfg, device, progress,
                               "test (last epoch)")
    best = best_model(model, state)
    best_test, info_best = evaluate(best, data.x_test, data.y_test, data, cfg, device, progress,
                                    "test (best epoch)")
    if cfg.run.save_checkpoint:
        artifacts.save_safetensors(best.state_dict(), run_dir / "best.safetensors",
                                   {"epoch": state.best_epoch, "config_hash": config_hash(cfg)})
    last_val = state.history[-1]["val_metric"] if state.history else None
    best_val = state.best_metric if math.isfinite(state.best_metric) else None
    return {"best_epoch": state.best_epoch, "best_val_metric": best_val,
            "test_metric_best": best_test, "test_metric_last": last_test,
            "last_val_metric": last_val, "epochs": len(state.history), **info_best}


def _fit_baseline(cfg: Config, data: TaskData, run_dir: Path, started: float, log) -> FitResult:
    """A domain baseline (`baseline.method`) in place of fine-tuning, with the same files."""
    from .baselines import predict_baseline
    artifacts.write_text(run_dir / "config.yaml", _config_yaml(cfg, torch.device("cpu")))
    outputs = predict_baseline(cfg.baseline.method, data, cfg.run.seed)
    metric = lambda out, y: compute_metric(  # noqa: E731
        data.spec.metric, *((data.decode_y(out), data.decode_y(y))
                            if data.spec.kind == "dense" else (out, y)))
    val = metric(outputs["val"], data.y_val)[0] if len(data.x_val) else None
    test, info = metric(outputs["test"], data.y_test)
    record = {"epoch": 1, "train_loss": None, "val_metric": val, "lr": None,
              "seconds": time.time() - started, "test_metric": test}
    artifacts.write_text(run_dir / "metrics.jsonl", json.dumps(record) + "\n")
    summary = {"run_id": run_dir.name, "task": data.spec.name, "body": cfg.baseline.method,
               "baseline": cfg.baseline.method, "metric": data.spec.metric,
               "metric_label": METRIC_LABELS[data.spec.metric], "sizes": data.sizes(),
               "notes": data.notes, "seed": cfg.run.seed, "selection": data.selection,
               "best_epoch": 1, "best_val_metric": val, "last_val_metric": val,
               "test_metric_best": test, "test_metric_last": test, "epochs": 1, **info,
               "status": "done", "seconds": time.time() - started}
    artifacts.write_json(run_dir / "summary.json", summary)
    log(f"{run_dir.name}: baseline {cfg.baseline.method}, test {data.spec.metric} = {test:.4f}")
    return FitResult(run_dir, "done", summary, [record])
