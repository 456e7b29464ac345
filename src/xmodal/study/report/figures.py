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
from .data import Part, curve, curve_field, group, metric_label


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


def save(fig, path: Path, legend_items: Optional[tuple] = None, ncol: int = 4) -> Path:
    if legend_items and legend_items[1]:   # no curves at all (no per-epoch records): no legend
        handles, labels = legend_items
        fig.legend(handles, labels, loc="lower center", ncol=min(ncol, len(labels)),
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
        fig.tight_layout(rect=(0, 0.05 + 0.035 * math.ceil(len(labels) / ncol), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


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
    tasks = [t for t in part.tasks() if part.done(t)]
    if not tasks:
        return None
    fig, axes = panel_grid(len(tasks))
    seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
    fields = set()
    for ax, task in zip(axes, tasks):
        groups = group(part.done(task), key)
        fld = curve_field(part.done(task))
        fields.add(fld)
        for i, name in enumerate([k for k in order if k in groups]):
            xs, mean, std = curve(groups[name], fld)
            if not len(xs):
                continue
            style = (styles or {}).get(name, {})
            color = style.get("color", COLORS[order.index(name) % len(COLORS)])
            ls = style.get("ls", "-")
            marker = style.get("marker", MARKERS[order.index(name) % len(MARKERS)])
            ax.plot(xs, mean, ls, color=color, marker=marker, ms=4.5, lw=1.8, label=str(name))
            if len(groups[name]) > 1:
                band(ax, xs, mean, std, color)
        metric = metric_label(part.done(task))
        which = "test" if fld == "test_metric" else "validation"
        ax.set_title(task)
        ax.set_xlabel("fine-tuning epoch")
        ax.set_ylabel(f"{which} {metric}\n(lower is better)")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    which = "test" if fields == {"test_metric"} else "validation"
    suptitle(fig, f"{title}\n{which} metric per epoch, mean ± 1 std over {seeds} seed(s)")
    reference_lines(axes, part.refs)
    return save(fig, path, collect_legend(axes))


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "part"


def fig_name(prefix: str, part: Part) -> str:
    """rq1-proxy.png; the part name is added when it differs from the experiment."""
    name = slug(part.name)
    return f"{prefix}-{part.experiment}.png" if name == part.experiment else \
        f"{prefix}-{part.experiment}-{name}.png"
