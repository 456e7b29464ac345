"""RQ2 (`experiment: align-epochs`): does more embedder training (lower OTDD) give lower
error? Per task: OTDD per embedder epoch and the test metric after fine-tuning from that epoch's
embedder, on two y-axes (paper Fig. 3), a table and a sentence with the Spearman correlation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..stats import Stat, compare, num, spearman
from .data import EXPERIMENT_TITLES, Part, RunView, Section, group, metric_label, stat_of
from .figures import band, collect_legend, fig_name, panel_grid, save, suptitle


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
            if rec.get("otdd") is not None:
                per_epoch.setdefault(int(rec["epoch"]), []).append(float(rec["otdd"]))
    xs = sorted(per_epoch)
    return ({x: Stat(per_epoch[x]) for x in xs}, len(per_seed))


def section_align_epochs(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['align-epochs']} (part '{part.name}')")
    tasks = [t for t in part.tasks() if any(r.aligned for r in part.done(t))]
    rows, sentences = [], []
    if tasks:
        fig, axes = panel_grid(len(tasks), ncols_max=2, w=6.0, h=4.0)
        twins = []
        for ax, task in zip(axes, tasks):
            done = part.done(task)
            aligned = [r for r in done if r.aligned]
            naive = [r for r in done if not r.aligned]
            trace, n_traces = _trace_stats(aligned)
            metric = metric_label(done)
            ax2 = ax.twinx()
            twins.append(ax2)
            ax2.spines["right"].set_visible(True)
            if trace:
                xs = np.array(list(trace))
                m = np.array([trace[x].mean for x in xs])
                s = np.array([trace[x].std or 0.0 for x in xs])
                ax.plot(xs, m, "-", color="#1f77b4", lw=1.8, label="OTDD (proxy vs target)")
                if n_traces > 1:
                    band(ax, xs, m, s, "#1f77b4")
            by_epoch = group(aligned, _from_epoch)
            ex = sorted(by_epoch)
            em = [stat_of(by_epoch[e]).mean for e in ex]
            es = [stat_of(by_epoch[e]).std or 0.0 for e in ex]
            ax2.errorbar(ex, em, yerr=es, fmt="s-", color="#d62728", capsize=4, lw=1.8, ms=6,
                         label=f"test {metric} after fine-tuning")
            if naive:
                st = stat_of(naive)
                ax2.axhline(st.mean, color="black", ls="--", lw=1.2,
                            label="naive fine-tuning (no embedder training)")
            ax.set_title(task)
            ax.set_xlabel("embedder (alignment) epoch")
            ax.set_ylabel("OTDD to proxy (lower = closer)", color="#1f77b4")
            ax.tick_params(axis="y", colors="#1f77b4")
            ax2.set_ylabel(f"test {metric}\n(lower is better)", color="#d62728")
            ax2.tick_params(axis="y", colors="#d62728")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
            for e in ex:
                rows.append([task, str(e), trace[e].text() if e in trace else "-",
                             str(stat_of(by_epoch[e]).n), stat_of(by_epoch[e]).text()])
            if naive:
                rows.append([task, "naive", "-", str(stat_of(naive).n), stat_of(naive).text()])
            sentences.append(_align_sentence(task, metric, trace, by_epoch))
        seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
        suptitle(fig, "RQ2 embedder training: OTDD per embedder epoch (blue, left axis) and "
                       "test error after fine-tuning from that epoch's embedder (red, right "
                       f"axis); mean ± 1 std over {seeds} seed(s)")
        path = save(fig, out / fig_name("rq2", part),
                     collect_legend(axes + twins), ncol=3)
        sec.blocks.append(("img", path,
                           f"{part.name}: OTDD and downstream error per embedder epoch"))
    sec.blocks.append(("table", ["task", "embedder epoch", "OTDD", "seeds",
                                 "test after fine-tuning (mean ± std)"], rows))
    sec.blocks.append(("ul", sentences or ["No finished aligned runs yet."]))
    return sec


def _align_sentence(task: str, metric: str, trace: dict, by_epoch: dict) -> str:
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
        v = compare(s1, s0)
        what = {"better": "lower, beyond the seed spread",
                "worse": "higher, beyond the seed spread",
                "same": "not different beyond the seed spread",
                "unknown": "not comparable (one seed)"}[v]
        parts.append(f"; fine-tuning from the epoch-{e1} embedder gave {metric} {s1.text()} vs "
                     f"{s0.text()} from the epoch-{e0} embedder ({what})")
        best = min(ex, key=lambda e: stat_of(by_epoch[e]).mean)
        parts.append(f"; the lowest mean error came from embedder epoch {best}")
        common = [e for e in ex if e in trace]
        rho = spearman([trace[e].mean for e in common], [stat_of(by_epoch[e]).mean for e in common])
        if rho is not None:
            rel = ("lower OTDD went with lower error" if rho >= 0.8 else
                   "lower OTDD went with higher error" if rho <= -0.8 else
                   "no consistent relation between OTDD and error")
            parts.append(f"; Spearman correlation of OTDD with mean error over {len(common)} "
                         f"embedder epochs: {rho:+.2f} ({rel}; rule: |rho| >= 0.8)")
    return "".join(parts) + "."
