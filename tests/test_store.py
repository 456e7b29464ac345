"""The study store: schema, dedupe by config hash, atomic claims, stale runs, results, export."""

import csv
import multiprocessing
import sqlite3
import subprocess
import sys

import pytest

from xmodal.errors import UserError
from xmodal.study.export import export_csv
from xmodal.study.liveness import process_token, token_alive
from xmodal.study.store import Store


def _run(i, task="italypower", seed=0, part="proxy", label="naive"):
    return {"id": f"run{i:03d}", "task": task, "seed": seed,
            "config": {"task": {"name": task}, "run": {"seed": seed}, "train": {"lr": 1e-4}},
            "axes": {"task.name": task, "run.seed": seed, "train.lr": 1e-4},
            "run_dir": f"runs/{task}-{i}", "members": [(part, "proxy", {"label": label})]}


def _summary(test=0.25, last=0.3, trace=None):
    return {"status": "done", "metric": "error", "metric_label": "0-1 error", "best_epoch": 2,
            "best_val_metric": 0.2, "test_metric_best": test, "test_metric_last": last,
            "last_val_metric": 0.21, "parameters": {"total": 10, "trainable": 5},
            "align": None if trace is None else {"trace": trace}}


HISTORY = [{"epoch": 1, "train_loss": 1.0, "val_metric": 0.4, "lr": 1e-4, "seconds": 1.0},
           {"epoch": 2, "train_loss": 0.5, "val_metric": 0.2, "lr": 5e-5, "seconds": 1.0}]


def test_register_is_idempotent_and_keyed_by_id(tmp_path):
    with Store(tmp_path, create=True) as store:
        first = store.register({"name": "s"}, [_run(0), _run(1)])
        again = store.register({"name": "s"}, [_run(0), _run(1, part="freezing", label="all")])
        assert first == {"new": 2, "existing": 0}
        assert again == {"new": 0, "existing": 2}
        assert len(store.runs()) == 2
        parts = sorted((m["run_id"], m["part"]) for m in store.members())
        assert parts == [("run000", "proxy"), ("run001", "freezing"), ("run001", "proxy")]
        assert store.counts()["pending"] == 2
        mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode.lower() == "wal"
    # the primary key forbids duplicates even for raw inserts
    conn = sqlite3.connect(tmp_path / "study.db")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO runs (id, task, seed, config, axes) VALUES "
                     "('run000', 't', 0, '{}', '{}')")


def test_claim_is_exclusive_and_release_returns_to_pending(tmp_path):
    with Store(tmp_path, create=True) as store:
        store.register({"name": "s"}, [_run(0)])
        assert store.claim("run000")
        assert not store.claim("run000")
        assert store.run("run000")["status"] == "running"
        assert store.run("run000")["attempts"] == 1
        store.release("run000")
        assert store.run("run000")["status"] == "pending"


def test_stale_running_runs_are_reclaimed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with Store(tmp_path, create=True) as store:
        store.register({"name": "s"}, [_run(0), _run(1)])
        store.claim("run000", token=process_token(dead.pid).replace(":?", ":1"))
        store.claim("run001")  # held by this (live) process
        assert not token_alive(store.run("run000")["owner"])
        assert token_alive(store.run("run001")["owner"])
        assert store.reclaim_stale() == ["run000"]
        assert store.run("run000")["status"] == "pending"
        assert store.run("run001")["status"] == "running"


def test_record_done_and_failed(tmp_path):
    trace = [{"epoch": 0, "value": 5.0, "seconds": 0.1}, {"epoch": 1, "value": 4.0, "seconds": 0.2}]
    with Store(tmp_path, create=True) as store:
        store.register({"name": "s"}, [_run(0), _run(1)])
        store.claim("run000")
        store.record("run000", {"status": "done", "summary": _summary(trace=trace),
                                "history": HISTORY, "seconds": 3.0})
        store.claim("run001")
        store.record("run001", {"status": "failed", "summary": {},
                                "history": [{**HISTORY[0], "train_loss": float("nan")}],
                                "error": "TrainingDiverged: loss became nan", "seconds": 1.0})
        assert store.counts() == {"pending": 0, "running": 0, "done": 1, "failed": 1}
        fin = store.finals()
        assert set(fin) == {"run000"}
        assert fin["run000"]["test_metric_best"] == 0.25
        assert fin["run000"]["parameters"] == {"total": 10, "trainable": 5}
        assert [e["val_metric"] for e in store.epochs()["run000"]] == [0.4, 0.2]
        assert store.epochs()["run001"][0]["train_loss"] is None  # NaN stored as NULL
        assert [t["value"] for t in store.align_traces()["run000"]] == [5.0, 4.0]
        assert "otdd" not in store.align_traces()["run000"][0]
        failed = store.run("run001")
        assert failed["status"] == "failed" and "nan" in failed["error"]
        # re-recording replaces, never duplicates
        store.claim("run001")
        store.record("run001", {"status": "done", "summary": _summary(0.5), "history": HISTORY})
        assert len(store.epochs()["run001"]) == 2
        assert store.run("run001")["error"] is None


def test_export_csv_rows_match_store(tmp_path):
    with Store(tmp_path, create=True) as store:
        store.register({"name": "s"}, [_run(0, seed=0), _run(1, seed=1, label="text")])
        for rid, value in (("run000", 0.125), ("run001", 0.375)):
            store.claim(rid)
            store.record(rid, {"status": "done", "summary": _summary(value), "history": HISTORY,
                               "seconds": 2.0})
        path = export_csv(store, tmp_path / "out.csv")
        finals = store.finals()
    rows = list(csv.DictReader(open(path)))
    assert [r["id"] for r in rows] == ["run000", "run001"]
    for row in rows:
        assert float(row["test_metric_best"]) == finals[row["id"]]["test_metric_best"]
        assert row["status"] == "done" and row["train.lr"] == "0.0001"
    assert rows[1]["experiments"] == "proxy:text" and rows[1]["seed"] == "1"


def test_not_a_study_folder(tmp_path):
    with pytest.raises(UserError, match="not a study folder"):
        Store(tmp_path)
    (tmp_path / "study.db").write_bytes(b"")
    with pytest.raises(UserError, match="not an xmodal study database"):
        Store(tmp_path)


def _claim_all(path, n, queue):
    store = Store(path)
    got = [f"run{i:03d}" for i in range(n) if store.claim(f"run{i:03d}")]
    queue.put(got)


def test_concurrent_claims_never_overlap(tmp_path):
    n = 40
    with Store(tmp_path, create=True) as store:
        store.register({"name": "s"}, [_run(i) for i in range(n)])
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(str(tmp_path), n, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    claimed = [rid for r in results for rid in r]
    assert sorted(claimed) == [f"run{i:03d}" for i in range(n)]


def test_trace_records_of_older_stages_read_back_as_value(tmp_path):
    """Trace records keyed `otdd` (before every objective wrote `value`) are stored alike."""
    old = [{"epoch": 0, "otdd": 3.0, "seconds": 0.1}]
    with Store(tmp_path, create=True) as store:
        store.register({"name": "s"}, [_run(0)])
        store.claim("run000")
        store.record("run000", {"status": "done", "summary": _summary(trace=old),
                                "history": HISTORY})
        assert [t["value"] for t in store.align_traces("run000")["run000"]] == [3.0]
