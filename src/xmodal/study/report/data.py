"""What a report reads: the runs of each study part (`load_parts` from the store), grouped
and summarised per setting, and `Section`, the content each question's module returns (a title
and blocks: paragraphs, tables, lists, figures) for `render` to write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ...config.choices import NO_PROXY
from ..stats import Stat
from ..store import Store


# The ablation paper's findings (arXiv 2403.13537), for the side-by-side that ends each section.
PAPER_FINDINGS = {
    "proxy": "The choice of proxy dataset does not matter; embedder training does not help 2D "
             "tasks and helps 1D tasks somewhat.",
    "align-epochs": "Lower OTDD does not mean lower error; more embedder training can hurt.",
    "freezing": "Fine-tuning the body is what matters.",
    "pretraining": "Satellite needs no pre-training.",
}


@dataclass
class RunView:
    id: str
    task: str
    seed: int
    config: dict
    labels: dict
    status: str
    final: Optional[dict]
    epochs: list
    trace: list

    @property
    def aligned(self) -> bool:
        a = self.config.get("align", {})
        return a.get("proxy", NO_PROXY) != NO_PROXY and (a.get("epochs") or 0) > 0

    @property
    def test(self) -> Optional[float]:
        return None if not self.final else self.final.get("test_metric_best")

    @property
    def label(self) -> str:
        return str(self.labels.get("label") or self.labels.get("variant") or "run")


@dataclass
class Part:
    name: str
    experiment: str
    runs: list = field(default_factory=list)
    refs: dict = field(default_factory=dict)   # {task: {baseline method: [runs]}}
    margins: dict = field(default_factory=dict)  # {task: equivalence margin} from the spec

    def margin(self, task: str) -> Optional[float]:
        return self.margins.get(task)

    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.runs))

    def done(self, task: Optional[str] = None) -> list[RunView]:
        return [r for r in self.runs if r.status == "done" and r.final is not None
                and r.test is not None and (task is None or r.task == task)]


def load_parts(store: Store) -> list[Part]:
    runs = {r["id"]: r for r in store.runs()}
    finals = store.finals()
    epochs = store.epochs()
    traces = store.align_traces()
    parts: dict[str, Part] = {}
    seen: set = set()
    for m in store.members():
        if (m["part"], m["run_id"]) in seen:   # one run in the same part of two studies
            continue
        seen.add((m["part"], m["run_id"]))
        r = runs[m["run_id"]]
        part = parts.setdefault(m["part"], Part(m["part"], m["experiment"]))
        part.runs.append(RunView(r["id"], r["task"], r["seed"], r["config"], m["labels"],
                                 r["status"], finals.get(r["id"]), epochs.get(r["id"], []),
                                 traces.get(r["id"], [])))
    return list(parts.values())


def test_header(runs: list[RunView]) -> str:
    """The column header of the test metric, naming the selection rule the runs used: the
    best-validation epoch, the last epoch (runs without validation), or both."""
    rules = {(r.final or {}).get("summary", {}).get("selection", "best-val") for r in runs
             if r.final}
    if rules == {"last"}:
        return "test (last epoch)"
    if len(rules) > 1:
        return "test (best val; last epoch without validation)"
    return "test (best val)"


def metric_label(runs: list[RunView]) -> str:
    for r in runs:
        if r.final and r.final.get("metric_label"):
            return r.final["metric_label"]
    for r in runs:
        if r.final and r.final.get("metric"):
            return r.final["metric"]
    return "metric"


def group(runs: list[RunView], key) -> dict:
    out: dict = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return out


def stat_of(runs: list[RunView], attr: str = "test") -> Stat:
    """The finite values of `attr` (default: test metric at the best validation epoch) over the
    runs, with their seeds (for tests paired by seed)."""
    vals = [(getattr(r, attr) if attr == "test" else (r.final or {}).get(attr), r.seed)
            for r in runs]
    kept = [(float(v), s) for v, s in vals if v is not None and math.isfinite(float(v))]
    return Stat([v for v, _ in kept], [s for _, s in kept])


def curve(runs: list[RunView], field_: str = "val_metric"):
    """Mean and std per epoch over runs (epochs where every run has a value)."""
    per: dict[int, list] = {}
    for r in runs:
        for e in r.epochs:
            if e.get(field_) is not None:
                per.setdefault(int(e["epoch"]), []).append(float(e[field_]))
    xs = sorted(k for k, v in per.items() if len(v) == len(runs))
    mean = np.array([np.mean(per[x]) for x in xs])
    std = np.array([np.std(per[x], ddof=1) if len(per[x]) > 1 else 0.0 for x in xs])
    return np.array(xs), mean, std


def curve_field(runs: list[RunView]) -> str:
    """Per-epoch test metric if every run recorded it, else the validation metric."""
    has_test = runs and all(r.epochs and all(e.get("test_metric") is not None for e in r.epochs)
                            for r in runs)
    return "test_metric" if has_test else "val_metric"


def join(items: list) -> str:
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


@dataclass
class Section:
    title: str
    # ("p", text) | ("table", head, rows) | ("img", path, alt) | ("ul", items)
    blocks: list = field(default_factory=list)


def paper_vs_ours(experiment: str, ours: list) -> tuple:
    """The side-by-side table that ends a section: the paper's finding and ours."""
    return ("table", ["", "finding"], [["paper (arXiv 2403.13537)", PAPER_FINDINGS[experiment]],
                                       ["this study", " ".join(ours) or "nothing to compare yet"]])
