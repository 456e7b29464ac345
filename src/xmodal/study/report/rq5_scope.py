"""RQ5 (`experiment: scope`, the paper's future work): how much of the model must change? Per
task: the final error of each setting (full fine-tuning, LoRA at several ranks, LayerNorm only,
a frozen body) against its trainable parameters (log x), a table with the parameter counts, and
each setting compared with full fine-tuning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ...config.choices import EXPERIMENTS, FINETUNE_MODES, FULL_MODE
from ..stats import Family
from .data import Part, RunView, Section, group, join, stat_of, test_header
from .figures import task_panels_figure

FULL_LABEL = "full fine-tuning"


def scope_key(r: RunView) -> str:
    """A setting: its variant label, else its fine-tune mode (with the LoRA rank)."""
    if r.labels.get("variant"):
        return str(r.labels["variant"])
    train = r.config.get("train", {})
    mode = train.get("finetune", FULL_MODE)
    return f"lora r={train.get('lora_rank')}" if mode == "lora" else mode


def is_full(runs: list[RunView]) -> bool:
    return all(r.config.get("train", {}).get("finetune") == FULL_MODE for r in runs)


def trainable(runs: list[RunView]) -> Optional[float]:
    """The setting's trainable parameters (the same for every seed; the mean if not)."""
    counts = [((r.final or {}).get("parameters") or {}).get("trainable") for r in runs]
    counts = [c for c in counts if c is not None]
    return float(np.mean(counts)) if counts else None


def scope_groups(done: list[RunView]) -> tuple[Optional[str], dict]:
    """(the full-fine-tuning setting's key or None, {key: runs}) of one task."""
    groups = group(done, scope_key)
    full = next((k for k, v in groups.items() if is_full(v)), None)
    return full, groups


def section_scope(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENTS['scope'].title} (part '{part.name}')")
    tasks = [t for t in part.tasks() if part.done(t)]
    fam = _tests(part, tasks)
    rows, sentences = [], []
    for task in tasks:
        full, groups = scope_groups(part.done(task))
        rows += _rows(task, groups, full, fam)
        if full is not None and len(groups) > 1:
            sentences.append(_sentence(task, groups, full, fam))
    if tasks:
        path = task_panels_figure(
            part, tasks, lambda ax, task: _panel(ax, *scope_groups(part.done(task))[::-1]),
            "rq5", "RQ5 how much must change: test error vs trainable parameters, mean ± 1 std "
                   "over {seeds} seed(s)", out, ncol=3)
        sec.blocks.append(("img", path, f"{part.name}: error vs trainable parameters"))
    sec.blocks.append(("table", ["task", "setting", "fine-tune mode", "trainable parameters",
                                 "seeds", f"{test_header(part.done())} mean ± 95% CI",
                                 f"vs {FULL_LABEL}"], rows))
    sec.blocks.append(("ul", sentences or [f"Needs {FULL_LABEL} and another setting to "
                                           f"compare."]))
    return sec


def _panel(ax, groups: dict, full: Optional[str]) -> None:
    keys = sorted((k for k in groups if trainable(groups[k]) is not None),
                  key=lambda k: trainable(groups[k]))
    for k in keys:
        st = stat_of(groups[k])
        mode = groups[k][0].config.get("train", {}).get("finetune", FULL_MODE)
        color, marker, _ls = FINETUNE_MODES[mode].style if mode in FINETUNE_MODES else \
            ("#7f7f7f", "o", "-")
        ax.errorbar([trainable(groups[k])], [st.mean], yerr=[st.std or 0.0], fmt=marker,
                    color=color, capsize=4, ms=7, label=FULL_LABEL if k == full else k)
    ax.set_xscale("log")
    ax.margins(x=0.25)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.grid(alpha=0.3)


def _rows(task: str, groups: dict, full: Optional[str], fam: Family) -> list:
    rows = []
    for k, runs in sorted(groups.items(), key=lambda kv: -(trainable(kv[1]) or 0)):
        n = trainable(runs)
        vs = "-" if k == full or full is None else fam.text((task, k))
        rows.append([task, k, runs[0].config.get("train", {}).get("finetune", "?"),
                     "-" if n is None else f"{n:,.0f}", str(stat_of(runs).n),
                     stat_of(runs).text(), vs])
    return rows


def _tests(part: Part, tasks: list) -> Family:
    """Each setting vs full fine-tuning, per task (diff = setting - full)."""
    fam = Family()
    for task in tasks:
        full, groups = scope_groups(part.done(task))
        if full is None:
            continue
        for k, runs in groups.items():
            if k != full:
                fam.add((task, k), stat_of(runs), stat_of(groups[full]), part.margin(task))
    return fam.adjust()


def _sentence(task: str, groups: dict, full: str, fam: Family) -> str:
    said = {v: [k for k in groups if k != full and fam.verdict((task, k)) == v]
            for v in ("better", "worse", "equivalent", "same", "unknown")}
    words = {"better": "lower error than full fine-tuning: {}",
             "worse": "higher error: {}", "equivalent": "equivalent within the margin: {}",
             "same": "inconclusive: {}", "unknown": "not enough seeds: {}"}
    clauses = [words[v].format(join(ks)) for v, ks in said.items() if ks]
    n_full = trainable(groups[full])
    size = "" if n_full is None else f" ({n_full:,.0f} trainable parameters)"
    return f"On {task}, against {FULL_LABEL}{size}: " + "; ".join(clauses) + "."
