"""Sequential seeding: seeds are added only to the settings of inconclusive comparisons, up to
the spec's max_seeds, and the rule is stated in the report."""

from __future__ import annotations

import pytest

from xmodal.errors import UserError
from xmodal.study import runner
from xmodal.study.report.render import decide
from xmodal.study.sequential import Sequential, _next_seeds, next_round, setting_key
from xmodal.study.spec import validate_spec
from xmodal.study.store import Store

from test_study import TINY, _env  # noqa: F401  (fixture: offline hub, private cache)


def _spec(**extra):
    spec = {"name": "seq", "description": "sequential seeding", "experiment": "freezing",
            "base": TINY, "tasks": ["italypower"], "seeds": [0, 1],
            "variants": [{"label": "untrained", "set": {"align.proxy": "none"}}],
            "axes": {"train.finetune": ["all", "predictor-only"]},
            "sequential": {"max_seeds": 4, "step": 1}}
    spec.update(extra)
    return spec


def test_next_seeds_fill_the_gaps_first():
    assert _next_seeds({0, 1, 2}, 2) == [3, 4]
    assert _next_seeds({0, 2, 5}, 3) == [1, 3, 4]


@pytest.mark.parametrize("block", [{"step": 2}, {"max_seeds": 0}, {"max_seeds": 4, "step": True},
                                   {"max_seeds": 4, "every": 2}, [4]])
def test_bad_sequential_blocks_are_refused(block):
    with pytest.raises(UserError, match="sequential"):
        validate_spec(_spec(sequential=block))


def test_rounds_add_seeds_until_the_maximum(tmp_path):
    out = tmp_path / "s"
    outcome = runner.run_study(_spec(), out, quiet=True)
    assert outcome.ok
    with Store(out) as store:
        runs = store.runs()
    seeds = {}
    for r in runs:
        seeds.setdefault(r["config"]["train"]["finetune"], set()).add(r["seed"])
    # 2 seeds are below MIN_SEEDS (3): inconclusive, so one seed per round up to 4
    assert seeds == {"all": {0, 1, 2, 3}, "predictor-only": {0, 1, 2, 3}}
    assert outcome.total == len(runs) == 8
    comps = decide(out)
    assert [c["n"] for c in comps] == [4]
    assert set(comps[0]["runs_a"]) | set(comps[0]["runs_b"]) == {r["id"] for r in runs}
    # nothing more to do: a second invocation adds no round
    again = runner.run_study(_spec(), out, quiet=True)
    assert again.ok and again.done == again.skipped
    with Store(out) as store:
        assert len(store.runs()) == 8


def test_an_interrupted_round_is_planned_again(tmp_path):
    out = tmp_path / "s"
    assert runner.run_study(_spec(), out, quiet=True).ok
    with Store(out) as store:
        runs = store.runs()
    late = [r for r in runs if r["seed"] == 3]
    for r in late:            # as if the last round had been killed before these ran
        r["status"] = "pending"
    plan = next_round(_spec(), out, decide(out), runs, Sequential(4, 1))
    assert sorted(r.id for r in plan.runs) == sorted(r["id"] for r in late)


def test_a_decided_comparison_gets_no_more_seeds(tmp_path):
    out = tmp_path / "s"
    spec = _spec(sequential=None)
    spec.pop("sequential")
    assert runner.run_study(spec, out, quiet=True).ok
    with Store(out) as store:
        runs = store.runs()
    ids = [r["id"] for r in runs]
    seq = Sequential(max_seeds=6, step=2)
    decided = [{"verdict": "higher", "runs_a": ids[:2], "runs_b": ids[2:]}]
    assert next_round(_spec(), out, decided, runs, seq) is None
    open_ = [{"verdict": "inconclusive", "runs_a": ids[:1], "runs_b": []}]
    plan = next_round(_spec(), out, open_, runs, seq)
    first = next(r for r in runs if r["id"] == ids[0])
    from xmodal.config import from_dict
    key = setting_key(from_dict(first["config"]))
    assert sorted(r.seed for r in plan.runs) == [2, 3]
    assert {setting_key(r.config) for r in plan.runs} == {key}
    full = Sequential(max_seeds=2, step=2)   # already at the maximum
    assert next_round(_spec(), out, open_, runs, full) is None


def test_the_baselines_follow_the_new_seeds(tmp_path):
    """A round adds the task's baselines at the new seeds, so the baselines comparison stays
    paired (planned only: nothing is trained here)."""
    from xmodal.study.plan import expand
    spec = {"name": "seqb", "description": "sequential with baselines", "base": TINY,
            "tasks": ["italypower"], "seeds": [0, 1, 2],
            "sequential": {"max_seeds": 5, "step": 2},
            "parts": [{"name": "freezing", "experiment": "freezing",
                       "axes": {"train.finetune": ["all", "predictor-only"]}},
                      {"name": "baselines", "experiment": "baselines", "methods": ["logreg"]}]}
    plan = expand(spec, tmp_path)
    runs = [{"id": r.id, "task": r.task, "seed": r.seed, "config": r.config.to_dict(),
             "status": "done"} for r in plan.runs]
    tuned = [r.id for r in plan.runs if r.config.baseline.method == "none"
             and r.config.train.finetune == "all"]
    nxt = next_round(spec, tmp_path, [{"verdict": "inconclusive", "runs_a": tuned,
                                       "runs_b": []}], runs, Sequential(5, 2))
    kinds = sorted((r.config.baseline.method, r.config.train.finetune, r.seed) for r in nxt.runs)
    assert kinds == [("logreg", "all", 3), ("logreg", "all", 4),
                     ("none", "all", 3), ("none", "all", 4)]
