"""Figure helpers shared by the report's question modules: matplotlib set-up (Agg), panel
grids, wrapped titles, legends below the panels, +-1 std bands, the per-epoch curves figure and
figure file names.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Optional

import numpy as np

from .baselines import reference_lines
from .data import Part, curve, curve_field, group, metric_label, stat_of


def band(ax, xs, mean, std, color) -> None:
    """+-1 std band, clipped at 0 (every metric here is a non-negative error)."""
    ax.fill_between(xs, np.maximum(mean - std, 0.0), mean + std, color=color, alpha=0.15, lw=0)


def pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10,
                         "legend.fontsize": 9, "figure.titlesize": 12,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def panel_grid(n: int, ncols_max: int = 3, w: float = 5.0, h: float = 3.8,
                extra_rows: float = 0.0):
    plt = pyplot()
    ncols = min(n, ncols_max)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(w * ncols, h * nrows + extra_rows),
                             squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def suptitle(fig, text: str) -> None:
    """A figure title wrapped to the figure's width."""
    import textwrap
    width = max(40, int(fig.get_figwidth() * 11))
    lines = [w for line in text.split("\n") for w in textwrap.wrap(line, width)]
    fig.suptitle("\n".join(lines))


def save(fig, path: Path, legend_items: Optional[tuple] = None,
         ncol: Optional[int] = None) -> Path:
    """Lay out and write the figure, with the legend below the panels (at most `ncol` entries
    per row; by default as many as the figure's width holds)."""
    if legend_items and legend_items[1]:   # nothing labelled: no legend
        handles, labels = legend_items
        cols = legend_columns(len(labels), ncol or max(2, int(fig.get_figwidth() / 2.4)))
        fig.legend(handles, labels, loc="lower center", ncol=cols,
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.05 + 0.035 * math.ceil(len(labels) / cols), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def legend_columns(n: int, most: int) -> int:
    """Columns for n legend entries, at most `most` per row, rows filled evenly (5 entries at
    4 per row give 3 + 2, not 4 + 1)."""
    rows = math.ceil(n / max(1, most))
    return max(1, math.ceil(n / rows))


def collect_legend(axes) -> tuple:
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    return handles, labels


COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def curves_figure(part: Part, path: Path, key, order: list, title: str,
                   styles=None) -> Optional[Path]:
    """One panel per task: the per-epoch curve of each setting (mean +- 1 std over seeds); a
    task whose runs recorded no per-epoch validation or test metric (no validation split: the
    test split is scored on the last epoch only) gets its final test metric per setting."""
    tasks = [t for t in part.tasks() if part.done(t)]
    if not tasks:
        return None
    fig, axes = panel_grid(len(tasks))
    seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
    styles, fields, finals = styles or {}, set(), False
    for ax, task in zip(axes, tasks):
        runs = part.done(task)
        groups = group(runs, key)
        names = [k for k in order if k in groups]
        fld = curve_field(runs)
        drawn = curves_panel(ax, groups, names, fld, styles, order)
        if drawn:
            fields.add(fld)
        else:
            finals_panel(ax, groups, names, styles, order)
            finals = True
        ax.set_title(task)
        ax.set_ylabel(f"{_which(fld) if drawn else 'test'} {metric_label(runs)}\n"
                      "(lower is better)")
        ax.grid(alpha=0.3)
    what = ("final test metric (no per-epoch records)" if not fields else
            f"{'test' if fields == {'test_metric'} else 'validation'} metric per epoch"
            + (" (final test metric where a task has none)" if finals else ""))
    suptitle(fig, f"{title}\n{what}, mean ± 1 std over {seeds} seed(s)")
    reference_lines(axes, part.refs)
    return save(fig, path, collect_legend(axes))


def _which(fld: str) -> str:
    return "test" if fld == "test_metric" else "validation"


def _style(name, styles: dict, order: list) -> tuple:
    style = styles.get(name, {})
    i = order.index(name)
    return (style.get("color", COLORS[i % len(COLORS)]), style.get("ls", "-"),
            style.get("marker", MARKERS[i % len(MARKERS)]))


def curves_panel(ax, groups: dict, names: list, fld: str, styles: dict, order: list) -> bool:
    """Each setting's per-epoch curve; False when no setting has a curve to draw."""
    drawn = False
    for name in names:
        xs, mean, std = curve(groups[name], fld)
        if not len(xs):
            continue
        color, ls, marker = _style(name, styles, order)
        ax.plot(xs, mean, ls, color=color, marker=marker, ms=4.5, lw=1.8, label=str(name))
        if len(groups[name]) > 1:
            band(ax, xs, mean, std, color)
        drawn = True
    if drawn:
        ax.set_xlabel("fine-tuning epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
    return drawn


def finals_panel(ax, groups: dict, names: list, styles: dict, order: list) -> None:
    """Each setting's final test metric (mean +- 1 std), for runs without per-epoch curves."""
    for i, name in enumerate(names):
        st = stat_of(groups[name])
        if not st.n:
            continue
        color, _, marker = _style(name, styles, order)
        ax.errorbar([i], [st.mean], yerr=[st.std or 0.0], fmt=marker, color=color, ms=6,
                    capsize=4, lw=1.8, label=str(name))
    ax.set_xticks(range(len(names)), [str(n) for n in names], rotation=20, ha="right")
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_xlabel("final test metric (no per-epoch records)")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part"


def fig_name(prefix: str, part: Part) -> str:
    """rq1-proxy.png; the part name is added when it differs from the experiment."""
    name = slug(part.name)
    return f"{prefix}-{part.experiment}.png" if name == part.experiment else \
        f"{prefix}-{part.experiment}-{name}.png"


def task_panels_figure(part: Part, tasks: list, draw, prefix: str, title: str, out: Path,
                       ncol: int) -> Path:
    """One panel per task (`draw(ax, task)`), titled with the task and its test metric, the
    baselines as lines; `title` gets the largest seed count as `{seeds}`. Returns the PNG."""
    fig, axes = panel_grid(len(tasks), ncols_max=3, w=5.2, h=4.0)
    for ax, task in zip(axes, tasks):
        draw(ax, task)
        ax.set_title(task)
        ax.set_ylabel(f"test {metric_label(part.done(task))}\n(lower is better)")
    seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
    suptitle(fig, title.format(seeds=seeds))
    reference_lines(axes, part.refs)
    return save(fig, out / fig_name(prefix, part), collect_legend(axes), ncol=ncol)
