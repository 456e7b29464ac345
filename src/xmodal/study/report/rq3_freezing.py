"""RQ3 (`experiment: freezing`): which components need fine-tuning? Per task: curves of the
freezing modes, trained vs untrained embedder (paper Fig. 4), a table, and sentences on
fine-tuning the body and on the trained embedder.
"""

from __future__ import annotations

from pathlib import Path

from ..stats import VERDICT_TEXT, Stat, compare
from .data import EXPERIMENT_TITLES, Part, Section, curve, curve_field, join, metric_label, stat_of
from .figures import MODE_STYLE, band, collect_legend, fig_name, pyplot, save, suptitle


BODY_FROZEN_MODES = ("freeze-body", "predictor-only")
MODE_ORDER = ("all", "freeze-embedder", "non-attn", "layernorm", "lora", "freeze-body",
              "predictor-only")
MODE_TEXT = {"all": "all (embedder + body + predictor)", "freeze-embedder": "freeze embedder",
             "freeze-body": "freeze body", "predictor-only": "predictor only",
             "layernorm": "LayerNorm only", "non-attn": "all but attention", "lora": "LoRA"}


def section_freezing(part: Part, out: Path) -> Section:
    sec = Section(f"{EXPERIMENT_TITLES['freezing']} (part '{part.name}')")
    done = part.done()
    tasks = [t for t in part.tasks() if part.done(t)]
    modes = [m for m in MODE_ORDER if any(r.config["train"]["finetune"] == m for r in done)]
    emb = lambda r: "trained" if r.aligned else "untrained"  # noqa: E731
    kinds = [k for k in ("trained", "untrained") if any(emb(r) == k for r in done)]
    if tasks:
        plt = pyplot()
        fig, axes = plt.subplots(len(tasks), len(kinds), squeeze=False, sharey="row",
                                 figsize=(5.2 * len(kinds), 3.8 * len(tasks)))
        fld_all = set()
        for i, task in enumerate(tasks):
            tdone = part.done(task)
            fld = curve_field(tdone)
            fld_all.add(fld)
            metric = metric_label(tdone)
            for j, kind in enumerate(kinds):
                ax = axes[i][j]
                for mode in modes:
                    runs = [r for r in tdone
                            if emb(r) == kind and r.config["train"]["finetune"] == mode]
                    if not runs:
                        continue
                    xs, m, s = curve(runs, fld)
                    color, marker, ls = MODE_STYLE.get(mode, ("#7f7f7f", "o", "-"))
                    ax.plot(xs, m, ls=ls, marker=marker, color=color, ms=5, lw=1.8,
                            label=MODE_TEXT.get(mode, mode))
                    if len(runs) > 1:
                        band(ax, xs, m, s, color)
                ax.set_title(f"{task}: {kind} embedder")
                ax.set_xlabel("fine-tuning epoch")
                which = "test" if fld == "test_metric" else "validation"
                ax.set_ylabel(f"{which} {metric}\n(lower is better)")
                ax.tick_params(labelleft=True)
                ax.grid(alpha=0.3)
                ax.xaxis.get_major_locator().set_params(integer=True)
        seeds = max(len({r.seed for r in part.done(t)}) for t in tasks)
        which = "test" if fld_all == {"test_metric"} else "validation"
        suptitle(fig, "RQ3 freezing in fine-tuning: trained (aligned) vs untrained embedder\n"
                       f"{which} metric per epoch, mean ± 1 std over {seeds} seed(s)")
        path = save(fig, out / fig_name("rq3", part), collect_legend(list(axes.flat)))
        sec.blocks.append(("img", path, f"{part.name}: curves per freezing mode"))
    rows, sentences = [], []
    for task in tasks:
        tdone = part.done(task)
        metric = metric_label(tdone)
        stats = {(m, k): stat_of([r for r in tdone
                                if r.config["train"]["finetune"] == m and emb(r) == k])
                 for m in modes for k in kinds}
        for m in modes:
            tr, un = stats.get((m, "trained"), Stat([])), stats.get((m, "untrained"), Stat([]))
            verdict = VERDICT_TEXT[compare(tr, un)] if tr.n and un.n else "-"
            rows.append([task, MODE_TEXT.get(m, m), tr.text() if tr.n else "-",
                         un.text() if un.n else "-", verdict])
        kind = "trained" if "trained" in kinds else kinds[0]
        present = [m for m in modes if stats[(m, kind)].n]
        body_on = {m: stats[(m, kind)] for m in present if m not in BODY_FROZEN_MODES}
        body_off = {m: stats[(m, kind)] for m in present if m in BODY_FROZEN_MODES}
        if body_on and body_off:
            bon = min(body_on, key=lambda m: body_on[m].mean)
            boff = min(body_off, key=lambda m: body_off[m].mean)
            v = compare(body_on[bon], body_off[boff])
            text = {"better": "fine-tuning the body helped beyond the seed spread",
                    "worse": "fine-tuning the body hurt beyond the seed spread",
                    "same": "fine-tuning the body made no difference beyond the seed spread",
                    "unknown": "with one seed the effect of fine-tuning the body has no spread "
                               "to judge by"}[v]
            sentences.append(f"On {task} ({kind} embedder), {text}: best mode that trains the body "
                             f"({MODE_TEXT.get(bon, bon)}) {metric} {body_on[bon].text()} vs best "
                             f"mode that freezes it ({MODE_TEXT.get(boff, boff)}) "
                             f"{body_off[boff].text()}.")
        if len(kinds) == 2:
            verdicts = {m: compare(stats[(m, "trained")], stats[(m, "untrained")]) for m in modes
                        if stats[(m, "trained")].n and stats[(m, "untrained")].n}
            if verdicts:
                better = [MODE_TEXT.get(m, m) for m, v in verdicts.items() if v == "better"]
                worse = [MODE_TEXT.get(m, m) for m, v in verdicts.items() if v == "worse"]
                known = [m for m, v in verdicts.items() if v != "unknown"]
                if not known:
                    sentences.append(f"On {task}, trained vs untrained embedder cannot be judged "
                                     f"with one seed.")
                else:
                    msg = (f"On {task}, the trained embedder beat the untrained one beyond "
                           f"the seed spread in {len(better)} of {len(known)} freezing modes"
                           + (f" ({join(better)})" if better else ""))
                    if worse:
                        msg += f" and was worse in {len(worse)} ({join(worse)})"
                    sentences.append(msg + ".")
    sec.blocks.append(("table", ["task", "fine-tuned", "trained embedder", "untrained embedder",
                                 "trained vs untrained"], rows))
    sec.blocks.append(("ul", sentences or ["No finished runs to compare yet."]))
    return sec
