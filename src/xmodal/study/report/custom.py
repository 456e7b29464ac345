"""Custom parts (`experiment: custom`): validation/test curves and final test metrics per
variant label, and which label had the lowest mean error.
"""

from __future__ import annotations

from pathlib import Path

from ..stats import Family
from .data import EXPERIMENT_TITLES, Part, Section, group, join, stat_of
from .figures import curves_figure, fig_name


def section_custom(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['custom']}: part '{part.name}'")
    done = part.done()
    key = lambda r: r.label  # noqa: E731
    order = list(dict.fromkeys(key(r) for r in done))
    fig = curves_figure(part, out / fig_name("custom", part), key, order, f"{part.name}")
    if fig:
        sec.blocks.append(("img", fig, f"{part.name}: metric per fine-tuning epoch"))
    fam = _tests(part, key)
    rows, sentences = [], []
    for task in part.tasks():
        groups = group(part.done(task), key)
        for k in [k for k in order if k in groups]:
            rows.append([task, k, str(stat_of(groups[k]).n), stat_of(groups[k]).text(),
                         stat_of(groups[k], "test_metric_last").text()])
        if len(groups) >= 2:
            best = min(groups, key=lambda k: stat_of(groups[k]).mean)
            others = [k for k in groups if k != best]
            same = [k for k in others if fam.verdict((task, k)) == "same"]
            unknown = [k for k in others if fam.verdict((task, k)) == "unknown"]
            msg = (f"On {task}, the lowest mean error came from {best} "
                   f"({stat_of(groups[best]).text()})")
            if same:
                msg += f", not significantly lower than {join(same)}"
            if unknown:
                msg += f"; not enough seeds to compare it with {join(unknown)}"
            sentences.append(msg + ".")
    sec.blocks.append(("table", ["task", "setting", "seeds", "test (best val) mean ± 95% CI",
                                 "test (last epoch)"], rows))
    sec.blocks.append(("ul", sentences or ["No finished runs yet."]))
    return sec


def _tests(part: Part, key) -> Family:
    """The custom part's family: per task, the label with the lowest mean vs each other one
    (tests key (task, other label), diff = other - best)."""
    fam = Family()
    for task in part.tasks():
        groups = group(part.done(task), key)
        if len(groups) >= 2:
            best = min(groups, key=lambda k: stat_of(groups[k]).mean)
            for k in groups:
                if k != best:
                    fam.add((task, k), stat_of(groups[k]), stat_of(groups[best]))
    return fam.adjust()
