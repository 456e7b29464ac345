"""The Ray backend (`xmodal study run --ray`): a tiny study on a local Ray instance, resume,
failed runs, a dead worker, shared-alignment scheduling, and the error without Ray.

`make test` installs the `cluster` extra, so these run in CI against a real Ray instance that
the tests start (loopback address only, token authentication) and shut down."""

import os
import secrets
import socket
import sys

import pytest
import yaml

from xmodal import study
from xmodal.cli import main
from xmodal.study.store import Store

TINY = {"task": {"max_train": 32, "max_test": 32},
        "body": {"num_layers": 1},
        "embedder": {"seq_len": 4},
        "align": {"epochs": 2, "n_source": 60, "maxsamples": 16, "eps": 1.0},
        "train": {"epochs": 1, "batch_size": 16},
        "run": {"save_checkpoint": False, "device": "cpu", "threads": 1}}


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    # set before Ray starts: the local instance's workers inherit the driver's environment
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "xcache"))
    # The instance the tests start listens on the loopback address only (Ray's single-node
    # mode; otherwise it binds every interface) and accepts only clients holding this token.
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)


# One token for every instance this process starts: Ray caches the token in the driver process.
TOKEN = secrets.token_hex(32)


@pytest.fixture
def ray():
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


def _spec() -> dict:
    """4 runs: two plain runs (one on a missing data file, so it fails) and two that share one
    alignment stage (fine-tuned from embedder epochs 0 and 2)."""
    return {"name": "tiny-ray", "description": "tiny Ray study", "base": TINY,
            "tasks": ["italypower"], "seeds": [0],
            "parts": [
                {"name": "plain", "experiment": "freezing",
                 "tasks": ["italypower", "npz:/nonexistent/data.npz"],
                 "variants": [{"label": "untrained", "set": {"align.proxy": "none"}}],
                 "axes": {"train.finetune": ["predictor-only"]}},
                {"name": "epochs", "experiment": "align-epochs",
                 "set": {"align.proxy": "text", "train.finetune": "predictor-only"},
                 "axes": {"align.from_epoch": [0, 2]}}]}


def test_ray_local_study_runs_once_resumes_and_stores_failures(ray, tmp_path, capsys):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    out = tmp_path / "study"
    cmd = ["study", "run", str(path), "--out", str(out), "--ray", "local", "--ray-cpus", "1"]
    assert main(cmd) == 1                         # one run failed
    err = capsys.readouterr().err
    in_flight = min(study.available_cores(), 4)      # --ray local: this machine's cores
    assert "a local Ray instance (loopback only): 1 node(s)" in err and f"{in_flight} run(s) at a time" in err
    assert not ray.is_initialized()               # the local instance was shut down
    with Store(out) as store:
        runs = {r["id"]: r for r in store.runs()}
        epochs = store.epochs()
    assert len(runs) == 4
    status = sorted(r["status"] for r in runs.values())
    assert status == ["done", "done", "done", "failed"]
    failed = [r for r in runs.values() if r["status"] == "failed"]
    assert "nonexistent" in failed[0]["error"]
    assert all(r["attempts"] == 1 for r in runs.values())          # each run executed once
    assert all(len(epochs[r["id"]]) == 1 for r in runs.values() if r["status"] == "done")
    # the runs wrote into the study folder; their logs name the Ray node
    for r in runs.values():
        log = (out / "logs" / f"{r['id']}.log").read_text()
        assert "ray: host" in log and f"end {r['id']}" in log
    assert not list(out.glob(".ray-driver-*"))   # the shared-folder marker is removed
    # the two runs sharing an alignment ran one after the other and trained it once
    aligned = sorted((r for r in runs.values() if r["config"]["align"]["proxy"] == "text"),
                     key=lambda r: r["started"])
    assert len(aligned) == 2 and all(r["status"] == "done" for r in aligned)
    assert aligned[1]["started"] >= aligned[0]["finished"]
    stages = [p for p in (out / "align-cache").iterdir() if (p / "done.json").is_file()]
    assert len(stages) == 1

    # resume: done runs are skipped, the failed one is retried (and fails again)
    stale = out / ".ray-driver-0123456789abcdef"     # the marker of a driver killed here
    stale.write_text(f"{socket.gethostname()}:999999999:?\n")
    assert main(cmd) == 1
    assert not stale.exists()
    err = capsys.readouterr().err
    assert "(3 done, 1 to run" in err
    with Store(out) as store:
        again = {r["id"]: r for r in store.runs()}
    assert set(again) == set(runs)
    for rid, r in again.items():
        assert r["attempts"] == runs[rid]["attempts"] + (r["status"] == "failed")
        assert r["status"] == runs[rid]["status"]


def test_dead_ray_worker_is_a_failed_result(ray, tmp_path):
    from xmodal.study.cluster import RayPool

    def job_fn(job):          # defined here, so Ray ships it by value
        if job["die"]:
            os._exit(1)       # the worker process dies mid-run
        return {"status": "done", "summary": {}, "history": [], "seconds": 0.0}

    pool = RayPool("local", cpus=1, fn=job_fn, quiet=True)
    try:
        assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        assert pool.slots() == study.available_cores()
        pool.submit("ok", {"die": False})
        pool.submit("dies", {"die": True})
        results = {}
        while pool.refs:
            results.update(pool.wait())
    finally:
        pool.close()
    assert results["ok"]["status"] == "done"
    assert results["dies"]["status"] == "failed"
    assert "died" in results["dies"]["error"]
    assert "\n" not in results["dies"]["error"]


def test_without_ray_the_flag_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)   # `import ray` raises ImportError
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    out = tmp_path / "study"
    assert main(["study", "run", str(path), "--out", str(out), "--ray", "auto"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "pip install 'xmodal[cluster]'" in err and err.startswith("xmodal: error:")
    assert not out.exists()
    assert main(["study", "run", str(path), "--out", str(out), "--ray-gpus", "1"]) == 2
    assert "need --ray ADDRESS" in capsys.readouterr().err
    assert not out.exists()


def test_a_node_without_the_study_folder_fails_the_run(tmp_path, monkeypatch):
    """The per-run guard (nodes that join after the start-up check): no training, a failed
    result that says what to fix."""
    from xmodal.study.cluster import run_on_worker
    for var in ("CUDA_VISIBLE_DEVICES", "OMP_WAIT_POLICY", "TOKENIZERS_PARALLELISM"):
        monkeypatch.setenv(var, os.environ.get(var, ""))   # restored after the test
    job = {"id": "x", "log": str(tmp_path / "logs" / "x.log")}
    result = run_on_worker(job, 1, 0, str(tmp_path / ".ray-driver-missing"))
    assert result["status"] == "failed"
    assert "does not see the study folder" in result["error"]
    assert "same path on every node" in result["error"]
    assert not (tmp_path / "logs").exists()


def test_ray_local_listens_on_loopback_only_by_default(tmp_path):
    """A user's `--ray local` (no Ray variables set, Ray not imported yet) starts an instance
    whose services bind 127.0.0.1, not every interface; describe() says so."""
    pytest.importorskip("ray")
    import subprocess
    script = (
        "from xmodal.study.cluster import RayPool\n"
        "pool = RayPool('local', cpus=1, quiet=True)\n"
        "try:\n"
        "    print(sorted(pool.listening_on()))\n"
        "    print(pool.describe())\n"
        "finally:\n"
        "    pool.close()\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hosts, described = proc.stdout.strip().splitlines()[-2:]
    assert hosts == "['127.0.0.1']"
    assert described.startswith("a local Ray instance (loopback only)")
