"""The run folder and the run's summary: the one place that knows their file names and fields.

`RunFolder(path)` names every file a run writes (`config.yaml`, `task.json`, `metrics.jsonl`,
`summary.json`, `best.safetensors`, `align.jsonl`, `align/`, `resume.pt`), writes them
atomically and reads them back, turning a damaged file into one `UserError` that names it and
`--force`. `locked()` holds the folder for one process (an advisory `flock` on `.lock`): a
second `fit` of the same run at the same time is refused instead of training into it too. `Summary` is the typed content of `summary.json`, built by fit and by the domain
baselines, read by the study store, the report and predict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

from ..errors import UserError, one_line
from ..io import artifacts

START_OVER = "rerun with --force (or delete the run folder) to start this run over"


@dataclass
class Summary:
    """`summary.json`: what a run was and what it measured (README, "The run folder")."""
    run_id: str
    task: str
    body: str                                  # the body name, or the baseline method
    metric: str
    metric_label: str
    sizes: dict
    seed: int
    selection: str                             # best-val | last-epoch
    status: str = "done"                       # done | failed
    notes: list = field(default_factory=list)
    seconds: Optional[float] = None
    error: Optional[str] = None
    baseline: Optional[str] = None             # set for a domain-baseline run
    parameters: Optional[dict] = None
    embedder_init: Optional[list] = None
    align: Optional[dict] = None               # the alignment stage's summary and trace
    precision: Optional[str] = None
    budget: Optional[dict] = None
    best_epoch: Optional[int] = None
    best_val_metric: Optional[float] = None
    test_metric_best: Optional[float] = None   # the test metric of the kept weights
    test_metric_last: Optional[float] = None
    last_val_metric: Optional[float] = None
    epochs: Optional[int] = None
    step_seconds: Optional[float] = None       # median seconds per optimizer step (training.py)
    peak_memory: Optional[dict] = None         # {"bytes", "how"}: stages/memory.py
    extra: dict = field(default_factory=dict)  # metric details (e.g. per-label AUROC)

    def to_dict(self) -> dict:
        """The JSON form: fields that do not apply to this run (a baseline's model fields, a
        failed run's evaluation, an unset error) are left out."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        drop = {"error"} if self.error is None else set()
        if self.baseline is None:
            drop.add("baseline")
        else:
            drop |= set(_MODEL_FIELDS)
        if self.status != "done":
            drop |= {k for k in _EVAL_FIELDS if out[k] is None}
        return {**{k: v for k, v in out.items() if k not in drop}, **self.extra}

    @classmethod
    def from_dict(cls, blob: dict) -> "Summary":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in blob.items() if k in names}
        known.setdefault("run_id", "")
        for key in ("task", "body", "metric", "metric_label", "selection"):
            known.setdefault(key, "")
        known.setdefault("sizes", {})
        known.setdefault("seed", 0)
        return cls(**known, extra={k: v for k, v in blob.items() if k not in names})


_MODEL_FIELDS = ("parameters", "embedder_init", "align", "precision", "budget", "step_seconds",
                 "peak_memory")
_EVAL_FIELDS = ("best_epoch", "best_val_metric", "test_metric_best", "test_metric_last",
                "last_val_metric", "epochs")


class RunFolder:
    """The files of one run, by name. Nothing else in xmodal spells these names."""

    CONFIG = "config.yaml"
    TASK = "task.json"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"
    CHECKPOINT = "best.safetensors"
    ALIGN_TRACE = "align.jsonl"
    ALIGN_DIR = "align"
    RESUME = "resume.pt"
    LOCK = ".lock"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    config = property(lambda self: self.file(self.CONFIG))
    task = property(lambda self: self.file(self.TASK))
    metrics = property(lambda self: self.file(self.METRICS))
    summary = property(lambda self: self.file(self.SUMMARY))
    checkpoint = property(lambda self: self.file(self.CHECKPOINT))
    align_trace = property(lambda self: self.file(self.ALIGN_TRACE))
    align_dir = property(lambda self: self.file(self.ALIGN_DIR))
    resume = property(lambda self: self.file(self.RESUME))

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def locked(self):
        """Hold this run folder for the calling process; another holder is a `UserError`.
        Folders created here are removed again if nothing else was written into them."""
        created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.file(self.LOCK)
        fh = open(path, "a+")
        try:
            _try_lock(fh)
        except BlockingIOError:
            fh.close()
            raise UserError(f"run folder {self.path} is in use by another xmodal process (the "
                            f"same run started twice?); wait for it to end, or pick another "
                            f"--out / run.name") from None
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield self
        finally:
            with contextlib.suppress(OSError):
                path.unlink()
            fh.close()
            for p in created:           # deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()           # only when empty

    # ------------------------------------------------------------------ writing
    def write_config(self, doc: dict) -> None:
        artifacts.write_text(self.config, yaml.safe_dump(doc, sort_keys=False))

    def write_history(self, history: list[dict]) -> None:
        artifacts.write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in history))

    def write_align_trace(self, trace: list[dict]) -> None:
        artifacts.write_text(self.align_trace, "".join(json.dumps(r) + "\n" for r in trace))

    def write_summary(self, summary: Summary) -> None:
        artifacts.write_json(self.summary, summary.to_dict())

    def clear_progress(self) -> None:
        """Forget the results of an earlier attempt (`--force`)."""
        for path in (self.resume, self.metrics, self.summary):
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ reading
    def config_hash(self) -> Optional[str]:
        """The config hash recorded in `config.yaml` (None: no config written yet)."""
        if not self.config.is_file():
            return None
        return self.read(self.config, lambda text: yaml.safe_load(text)["config_hash"])

    def read_config(self) -> dict:
        return self.read(self.config, lambda text: _mapping(yaml.safe_load(text)))

    def read_summary(self) -> Optional[Summary]:
        if not self.summary.is_file():
            return None
        return Summary.from_dict(self.read(self.summary, _json_object))

    def read_history(self) -> list[dict]:
        if not self.metrics.is_file():
            return []
        return self.read(self.metrics, _json_lines)

    def read_align_trace(self) -> list[dict]:
        """The alignment objective per embedder epoch (`align.jsonl`); [] when it did not run."""
        if not self.align_trace.is_file():
            return []
        return self.read(self.align_trace, _json_lines)

    def read(self, path: Path, parse: Callable[[str], Any]) -> Any:
        """`parse(text of path)`; a damaged file is one `UserError` naming it and `--force`."""
        try:
            return parse(path.read_text(encoding="utf-8"))
        except Exception as exc:
            raise UserError(f"run folder file {path} is damaged ({one_line(exc)}); "
                            f"{START_OVER}") from None


def _try_lock(fh) -> None:
    """A non-blocking exclusive lock on `fh` (BlockingIOError when held); no-op without fcntl."""
    try:
        import fcntl
    except ImportError:   # Windows: no advisory lock
        return
    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def _mapping(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a mapping, got {type(obj).__name__}")
    return obj


def _json_object(text: str) -> dict:
    obj = json.loads(text)
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _json_lines(text: str) -> list[dict]:
    return [_json_object(line) for line in text.splitlines() if line.strip()]
