"""RQ6 (`experiment: embedder`, the paper's future work): which embedder? Per task: the final
error of each embedder kind (ORCA's conv, the per-patch linear map, the whole-input linear map;
`config.choices.EMBEDDER_KINDS`) trained with and without alignment, a figure (kinds on x, one
marker per alignment), a table with the embedder's parameters, and the comparisons:
each kind vs ORCA's conv at the same alignment, and each kind aligned vs not aligned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ...config.choices import DEFAULT_EMBEDDER, EMBEDDER_KINDS, EXPERIMENTS
from ..stats import Family
from .data import Part, RunView, Section, group, stat_of, test_header
from .figures import task_panels_figure

ALIGNMENT = {True: "aligned", False: "not aligned"}


def kind_of(r: RunView) -> str:
    return str(r.config.get("embedder", {}).get("kind", DEFAULT_EMBEDDER))


def setting(r: RunView) -> tuple[str, bool]:
    """A run's setting: (embedder kind, whether its embedder was aligned)."""
    return kind_of(r), r.aligned


def setting_text(key: tuple[str, bool]) -> str:
    return f"{key[0]} ({ALIGNMENT[key[1]]})"


def comparisons(groups: dict) -> list[tuple]:
    """(a, b) setting pairs of one task (diff = a - b): each kind vs the conv at the same
    alignment, then each kind aligned vs not aligned."""
    pairs = [((k, al), (DEFAULT_EMBEDDER, al)) for (k, al) in groups
             if k != DEFAULT_EMBEDDER and (DEFAULT_EMBEDDER, al) in groups]
    pairs += [((k, True), (k, False)) for (k, al) in groups if al and (k, False) in groups]
    return pairs


def embedder_groups(done: list[RunView]) -> dict:
    """{(kind, aligned): runs} of one task, in the table's order (kinds as listed, aligned
    first)."""
    groups = group(done, setting)
    order = list(EMBEDDER_KINDS)
    return dict(sorted(groups.items(), key=lambda kv: (
        order.index(kv[0][0]) if kv[0][0] in order else len(order), not kv[0][1])))


def section_embedder(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENTS['embedder'].title} (part '{part.name}')")
    tasks = [t for t in part.tasks() if part.done(t)]
    fam = _tests(part, tasks)
    rows, sentences = [], []
    for task in tasks:
        groups = embedder_groups(part.done(task))
        rows += _rows(task, groups, fam)
        if comparisons(groups):
            sentences.append(_sentence(task, groups, fam))
    if tasks:
        path = task_panels_figure(
            part, tasks, lambda ax, task: _panel(ax, embedder_groups(part.done(task))), "rq6",
            "RQ6 which embedder: test error per embedder kind, with and without alignment, "
            "mean ± 1 std over {seeds} seed(s)", out, ncol=4)
        sec.blocks.append(("img", path, f"{part.name}: error per embedder kind"))
    sec.blocks.append(("table", ["task", "embedder", "alignment", "embedder parameters", "seeds",
                                 f"{test_header(part.done())} mean ± 95% CI",
                                 "vs ORCA conv (same alignment)", "vs not aligned"], rows))
    sec.blocks.append(("ul", sentences or ["Needs two embedder settings of a task to compare."]))
    return sec


def _panel(ax, groups: dict) -> None:
    kinds = [k for k in EMBEDDER_KINDS if any(key[0] == k for key in groups)]
    kinds += sorted({key[0] for key in groups} - set(kinds))
    for aligned, shift, fill in ((True, -0.08, None), (False, 0.08, "none")):
        xs, means, stds = [], [], []
        for i, kind in enumerate(kinds):
            runs = groups.get((kind, aligned))
            if runs:
                st = stat_of(runs)
                xs.append(i + shift)
                means.append(st.mean)
                stds.append(st.std or 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=stds, fmt="o", mfc=fill, color="#1f77b4" if aligned
                        else "#7f7f7f", capsize=4, ms=7, label=f"embedder {ALIGNMENT[aligned]}")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_xlim(-0.5, len(kinds) - 0.5)
    ax.set_xlabel("embedder kind")
    ax.grid(alpha=0.3)


def embedder_parameters(runs: list[RunView]) -> Optional[int]:
    counts = [((r.final or {}).get("parameters") or {}).get("embedder_total") for r in runs]
    counts = [c for c in counts if c is not None]
    return max(counts) if counts else None


def _rows(task: str, groups: dict, fam: Family) -> list:
    rows = []
    for key, runs in groups.items():
        n = embedder_parameters(runs)
        vs_conv = (key, (DEFAULT_EMBEDDER, key[1]))
        vs_unaligned = (key, (key[0], False))
        rows.append([task, key[0], ALIGNMENT[key[1]], "-" if n is None else f"{n:,}",
                     str(stat_of(runs).n), stat_of(runs).text(),
                     fam.text((task, *vs_conv)) if (task, *vs_conv) in fam.tests else "-",
                     fam.text((task, *vs_unaligned)) if (task, *vs_unaligned) in fam.tests
                     else "-"])
    return rows


def _tests(part: Part, tasks: list) -> Family:
    fam = Family()
    for task in tasks:
        groups = embedder_groups(part.done(task))
        for a, b in comparisons(groups):
            fam.add((task, a, b), stat_of(groups[a]), stat_of(groups[b]), part.margin(task))
    return fam.adjust()


def _sentence(task: str, groups: dict, fam: Family) -> str:
    words = {"better": "lower error", "worse": "higher error", "equivalent": "equivalent",
             "same": "inconclusive", "unknown": "not enough seeds"}
    clauses = [f"{setting_text(a)} vs {setting_text(b)}: {words[fam.verdict((task, a, b))]}"
               for a, b in comparisons(groups)]
    return f"On {task}: " + "; ".join(clauses) + "."
