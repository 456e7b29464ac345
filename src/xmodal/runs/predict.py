"""Use a finished run: `load_run(run_dir) -> LoadedRun` and `xmodal predict`.

Owns the task record a run folder keeps for this (`task.json`, written by `fit` before
training: the task spec, the label names and the input normalisation fitted on the training
split) and everything that reads it back. A `LoadedRun` rebuilds the model from `config.yaml`
and `task.json`, loads `best.safetensors` (safetensors only: nothing is unpickled) and predicts
on raw inputs: it adds a missing channel axis, applies the stored normalisation, and the model
itself pads / resizes as it did in training. Outputs are computed exactly as the run's final
evaluation computed them (same batch size and precision), so predicting on the run's own test
split reproduces `test_metric_best`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..io import artifacts
from ..errors import UserError, one_line
from .folder import RunFolder, Summary



# ----------------------------------------------------------------------------- the task record

def save_task_record(run_dir: Path, data) -> Path:
    """Write `task.json`: what `load_run` needs besides the config and the weights."""
    spec = data.spec
    record = {"spec": {**spec.__dict__, "input_shape": list(spec.input_shape),
                       "output_shape": list(spec.output_shape)},
              "label_names": data.label_names,
              "preprocess": {k: _encode(getattr(data, k))
                             for k in ("x_mean", "x_std", "y_mean", "y_std")}}
    return artifacts.write_text(RunFolder(run_dir).task, json.dumps(record) + "\n")


def _encode(a: Optional[np.ndarray]) -> Optional[dict]:
    if a is None:
        return None
    a = np.asarray(a)  # tolist() gives exact Python floats; json writes them round-trip exactly
    return {"dtype": str(a.dtype), "shape": list(a.shape), "data": a.ravel().tolist()}


def _decode(blob: Optional[dict]) -> Optional[np.ndarray]:
    if blob is None:
        return None
    return np.asarray(blob["data"], dtype=blob["dtype"]).reshape(blob["shape"])


@dataclass(frozen=True)
class TaskRecord:
    spec: object                         # tasks.TaskSpec
    label_names: Optional[list]
    x_mean: Optional[np.ndarray]
    x_std: Optional[np.ndarray]
    y_mean: Optional[np.ndarray]
    y_std: Optional[np.ndarray]


def read_task_record(run_dir: Path) -> TaskRecord:
    from ..data.types import TaskSpec
    path = RunFolder(run_dir).task
    if not path.is_file():
        raise UserError(f"run folder {run_dir} has no {RunFolder.TASK} (runs trained before "
                        f"`xmodal predict` existed lack it); retrain it with --force")
    damaged = f"run folder file {path} is damaged"
    try:
        doc = json.loads(path.read_text())
        spec = doc["spec"]
        spec = TaskSpec(**{**spec, "input_shape": tuple(spec["input_shape"]),
                           "output_shape": tuple(spec["output_shape"])})
        pre = {k: _decode(doc["preprocess"].get(k)) for k in ("x_mean", "x_std", "y_mean", "y_std")}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{damaged} ({type(exc).__name__}: {exc}); retrain the run with "
                        f"--force") from None
    for key, value in pre.items():
        if value is None:
            continue
        if not np.isfinite(value).all() or (key.endswith("std") and (value <= 0).any()):
            raise UserError(f"{damaged}: its {key} holds NaN, inf or (for a std) values <= 0; "
                            f"retrain the run with --force")
    return TaskRecord(spec, doc.get("label_names"), **pre)


# ----------------------------------------------------------------------------- loading

def load_run(run_dir, device: str = "cpu") -> "LoadedRun":
    """The finished run in `run_dir`, ready to predict (on `device`: cpu | cuda | auto)."""
    from ..config import from_dict
    from ..stages.device import resolve_device
    folder = RunFolder(run_dir)
    if not folder.config.is_file():
        raise UserError(f"'{folder.path}' is not a run folder (no {folder.CONFIG}); give a folder "
                        f"that `xmodal fit` wrote, e.g. runs/<run id>")
    summary = _finished_summary(folder)
    if not folder.checkpoint.is_file():
        raise UserError(f"run folder {folder.path} has no {folder.CHECKPOINT} (run.save_checkpoint "
                        f"was false); retrain it with run.save_checkpoint=true")
    cfg = from_dict(folder.read_config()["config"])
    record = read_task_record(folder.path)
    model = _load_model(folder, record.spec, cfg)
    dev = resolve_device(device)
    return LoadedRun(folder.path, cfg, record, model.to(dev).eval(), dev, summary.to_dict())


def _finished_summary(folder: RunFolder) -> Summary:
    summary = folder.read_summary()
    if summary is None or summary.status != "done":
        status = summary.status if summary is not None else "in progress"
        raise UserError(f"run {folder.path} is not finished (status {status}); finish it with "
                        f"`xmodal fit` first")
    return summary


def _load_model(folder: RunFolder, spec, cfg):
    from safetensors.torch import load_file

    from ..model.crossmodal import build_model
    from ..model.finetune import apply_finetune_mode
    model, _ = build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)
    model = apply_finetune_mode(model, cfg.train.finetune, cfg.train.lora_rank)
    try:
        missing, unexpected = model.load_used_state(load_file(str(folder.checkpoint)))
    except Exception as exc:   # truncated or foreign file, tensors of another shape
        raise UserError(f"{folder.checkpoint} cannot be loaded into the model its "
                        f"{folder.CONFIG} builds ({one_line(exc)}); retrain the run with "
                        f"--force") from None
    if missing or unexpected:
        raise UserError(f"{folder.checkpoint} does not match the model its {folder.CONFIG} "
                        f"builds ({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return model


# ----------------------------------------------------------------------------- predicting

@dataclass
class LoadedRun:
    """A finished run: `.predict(x)`, `.predict_proba(x)`, `.score(x, y)`; `.config` (Config),
    `.model` (a plain torch.nn.Module in eval mode), `.spec` and `.label_names`."""
    run_dir: Path
    config: object
    record: TaskRecord
    model: object
    device: object
    summary: dict

    @property
    def spec(self):
        return self.record.spec

    @property
    def label_names(self) -> Optional[list]:
        return self.record.label_names

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Raw inputs -> model inputs: channel axis, shape / finiteness checks, normalisation."""
        x = np.asarray(x)
        shape = tuple(self.spec.input_shape)
        if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
            raise UserError(f"x must hold real numbers, got dtype {x.dtype}")
        if x.ndim == len(shape) and shape[0] == 1 and tuple(x.shape[1:]) == shape[1:]:
            x = x[:, None]  # (N, L) or (N, H, W) for a single-channel task
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != shape:
            raise UserError(f"x has shape {x.shape} but run {self.run_dir.name} was trained on "
                            f"task {self.spec.name} with inputs (N, {', '.join(map(str, shape))}) "
                            f"(channels first); give x in that layout")
        if len(x) == 0:
            raise UserError("x has no samples (shape "
                            f"{x.shape}); give at least one")
        if not np.isfinite(x).all():
            raise UserError(f"x contains NaN or inf ({int((~np.isfinite(x)).sum())} values)")
        if self.record.x_mean is None:
            return np.ascontiguousarray(x, dtype=np.float32)
        from ..data.splits import normalise_x
        return np.ascontiguousarray(normalise_x(x, self.record.x_mean, self.record.x_std))

    def outputs(self, x: np.ndarray, progress: bool = False) -> np.ndarray:
        """Model outputs as the run's evaluation computed them: logits, or dense values in the
        targets' original units."""
        from ..stages.evaluate import predict
        cfg = self.config
        out = predict(self.model, self.prepare(x), cfg.train.eval_batch_size, self.device,
                      cfg.run.precision, progress=progress)
        if self.spec.kind == "dense" and self.record.y_mean is not None:
            out = out * self.record.y_std + self.record.y_mean
        return out

    def export(self, folder, format: str = "torchscript") -> dict:
        """Write a folder that loads without xmodal (`runs/export.py`): model.pt
        (TorchScript: raw inputs in, `outputs` out), task.json, README.md."""
        from .export import export_run
        return export_run(self, folder, format)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class ids (classification), 0/1 per label (multi-label) or values (dense)."""
        return self._pred(self.outputs(x))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (softmax) or per-label probabilities (sigmoid)."""
        if self.spec.kind == "dense":
            raise UserError(f"task {self.spec.name} is dense (a regression): it has values, "
                            f"not probabilities; use predict")
        return _proba(self.spec.kind, self.outputs(x))

    def score(self, x: np.ndarray, y: np.ndarray) -> float:
        """The task metric (lower is better) of the predictions on (x, y)."""
        return self.metric(self.outputs(x), y)

    def metric(self, outputs: np.ndarray, y: np.ndarray) -> float:
        from ..stages.metrics import compute_metric
        return compute_metric(self.spec.metric, outputs, self._targets(y, len(outputs)))[0]

    def _pred(self, out: np.ndarray) -> np.ndarray:
        if self.spec.kind == "classification":
            return out.argmax(axis=1)
        if self.spec.kind == "multilabel":
            return (out >= 0).astype(np.int64)  # sigmoid(logit) >= 0.5
        return out

    def _targets(self, y: np.ndarray, n: int) -> np.ndarray:
        from ..data.splits import _validate_targets
        y = np.asarray(y)
        spec = self.spec
        if spec.kind == "dense" and y.ndim == len(spec.output_shape) and spec.output_shape[0] == 1:
            y = y[:, None]
        if spec.kind == "classification" and np.issubdtype(y.dtype, np.floating) \
                and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        if len(y) != n:
            raise UserError(f"y has {len(y)} rows but x has {n}")
        _validate_targets(y, spec, "y")
        return y


def _proba(kind: str, out: np.ndarray) -> np.ndarray:
    import torch
    t = torch.from_numpy(out)
    return (torch.softmax(t, dim=1) if kind == "classification" else torch.sigmoid(t)).numpy()


# ----------------------------------------------------------------------------- the command

def read_input(path, need_y: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """`x` (and `y` with --labels) from the user's .npz, read without unpickling."""
    from ..io.artifacts import read_npz_arrays
    arrays = read_npz_arrays(path, "--input")
    if "x" not in arrays:
        raise UserError(f"--input file {path} has no array 'x' (found: {sorted(arrays)})")
    if need_y and "y" not in arrays:
        raise UserError(f"--labels needs an array 'y' in {path} (found: {sorted(arrays)})")
    return arrays["x"], arrays.get("y") if need_y else None


def predict_command(run_dir, input_path, output_path, labels: bool = False,
                    device: str = "auto", progress: bool = False) -> dict:
    """Predict on `input_path`, write `output_path` atomically; returns what to print."""
    x, y = read_input(input_path, labels)
    if Path(output_path).expanduser().is_dir():
        raise UserError(f"--output {output_path} is a folder; give a file name, e.g. "
                        f"{Path(output_path) / 'pred.npz'}")
    run = load_run(run_dir, device)
    out = run.outputs(x, progress=progress)
    arrays = {"pred": run._pred(out)}
    if run.spec.kind != "dense":
        arrays["proba"] = _proba(run.spec.kind, out)
    if run.label_names:
        arrays["label_names"] = np.asarray(run.label_names, dtype=str)
    if labels:
        arrays["y"] = np.asarray(y)
    write_npz(output_path, arrays)
    result = {"output": str(output_path), "n": len(out), "task": run.spec.name}
    if labels:
        result.update(metric=run.spec.metric, value=run.metric(out, y))
    return result


def write_npz(path, arrays: dict) -> Path:
    path = Path(path)
    if path.suffix != ".npz":
        raise UserError(f"--output {path} must end in .npz")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return artifacts.write_user_file(path, "--output", write)
