"""Study specs, expansion, the resumable runner (incl. SIGKILL), status, export and CLI."""

import csv
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from xmodal import study
from xmodal.study import runner
from xmodal.cli import main
from xmodal.config import config_hash
from xmodal.errors import UserError
from xmodal.study.store import Store

TINY = {"task": {"max_train": 40, "max_test": 40},
        "body": {"num_layers": 1},
        "embedder": {"seq_len": 8},
        "align": {"epochs": 2, "n_source": 60, "maxsamples": 16, "eps": 1.0},
        "train": {"epochs": 1, "batch_size": 16},
        "run": {"save_checkpoint": False, "device": "cpu", "threads": 1}}


@pytest.fixture(autouse=True)
def _env(offline_env):
    """conftest.py's offline_env for every test here."""


def _spec(**extra):
    spec = {"name": "tiny", "description": "tiny test study", "experiment": "freezing",
            "base": TINY, "tasks": ["italypower"], "seeds": [0],
            "variants": [{"label": "untrained", "set": {"align.proxy": "none"}}],
            "axes": {"train.finetune": ["predictor-only", "freeze-body"]}}
    spec.update(extra)
    return spec


def _write(tmp_path, spec) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# ----------------------------------------------------------------------------- specs

def test_builtin_specs_load_and_expand(tmp_path):
    names = study.builtin_names()
    assert {"proxy", "align-epochs", "freezing", "pretraining", "demo"} <= set(names)
    for name in names:
        spec = study.load_spec(name)
        assert spec.get("description"), name
        plan = study.expand(spec, tmp_path / name)
        ids = [r.id for r in plan.runs]
        assert len(ids) == len(set(ids))
        for run in plan.runs:
            assert run.id == config_hash(run.config)
            assert run.config.align.cache_dir == str((tmp_path / name / "align-cache").resolve())
            assert str(run.run_dir).startswith(str((tmp_path / name / "runs").resolve()))


def test_builtin_naive_variants_are_the_papers_naive_baseline(tmp_path):
    """RQ1's naive and RQ3's untrained embedder as ORCA with 0 embedder epochs: no alignment,
    nothing copied from the body, the patch conv re-drawn (trunc-normal)."""
    for name in ("demo", "proxy", "freezing"):
        plan = study.expand(study.load_spec(name), tmp_path / name)
        naive = [r for r in plan.runs
                 if any(m[2].get("variant") in ("naive", "untrained") for m in r.members)]
        assert naive, name
        for run in naive:
            assert run.config.align.proxy == "none"
            assert run.config.embedder.init_from_body is False
            assert run.config.embedder.conv_init == "trunc-normal"


def test_naive_baseline_initialisation(tmp_path):
    import torch

    from xmodal.model.crossmodal import build_model
    from xmodal.data.registry import REGISTRY
    plan = study.expand(study.load_spec("demo"), tmp_path, tasks=["darcy"], seeds=[0])

    def run_of(part, variant):
        return next(r for r in plan.runs
                    if any(m[0] == part and m[2].get("variant") == variant for m in r.members))
    naive, orca = run_of("proxy", "naive"), run_of("proxy", "text")
    assert run_of("freezing", "untrained").id == naive.id     # one run serves RQ1 and RQ3
    spec = REGISTRY["darcy"].spec
    model, notes = build_model(spec, naive.config.body, naive.config.embedder, naive.config.run.seed)
    aligned, aligned_notes = build_model(spec, orca.config.body, orca.config.embedder, orca.config.run.seed)
    assert notes == [] and "embedding LayerNorm" in aligned_notes
    body_ln = model.body.embedding_layernorm()
    emb = model.embedder
    # a fresh LayerNorm, not the body's
    assert torch.equal(emb.norm.weight, torch.ones_like(emb.norm.weight))
    assert torch.equal(emb.norm.bias, torch.zeros_like(emb.norm.bias))
    assert not torch.equal(body_ln.weight, emb.norm.weight)
    assert torch.equal(aligned.embedder.norm.weight, body_ln.weight)
    # the patch conv re-drawn: trunc-normal std 0.02, zero bias (ORCA's xavier otherwise)
    w = emb.proj.weight
    assert torch.count_nonzero(emb.proj.bias) == 0
    assert w.std().item() == pytest.approx(0.02, rel=0.1)
    fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
    xavier = math.sqrt(2.0) * math.sqrt(6.0 / (fan_in + fan_out))   # ORCA's uniform bound
    assert aligned.embedder.proj.weight.abs().max() <= xavier < w.abs().max()
    # positions stay the embedder's own random ones
    n = emb.n_tokens
    assert not torch.allclose(emb.pos, model.body.position_embeddings()[:n])


def test_set_label_grad_reaches_every_run(tmp_path):
    spec = study.load_spec("demo")
    default = study.expand(spec, tmp_path, seeds=[0])
    detached = study.expand(spec, tmp_path, seeds=[0], overrides=["align.label_grad=false"])
    assert all(r.config.align.label_grad is True for r in default.runs)
    assert all(r.config.align.label_grad is False for r in detached.runs)
    tuned = lambda plan: {r.id for r in plan.runs if r.config.baseline.method == "none"}  # noqa: E731
    assert not tuned(default) & tuned(detached)
    # a domain baseline does not depend on alignment settings: the same runs serve both
    base = lambda plan: {r.id for r in plan.runs} - tuned(plan)  # noqa: E731
    assert base(default) == base(detached) and len(base(default)) == 3


def test_task_presets_give_each_task_its_config(tmp_path):
    spec = {"name": "presets", "base": {"train": {"epochs": 99, "batch_size": 7}},
            "tasks": ["nb360/satellite", {"preset": "nb360/ecg", "set": {"train.epochs": 2}}],
            "seeds": [0], "variants": [{"label": "naive", "set": {"align.proxy": "none"}}]}
    plan = study.expand(spec, tmp_path)
    sat, ecg = (next(r for r in plan.runs if r.task == t) for t in ("satellite", "ecg"))
    # the preset (configs/nb360/*.yaml) overrides base; the task's `set` and variants override it
    assert sat.config.body.name == ecg.config.body.name == "roberta-base"
    assert sat.config.train.epochs == 60 and ecg.config.train.epochs == 2
    assert sat.config.train.batch_size == 16 and sat.config.train.lr == 3e-5
    assert sat.config.align.label_grad is False and sat.config.align.proxy == "none"
    assert sat.members[0][2]["preset"] == "nb360/satellite"
    only = study.expand(spec, tmp_path, tasks=["nb360/ecg"])
    assert {r.task for r in only.runs} == {"ecg"}
    with pytest.raises(UserError, match="task preset 'nb360/nope' not found"):
        study.expand({**spec, "tasks": ["nb360/nope"]}, tmp_path)


@pytest.mark.parametrize("name, runs, tasks", [
    ("paper-proxy", 63, {"cifar100", "ninapro", "darcy-nb360", "satellite", "deepsea", "ecg"}),
    ("paper-align-epochs", 108, {"cifar100", "ninapro", "darcy-nb360", "satellite", "deepsea",
                                 "ecg"}),
    ("paper-freezing", 144, {"cifar100", "ninapro", "darcy-nb360", "satellite", "deepsea",
                             "ecg"}),
    ("paper-pretraining", 45, {"satellite", "deepsea", "ecg"}),
])
def test_paper_studies_dry_run_offline(name, runs, tasks, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("XMODAL_DATA_DIR", raising=False)
    # FLOP counting at full size is test_cost.py's (paper-pretraining); here a stub keeps the
    # four plans fast: 1 TFLOP per training sample, a third of it per evaluated one
    from xmodal.runs.cost import SampleFlops
    monkeypatch.setattr("xmodal.study.costs.sample_flops",
                        lambda cfg, spec: SampleFlops(1e12, 1e12 / 3))
    out = tmp_path / "study"
    assert main(["study", "run", name, "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert not out.exists()                                   # nothing written
    assert lines[-1].startswith(f"study '{name}' (") and f": {runs} runs; about " in lines[-1]
    planned = lines[:runs]
    assert len(planned) == runs and {line.split()[0] for line in planned} == tasks
    assert all(line.split()[-2:] in (["seed", "0"], ["seed", "1"], ["seed", "2"])
               for line in planned)
    bodies = {line.split()[1] for line in planned}
    if name == "paper-pretraining":
        assert bodies == {"roberta-base", "nyu-mll/roberta-base-1B-2",
                          "nyu-mll/roberta-base-100M-3", "nyu-mll/roberta-base-10M-3"}
    else:
        assert bodies == {"roberta-base", "microsoft/swin-base-patch4-window7-224-in22k"}
    hours = float(lines[-1].split("about ")[1].split()[0])
    assert hours > 1 and lines[-2].startswith(f"GPU-hours: {runs} run(s) from FLOPs counted")


def test_paper_proxy_uses_the_papers_proxies_per_modality(tmp_path):
    plan = study.expand(study.load_spec("paper-proxy"), tmp_path, seeds=[0])
    proxies = {}
    for r in plan.runs:
        proxies.setdefault(r.task, set()).add(r.config.align.proxy)
    assert proxies["cifar100"] == proxies["ninapro"] == {"none", "cifar10", "mnist", "fakedata"}
    assert proxies["satellite"] == proxies["ecg"] == {"none", "text", "fake-text"}
    naive = [r for r in plan.runs if r.config.align.proxy == "none"]
    assert all(not r.config.embedder.init_from_body for r in naive)


def test_demo_covers_all_four_experiments_and_shares_runs(tmp_path):
    plan = study.expand(study.load_spec("demo"), tmp_path)
    parts = {m[1] for r in plan.runs for m in r.members}
    assert parts == {"proxy", "align-epochs", "freezing", "pretraining", "scope", "embedder",
                     "baselines"}
    # RQ5's full fine-tuning and frozen body are RQ3's runs (all / freeze-body, trained)
    shared = [r for r in plan.runs if {"scope", "freezing"} <= {m[0] for m in r.members}]
    assert {r.config.train.finetune for r in shared} == {"all", "freeze-body"}
    # RQ6's aligned ORCA conv is RQ3's trained / all run; its five other settings are new
    shared = [r for r in plan.runs if {"embedder", "freezing"} <= {m[0] for m in r.members}]
    assert {(r.config.embedder.kind, r.config.align.proxy, r.config.train.finetune)
            for r in shared} == {("conv", "text", "all")}
    own = [r for r in plan.runs if [m[0] for m in r.members] == ["embedder"]]
    assert len({(r.config.embedder.kind, r.config.align.proxy) for r in own}) == 5
    from xmodal.data.registry import REGISTRY
    modalities = {REGISTRY[r.task].spec.modality for r in plan.runs}
    assert modalities == {"1d", "2d"}
    assert len({r.seed for r in plan.runs}) >= 2
    # ORCA's default setting is one run serving several experiments
    assert max(len(r.members) for r in plan.runs) >= 3
    assert all(r.config.body.name == "minilm" for r in plan.runs)
    assert sorted(r.config.baseline.method for r in plan.runs if r.config.baseline.method
                  != "none") == ["logreg"] * 3 + ["minirocket"] * 3 + ["ridge"] * 3
    # logistic regression and MiniRocket on BasicMotions, ridge on Darcy (dense)
    assert any(not r.config.body.pretrained for r in plan.runs)


def test_proxy_study_picks_proxies_of_the_body_modality(tmp_path):
    spec = study.load_spec("proxy")
    text = {r.config.align.proxy for r in study.expand(spec, tmp_path).runs}
    assert text == {"none", "text", "fake-text"}
    vision = {r.config.align.proxy for r in study.expand(
        spec, tmp_path, overrides=["body.name=vit-tiny-random"]).runs}
    assert {"none", "digits", "fakedata"} <= vision and not vision & {"text", "fake-text"}


def test_precedence_and_overrides(tmp_path):
    spec = _spec(tasks=[{"name": "italypower", "set": {"train.lr": 0.5, "train.epochs": 3}},
                        "gunpoint"], seeds=[0, 1])
    plan = study.expand(spec, tmp_path, overrides=["train.epochs=2"])
    assert len(plan.runs) == 2 * 2 * 2
    italy = [r for r in plan.runs if r.task == "italypower"]
    assert {r.config.train.lr for r in italy} == {0.5}           # task set
    assert {r.config.train.epochs for r in plan.runs} == {2}     # --set beats task set
    assert {r.config.train.finetune for r in plan.runs} == {"predictor-only", "freeze-body"}
    only = study.expand(spec, tmp_path, tasks=["gunpoint"], seeds=[5])
    assert {(r.task, r.seed) for r in only.runs} == {("gunpoint", 5)}
    labels = {m[2]["label"] for r in plan.runs for m in r.members}
    assert labels == {"untrained / predictor-only", "untrained / freeze-body"}


def test_from_epoch_is_canonical_and_bounded(tmp_path):
    spec = _spec(experiment="align-epochs", variants=None,
                 axes={"align.from_epoch": [0, 1, 2, 5]}, set={"align.proxy": "text"})
    spec.pop("variants")
    plan = study.expand(spec, tmp_path)
    assert [r.config.align.from_epoch for r in plan.runs] == [0, 1, None]  # 2 == epochs -> last
    assert any("from_epoch > align.epochs" in n for n in plan.notes)
    again = study.expand(spec, tmp_path / "elsewhere")
    assert [r.id for r in again.runs] == [r.id for r in plan.runs]  # ids ignore the folder


@pytest.mark.parametrize("bad, match", [
    ({"name": "x", "tasks": ["digits"], "experiment": "nope"}, "experiment must be one of"),
    ({"name": "x", "tasks": ["digits"], "variant": []}, "unknown key"),
    ({"tasks": ["digits"]}, "needs a 'name'"),
    ({"name": "x"}, "needs 'tasks'"),
    ({"name": "x", "tasks": ["digits"], "variants": [{"label": "a", "sett": {}}]}, "unknown key"),
    ({"name": "x", "tasks": ["digits"], "axes": {"train.lr": 0.1}}, "non-empty lists"),
    ({"name": "x", "tasks": ["digits"], "base": {"train": {"lrr": 1}}}, "train.lrr"),
    ({"name": "x", "tasks": ["digits"], "set": {"run.out": "/tmp"}}, "set by the study runner"),
])
def test_bad_specs_are_user_errors(tmp_path, bad, match):
    with pytest.raises(UserError, match=match):
        study.expand(bad, tmp_path)


def test_unknown_study_name_suggests():
    with pytest.raises(UserError, match="did you mean 'proxy'"):
        study.load_spec("proxi")


def test_cli_list_and_bad_input(tmp_path, capsys):
    assert main(["study", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("proxy", "align-epochs", "freezing", "pretraining", "demo"):
        assert f"  {name} " in out
    assert main(["study", "run", "demo", "--out", str(tmp_path / "d"), "--tasks", "digitz"]) == 2
    assert "did you mean 'digits'" in capsys.readouterr().err
    assert main(["study", "status", str(tmp_path)]) == 2
    (tmp_path / "keep.txt").write_text("x")
    assert main(["study", "run", str(_write(tmp_path, _spec())), "--out", str(tmp_path),
                 "--fresh"]) == 2
    assert (tmp_path / "keep.txt").exists()


# ----------------------------------------------------------------------------- running

def test_run_resume_failures_status_export(tmp_path, capsys):
    spec = _spec(tasks=["italypower", "npz:/nonexistent/data.npz"])
    out = tmp_path / "study"
    path = _write(tmp_path, spec)
    assert main(["study", "run", str(path), "--out", str(out), "--quiet"]) == 1
    with Store(out) as store:
        runs = store.runs()
        assert len(runs) == 4
        by_status = {s: [r for r in runs if r["status"] == s] for s in ("done", "failed")}
        assert len(by_status["done"]) == 2 and len(by_status["failed"]) == 2
        assert all("nonexistent" in r["error"] for r in by_status["failed"])
        assert all(len(store.epochs()[r["id"]]) == 1 for r in by_status["done"])
        attempts = {r["id"]: r["attempts"] for r in runs}
    # re-running skips done runs and retries failed ones, never duplicating a run
    assert main(["study", "run", str(path), "--out", str(out), "--quiet"]) == 1
    with Store(out) as store:
        again = {r["id"]: r["attempts"] for r in store.runs()}
    assert set(again) == set(attempts)
    for rid, n in again.items():
        assert n == attempts[rid] + (1 if rid in {r["id"] for r in by_status["failed"]} else 0)
    capsys.readouterr()
    assert main(["study", "status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "4 runs: 2 done, 0 running, 0 pending, 2 failed" in text and "nonexistent" in text
    assert main(["study", "export", str(out), "--csv", str(tmp_path / "runs.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
    with Store(out) as store:
        finals = store.finals()
    assert len(rows) == 4
    for row in rows:
        if row["status"] == "done":
            assert float(row["test_metric_best"]) == finals[row["id"]]["test_metric_best"]
            assert row["train.finetune"] in ("predictor-only", "freeze-body")
    assert main(["report", str(out)]) == 0
    md = (out / "report" / "report.md").read_text()
    assert "RQ3" in md and "2 run(s) failed" in md


def test_alignment_is_shared_and_traced(tmp_path):
    spec = _spec(experiment="align-epochs", set={"align.proxy": "text"},
                 axes={"align.from_epoch": [0, 2]})
    spec.pop("variants")
    out = tmp_path / "study"
    outcome = study.run_study(spec, out, quiet=True)
    assert outcome.ok and outcome.total == 2
    stages = [p for p in (out / "align-cache").iterdir() if (p / "done.json").is_file()]
    assert len(stages) == 1
    with Store(out) as store:
        traces = store.align_traces()
        assert len(traces) == 2
        assert all([t["epoch"] for t in tr] == [0, 1, 2] for tr in traces.values())
    md = Path(study_report(out)).read_text()
    assert "OTDD" in md


def study_report(out):
    from xmodal.study.report import write_report
    return write_report(out)


def _db_done(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        conn = sqlite3.connect(db, timeout=5)
        n = conn.execute("SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
        conn.close()
        return n
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_loses_at_most_the_run_in_progress(tmp_path):
    spec = _spec(seeds=[0, 1], axes={"train.finetune": ["predictor-only", "all"]})
    spec["base"] = {**TINY, "train": {"epochs": 3, "batch_size": 8}}
    path = _write(tmp_path, spec)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "xmodal.cli", "study", "run", str(path), "--out", str(out),
           "--quiet"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _db_done(out / "study.db") < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Store(out) as store:
        statuses = [r["status"] for r in store.runs()]
    assert statuses.count("done") >= 1 and statuses.count("done") < 4
    interrupted = "running" in statuses  # almost always: the kill hit a run in progress
    second = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert ("interrupted run(s) resumed" in second.stderr) == interrupted
    with Store(out) as store:
        runs = store.runs()
        assert len(runs) == 4 and all(r["status"] == "done" for r in runs)
        assert sorted(r["id"] for r in runs) == sorted(set(r["id"] for r in runs))
        members = store.members()
        assert len(members) == 4
        assert all(len(store.epochs()[r["id"]]) == 3 for r in runs)
        assert sum(r["attempts"] for r in runs) <= 5
    run_dirs = [p for p in (out / "runs").iterdir() if p.is_dir()]
    assert len(run_dirs) == 4 and all((p / "summary.json").is_file() for p in run_dirs)
    assert not list((out / "runs").glob("*/resume.pt"))


@pytest.mark.slow
def test_parallel_workers(tmp_path, capsys):
    spec = _spec(seeds=[0, 1], workers=2)  # the spec's default for --workers
    out = tmp_path / "study"
    outcome = study.run_study(spec, out, workers=None)
    assert outcome.ok
    with Store(out) as store:
        runs = store.runs()
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)
    err = capsys.readouterr().err
    assert "2 worker(s)" in err
    lines = err.splitlines()    # not a terminal: one start and one done line per run
    starts = [i for i, line in enumerate(lines) if line.startswith("start ")]
    dones = [i for i, line in enumerate(lines) if "] done " in line]
    assert len(starts) == len(dones) == 4 and starts[1] < dones[0]  # both in flight at once


def test_console_shows_runs_in_flight_and_quiet_shows_nothing(capsys):
    console = runner._Console(total=3, initial=0, name="s", quiet=False)
    console.running(["a", "b"], "b")
    console.advance("done a")
    quiet = runner._Console(total=3, initial=0, name="s", quiet=True)
    quiet.running(["a"], "a")
    quiet.advance("done a")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0] == "start b" and lines[1].startswith("[1/3] done a; ETA")


def test_repeated_seeds_and_indistinguishable_variants_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"seed\(s\) \[0\] appear more than once"):
        study.expand(_spec(seeds=[0, 0, 1]), tmp_path)
    twins = _spec(variants=[{"label": "a", "set": {"align.proxy": "none"}},
                            {"label": "b", "set": {"align.proxy": "none"}}])
    with pytest.raises(UserError, match="'a / predictor-only' and 'b / predictor-only' give the "
                                        "same configuration on task 'italypower'"):
        study.expand(twins, tmp_path)


def test_study_run_refuses_another_applications_sqlite_file(tmp_path):
    import sqlite3
    out = tmp_path / "s"
    out.mkdir()
    with sqlite3.connect(out / "study.db") as db:
        db.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(UserError, match="another application's SQLite database"):
        runner.run_study(_spec(), out, quiet=True)
    with sqlite3.connect(out / "study.db") as db:   # untouched
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    assert names == ["invoices"]


def test_export_never_overwrites_the_store_and_writes_dash_to_stdout(tmp_path, capsys):
    out = tmp_path / "s"
    assert runner.run_study(_spec(), out, quiet=True).ok
    before = (out / "study.db").read_bytes()
    assert main(["study", "export", str(out), "--csv", str(out / "study.db")]) == 2
    assert "the study's own database" in capsys.readouterr().err
    assert (out / "study.db").read_bytes() == before
    assert main(["study", "export", str(out), "--csv", str(out)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["study", "export", str(out), "--csv", "-"]) == 0
    got = capsys.readouterr()
    assert got.out.splitlines()[0].startswith("id,") and len(got.out.splitlines()) == 3
    assert not (tmp_path / "-").exists()


def test_an_edited_setting_is_refused_instead_of_pooled(tmp_path):
    """Re-planning an edited spec into the same folder: new seeds, tasks and labels are fine;
    a stored label with another configuration is an error naming it and what changed."""
    out = tmp_path / "s"
    out.mkdir()
    with Store(out, create=True) as store:
        runner._register(study.expand(_spec(), out), store, out)
        runner._register(study.expand(_spec(seeds=[0, 1]), out), store, out)     # more seeds
        more = _spec(variants=[{"label": "untrained", "set": {"align.proxy": "none"}},
                               {"label": "lr3", "set": {"align.proxy": "none",
                                                        "train.lr": 3e-4}}])
        runner._register(study.expand(more, out), store, out)                     # a new label
        edited = _spec(variants=[{"label": "untrained",
                                  "set": {"align.proxy": "none", "train.lr": 3e-4}}])
        with pytest.raises(UserError, match=r"setting 'untrained / predictor-only' on task "
                                            r"'italypower' with another configuration "
                                            r"\(train.lr 0.0001 -> 0.0003\)"):
            runner._register(study.expand(edited, out), store, out)
        assert len(store.members()) == 6          # nothing of the edited plan was recorded
