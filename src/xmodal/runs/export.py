"""`xmodal export RUN_DIR --torchscript FILE.pt`: a finished run as one TorchScript file that
needs only PyTorch to load (`torch.jit.load`), not xmodal.

The exported module takes raw inputs shaped as the task's (N, *input shape), channels first,
float32, applies the input normalisation the run fitted on its training split, runs embedder,
body and predictor, and returns what `LoadedRun.outputs` returns: logits (classification,
multi-label) or values in the targets' units (dense). It is traced on CPU in fp32 from the
run's `best.safetensors`; the file's `extra_files` hold task.json (task spec, label names).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import UserError, one_line
from ..io.artifacts import write_user_file


class Standalone(nn.Module):
    """Raw inputs -> the run's outputs: normalise, model, decode."""

    def __init__(self, model: nn.Module, x_mean, x_std, y_mean, y_std):
        super().__init__()
        self.model = model

        def buf(name, value):
            t = torch.as_tensor(np.asarray(value, np.float32)) if value is not None else None
            self.register_buffer(name, t if t is not None else torch.zeros(0), persistent=True)
        buf("x_mean", x_mean)
        buf("x_std", x_std)
        buf("y_mean", y_mean)
        buf("y_std", y_std)
        self.normalise = x_mean is not None
        self.decode = y_mean is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalise:
            x = (x - self.x_mean) / self.x_std
        out = self.model(x)
        if self.decode:
            out = out * self.y_std + self.y_mean
        return out


def export_torchscript(run_dir, path) -> dict:
    """Trace the finished run in `run_dir` and write it to `path` (atomically)."""
    from .predict import load_run
    path = Path(path)
    if path.suffix != ".pt":
        raise UserError(f"--torchscript {path} must end in .pt")
    run = load_run(run_dir, "cpu")
    rec = run.record
    module = Standalone(run.model.float().eval(), rec.x_mean, rec.x_std, rec.y_mean,
                        rec.y_std).eval()
    example = torch.zeros(2, *run.spec.input_shape)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns about Python-side shape checks; the shapes are fixed here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, example, strict=False, check_trace=False)
    except Exception as exc:   # an architecture the tracer cannot follow
        raise UserError(f"run {run.run_dir.name} cannot be traced to TorchScript "
                        f"({one_line(exc)})") from None
    task = (Path(run_dir) / "task.json").read_text()
    write_user_file(path, "--torchscript",
                    lambda tmp: torch.jit.save(traced, tmp, _extra_files={"task.json": task}))
    return {"output": str(path), "task": run.spec.name,
            "input_shape": list(run.spec.input_shape), "kind": run.spec.kind,
            "label_names": json.loads(task).get("label_names")}
