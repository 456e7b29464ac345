"""RQ2 (`experiment: align-epochs`): does more embedder training (lower OTDD) give lower
error? Per task: OTDD per embedder epoch and the test metric after fine-tuning from that epoch's
embedder, on two y-axes (paper Fig. 3), a table and a sentence with the Spearman correlation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...config.choices import EXPERIMENTS
from ..stats import VERDICT_TEXT, Family, Stat, num, p_text, spearman
from .data import (Part, RunView, Section, group, join, metric_label, test_header,
                   paper_vs_ours, stat_of)
from .baselines import reference_lines
from .figures import band, collect_legend, fig_name, panel_grid, save, suptitle

RHO_RULE = 0.8   # |Spearman rho| from which OTDD and error are said to move together


def _from_epoch(r: RunView) -> int:
    a = r.config["align"]
    return int(a["epochs"] if a.get("from_epoch") is None else a["from_epoch"])


def _trace_stats(runs: list[RunView]):
    """OTDD per embedder epoch: mean and std over seeds (one trace per seed)."""
    per_seed: dict[int, list] = {}
    for r in runs:
        if len(r.trace) > len(per_seed.get(r.seed, [])):
            per_seed[r.seed] = r.trace
    per_epoch: dict[int, list] = {}
    for trace in per_seed.values():
        for rec in trace:
            if rec.get("value") is not None:
                per_epoch.setdefault(int(rec["epoch"]), []).append(float(rec["value"]))
    xs = sorted(per_epoch)
    return ({x: Stat(per_epoch[x]) for x in xs}, len(per_seed))


def section_align_epochs(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENTS['align-epochs'].title} (part '{part.name}')")
    tasks = [t for t in part.tasks() if any(r.aligned for r in part.done(t))]
    fam = _tests(part, tasks)
    rows, sentences, rhos = [], [], {}
    if tasks:
        fig, axes = panel_grid(len(tasks), ncols_max=2, w=6.0, h=4.0)
        twins = []
        for ax, task in zip(axes, tasks):
            view = _TaskView(part.done(task))
            twins.append(_panel(ax, task, view))
            rows += _rows(task, view)
            rhos[task] = _rho(view.trace, view.by_epoch)
            sentences.append(_align_sentence(task, view.metric, view.trace, view.by_epoch, fam,
                                             rhos[task]))
        seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
        suptitle(fig, "RQ2 embedder training: OTDD per embedder epoch (blue, left axis) and "
                      "test error after fine-tuning from that epoch's embedder (red, right "
                      f"axis); mean ± 1 std over {seeds} seed(s)")
        reference_lines(axes, part.refs, twins)
        path = save(fig, out / fig_name("rq2", part), collect_legend(axes + twins), ncol=3)
        sec.blocks.append(("img", path,
                           f"{part.name}: OTDD and downstream error per embedder epoch"))
    sec.blocks.append(("table", ["task", "embedder epoch", "OTDD", "seeds",
                                 f"{test_header(part.done())} after fine-tuning (mean ± 95% CI)"], rows))
    sec.blocks.append(("ul", sentences or ["No finished aligned runs yet."]))
    sec.blocks.append(paper_vs_ours("align-epochs", _ours(fam, rhos)))
    return sec


class _TaskView:
    """One task's runs as RQ2 reads them: the OTDD trace over seeds and the runs per epoch."""

    def __init__(self, done: list):
        aligned = [r for r in done if r.aligned]
        self.naive = [r for r in done if not r.aligned]
        self.trace, self.n_traces = _trace_stats(aligned)
        self.by_epoch = group(aligned, _from_epoch)
        self.metric = metric_label(done)


def _panel(ax, task: str, view: _TaskView):
    """OTDD per embedder epoch (left axis) and the error after fine-tuning (right); returns the
    twin axis."""
    ax2 = ax.twinx()
    ax2.spines["right"].set_visible(True)
    trace = view.trace
    if trace:
        xs = np.array(list(trace))
        m = np.array([trace[x].mean for x in xs])
        s = np.array([trace[x].std or 0.0 for x in xs])
        ax.plot(xs, m, "-", color="#1f77b4", lw=1.8, label="OTDD (proxy vs target)")
        if view.n_traces > 1:
            band(ax, xs, m, s, "#1f77b4")
    ex = sorted(view.by_epoch)
    em = [stat_of(view.by_epoch[e]).mean for e in ex]
    es = [stat_of(view.by_epoch[e]).std or 0.0 for e in ex]
    ax2.errorbar(ex, em, yerr=es, fmt="s-", color="#d62728", capsize=4, lw=1.8, ms=6,
                 label=f"test {view.metric} after fine-tuning")
    if view.naive:
        ax2.axhline(stat_of(view.naive).mean, color="black", ls="--", lw=1.2,
                    label="naive fine-tuning (no embedder training)")
    ax.set_title(task)
    ax.set_xlabel("embedder (alignment) epoch")
    ax.set_ylabel("OTDD to proxy (lower = closer)", color="#1f77b4")
    ax.tick_params(axis="y", colors="#1f77b4")
    ax2.set_ylabel(f"test {view.metric}\n(lower is better)", color="#d62728")
    ax2.tick_params(axis="y", colors="#d62728")
    ax.grid(alpha=0.3)
    ax.xaxis.get_major_locator().set_params(integer=True)
    return ax2


def _rows(task: str, view: _TaskView) -> list:
    rows = [[task, str(e), view.trace[e].text() if e in view.trace else "-",
             str(stat_of(view.by_epoch[e]).n), stat_of(view.by_epoch[e]).text()]
            for e in sorted(view.by_epoch)]
    if view.naive:
        st = stat_of(view.naive)
        rows.append([task, "naive", "-", str(st.n), st.text()])
    return rows


def _tests(part: Part, tasks: list) -> Family:
    """RQ2's family: per task, the last embedder epoch vs the first."""
    fam = Family()
    for task in tasks:
        by_epoch = group([r for r in part.done(task) if r.aligned], _from_epoch)
        if len(by_epoch) >= 2:
            fam.add(task, stat_of(by_epoch[max(by_epoch)]), stat_of(by_epoch[min(by_epoch)]),
                    part.margin(task))
    return fam.adjust()


def _rho(trace: dict, by_epoch: dict):
    """(rho, p, n) of Spearman's correlation of mean OTDD with mean error over the embedder
    epochs that have both, or None."""
    common = [e for e in sorted(by_epoch) if e in trace]
    res = spearman([trace[e].mean for e in common], [stat_of(by_epoch[e]).mean for e in common])
    return None if res is None else (*res, len(common))


def _ours(fam: Family, rhos: dict) -> list:
    out = []
    known = {t: r for t, r in rhos.items() if r is not None}
    if known:
        pos = [t for t, r in known.items() if r[0] >= RHO_RULE]
        out.append(f"Lower OTDD went with lower error (Spearman rho >= {RHO_RULE}) on "
                   f"{len(pos)} of {len(known)} task(s)" + (f" ({join(pos)})" if pos else "") + ".")
    if fam.tests:
        c = fam.counts()
        out.append(f"The last embedder epoch vs the first, over {len(fam.tests)} task(s): "
                   f"{c['better']} significantly lower error, {c['worse']} higher, "
                   f"{c['equivalent']} equivalent, {c['same']} inconclusive" +
                   (f", {c['unknown']} not enough seeds" if c["unknown"] else "") + ".")
    return out


def _align_sentence(task: str, metric: str, trace: dict, by_epoch: dict, fam: Family,
                    rho) -> str:
    ex = sorted(by_epoch)
    parts = []
    if trace:
        first, last = min(trace), max(trace)
        a, b = trace[first].mean, trace[last].mean
        change = "fell" if b < a else "rose" if b > a else "stayed"
        parts.append(f"On {task}, OTDD {change} from {num(a)} (embedder epoch {first}) to "
                     f"{num(b)} (epoch {last})")
    else:
        parts.append(f"On {task}, no OTDD trace was recorded")
    if len(ex) >= 2:
        e0, e1 = ex[0], ex[-1]
        s0, s1 = stat_of(by_epoch[e0]), stat_of(by_epoch[e1])
        what = VERDICT_TEXT[fam.verdict(task)]
        parts.append(f"; fine-tuning from the epoch-{e1} embedder gave {metric} {s1.text()} vs "
                     f"{s0.text()} from the epoch-{e0} embedder ({what}; {fam.evidence(task)})")
        best = min(ex, key=lambda e: stat_of(by_epoch[e]).mean)
        parts.append(f"; the lowest mean error came from embedder epoch {best}")
        if rho is not None:
            r, p, n = rho
            rel = ("lower OTDD went with lower error" if r >= RHO_RULE else
                   "lower OTDD went with higher error" if r <= -RHO_RULE else
                   "no consistent relation between OTDD and error")
            parts.append(f"; Spearman correlation of OTDD with mean error over {n} "
                         f"embedder epochs: {r:+.2f}, p {p_text(p)} ({rel}; rule: |rho| >= "
                         f"{RHO_RULE})")
    return "".join(parts) + "."
