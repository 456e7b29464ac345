"""Sequential seeding (the spec's `sequential` key): after a study's planned seeds have run,
seeds are added only to the settings of comparisons whose verdict is still `inconclusive`.

The stopping rule, fixed in the spec before any run: after each round the verdicts are
recomputed (`report.render.decide`); every setting (a configuration less its seed) on either
side of an inconclusive comparison gets the next `step` seeds it lacks from 0, 1, 2, ..., unless
it already has `max_seeds`; the study stops when no comparison is inconclusive or no setting
can take another seed. The baselines of a task follow its settings' seeds, so that every
comparison stays paired. The p-values are those of the final seeds: repeated looks raise the
error rates above the nominal alpha, which the report says next to the rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import Config, config_hash, from_dict
from ..config.choices import NO_BASELINE
from .plan import Plan, expand
from .spec import SEQUENTIAL_STEP


@dataclass(frozen=True)
class Sequential:
    max_seeds: int
    step: int

    def rule(self, first: int) -> str:
        return (f"Sequential seeding: every setting ran {first} seed(s) first; then, round by "
                f"round, each setting on either side of a comparison still inconclusive got "
                f"{self.step} more seed(s), up to {self.max_seeds}, until no comparison was "
                f"inconclusive or no setting could take another seed. Verdicts use all the "
                f"seeds a comparison's two settings share; the repeated looks make the error "
                f"rates somewhat higher than the nominal alpha.")


def sequential_of(spec: dict) -> Optional[Sequential]:
    """The spec's `sequential` block (None when absent); `spec.validate_spec` checked it."""
    block = spec.get("sequential")
    return None if block is None else Sequential(block["max_seeds"],
                                                 block.get("step", SEQUENTIAL_STEP))


def setting_key(cfg: Config) -> str:
    """A configuration less its seed: the runs of one setting share it."""
    return config_hash(dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, seed=0)))


def next_round(spec: dict, out: Path, comparisons: list[dict], runs: list[dict],
               seq: Sequential, tasks=None, overrides=None) -> Optional[Plan]:
    """The runs of the next round (None when the rule says stop). `comparisons` are the current
    verdicts (with `runs_a` / `runs_b` ids), `runs` the store's rows (id, seed, config, status).
    Planned from done runs only, so an interrupted round is planned again on resume."""
    by_id = {r["id"]: r for r in runs}
    seeds_of: dict[str, set] = {}
    key_of: dict[str, str] = {}
    for r in runs:   # done seeds only: a round cut short is planned again, runs and all
        key = key_of[r["id"]] = setting_key(from_dict(r["config"]))
        seeds = seeds_of.setdefault(key, set())
        if r["status"] == "done":
            seeds.add(int(r["seed"]))
    wanted: dict[str, tuple] = {}       # setting key -> (task, seeds to add)
    for c in comparisons:
        if c["verdict"] != "inconclusive":
            continue
        for rid in c.get("runs_a", []) + c.get("runs_b", []):
            if rid not in by_id:
                continue
            key = key_of[rid]
            have = seeds_of[key]
            if key in wanted or len(have) >= seq.max_seeds:
                continue
            add = _next_seeds(have, min(seq.step, seq.max_seeds - len(have)))
            wanted[key] = (by_id[rid]["task"], add)
    if not wanted:
        return None
    done = {r["id"] for r in runs if r["status"] == "done"}
    return _plan_for(spec, out, wanted, done, tasks, overrides)


def _next_seeds(have: set, k: int) -> list[int]:
    out, s = [], 0
    while len(out) < k:
        if s not in have:
            out.append(s)
        s += 1
    return out


def _plan_for(spec: dict, out: Path, wanted: dict, done: set, tasks,
              overrides) -> Optional[Plan]:
    """The planned runs of the wanted settings at their new seeds, and the baselines of their
    tasks at the same seeds; runs in `done` (ids) are left out."""
    by_seeds: dict[tuple, set] = {}
    for key, (task, seeds) in wanted.items():
        by_seeds.setdefault(tuple(seeds), set()).add(key)
    picked: dict[str, object] = {}
    first: Optional[Plan] = None
    for seeds, keys in by_seeds.items():
        task_names = sorted({wanted[k][0] for k in keys})
        if tasks:
            task_names = [t for t in task_names if t in tasks]
        if not task_names:
            continue
        plan = expand(spec, out, task_names, list(seeds), overrides)
        first = first or plan
        for run in plan.runs:
            if run.id in done:
                continue       # a baseline at this seed that an earlier round already ran
            if run.config.baseline.method != NO_BASELINE or setting_key(run.config) in keys:
                picked.setdefault(run.id, run)
    if not picked or first is None:
        return None
    return dataclasses.replace(first, runs=list(picked.values()), notes=[])
