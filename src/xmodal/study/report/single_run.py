"""`xmodal report RUN_DIR` for one run folder: its curves (train loss, validation and, where
recorded, test metric per fine-tuning epoch; the alignment objective per embedder epoch), its
summary and its provenance (config, code, machine), as RUN_DIR/report/{report.md,
report.html, curves.png}.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...config.validate import flatten
from ...errors import UserError
from ...io.artifacts import write_text
from ...runs.folder import RunFolder
from .data import Section
from .figures import panel_grid, save


def is_run_folder(path: Path) -> bool:
    return (path / RunFolder.CONFIG).is_file() and (path / RunFolder.SUMMARY).is_file()


def _curves(history: list[dict], trace: list[dict], metric: str, out: Path) -> Path:
    panels = 2 + bool(trace)
    fig, axes = panel_grid(panels, ncols_max=3, w=4.6, h=3.4)
    epochs = [r["epoch"] for r in history]
    axes[0].plot(epochs, [r["train_loss"] for r in history], marker="o", ms=3)
    axes[0].set(title="train loss", xlabel="fine-tuning epoch", ylabel="loss")
    for key, label in (("val_metric", "validation"), ("test_metric", "test")):
        pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", ms=3, label=label)
    axes[1].set(title=f"{metric} per epoch", xlabel="fine-tuning epoch", ylabel=metric)
    if axes[1].get_legend_handles_labels()[1]:
        axes[1].legend(frameon=False)
    if trace:
        axes[2].plot([r["epoch"] for r in trace], [r["value"] for r in trace], marker="o", ms=3)
        axes[2].set(title="alignment objective", xlabel="embedder epoch", ylabel="value")
    return save(fig, out / "curves.png")


def run_sections(folder: RunFolder, out: Path) -> list[Section]:
    summary = folder.read_summary()
    history = folder.read_history()
    trace = folder.read_align_trace()
    doc = folder.read_config()
    s = summary.to_dict()
    kept = "best validation" if s.get("selection") == "best-val" else "last"
    result = Section("Result", [("table", ["", "value"], [
        ["task", s.get("task")], ["status", s.get("status")],
        [f"test {s.get('metric')} ({kept} epoch, epoch {s.get('best_epoch')})",
         _num(s.get("test_metric_best"))],
        [f"test {s.get('metric')} (last epoch)", _num(s.get("test_metric_last"))],
        ["best validation", _num(s.get("best_val_metric"))],
        ["epochs", s.get("epochs")], ["sizes", s.get("sizes")],
        ["seconds", _num(s.get("seconds"), 1)]])])
    if history or trace:
        result.blocks.append(("img", _curves(history, trace, s.get("metric") or "metric", out),
                              "training curves"))
    for note in s.get("notes") or []:
        result.blocks.append(("p", f"Note: {note}"))
    config = flatten(doc.get("config") or {})
    prov = Section("Provenance", [
        ("table", ["key", "value"], [[k, json.dumps(v, default=str)] for k, v in config.items()]),
        ("table", ["recorded", "value"],
         [[k, str(doc.get(k))] for k in ("seed", "config_hash", "git_commit", "device",
                                          "platform", "cuda", "threads")]
         + [[name, str(v)] for name, v in (doc.get("versions") or {}).items()])])
    return [result, prov]


def _num(x, digits: int = 4) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def write_run_report(path: str | Path) -> Path:
    """Write RUN_DIR/report/{report.md, report.html, curves.png}; returns report.md's path."""
    from .render import _html, _markdown
    folder = RunFolder(path)
    if folder.read_summary() is None:
        raise UserError(f"run folder {folder.path} has no summary yet; finish it with `xmodal "
                        f"fit` first")
    out = folder.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    head = [("h1", f"Run report: {folder.name}")]
    md = _markdown(head, run_sections(folder, out), out)
    write_text(out / "report.md", md)
    write_text(out / "report.html", _html(md, out))
    return out / "report.md"
