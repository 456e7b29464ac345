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


def test_sigterm_stops_after_the_epoch_with_a_snapshot_and_resumes(tmp_path):
    """`xmodal fit` in a real process, sent SIGTERM during its first epoch: it finishes that
    epoch, writes resume.pt, exits 143 with one line, and the same command then completes with
    the numbers of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import yaml
    cfg = _config(tmp_path / "out", 3600)
    cfg = {**cfg, "train": {**cfg["train"], "epochs": 3}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "XMODAL_CACHE": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "xmodal", "fit", "--config", str(tmp_path / "c.yaml")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline:          # wait until training has started
        if list((tmp_path / "out").glob("*/task.json")):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    run_dir = next((tmp_path / "out").iterdir())
    if proc.returncode == 0:                # finished before the signal landed: nothing to test
        pytest.skip("the run ended before SIGTERM arrived")
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "stopped after epoch" in err
    assert (run_dir / "resume.pt").is_file() and not (run_dir / "summary.json").exists()
    again = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "resuming" in again.stderr
    reference = xmodal.fit(_config(tmp_path / "ref", 3600) | {"train": cfg["train"]},
                           progress=False, log=lambda m: None)
    done = json.loads((run_dir / "summary.json").read_text())
    assert done["test_metric_best"] == reference.summary["test_metric_best"]
