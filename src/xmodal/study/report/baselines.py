"""Domain baselines in a report (`experiment: baselines` parts): the reference every other
section is read against. `baseline_refs` collects them per task; each question's section gets
a reference table (`reference_table`) and dashed reference lines in its figures
(`reference_lines`); `section_baselines` asks, per task, whether the best fine-tuned setting of
the study beats the best domain baseline (tests from `stats`, Holm-adjusted together).
"""

from __future__ import annotations

from typing import Optional

from ...config.choices import EXPERIMENTS
from ..stats import Family
from .data import Part, RunView, Section, group, metric_label, stat_of

LINE_STYLES = [":", "-.", (0, (1, 3)), (0, (5, 2, 1, 2))]


def baseline_refs(parts: list[Part]) -> dict:
    """{task: {method: [finished runs]}} over every `baselines` part."""
    refs: dict = {}
    for part in parts:
        if part.experiment != "baselines":
            continue
        for r in part.done():
            method = r.config.get("baseline", {}).get("method") or r.label
            refs.setdefault(r.task, {}).setdefault(method, []).append(r)
    return refs


def reference_table(tasks: list[str], refs: dict) -> Optional[tuple]:
    """Reference rows for a section's tasks: each baseline's test metric, mean ± 95% CI."""
    rows = [[task, method, str(stat_of(runs).n), stat_of(runs).text()]
            for task in tasks for method, runs in refs.get(task, {}).items()]
    if not rows:
        return None
    return ("table", ["task", "domain baseline (reference)", "seeds",
                      "test mean ± 95% CI"], rows)


def reference_lines(axes, refs: dict, draw_on=None) -> None:
    """A horizontal line per baseline on each panel titled with a task (or `task: ...`) that
    has baselines; `draw_on[i]` instead of `axes[i]` when the metric has its own (twin) axis."""
    for ax, target in zip(axes, draw_on or axes):
        task = ax.get_title().split(": ")[0]
        for i, (method, runs) in enumerate(refs.get(task, {}).items()):
            st = stat_of(runs)
            if st.n:
                target.axhline(st.mean, color="0.35", lw=1.2, ls=LINE_STYLES[i % len(LINE_STYLES)],
                           label=f"{method} (baseline)")


def section_baselines(parts: list[Part], refs: dict, margins: Optional[dict] = None) -> Section:
    sec = Section(EXPERIMENTS["baselines"].title)
    fam = Family()
    rows, pairs = [], []
    for task, methods in refs.items():
        best_base = min(methods, key=lambda m: stat_of(methods[m]).mean)
        ours = _best_setting(parts, task)
        for method, runs in methods.items():
            rows.append([task, f"{method} (baseline)", str(stat_of(runs).n),
                         stat_of(runs).text(), ""])
        if ours is None:
            continue
        name, runs = ours
        fam.add(task, stat_of(runs), stat_of(methods[best_base]), (margins or {}).get(task))
        pairs.append((task, name, runs, best_base, methods[best_base]))
    fam.adjust()
    sentences = []
    for task, name, runs, base_name, base_runs in pairs:
        verdict = fam.verdict(task)
        rows.append([task, f"best fine-tuned: {name}", str(stat_of(runs).n),
                     stat_of(runs).text(), fam.text(task)])
        how = {"better": "beats", "worse": "loses to",
               "equivalent": "is equivalent (within the margin) to",
               "same": "is neither shown different from nor equivalent to",
               "unknown": "cannot yet be compared with"}[verdict]
        sentences.append(f"{task}: the best fine-tuned setting ({name}, "
                         f"{stat_of(runs).text()}) {how} the best domain baseline ({base_name}, "
                         f"{stat_of(base_runs).text()}; {fam.evidence(task)}).")
    metric = metric_label([r for m in refs.values() for rs in m.values() for r in rs])
    sec.blocks.append(("p", "Each domain baseline is fitted on exactly the training split the "
                            "fine-tuned runs use (`xmodal baseline`). The best fine-tuned setting "
                            "is the one with the lowest mean test metric over all other parts "
                            "of the study; its comparison with the best baseline is tested "
                            "across seeds and Holm-adjusted over the tasks. Picking the best of "
                            "many settings favours fine-tuning."))
    sec.blocks.append(("table", ["task", "setting", "seeds", f"test {metric} mean ± 95% CI",
                                 "vs best baseline"], rows))
    if sentences:
        sec.blocks.append(("ul", sentences))
    return sec


def _setting_name(part: str, run: RunView) -> str:
    """A setting named by what it sets: its variant and axis values, e.g.
    "align.from_epoch=2 (part 'align-epochs')"; a plain label when it has neither."""
    labels = run.labels
    bits = ([str(labels["variant"])] if labels.get("variant") else []) + \
        [f"{k}={v}" for k, v in (labels.get("axes") or {}).items()]
    return f"{', '.join(bits) or run.label} (part '{part}')"


def _best_setting(parts: list[Part], task: str) -> Optional[tuple[str, list[RunView]]]:
    groups: dict = {}
    for part in parts:
        if part.experiment == "baselines":
            continue
        for label, runs in group(part.done(task), lambda r: r.label).items():
            groups[_setting_name(part.name, runs[0])] = runs
    if not groups:
        return None
    name = min(groups, key=lambda k: stat_of(groups[k]).mean)
    return name, groups[name]
