"""RQ4 (`experiment: pretraining`): how much does the body's pre-training matter? Per task:
final test metric vs pre-training amount (log x when every body has a numeric token count),
random initialisation included (paper Fig. 5), a table and a sentence.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from ...config.choices import EXPERIMENTS
from ..stats import Family, num, p_text, spearman
from .data import (Part, RunView, Section, group, join, metric_label, test_header,
                   paper_vs_ours, stat_of)
from .baselines import reference_lines
from .figures import collect_legend, fig_name, panel_grid, save, suptitle


def _is_random(r: RunView) -> bool:
    return r.config.get("body", {}).get("pretrained", True) is False


def _pre_key(r: RunView) -> str:
    if r.labels.get("variant"):
        return str(r.labels["variant"])
    body = r.config.get("body", {}).get("name", "body")
    return f"{body} (random init)" if _is_random(r) else body


def _tokens(runs: list[RunView]) -> Optional[float]:
    for r in runs:
        t = r.labels.get("tokens")
        if t is not None:
            try:
                return float(t)
            except (TypeError, ValueError):
                return None
    return None


def section_pretraining(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENTS['pretraining'].title} (part '{part.name}')")
    tasks = [t for t in part.tasks() if part.done(t)]
    fam = _tests(part, tasks)
    rows, sentences = [], []
    if tasks:
        fig, axes = panel_grid(len(tasks), ncols_max=3, w=5.2, h=4.0)
        views = [_TaskView(part.done(task)) for task in tasks]
        for ax, task, view in zip(axes, tasks, views):
            (_tokens_panel if view.numeric else _bodies_panel)(ax, view)
            ax.set_title(task)
            ax.set_ylabel(f"test {view.metric}\n(lower is better)")
            ax.grid(alpha=0.3)
            rows += _rows(task, view)
            if view.rnd and view.pre:
                sentences.append(_sentence(task, view, fam))
        seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
        dots = "" if all(v.numeric for v in views) else "; small dots: single seeds"
        suptitle(fig, f"RQ4 pre-training amount: test error after fine-tuning, mean ± 1 std "
                      f"over {seeds} seed(s){dots}")
        reference_lines(axes, part.refs)
        path = save(fig, out / fig_name("rq4", part), collect_legend(axes), ncol=3)
        sec.blocks.append(("img", path, f"{part.name}: final error vs pre-training amount"))
    sec.blocks.append(("table", ["task", "body", "pre-training tokens", "seeds",
                                 f"{test_header(part.done())} mean ± 95% CI"], rows))
    sec.blocks.append(("ul", sentences or ["Needs both a pre-trained and a randomly initialised "
                                           "body to compare."]))
    sec.blocks.append(paper_vs_ours("pretraining", _ours(fam)))
    return sec


class _TaskView:
    """One task's runs as RQ4 reads them: random-init and pre-trained groups, their tokens."""

    def __init__(self, done: list):
        self.metric = metric_label(done)
        self.groups = group(done, _pre_key)
        self.rnd, self.pre = _split(self.groups)
        self.tokens = {k: _tokens(v) for k, v in self.pre.items()}
        self.numeric = bool(self.pre) and all(t is not None and t > 0
                                              for t in self.tokens.values())


def _tokens_panel(ax, view: _TaskView) -> None:
    """Error against pre-training tokens (log scale), random init as a dashed line."""
    keys = sorted(view.pre, key=lambda k: view.tokens[k])
    xs = [view.tokens[k] for k in keys]
    ms = [stat_of(view.pre[k]).mean for k in keys]
    ss = [stat_of(view.pre[k]).std or 0.0 for k in keys]
    ax.errorbar(xs, ms, yerr=ss, fmt="o-", color="#1f77b4", capsize=4, lw=1.8,
                label="pre-trained (points named by setting)")
    for k, x, m in zip(keys, xs, ms):
        ax.annotate(k, (x, m), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.2)
    ax.set_xlabel("pre-training tokens (log scale)")
    for runs in view.rnd.values():
        st = stat_of(runs)
        ax.axhline(st.mean, color="black", ls="--", lw=1.4, label="random init")
        if st.std:
            ax.axhspan(st.mean - st.std, st.mean + st.std, color="black", alpha=0.08)


def _bodies_panel(ax, view: _TaskView) -> None:
    """One point per body (mean ± std) with its seeds as small dots."""
    keys = list(view.rnd) + list(view.pre)
    for i, k in enumerate(keys):
        st = stat_of(view.groups[k])
        color = "black" if k in view.rnd else "#1f77b4"
        ax.errorbar([i], [st.mean], yerr=[st.std or 0.0], fmt="o", color=color, capsize=5,
                    ms=8, label=k)   # the table's name for the setting
        for r in view.groups[k]:
            ax.plot([i + 0.12], [r.test], ".", color=color, alpha=0.5)
    ax.set_xticks(np.arange(len(keys)), [k.replace(" (", "\n(") for k in keys])
    ax.set_xlim(-0.6, len(keys) - 0.4)
    ax.set_xlabel("body (pre-training amount)")


def _rows(task: str, view: _TaskView) -> list:
    rows = []
    for k in list(view.rnd) + sorted(view.pre, key=lambda k: (view.tokens.get(k) or 0)):
        st = stat_of(view.groups[k])
        tk = "0 (random init)" if k in view.rnd else \
            (num(view.tokens[k], 2) if view.tokens.get(k) else "not given (spec tag `tokens`)")
        rows.append([task, k, tk, str(st.n), st.text()])
    return rows


def _sentence(task: str, view: _TaskView, fam: Family) -> str:
    rk = list(view.rnd)[0]
    best = min(view.pre, key=lambda k: stat_of(view.pre[k]).mean)
    text = {"better": "pre-training helped significantly",
            "worse": "pre-training hurt significantly",
            "equivalent": "pre-training made no difference beyond the margin (equivalent)",
            "same": "the effect of pre-training: inconclusive",
            "unknown": "the effect of pre-training: not enough seeds for a verdict"}[
        fam.verdict(task)]
    msg = (f"On {task}, {text} ({fam.evidence(task)}): best pre-trained body ({best}) "
           f"{view.metric} {stat_of(view.pre[best]).text()} vs random initialisation "
           f"{stat_of(view.rnd[rk]).text()}")
    if view.numeric and len(view.pre) >= 3:
        keys = list(view.pre)
        rho = spearman([math.log10(view.tokens[k]) for k in keys],
                       [stat_of(view.pre[k]).mean for k in keys])
        if rho is not None:
            msg += (f"; Spearman correlation of error with log pre-training tokens "
                    f"over {len(keys)} bodies: {rho[0]:+.2f}, p {p_text(rho[1])}")
    return msg + "."


def _split(groups: dict) -> tuple[dict, dict]:
    """The groups of randomly initialised bodies and those of pre-trained ones."""
    rnd = {k: v for k, v in groups.items() if all(_is_random(r) for r in v)}
    return rnd, {k: v for k, v in groups.items() if k not in rnd}


def _tests(part: Part, tasks: list) -> Family:
    """RQ4's family: per task, the best pre-trained body vs random initialisation."""
    fam = Family()
    for task in tasks:
        rnd, pre = _split(group(part.done(task), _pre_key))
        if rnd and pre:
            best = min(pre, key=lambda k: stat_of(pre[k]).mean)
            fam.add(task, stat_of(pre[best]), stat_of(next(iter(rnd.values()))),
                    part.margin(task))
    return fam.adjust()


def _ours(fam: Family) -> list:
    if not fam.tests:
        return []
    by = {v: [t for t in fam.tests if fam.verdict(t) == v] for v in ("better", "worse",
                                                                     "equivalent", "same",
                                                                     "unknown")}
    return [f"The best pre-trained body vs random initialisation, over {len(fam.tests)} "
            f"task(s): pre-training helped significantly on {len(by['better'])}"
            + (f" ({join(by['better'])})" if by["better"] else "")
            + f", hurt on {len(by['worse'])}, was equivalent within the margin on "
            f"{len(by['equivalent'])}" + (f" ({join(by['equivalent'])})" if by["equivalent"] else "")
            + f", inconclusive on {len(by['same'])}" + (f" ({join(by['same'])})" if by["same"] else "")
            + (f"; not enough seeds on {len(by['unknown'])}" if by["unknown"] else "") + "."]
