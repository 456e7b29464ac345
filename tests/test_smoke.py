"""Smoke mode (`study run --smoke`, `study/smoke.py`) and what it measures: seconds per
optimizer step (`stages.training`) and peak memory (`stages.memory`), on CPU and, where a GPU
exists, on CUDA. The end-to-end test runs a paper study's smoke at full model size on the
synthetic NAS-Bench-360 files (the cut-down of the four paper smokes that CI runs)."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from xmodal import study
from xmodal.study.store import Store
from xmodal.cli import main
from xmodal.errors import UserError
from xmodal.stages.memory import PeakMemory
from xmodal.study.smoke import (ALIGN_MAXSAMPLES, ALIGN_SOURCE, EVAL_SAMPLES, SMOKE_STEPS,
                                check_folder_kind, fits, smoke_config, smoke_plan)

LINUX = sys.platform.startswith("linux") and Path("/proc/self/clear_refs").exists()


@pytest.fixture(autouse=True)
def _env(offline_env):
    """conftest.py's offline_env for every test here."""


def _plan(name, tmp_path, tasks):
    return study.expand(name, tmp_path / "s", tasks=tasks,
                        overrides=[f"task.data_dir={tmp_path}", f"align.proxy_dir={tmp_path}"])


def test_smoke_runs_keep_shapes_and_cut_steps_samples_and_alignment(tmp_path):
    plan = _plan("paper-align-epochs", tmp_path, ["nb360/satellite"])
    assert len(plan.runs) == 18                           # 6 embedder epochs x 3 seeds
    smoke = smoke_plan(plan)
    # seed 0 only; fine-tuning from embedder epoch 0 stays its own run, 5..60 become one
    assert [r.seed for r in smoke.runs] == [0, 0]
    assert sorted(str(r.config.align.from_epoch) for r in smoke.runs) == ["0", "None"]
    assert any("also stands for" in n and "5" in n for n in smoke.notes)
    real = plan.runs[0].config
    for run in smoke.runs:
        cfg = run.config
        assert (cfg.body.name, cfg.embedder.seq_len, cfg.train.finetune, cfg.align.proxy) == \
            (real.body.name, real.embedder.seq_len, real.train.finetune, real.align.proxy)
        assert cfg.train.batch_size == real.train.batch_size == 16
        assert (cfg.train.epochs, cfg.train.accumulate) == (1, 1)
        assert cfg.task.max_train == SMOKE_STEPS * 16
        assert cfg.task.max_val == cfg.task.max_test == EVAL_SAMPLES
        assert cfg.align.epochs == 1 and cfg.align.maxsamples == ALIGN_MAXSAMPLES
        assert cfg.align.n_source == ALIGN_SOURCE
        assert not cfg.body.pretrained and not cfg.run.save_checkpoint
        labels = run.members[0][2]
        assert labels["smoke"]["accumulate"] == real.train.accumulate
        assert labels["smoke"]["align_epochs"] == real.align.epochs == 60
        assert run.run_dir.parent == plan.runs[0].run_dir.parent
    assert smoke.spec["smoke"] == {"steps": SMOKE_STEPS, "eval_samples": EVAL_SAMPLES, "seed": 0}


def test_an_automatic_batch_size_is_the_one_of_the_published_training_set(tmp_path):
    cfg = _plan("paper-freezing", tmp_path, ["nb360/satellite"]).runs[0].config
    auto = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=None))
    cut, real = smoke_config(auto, 800_000)
    assert cut.train.batch_size == real["batch_size"] == 32    # min(32, 800k // 8)
    assert smoke_config(auto, 80)[0].train.batch_size == 10     # 80 // 8


def test_pretrained_and_random_bodies_become_one_smoke_run(tmp_path):
    plan = _plan("paper-pretraining", tmp_path, ["nb360/satellite"])
    smoke = smoke_plan(plan)
    assert len(plan.runs) == 15 and len(smoke.runs) == 4
    note = next(n for n in smoke.notes if "also stands for" in n)
    assert "roberta-base]" in note and "random init" in note


def test_a_folder_holds_smoke_runs_or_real_ones():
    real = [{"spec": {"name": "x"}}]
    smoke = [{"spec": {"name": "x", "smoke": {"steps": 2}}}]
    check_folder_kind([], True, "d")
    check_folder_kind(real, False, "d")
    check_folder_kind(smoke, True, "d")
    with pytest.raises(UserError, match="holds a real"):
        check_folder_kind(real, True, "d")
    with pytest.raises(UserError, match="holds smoke runs"):
        check_folder_kind(smoke, False, "d")


def test_card_sizes_leave_headroom():
    assert fits(None) == "?"
    assert fits(int(19e9)) == "24 GB" and fits(int(21e9)) == "40 GB"
    assert fits(int(66e9)) == "80 GB" and fits(int(67e9)) == "> 80 GB"


PEAK_CHECK = """
import json, torch
from xmodal.stages.memory import PeakMemory, tensor_bytes
model = torch.nn.Linear(1000, 1000)
with PeakMemory(torch.device("cpu"), model) as peak:
    x = torch.ones(64 * 2**20, dtype=torch.float32)
    del x
with PeakMemory(torch.device("cpu")) as small:
    torch.ones(1000).sum()
print(json.dumps([peak.result(), small.result(), tensor_bytes(model)]))
"""


@pytest.mark.skipif(not LINUX, reason="the CPU peak comes from Linux /proc")
def test_cpu_peak_memory_sees_what_the_work_allocates_and_the_model():
    """In a fresh process (as smoke runs are: a long-lived one keeps freed pages resident)."""
    import subprocess
    out = subprocess.run([sys.executable, "-c", PEAK_CHECK], capture_output=True, text=True,
                         check=True).stdout
    got, small, model = json.loads(out.strip().splitlines()[-1])
    assert model == (1000 * 1000 + 1000) * 4                 # a Linear's tensors, in bytes
    assert got["how"].startswith("cpu:")
    assert 0.97 * 256 * 2**20 + model <= got["bytes"] < 400 * 2**20   # 256 MiB touched
    assert small["bytes"] < 64 * 2**20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peak_memory_is_the_allocators():
    device = torch.device("cuda")
    with PeakMemory(device) as peak:
        x = torch.ones(64 * 2**20, device=device)
        del x
    got = peak.result()
    assert got["how"].startswith("cuda:") and got["bytes"] >= 256 * 2**20


def test_a_fit_records_seconds_per_step_and_peak_memory(tmp_path):
    from xmodal.runs.fit import fit
    res = fit({"task": {"name": "italypower", "max_train": 40},
               "body": {"name": "bert-tiny-random"}, "embedder": {"seq_len": 8},
               "train": {"epochs": 1, "batch_size": 8},
               "run": {"out": str(tmp_path), "save_checkpoint": False, "device": "cpu"}},
              progress=False, log=lambda m: None)
    assert res.summary["budget"]["steps_per_epoch"] == 5
    assert 0 < res.summary["step_seconds"] < res.summary["seconds"]
    if LINUX:
        assert res.summary["peak_memory"]["bytes"] > 0


def test_smoke_from_needs_dry_run_and_a_smoke_folder(tmp_path, capsys):
    assert main(["study", "run", "paper-pretraining", "--out", str(tmp_path / "a"),
                 "--smoke-from", str(tmp_path)]) == 2
    assert "--smoke-from goes with --dry-run" in capsys.readouterr().err
    assert main(["study", "run", "paper-pretraining", "--out", str(tmp_path / "a"),
                 "--dry-run", "--smoke-from", str(tmp_path / "none")]) == 2
    assert "no study.db there" in capsys.readouterr().err


@pytest.mark.slow
def test_paper_scope_smoke_on_satellite_end_to_end(tmp_path, capsys, monkeypatch):
    """RoBERTa-base at Satellite's sequence length and batch size with every RQ5 setting (full
    fine-tuning, LoRA r = 4, 16, 64, LayerNorm only, frozen body): 6 smoke runs, each in its
    own process, a report with their measurements, and the dry run of the real study reading
    them back (the cut-down of the paper smokes that CI runs)."""
    monkeypatch.delenv("XMODAL_DATA_DIR", raising=False)
    data = tmp_path / "fixtures"
    assert main(["nb360", "fixtures", str(data)]) == 0
    sets = ["--set", f"task.data_dir={data}", "--set", f"align.proxy_dir={data}"]
    out = tmp_path / "smoke"
    args = ["study", "run", "paper-scope", "--tasks", "nb360/satellite", *sets]
    assert main([*args, "--smoke", "--out", str(out)]) == 0
    report = (out / "report" / "report.md").read_text()
    section = report.split("## Smoke run")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| satellite |")]
    assert len(rows) == 6 and all(row.endswith("| done |") for row in rows)
    assert {row.split(" | ")[3] for row in rows} == {"all", "lora", "layernorm", "freeze-body"}
    assert "## RQ5" in report
    with Store(out) as store:
        finals = store.finals()
    model_bytes = 125_000_000 * 4 * 0.9        # RoBERTa-base's tensors (fp32), at least
    for final in finals.values():
        summary = final["summary"]
        assert summary["step_seconds"] > 0 and summary["budget"]["steps_per_epoch"] == 2
        if LINUX:
            assert summary["peak_memory"]["bytes"] > model_bytes
    trainable = sorted(f["parameters"]["trainable"] for f in finals.values())
    assert len(set(trainable)) == 6            # each setting its own count
    capsys.readouterr()
    # the real plan (3 seeds, 18 runs) with the smoke's measurements
    assert main([*args, "--out", str(tmp_path / "real"), "--dry-run",
                 "--smoke-from", str(out)]) == 0
    text = capsys.readouterr().out
    assert "peak memory measured for 18 of 18 fine-tuning runs" in text
    assert text.count(" card), ") == 18 and "s/step on the smoke machine" in text
    # a smoke folder takes no real study
    with pytest.raises(UserError, match="holds smoke runs"):
        study.run_study("paper-scope", out, tasks=["nb360/satellite"],
                        overrides=[f"task.data_dir={data}"], quiet=True)
