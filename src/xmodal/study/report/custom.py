"""Custom parts (`experiment: custom`): validation/test curves and final test metrics per
variant label, and, per task, which label had the lowest mean error and how every other label
compares with it (paired t by seed, Holm-adjusted over the part).
"""

from __future__ import annotations

from pathlib import Path

from ...config.choices import EXPERIMENTS
from ..stats import Family
from .data import Part, Section, group, join, stat_of, test_header
from .figures import curves_figure, fig_name


def section_custom(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENTS['custom'].title}: part '{part.name}'")
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
        best = _best(groups) if len(groups) >= 2 else None
        for k in [k for k in order if k in groups]:
            vs = "" if best is None else "lowest mean" if k == best else fam.text((task, k))
            rows.append([task, k, str(stat_of(groups[k]).n), stat_of(groups[k]).text(),
                         stat_of(groups[k], "test_metric_last").text(), vs])
        if best is not None:
            sentences.append(_sentence(task, best, groups, fam))
    sec.blocks.append(("table", ["task", "setting", "seeds",
                                 f"{test_header(part.done())} mean ± 95% CI",
                                 "test (last epoch)", "vs the lowest mean"], rows))
    sec.blocks.append(("ul", sentences or ["No finished runs yet."]))
    return sec


def _best(groups: dict) -> str:
    return min(groups, key=lambda k: stat_of(groups[k]).mean)


def _sentence(task: str, best: str, groups: dict, fam: Family) -> str:
    """'On T, the lowest mean error came from B (m ± ci): significantly lower than X; not
    significantly lower than Y; not enough seeds to compare it with Z.'"""
    others = [k for k in groups if k != best]
    said = {v: [k for k in others if fam.verdict((task, k)) == v]
            for v in ("worse", "equivalent", "same", "unknown")}
    words = {"worse": "significantly lower than {}", "equivalent": "equivalent to {} within the margin",
             "same": "not significantly lower than {}",
             "unknown": "not enough seeds to compare it with {}"}
    clauses = [words[v].format(join(ks)) for v, ks in said.items() if ks]
    return (f"On {task}, the lowest mean error came from {best} "
            f"({stat_of(groups[best]).text()}): " + "; ".join(clauses) + ".")


def _tests(part: Part, key) -> Family:
    """The custom part's family: per task, the label with the lowest mean vs each other one
    (tests key (task, other label), diff = other - best)."""
    fam = Family()
    for task in part.tasks():
        groups = group(part.done(task), key)
        if len(groups) >= 2:
            best = _best(groups)
            for k in groups:
                if k != best:
                    fam.add((task, k), stat_of(groups[k]), stat_of(groups[best]),
                            part.margin(task))
    return fam.adjust()
