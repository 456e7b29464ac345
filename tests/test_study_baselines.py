"""A study's `baselines` part: its runs are domain baselines on the same split, and the report
reads every section against them (reference rows, reference lines, a verdict per task)."""

import numpy as np
import pytest

from xmodal import study
from xmodal.errors import UserError
from xmodal.study.report.render import write_report
from xmodal.study.store import Store

SPEC = {
    "name": "tiny-baselines",
    "base": {"task": {"max_train": 24, "max_test": 60}, "body": {"num_layers": 1},
             "embedder": {"seq_len": 4},
             "train": {"epochs": 1, "batch_size": 8, "test_each_epoch": True},
             "run": {"threads": 1, "save_checkpoint": False, "precision": "fp32"}},
    "tasks": ["italypower"],
    "seeds": [0, 1, 2],
    "parts": [
        {"name": "ft", "experiment": "custom", "variants": [{"label": "all", "set": {}}]},
        {"name": "baselines", "experiment": "baselines", "methods": ["logreg", "mean", "ridge"]},
    ],
}


def test_baselines_part_expands_to_the_methods_that_apply(tmp_path):
    plan = study.expand(SPEC, tmp_path)
    methods = sorted(r.config.baseline.method for r in plan.runs
                     if r.config.baseline.method != "none")
    assert methods == ["logreg"] * 3 + ["mean"] * 3      # ridge is for dense tasks
    with pytest.raises(UserError, match="'methods' must be a non-empty list"):
        study.expand({**SPEC, "parts": [{"name": "b", "experiment": "baselines",
                                         "methods": ["svm"]}]}, tmp_path)


@pytest.mark.slow
def test_report_reads_every_section_against_the_baselines(tmp_path):
    outcome = study.run_study(SPEC, tmp_path, quiet=True)
    assert outcome.done == outcome.total == 9 and not outcome.failed
    with Store(tmp_path) as store:
        finals = store.finals()
        runs = store.runs()
    by_method = {}
    for r in runs:
        method = r["config"]["baseline"]["method"]
        by_method.setdefault(method, []).append(finals[r["id"]]["test_metric_best"])
    # the majority-class baseline: 1 - the majority share of the test subsample, every seed
    assert len(set(by_method["mean"])) == 1
    text = (write_report(tmp_path)).read_text()
    assert "Domain baselines: does cross-modal fine-tuning beat the obvious method?" in text
    assert "| italypower | logreg | 3 |" in text                    # reference row in 'ft'
    assert "logreg (baseline)" in text and "best fine-tuned: all (part 'ft')" in text
    ours = np.mean(by_method["none"])
    best = min(np.mean(v) for k, v in by_method.items() if k != "none")
    how = "beats" if ours < best else "loses to"
    assert f"italypower: the best fine-tuned setting (all (part 'ft')" in text
    assert how in text or "is neither shown different from nor equivalent to" in text
    assert "custom-custom-ft.png" in text
