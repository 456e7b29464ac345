"""The main job end to end, shrunk: `xmodal study run demo` then `xmodal report`, as `make demo`
runs them, through the real CLI in a subprocess (spec, runner, store, alignment, fine-tuning,
figures). Sizes are cut with the same `--set` overrides a user would use."""

import os
import sqlite3
import subprocess
import sys

import pytest

SHRINK = ["--seeds", "0", "--set", "task.max_train=40", "--set", "task.max_test=40",
          "--set", "train.epochs=1", "--set", "body.num_layers=1", "--set", "embedder.seq_len=4",
          "--set", "align.n_source=60", "--set", "align.maxsamples=8"]


def xmodal(*args, cwd):
    return subprocess.run([sys.executable, "-m", "xmodal.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=900,
                          env={**os.environ, "HF_HUB_OFFLINE": "1",
                               "XMODAL_CACHE": str(cwd / "cache")})


@pytest.mark.slow
def test_demo_study_and_report(tmp_path):
    run = xmodal("study", "run", "demo", "--out", "study", "--fresh", "--quiet", *SHRINK,
                 cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr == ""                       # --quiet: no progress, no summary
    with sqlite3.connect(tmp_path / "study" / "study.db") as db:
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
        experiments = {row[0] for row in db.execute("SELECT DISTINCT part FROM members")}
    assert set(statuses) == {"done"} and statuses["done"] >= 20
    assert experiments == {"proxy", "align-epochs", "freezing", "pretraining", "scope",
                           "embedder", "baselines"}

    again = xmodal("study", "run", "demo", "--out", "study", *SHRINK, cwd=tmp_path)
    assert again.returncode == 0
    assert f"({statuses['done']} were already done)" in again.stderr

    rep = xmodal("report", "study", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr[-2000:]
    report = tmp_path / "study" / "report"
    for png in ("rq1-proxy.png", "rq2-align-epochs.png", "rq3-freezing.png",
                "rq4-pretraining.png", "rq5-scope.png", "rq6-embedder.png"):
        assert (report / png).stat().st_size > 10_000, png
    text = (report / "report.md").read_text()
    for heading in ("## RQ1", "## RQ2", "## RQ3", "## RQ4", "## RQ5", "## RQ6",
                    "## Domain baselines"):
        assert heading in text
    # every question's section carries the baselines as reference rows
    assert text.count("| domain baseline (reference) |") == 6
    assert text.count("| paper (arXiv 2403.13537) |") == 4       # paper vs ours (not RQ5, 6)
    assert "95% confidence interval" in text and "not enough seeds" in text   # one seed here
    assert (report / "report.html").is_file()

    # the report's numbers are the store's: each baseline's reference row and each RQ1 setting
    with sqlite3.connect(tmp_path / "study" / "study.db") as db:
        rows = db.execute("SELECT r.task, m.part, json_extract(m.labels, '$.label'), "
                          "f.test_metric_best FROM runs r JOIN members m ON m.run_id = r.id "
                          "JOIN finals f ON f.run_id = r.id").fetchall()
    checked = 0
    for task, part, label, value in rows:
        if part not in ("baselines", "proxy"):
            continue
        cells = [line.split("|")[4].split()[0] for line in text.splitlines()
                 if line.startswith(f"| {task} | {label} | 1 |")]
        assert cells, (task, part, label)
        assert all(float(c) == pytest.approx(value, rel=5e-3, abs=5e-4) for c in cells)
        checked += 1
    assert checked >= 6   # 2 tasks x 3 proxy settings, plus the baselines
