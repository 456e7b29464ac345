"""`xmodal export RUN_DIR --out FOLDER` / `LoadedRun.export(folder)`: a finished run as a
self-contained folder that needs only PyTorch to load, not xmodal: `model.pt` (TorchScript,
`torch.jit.load`), `task.json` (task spec, label names, normalisation) and `README.md` (how to
load it).

The exported module takes raw inputs shaped as the task's (N, *input shape), channels first,
float32, applies the input normalisation the run fitted on its training split, runs embedder,
body and predictor, and returns what `LoadedRun.outputs` returns: logits (classification,
multi-label) or values in the targets' units (dense). It is traced on CPU in fp32 from the
run's `best.safetensors`; the file's `extra_files` hold task.json (task spec, label names).
"""

from __future__ import annotations

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


FORMATS = ("torchscript",)
README = """# {name}: exported by xmodal

`model.pt` is TorchScript: it needs PyTorch only.

```python
import torch
model = torch.jit.load("model.pt")
out = model(x)   # x: float32 tensor (N, {shape}), raw (not normalised), channels first
```

`out` holds {what}. `task.json` holds the task spec and the label names{labels}.
"""


def trace(run) -> torch.jit.ScriptModule:
    """The finished `LoadedRun` as a traced `Standalone` module (CPU, fp32)."""
    rec = run.record
    model = run.model.float().cpu().eval()
    if hasattr(model, "without_input_embedding"):
        model = model.without_input_embedding()   # the embedder replaces it: not exported
    module = Standalone(model, rec.x_mean, rec.x_std, rec.y_mean, rec.y_std).eval()
    example = torch.zeros(2, *run.spec.input_shape)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the tracer warns about Python-side shape checks; the shapes are fixed here
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            return torch.jit.trace(module, example, strict=False, check_trace=False)
    except Exception as exc:   # an architecture the tracer cannot follow
        raise UserError(f"run {run.run_dir.name} cannot be traced to TorchScript "
                        f"({one_line(exc)})") from None


def export_run(run, folder, format: str = "torchscript") -> dict:
    """Write the export folder of the finished `LoadedRun` `run` (files replaced atomically)."""
    if format not in FORMATS:
        raise UserError(f"export format must be one of {', '.join(FORMATS)}; got {format!r}")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--out {folder} exists and is not a folder")
    traced = trace(run)
    task = (Path(run.run_dir) / "task.json").read_text()
    write_user_file(folder / "model.pt", "--out", lambda tmp: torch.jit.save(traced, tmp))
    write_user_file(folder / "task.json", "--out", lambda tmp: Path(tmp).write_text(task))
    spec = run.spec
    what = ("values in the targets' units" if spec.kind == "dense" else
            "logits (argmax: the class id)" if spec.kind == "classification" else
            "one logit per label (>= 0: positive)")
    names = run.label_names
    text = README.format(name=run.run_dir.name, shape=", ".join(map(str, spec.input_shape)),
                         what=what, labels=f" ({', '.join(map(str, names))})" if names else "")
    write_user_file(folder / "README.md", "--out", lambda tmp: Path(tmp).write_text(text))
    return {"output": str(folder), "files": ["model.pt", "task.json", "README.md"],
            "task": spec.name, "input_shape": list(spec.input_shape), "kind": spec.kind,
            "label_names": names}
