"""RQ3 (`experiment: freezing`): which components need fine-tuning? Per task: curves of the
freezing modes, trained vs untrained embedder (paper Fig. 4), a table, and sentences on
fine-tuning the body and on the trained embedder.
"""

from __future__ import annotations

from pathlib import Path

from ..stats import Family, Stat
from ...config.choices import EXPERIMENTS, FINETUNE_MODES
from .data import (Part, Section, curve_field, join, metric_label, paper_vs_ours,
                   stat_of)
from .baselines import reference_lines
from .figures import collect_legend, curves_panel, fig_name, finals_panel, pyplot, save, suptitle

def _label(mode: str) -> str:
    return FINETUNE_MODES[mode].label if mode in FINETUNE_MODES else mode


def _frozen_body(mode: str) -> bool:
    return mode in FINETUNE_MODES and not FINETUNE_MODES[mode].trains_body


def section_freezing(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENTS['freezing'].title} (part '{part.name}')")
    done = part.done()
    tasks = [t for t in part.tasks() if part.done(t)]
    modes = [m for m in FINETUNE_MODES if any(r.config["train"]["finetune"] == m for r in done)]
    kinds = [k for k in ("trained", "untrained") if any(_embedder(r) == k for r in done)]
    if tasks:
        path = _figure(part, out, tasks, modes, kinds)
        sec.blocks.append(("img", path, f"{part.name}: curves per freezing mode"))
    stats = {t: _mode_stats(part.done(t), modes, kinds) for t in tasks}
    kind = "trained" if "trained" in kinds else (kinds[0] if kinds else None)
    fam = _tests(stats, modes, kinds, kind, part.margins)
    sec.blocks.append(("table", ["task", "fine-tuned", "trained embedder", "untrained embedder",
                                 "trained vs untrained"], _rows(part, tasks, stats, modes, fam)))
    sentences = _sentences(part, tasks, stats, modes, kinds, kind, fam)
    sec.blocks.append(("ul", sentences or ["No finished runs to compare yet."]))
    sec.blocks.append(paper_vs_ours("freezing", _ours(fam)))
    return sec


def _figure(part: Part, out: Path, tasks: list, modes: list, kinds: list) -> Path:
    """Curves per freezing mode: one row per task, one column per embedder (trained or not)."""
    plt = pyplot()
    fig, axes = plt.subplots(len(tasks), len(kinds), squeeze=False, sharey="row",
                             figsize=(5.2 * len(kinds), 3.8 * len(tasks)))
    fields, finals = set(), False
    for i, task in enumerate(tasks):
        tdone = part.done(task)
        fld = curve_field(tdone)
        fields.add(fld)
        for j, kind in enumerate(kinds):
            if not _panel(axes[i][j], tdone, task, kind, modes, fld, metric_label(tdone)):
                finals = True
    seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
    which = "test" if fields == {"test_metric"} else "validation"
    suptitle(fig, "RQ3 freezing in fine-tuning: trained (aligned) vs untrained embedder\n"
                  f"{which} metric per epoch" + (" (final test metric where a task has none)"
                                                  if finals else "")
                  + f", mean ± 1 std over {seeds} seed(s)")
    reference_lines(list(axes.flat), part.refs)
    return save(fig, out / fig_name("rq3", part), collect_legend(list(axes.flat)))


def _panel(ax, tdone: list, task: str, kind: str, modes: list, fld: str, metric: str) -> bool:
    """One mode per line; a task whose runs recorded no per-epoch metric (no validation split)
    gets each mode's final test metric instead. Returns whether any curve was drawn."""
    groups, styles = {}, {}
    for mode in modes:
        runs = [r for r in tdone if _embedder(r) == kind and r.config["train"]["finetune"] == mode]
        if runs:
            color, marker, ls = FINETUNE_MODES[mode].style if mode in FINETUNE_MODES else \
                ("#7f7f7f", "o", "-")
            groups[_label(mode)] = runs
            styles[_label(mode)] = {"color": color, "marker": marker, "ls": ls}
    names = list(groups)
    drawn = curves_panel(ax, groups, names, fld, styles, names)
    if not drawn and groups:
        finals_panel(ax, groups, names, styles, names)
    ax.set_title(f"{task}: {kind} embedder")
    which = "test" if fld == "test_metric" or not drawn else "validation"
    ax.set_ylabel(f"{which} {metric}\n(lower is better)")
    ax.tick_params(labelleft=True)
    ax.grid(alpha=0.3)
    return drawn


def _rows(part: Part, tasks: list, stats: dict, modes: list, fam: Family) -> list:
    rows = []
    for task in tasks:
        st = stats[task]
        for m in modes:
            tr, un = st.get((m, "trained"), Stat([])), st.get((m, "untrained"), Stat([]))
            verdict = fam.text(("embedder", task, m)) if tr.n and un.n else "-"
            rows.append([task, _label(m), tr.text() if tr.n else "-",
                         un.text() if un.n else "-", verdict])
    return rows


def _sentences(part: Part, tasks: list, stats: dict, modes: list, kinds: list, kind,
               fam: Family) -> list:
    sentences = []
    for task in tasks:
        st = stats[task]
        if ("body", task) in fam.tests:
            metric = metric_label(part.done(task))
            sentences.append(_body_sentence(task, kind, metric, st, modes, fam))
        if len(kinds) == 2:
            verdicts = {m: fam.verdict(("embedder", task, m)) for m in modes
                        if ("embedder", task, m) in fam.tests}
            if verdicts:
                sentences.append(_embedder_sentence(task, verdicts))
    return sentences


def _mode_stats(tdone: list, modes: list, kinds: list) -> dict:
    """{(mode, 'trained' | 'untrained'): Stat} of one task."""
    return {(m, k): stat_of([r for r in tdone
                             if r.config["train"]["finetune"] == m and _embedder(r) == k])
            for m in modes for k in kinds}


def _embedder(r) -> str:
    return "trained" if r.aligned else "untrained"


def _best_modes(st: dict, modes: list, kind: str):
    """The best (lowest mean) mode that trains the body and the best that freezes it."""
    present = [m for m in modes if st[(m, kind)].n]
    on = [m for m in present if not _frozen_body(m)]
    off = [m for m in present if _frozen_body(m)]
    if not on or not off:
        return None
    return (min(on, key=lambda m: st[(m, kind)].mean), min(off, key=lambda m: st[(m, kind)].mean))


def _tests(stats: dict, modes: list, kinds: list, kind, margins: dict) -> Family:
    """RQ3's family: per task, the best body-training mode vs the best body-freezing mode, and
    per mode the trained vs the untrained embedder."""
    fam = Family()
    for task, st in stats.items():
        best = _best_modes(st, modes, kind) if kind else None
        if best:
            fam.add(("body", task), st[(best[0], kind)], st[(best[1], kind)], margins.get(task))
        if len(kinds) == 2:
            for m in modes:
                if st[(m, "trained")].n and st[(m, "untrained")].n:
                    fam.add(("embedder", task, m), st[(m, "trained")], st[(m, "untrained")],
                            margins.get(task))
    return fam.adjust()


def _body_sentence(task: str, kind: str, metric: str, st: dict, modes: list, fam: Family) -> str:
    bon, boff = _best_modes(st, modes, kind)
    text = {"better": "fine-tuning the body helped significantly",
            "worse": "fine-tuning the body hurt significantly",
            "equivalent": "fine-tuning the body made no difference beyond the margin (equivalent)",
            "same": "the effect of fine-tuning the body: inconclusive",
            "unknown": "the effect of fine-tuning the body: not enough seeds for a verdict"}[
        fam.verdict(("body", task))]
    return (f"On {task} ({kind} embedder), {text} ({fam.evidence(('body', task))}): best mode "
            f"that trains the body ({_label(bon)}) {metric} {st[(bon, kind)].text()} "
            f"vs best mode that freezes it ({_label(boff)}) "
            f"{st[(boff, kind)].text()}.")


def _embedder_sentence(task: str, verdicts: dict) -> str:
    better = [_label(m) for m, v in verdicts.items() if v == "better"]
    worse = [_label(m) for m, v in verdicts.items() if v == "worse"]
    known = [m for m, v in verdicts.items() if v != "unknown"]
    if not known:
        return f"On {task}, trained vs untrained embedder: not enough seeds for a verdict."
    msg = (f"On {task}, the trained embedder beat the untrained one significantly in "
           f"{len(better)} of {len(known)} freezing modes"
           + (f" ({join(better)})" if better else ""))
    if worse:
        msg += f" and was worse in {len(worse)} ({join(worse)})"
    equiv = [_label(m) for m, v in verdicts.items() if v == "equivalent"]
    if equiv:
        msg += f"; equivalent within the margin in {len(equiv)} ({join(equiv)})"
    return msg + "."


def _ours(fam: Family) -> list:
    out = []
    for what, tag in (("The best body-training mode vs the best body-freezing mode", "body"),
                      ("Trained vs untrained embedder, per freezing mode", "embedder")):
        keys = [k for k in fam.tests if k[0] == tag]
        if not keys:
            continue
        c = {v: sum(fam.verdict(k) == v for k in keys) for v in ("better", "worse", "equivalent",
                                                                  "same", "unknown")}
        out.append(f"{what} ({len(keys)} comparison(s)): {c['better']} significantly lower "
                   f"error, {c['worse']} higher, {c['equivalent']} equivalent, {c['same']} "
                   f"inconclusive" +
                   (f", {c['unknown']} not enough seeds" if c["unknown"] else "") + ".")
    return out
