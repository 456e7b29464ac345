"""NAS-Bench-360 tasks through `xmodal fit --data-dir DIR` on tiny files in the published
formats: each trains and evaluates on CPU; an empty folder names the missing file, exit 2."""

import json
import os
import subprocess
import sys

import pytest

from test_nb360 import (write_cifar, write_darcy_v73, write_deepsea, write_ecg, write_ninapro,
                        write_satellite)
from xmodal.cli import main

WRITERS = {
    "cifar100": lambda d: write_cifar(d, 100),
    "ninapro": write_ninapro,
    "darcy-nb360": write_darcy_v73,
    "satellite": write_satellite,
    "deepsea": write_deepsea,
    "ecg": lambda d: write_ecg(d, n=12),
}
EXTRA = {"darcy-nb360": ["--set", "task.options={n_train: 10, n_test: 4}"]}
TINY = ["--body", "minilm", "--set", "body.num_layers=1", "--seq-len", "4", "--epochs", "1",
        "--batch-size", "8", "--max-train", "24", "--max-test", "16",
        "--set", "run.save_checkpoint=false", "--quiet"]


@pytest.mark.parametrize("task", sorted(WRITERS))
def test_fit_on_tiny_published_format_files(task, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    WRITERS[task](data)
    rc = main(["fit", "--task", task, "--data-dir", str(data), *TINY, *EXTRA.get(task, []),
               "--out", str(tmp_path / "runs")])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and result["status"] == "done", result
    summary = json.loads((tmp_path / "runs" / result["run_dir"].split("/")[-1] /
                          "summary.json").read_text())
    assert summary["task"] == task and summary["sizes"]["test"] > 0
    assert 0.0 <= summary["test_metric_best"] < float("inf")


def test_empty_folder_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xmodal.cli", "fit", "--task", "satellite",
                           "--data-dir", str(tmp_path), "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "satellite_train.npy" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))


PRESET_TASK = {"cifar100": "cifar100", "ninapro": "ninapro", "darcy": "darcy-nb360",
               "satellite": "satellite", "deepsea": "deepsea", "ecg": "ecg"}


def preset_path(preset: str) -> str:
    return os.path.join(os.path.dirname(__file__), "..", "configs", "nb360", f"{preset}.yaml")


@pytest.mark.parametrize("preset", sorted(PRESET_TASK))
def test_preset_dry_run_prints_config_and_model(preset, tmp_path, capsys):
    """The presets name hub bodies (offline here), so the body is swapped for the bundled one;
    everything else (task spec, embedder plan, fine-tune mode) is the preset's. The dry run
    loads the task, so it gets tiny files in the published formats."""
    task = PRESET_TASK[preset]
    WRITERS[task](tmp_path)
    rc = main(["fit", "--config", preset_path(preset), "--body", "minilm", "--set",
               "body.num_layers=1", "--data-dir", str(tmp_path), *EXTRA.get(task, []),
               "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "decay_epochs:" in out and "# parameters:" in out and "# embedder:" in out
    assert f"# task {task}:" in out


@pytest.mark.parametrize("preset", ["cifar100", "ecg"])
def test_preset_dry_run_without_its_files_is_only_the_error(preset, tmp_path, capsys):
    rc = main(["fit", "--config", preset_path(preset), "--body", "minilm", "--data-dir",
               str(tmp_path), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("xmodal: error: ") and "missing file" in err
