"""A run interrupted after an epoch continues from `resume.pt` and ends with exactly the numbers
of an uninterrupted run (CPU, same seed); with the snapshot interval not yet reached it restarts."""

import json

import pytest

import xmodal
from xmodal.stages import training

CONFIG = {"task": {"name": "italypower", "max_train": 48, "max_test": 64},
          "body": {"name": "bert-tiny-random"}, "embedder": {"seq_len": 4},
          "train": {"epochs": 3, "batch_size": 16, "lr": 1e-3},
          "run": {"seed": 5, "device": "cpu", "save_checkpoint": False}}


def _config(out, interval):
    return {**CONFIG, "run": {**CONFIG["run"], "out": str(out), "resume_interval": interval}}


def _crash_in_epoch(monkeypatch, epoch):
    original = training.Trainer._train_epoch

    def crashing(self, e):
        if e == epoch:
            raise KeyboardInterrupt("simulated crash")
        return original(self, e)
    monkeypatch.setattr(training.Trainer, "_train_epoch", crashing)


@pytest.mark.parametrize("interval, resumed_after, mode", [(0, 2, "all"), (3600, None, "all"),
                                                          (0, 2, "predictor-only")])
def test_interrupted_run_resumes_to_identical_numbers(tmp_path, monkeypatch, interval,
                                                      resumed_after, mode):
    """`predictor-only` trains on cached body outputs (stages/frozen.py): resumed, it
    recomputes them and continues to the same numbers."""
    def config(out):
        c = _config(out, interval)
        return {**c, "train": {**c["train"], "finetune": mode}}
    reference = xmodal.fit(config(tmp_path / "ref"), progress=False, log=lambda m: None)

    with monkeypatch.context() as m:
        _crash_in_epoch(m, 3)
        with pytest.raises(KeyboardInterrupt):
            xmodal.fit(config(tmp_path / "crash"), progress=False, log=lambda m: None)
    run_dir = tmp_path / "crash" / reference.run_dir.name
    assert (run_dir / "resume.pt").is_file() == (resumed_after is not None)
    assert not (run_dir / "summary.json").exists()

    logs = []
    result = xmodal.fit(config(tmp_path / "crash"), progress=False, log=logs.append)
    assert any(f"resuming {run_dir.name} after epoch {resumed_after}" in s for s in logs) == \
        (resumed_after is not None)
    keys = ("best_epoch", "best_val_metric", "test_metric_best", "test_metric_last")
    assert {k: result.summary[k] for k in keys} == {k: reference.summary[k] for k in keys}
    assert [r["train_loss"] for r in result.history] == \
        [r["train_loss"] for r in reference.history]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "done"
