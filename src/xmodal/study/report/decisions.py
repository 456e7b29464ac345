"""Verdicts: every comparison of the paper's four questions and of the domain baselines decided
as `lower`, `higher`, `equivalent` or `inconclusive` (`study.verdicts`), with the equivalence
margins the study spec fixed before its runs, and each paper claim per task as `reproduced`,
`contradicted` or `inconclusive`. Builds the report's verdict section and `verdicts.json`.

Comparisons (a vs b; diff = a - b, errors):
- rq1: each proxy vs naive fine-tuning; each pair of proxies;
- rq2: the last embedder epoch vs embedder epoch 0;
- rq3: each freezing mode vs fine-tuning everything, per embedder (trained / untrained);
  the trained vs the untrained embedder with everything fine-tuned;
- rq4: the randomly initialised body vs each pre-trained one;
- rq5: each fine-tuning scope (LoRA ranks, LayerNorm only, frozen body) vs full fine-tuning;
- rq6: each embedder kind vs ORCA's conv at the same alignment; each kind aligned vs not;
- baselines: the plain fine-tuned setting (everything trained, trained embedder) vs the task's
  linear baseline (`logreg`; `ridge` for dense tasks).
"""

from __future__ import annotations

from typing import Optional

from ...config.choices import FINETUNE_MODES, FULL_MODE
from ..verdicts import RULE, DecisionFamily, claim_outcome
from .data import Part, RunView, Section, group, stat_of
from .rq1_proxy import _naive, _proxy_key
from .rq2_align_epochs import _from_epoch
from .rq4_pretraining import _is_random, _pre_key
from .rq5_scope import FULL_LABEL, scope_groups
from .rq6_embedder import comparisons, embedder_groups, setting_text

LINEAR = ("logreg", "ridge")
# The paper's claims (arXiv 2403.13537), each with the verdicts it predicts for its comparisons.
CLAIMS = {
    "proxy-choice": ("rq1", "the choice of proxy dataset does not matter", "no-effect"),
    "embedder-2d": ("rq1", "embedder training does not help 2D tasks", "not-lower"),
    "embedder-1d": ("rq1", "embedder training helps 1D tasks (somewhat)", "lower"),
    "more-embedder": ("rq2", "more embedder training (lower OTDD) does not lower the error",
                      "not-lower"),
    "body-matters": ("rq3", "fine-tuning the body is what matters: freezing it hurts", "higher"),
    "embedder-frozen": ("rq3", "once trained, the embedder need not be fine-tuned", "no-effect"),
    "pretraining": ("rq4", "pre-training helps: a randomly initialised body is worse "
                           "(except on Satellite)", "higher"),
}


def build(parts: list[Part], refs: dict, margins: dict, modality) -> tuple:
    """(section, comparisons, claims) for the study; `margins[task]` is the spec's margin (None:
    no equivalence verdicts for that task); `modality(task)` is '1d' or '2d'."""
    families = {q: ({}, DecisionFamily()) for q in ("rq1", "rq2", "rq3", "rq4", "rq5", "rq6",
                                                    "baselines")}
    for part in parts:
        if part.experiment in QUESTIONS:
            question, add = QUESTIONS[part.experiment]
            add(part, *families[question], margins, modality)
    _baselines(parts, refs, *families["baselines"], margins)
    comparisons, claims = [], {}
    for q, (meta, fam) in families.items():
        fam.adjust()
        records = fam.records(q, lambda key, meta=meta: meta[key][:3])
        for rec, key in zip(records, fam.tests):   # which runs gave the numbers
            rec["runs_a"], rec["runs_b"] = meta[key][4], meta[key][5]
        comparisons += records
        for key, (task, _a, _b, claim, *_ids) in meta.items():
            if claim:
                claims.setdefault((claim, task), []).append(fam.verdict(key))
    claim_rows = [{"question": CLAIMS[c][0], "task": task, "claim": CLAIMS[c][1],
                   "outcome": claim_outcome(CLAIMS[c][2], verdicts), "verdicts": verdicts}
                  for (c, task), verdicts in claims.items()]
    return _section(families, claim_rows, margins), comparisons, claim_rows


def margin_of(margins: dict, task: str) -> Optional[float]:
    m = margins.get(task)
    return None if m is None else float(m["margin"] if isinstance(m, dict) else m)


def _add(meta: dict, fam: DecisionFamily, key, task, a_label, b_label, a_runs, b_runs,
         margins, claim=None) -> None:
    meta[key] = (task, a_label, b_label, claim, [r.id for r in a_runs], [r.id for r in b_runs])
    fam.add(key, stat_of(a_runs), stat_of(b_runs), margin_of(margins, task))


def _rq1(part: Part, meta, fam, margins, modality) -> None:
    for task in part.tasks():
        groups = group(part.done(task), _proxy_key)
        naive = _naive(groups)
        proxies = [k for k in groups if k != naive]
        for k in proxies if naive else []:
            claim = "embedder-2d" if modality(task) == "2d" else "embedder-1d"
            _add(meta, fam, (part.name, task, k, naive), task, k, naive, groups[k],
                 groups[naive], margins, claim)
        for i, k in enumerate(proxies):
            for k2 in proxies[i + 1:]:
                _add(meta, fam, (part.name, task, k, k2), task, k, k2, groups[k], groups[k2],
                     margins, "proxy-choice")


def _rq2(part: Part, meta, fam, margins, modality) -> None:
    for task in part.tasks():
        by_epoch = group([r for r in part.done(task) if r.aligned], _from_epoch)
        if len(by_epoch) < 2:
            continue
        first, last = min(by_epoch), max(by_epoch)
        _add(meta, fam, (part.name, task), task, f"embedder epoch {last}",
             f"embedder epoch {first}", by_epoch[last], by_epoch[first], margins,
             "more-embedder")


def _mode(r: RunView) -> str:
    return r.config["train"]["finetune"]


def _rq3(part: Part, meta, fam, margins, modality) -> None:
    for task in part.tasks():
        done = part.done(task)
        by = group(done, lambda r: (_mode(r), "trained" if r.aligned else "untrained"))
        for (mode, kind), runs in by.items():
            full = by.get((FULL_MODE, kind))
            if mode == FULL_MODE or not full:
                continue
            row = FINETUNE_MODES.get(mode)
            trains_embedder = row is not None and "embedder" in row.trains
            claim = ("body-matters" if row is not None and not row.trains_body else
                     "embedder-frozen" if kind == "trained" and not trains_embedder else None)
            _add(meta, fam, (part.name, task, mode, kind), task, f"{mode} ({kind} embedder)",
                 f"{FULL_MODE} ({kind} embedder)", runs, full, margins, claim)
        if (FULL_MODE, "trained") in by and (FULL_MODE, "untrained") in by:
            _add(meta, fam, (part.name, task, "embedder"), task, "trained embedder",
                 "untrained embedder", by[(FULL_MODE, "trained")],
                 by[(FULL_MODE, "untrained")], margins)


def _rq4(part: Part, meta, fam, margins, modality) -> None:
    for task in part.tasks():
        groups = group(part.done(task), _pre_key)
        rnd = [k for k, v in groups.items() if all(_is_random(r) for r in v)]
        pre = [k for k in groups if k not in rnd]
        for r in rnd:
            for p in pre:
                _add(meta, fam, (part.name, task, r, p), task, r, p, groups[r], groups[p],
                     margins, "pretraining")


def _rq5(part: Part, meta, fam, margins, modality) -> None:
    for task in part.tasks():
        full, groups = scope_groups(part.done(task))
        for k, runs in groups.items() if full is not None else ():
            if k != full:
                _add(meta, fam, (part.name, task, k), task, k, FULL_LABEL, runs, groups[full],
                     margins)


def _rq6(part: Part, meta, fam, margins, modality) -> None:
    for task in part.tasks():
        groups = embedder_groups(part.done(task))
        for a, b in comparisons(groups):
            _add(meta, fam, (part.name, task, a, b), task, setting_text(a), setting_text(b),
                 groups[a], groups[b], margins)


QUESTIONS = {"proxy": ("rq1", _rq1), "align-epochs": ("rq2", _rq2), "freezing": ("rq3", _rq3),
             "pretraining": ("rq4", _rq4), "scope": ("rq5", _rq5), "embedder": ("rq6", _rq6)}


def plain_runs(parts: list[Part], task: str) -> list[RunView]:
    """The plain fine-tuned setting of a task: everything trained, trained embedder (from the
    freezing part when there is one, else any part); untrained if no run aligned."""
    order = sorted(parts, key=lambda p: p.experiment != "freezing")
    for want_aligned in (True, False):
        for part in order:
            if part.experiment == "baselines":
                continue
            runs = [r for r in part.done(task) if _mode(r) == FULL_MODE
                    and r.aligned == want_aligned and not _is_random(r)
                    and r.config.get("align", {}).get("from_epoch") is None]
            if runs:
                return _one_per_seed(runs)
    return []


def _one_per_seed(runs: list[RunView]) -> list[RunView]:
    seen, out = set(), []
    for r in runs:
        if r.seed not in seen:
            seen.add(r.seed)
            out.append(r)
    return out


def _baselines(parts: list[Part], refs: dict, meta, fam, margins) -> None:
    for task, methods in refs.items():
        linear = next((m for m in LINEAR if m in methods), None)
        plain = plain_runs(parts, task)
        if linear and plain:
            _add(meta, fam, ("baselines", task), task, "fine-tuned (all, trained embedder)",
                 linear, plain, methods[linear], margins)


def _section(families: dict, claims: list, margins: dict) -> Section:
    sec = Section("Verdicts: lower, higher, equivalent or inconclusive")
    sec.blocks.append(("p", RULE))
    if margins:
        sec.blocks.append(("table", ["task", "equivalence margin", "reason (fixed in the spec)"],
                           [[t, str(margin_of(margins, t)),
                             (m.get("reason", "") if isinstance(m, dict) else "")]
                            for t, m in margins.items()]))
    rows = []
    for q, (meta, fam) in families.items():
        for key, (task, a, b, *_rest) in meta.items():
            rows.append([q, task, a, b, fam.text(key)])
    sec.blocks.append(("table", ["question", "task", "a", "b", "verdict"], rows))
    verdicts = [fam.verdict(key) for _meta, fam in families.values() for key in fam.tests]
    counts = {v: verdicts.count(v) for v in ("lower", "higher", "equivalent", "inconclusive")}
    sec.blocks.append(("p", f"{len(rows)} comparisons: " +
                       ", ".join(f"{n} {v}" for v, n in counts.items()) + "."))
    sec.blocks.append(("table", ["question", "task", "the paper's claim", "outcome"],
                       [[c["question"], c["task"], c["claim"], c["outcome"]] for c in claims]))
    return sec
