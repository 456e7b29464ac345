"""Bad and hostile inputs to `fit`, `distance`, `study`, `report` and the NAS-Bench-360 loaders.

Every case must end the same way: exit code 2, ONE `xmodal: error:` line on stderr naming the
problem, no traceback, no partial files, no code run from a crafted pickle (its `__reduce__`
would create a marker file), and nothing written outside `--out`. The CLI runs in this process
(`xmodal.cli.main`); one case runs a real process.
"""

import json
import os
import pickle
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from xmodal import cli
from xmodal.study.store import Store

from test_fit_cli import write_npz

TINY = ["--task", "digits", "--body", "minilm", "--set", "body.num_layers=1", "--seq-len", "4",
        "--max-train", "32", "--max-test", "32", "--epochs", "1", "--device", "cpu", "--quiet",
        "--set", "run.threads=1"]
TEMP = re.compile(r"^\..*\.tmp$|^\.tmp-")


class Evil:
    """Unpickling this creates `marker` (a stand-in for any code a crafted file could run)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class Box:
    """A sandbox: inputs in `inp`, outputs in `out`, caches in `cache`; `check` asserts the
    rules every hostile input must keep."""

    def __init__(self, root: Path):
        self.root, self.inp, self.out = root, root / "in", root / "out"
        self.marker = root / "MARKER-code-ran"
        self.inp.mkdir()

    def evil(self) -> Evil:
        return Evil(self.marker)

    def snapshot(self) -> dict:
        return {p: p.stat().st_mtime_ns for p in self.root.rglob("*")
                if self.out not in p.parents and p != self.out and "cache" not in p.parts}

    def run(self, argv: list, capsys) -> str:
        before = self.snapshot()
        try:
            rc = cli.main([str(a) for a in argv])
        except SystemExit as exc:   # argparse
            rc = exc.code
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert rc == 2, err
        assert len(lines) == 1 and lines[0].startswith("xmodal: error: "), err
        assert "Traceback" not in err and out == ""
        assert not self.marker.exists(), "code from a crafted file ran"
        assert self.snapshot() == before, "something outside --out changed"
        if self.out.exists():
            assert not [p for p in self.out.rglob("*") if TEMP.match(p.name)]
            assert not list(self.out.rglob("summary.json")) or self.keep_summary
        return lines[0]

    keep_summary = False


@pytest.fixture
def box(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XMODAL_DATA_DIR", raising=False)
    threads = torch.get_num_threads()
    yield Box(tmp_path)
    torch.set_num_threads(threads)


def fit_args(box: Box, *extra) -> list:
    return ["fit", *TINY, "--out", box.out, *extra]


# ----------------------------------------------------------------------------- fit: config

@pytest.mark.parametrize("setting, fragment", [
    ("train.clip=-1", "'train.clip' must be >= 0"),
    ("run.threads=-3", "'run.threads' must be >= 1"),
    ("run.threads=0", "'run.threads' must be >= 1"),
    ("align.max_iter=0", "'align.max_iter' must be >= 1"),
    ("run.name=../../escaped", "'run.name' must be a plain folder name"),
    ("run.name=a/b", "'run.name' must be a plain folder name"),
    ("run.name=..", "'run.name' must be a plain folder name"),
    ("run.name=" + "a" * 300, "'run.name' is 300 characters; at most 200"),
    ("train.pos_weight=4", "'train.pos_weight' weighs positive labels of a multi-label task"),
    ("task.options.layout=bogus", "task 'digits': unknown option 'layout'"),
])
def test_bad_config_values(box, capsys, setting, fragment):
    line = box.run(fit_args(box, "--set", setting), capsys)
    assert fragment in line
    assert not (box.root / "escaped").exists() and not (box.out / "a").exists()


def test_absolute_run_name_writes_nothing_there(box, capsys):
    target = box.root / "elsewhere"
    line = box.run(fit_args(box, "--set", f"run.name={target}"), capsys)
    assert "'run.name' must be a plain folder name" in line and not target.exists()


def test_force_with_an_escaping_run_name_deletes_nothing(box, capsys):
    victim = box.root / "victim"
    victim.mkdir()
    (victim / "summary.json").write_text('{"status": "done"}')
    box.run(fit_args(box, "--force", "--set", "run.name=../victim"), capsys)
    assert (victim / "summary.json").read_text() == '{"status": "done"}'


@pytest.mark.parametrize("name, text, fragment", [
    ("latin1.yaml", b"train:\n  lr: 0.1 # caf\xe9\n", "is not UTF-8 text"),
    ("recursive.yaml", b"task:\n  options: &a [1, *a]\n", "recursive alias"),
    ("malformed.yaml", b"train: {lr: [1, 2\n  epochs: 3\n", "is not valid YAML"),
    ("bomb.yaml", ("task:\n  options:\n    a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"    {c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n"
        for p, c in zip("abcdefgh", "bcdefghi"))).encode(), "alias bomb"),
])
def test_hostile_yaml_config_is_one_line(box, capsys, name, text, fragment):
    path = box.inp / name
    path.write_bytes(text)
    line = box.run(fit_args(box, "--config", path), capsys)
    assert fragment in line and name in line


def test_recursive_alias_in_an_override(box, capsys):
    line = box.run(fit_args(box, "--set", "task.options=&a [*a]"), capsys)
    assert "task.options" in line


# ----------------------------------------------------------------------------- fit: --out

def test_out_is_a_file_fails_before_the_data_are_read(box, capsys):
    (box.inp / "file").write_text("not a folder")
    missing = box.inp / "no-such-data.npz"     # would be the error if data came first
    argv = ["fit", "--task", f"npz:{missing}", "--quiet", "--out", box.inp / "file"]
    line = box.run(argv, capsys)
    assert "is not a folder" in line and "file" in line


def test_out_below_a_file(box, capsys):
    (box.inp / "file").write_text("x")
    line = box.run(fit_args(box)[:-2] + ["--out", box.inp / "file" / "runs"], capsys)
    assert "is not a folder" in line


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes to read-only folders")
def test_read_only_out(box, capsys):
    ro = box.inp / "ro"
    ro.mkdir(mode=0o555)
    try:
        line = box.run(["fit", "--task", "npz:/no/such.npz", "--out", ro], capsys)
    finally:
        ro.chmod(0o755)
    assert "cannot write to output folder" in line


# ----------------------------------------------------------------------------- fit: run folder

def run_folder(box: Box, name: str = "r") -> Path:
    folder = box.out / name
    folder.mkdir(parents=True)
    return folder


def test_crafted_resume_snapshot_runs_no_code(box, capsys):
    torch.save({"model": box.evil(), "state": {}}, run_folder(box) / "resume.pt")
    line = box.run(fit_args(box, "--set", "run.name=r"), capsys)
    assert "resume.pt" in line and "--force" in line


def test_garbage_resume_snapshot(box, capsys):
    (run_folder(box) / "resume.pt").write_bytes(b"\x00garbage" * 10)
    line = box.run(fit_args(box, "--set", "run.name=r"), capsys)
    assert "resume.pt" in line and "--force" in line


def test_truncated_summary(box, capsys):
    (run_folder(box) / "summary.json").write_text('{"status": "do')
    box.keep_summary = True
    line = box.run(fit_args(box, "--set", "run.name=r"), capsys)
    assert "summary.json" in line and "--force" in line


def test_garbage_metrics_of_a_finished_run(box, capsys):
    folder = run_folder(box)
    (folder / "summary.json").write_text('{"status": "done", "test_metric_best": 0.5}')
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\nnot json at all\n')
    box.keep_summary = True
    line = box.run(fit_args(box, "--set", "run.name=r"), capsys)
    assert "metrics.jsonl" in line and "--force" in line


def test_reused_run_name_with_another_config_is_not_the_old_result(box, capsys):
    folder = run_folder(box)
    (folder / "config.yaml").write_text(yaml.safe_dump({"config_hash": "0123456789"}))
    (folder / "summary.json").write_text('{"status": "done", "test_metric_best": 0.5}')
    box.keep_summary = True
    line = box.run(fit_args(box, "--set", "run.name=r"), capsys)
    assert "another configuration" in line and "--force" in line and "run.name" in line


# ----------------------------------------------------------------------------- fit: labels

@pytest.mark.parametrize("changes, fragment", [
    ({"y_test": np.array([0, 1, 2, 0, 1, 0])}, "y_test holds class(es) 2 that never occur"),
    ({"x_val": np.zeros((4, 1, 16), np.float32), "y_val": np.array([0, 1, 7, 1])},
     "y_val holds class(es) 7"),
    ({"y_train": np.zeros(20, int)}, "y_train holds only class 0"),
    ({"x_train": np.zeros((0, 1, 16), np.float32), "y_train": np.zeros(0, int)},
     "x_train has no samples"),
    ({"x_train": np.ones((20, 1, 16), np.complex64)}, "x_train is complex (complex64)"),
    ({"x_test": np.zeros((6, 1, 0), np.float32)}, "x_test has shape (6, 1, 0), with no values"),
])
def test_npz_label_sets(box, capsys, changes, fragment):
    task = write_npz(box.inp / "data.npz", **changes)
    line = box.run(["fit", "--task", task, "--quiet", "--out", box.out], capsys)
    assert fragment in line


@pytest.mark.parametrize("layout, fragment", [
    ("bogus", "option layout must be one of auto, nhw, got 'bogus'"),
])
def test_npz_layout_option(box, capsys, layout, fragment):
    task = write_npz(box.inp / "data.npz")
    line = box.run(["fit", "--task", task, "--quiet", "--out", box.out, "--set",
                    f"task.options.layout={layout}"], capsys)
    assert fragment in line
    line = box.run(["fit", "--task", task, "--quiet", "--out", box.out, "--set",
                    "task.options.lay=nhw"], capsys)
    assert "unknown option 'lay'; did you mean 'layout'?" in line


def test_empty_out_writes_nothing_here(box, capsys, monkeypatch):
    monkeypatch.chdir(box.inp)
    line = box.run(["fit", *TINY, "--out", ""], capsys)
    assert "'run.out' (--out) is empty" in line
    assert list(box.inp.iterdir()) == []


def test_broken_pipe_is_quiet(tmp_path):
    """`xmodal tasks | head -1`: the reader leaves; no traceback, exit 141 (SIGPIPE's code)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xmodal", "tasks"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.read(1)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert proc.returncode in (0, 141)


# ----------------------------------------------------------------------------- NAS-Bench-360

def test_crafted_challenge2017_runs_no_code(box, capsys):
    with open(box.inp / "challenge2017.pkl", "wb") as fh:
        pickle.dump({"data": [np.zeros(1200)] * 3, "label": ["N", "A", box.evil()]}, fh)
    line = box.run(fit_args(box, "--task", "ecg", "--data-dir", box.inp), capsys)
    assert "challenge2017.pkl" in line and "refused to unpickle" in line


def test_garbage_challenge2017(box, capsys):
    (box.inp / "challenge2017.pkl").write_bytes(b"\x80\x04garbage")
    line = box.run(fit_args(box, "--task", "ecg", "--data-dir", box.inp), capsys)
    assert "challenge2017.pkl" in line


def test_foreign_type_in_challenge2017_is_refused(box, capsys):
    import collections
    with open(box.inp / "challenge2017.pkl", "wb") as fh:
        pickle.dump(collections.OrderedDict(data=[np.zeros(1200)], label=["N"]), fh)
    line = box.run(fit_args(box, "--task", "ecg", "--data-dir", box.inp), capsys)
    assert "'collections.OrderedDict'" in line


def test_crafted_satellite_npy_runs_no_code(box, capsys):
    for split in ("train", "test"):
        d = {"data": np.zeros((4, 46)), "label": np.arange(1, 5), "x": box.evil()}
        np.save(box.inp / f"satellite_{split}.npy", np.array(d, dtype=object), allow_pickle=True)
    line = box.run(fit_args(box, "--task", "satellite", "--data-dir", box.inp), capsys)
    assert "satellite_train.npy" in line and "refused to unpickle" in line


def cifar_batches(folder: Path, payload) -> None:
    folder.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1],
                         b"extra": payload}, fh, protocol=2)


def test_crafted_cifar_batch_runs_no_code(box, capsys):
    cifar_batches(box.inp, box.evil())
    line = box.run(fit_args(box, "--task", "cifar10", "--data-dir", box.inp), capsys)
    assert "data_batch_1" in line and "refused to unpickle" in line


def test_crafted_cifar10_proxy_runs_no_code(box, capsys):
    cifar_batches(box.inp / "cifar-10-batches-py", box.evil())
    argv = fit_args(box, "--body", "vit-tiny-random", "--proxy", "cifar10", "--align-epochs",
                    "1", "--set", f"align.proxy_dir={box.inp}", "--set", "align.n_source=8")
    line = box.run(argv, capsys)
    assert "data_batch_1" in line and "refused to unpickle" in line


def test_published_shapes_still_load(tmp_path):
    """The restricted unpickler reads what the real files hold (protocol 2 with bytes keys,
    object .npy of a dict, numpy scalars, strings)."""
    from xmodal.io.safe_pickle import load_npy, load_pickle
    d = {"data": [np.arange(3.0), np.arange(2, dtype=np.int16)], "label": ["N", np.int64(2)]}
    for proto in (2, 4, 5):
        with open(tmp_path / f"p{proto}.pkl", "wb") as fh:
            pickle.dump({**d, b"raw": b"\x00\xff"}, fh, protocol=proto)
        back = load_pickle(tmp_path / f"p{proto}.pkl")
        assert back[b"raw"] == b"\x00\xff" and back["label"] == ["N", 2]
        np.testing.assert_array_equal(back["data"][1], np.arange(2, dtype=np.int16))
    np.save(tmp_path / "s.npy", np.array(d, dtype=object), allow_pickle=True)
    assert load_npy(tmp_path / "s.npy").item()["label"] == ["N", 2]


# ----------------------------------------------------------------------------- distance

def features(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(1)
    base = {"x": rng.normal(size=(12, 3)), "y": np.arange(12) % 3}
    base.update(arrays)
    np.savez(path, **base)
    return path


def test_distance_with_an_object_array_runs_no_code(box, capsys):
    bad = box.inp / "src.npz"
    np.savez(bad, x=np.array([box.evil()] * 3, dtype=object), y=np.arange(3))
    line = box.run(["distance", "--source", bad, "--target", features(box.inp / "t.npz")],
                   capsys)
    assert "src.npz" in line


def test_distance_garbage_npz(box, capsys):
    (box.inp / "g.npz").write_bytes(b"PK\x03\x04 not a zip")
    line = box.run(["distance", "--source", box.inp / "g.npz", "--target",
                    features(box.inp / "t.npz")], capsys)
    assert "g.npz" in line


def test_distance_max_iter_below_one(box, capsys):
    f = features(box.inp / "f.npz")
    line = box.run(["distance", "--source", f, "--target", f, "--max-iter", "0"], capsys)
    assert "--max-iter must be >= 1" in line


def test_sinkhorn_non_convergence_is_one_log_line(tmp_path, capsys):
    f = features(tmp_path / "f.npz", x=np.random.default_rng(2).normal(size=(12, 3)) * 30)
    g = features(tmp_path / "g.npz")
    rc = cli.main(["distance", "--source", str(f), "--target", str(g), "--max-iter", "1",
                   "--eps", "0.01", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0 and json.loads(out)["otdd"] > 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Sinkhorn" in lines[0] and "--max-iter" in lines[0], err
    assert "RuntimeWarning" not in err and "warnings.warn" not in err


# ----------------------------------------------------------------------------- study / report

def study_spec(box: Box) -> Path:
    spec = {"name": "tiny", "experiment": "freezing", "tasks": ["italypower"], "seeds": [0],
            "base": {"train": {"epochs": 1}, "body": {"num_layers": 1},
                     "task": {"max_train": 16}},
            "variants": [{"label": "untrained", "set": {"align.proxy": "none"}}],
            "axes": {"train.finetune": ["predictor-only"]}}
    path = box.inp / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("case, fragment", [
    ("empty", "--out is empty (an unset shell variable?)"),
    ("under_file", "exists and is not a folder"),
    ("db_folder", "study.db' is not a file"),
])
def test_study_run_refuses_a_bad_out_before_writing(box, capsys, monkeypatch, case, fragment):
    monkeypatch.chdir(box.inp)
    spec = study_spec(box)
    if case == "empty":
        out = ""
    elif case == "under_file":
        (box.inp / "afile").write_text("")
        out = box.inp / "afile" / "study"
    else:
        (box.out / "study.db").mkdir(parents=True)
        out = box.out
    line = box.run(["study", "run", spec, "--out", out, "--quiet"], capsys)
    assert fragment in line
    assert sorted(p.name for p in box.inp.iterdir()) == sorted(
        ["spec.yaml"] + (["afile"] if case == "under_file" else []))


def garbage_db(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "study.db").write_bytes(b"this is not a database" * 50)
    return folder


def damaged_db(folder: Path) -> Path:
    """A real xmodal store with its table pages overwritten."""
    with Store(folder, create=True):
        pass
    con = sqlite3.connect(folder / "study.db")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    raw = bytearray((folder / "study.db").read_bytes())
    raw[4096:] = b"\xa5" * (len(raw) - 4096)
    (folder / "study.db").write_bytes(bytes(raw))
    return folder


@pytest.mark.parametrize("make", [garbage_db, damaged_db])
@pytest.mark.parametrize("command", ["run", "status", "report"])
def test_damaged_study_db(box, capsys, make, command):
    folder = make(box.out)
    before = (folder / "study.db").read_bytes()
    argv = {"run": ["study", "run", study_spec(box), "--out", folder, "--quiet"],
            "status": ["study", "status", folder], "report": ["report", folder]}[command]
    line = box.run(argv, capsys)
    assert "study.db" in line and "damaged" in line
    assert (folder / "study.db").read_bytes() == before
    assert not (folder / "report").exists() and not (folder / "study.db-wal").exists()


def test_fresh_refuses_a_folder_whose_study_db_is_not_a_store(box, capsys):
    folder = garbage_db(box.out)
    (folder / "thesis.tex").write_text("years of work")
    line = box.run(["study", "run", study_spec(box), "--out", folder, "--fresh", "--quiet"],
                   capsys)
    assert "--fresh would delete" in line and (folder / "thesis.tex").is_file()


def test_fresh_refuses_a_foreign_sqlite_file(box, capsys):
    box.out.mkdir()
    con = sqlite3.connect(box.out / "study.db")
    con.execute("CREATE TABLE notes (t TEXT)")
    con.commit()
    con.close()
    line = box.run(["study", "run", study_spec(box), "--out", box.out, "--fresh", "--quiet"],
                   capsys)
    assert "not a readable xmodal study database" in line
    assert (box.out / "study.db").is_file()


@pytest.mark.parametrize("text, fragment", [
    (b"name: &a [*a]\n", "recursive alias"),
    (b"name: tiny\ndescription: caf\xe9\n", "not UTF-8"),
    (b"name: [tiny\n", "not valid YAML"),
])
def test_hostile_study_spec(box, capsys, text, fragment):
    path = box.inp / "spec.yaml"
    path.write_bytes(text)
    line = box.run(["study", "run", path, "--out", box.out, "--quiet"], capsys)
    assert fragment in line and not box.out.exists()


def test_report_of_a_folder_without_a_store(box, capsys):
    box.out.mkdir()
    line = box.run(["report", box.out], capsys)
    assert "is not a study folder" in line


# ----------------------------------------------------------------------------- a real process

def test_crafted_pickle_in_a_real_process(tmp_path):
    marker = tmp_path / "MARKER"
    with open(tmp_path / "challenge2017.pkl", "wb") as fh:
        pickle.dump({"data": [np.zeros(1200)], "label": [Evil(marker)]}, fh)
    env = dict(os.environ, HF_HUB_OFFLINE="1", XMODAL_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "xmodal.cli", "fit", "--task", "ecg",
                           "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "refused to unpickle" in lines[0] and not marker.exists()
    assert not (tmp_path / "out").exists()


def test_a_symlink_named_like_the_run_is_not_followed(box, capsys):
    elsewhere = box.root / "elsewhere"
    elsewhere.mkdir()
    box.out.mkdir()
    (box.out / "myrun").symlink_to(elsewhere)
    line = box.run(fit_args(box, "--set", "run.name=myrun"), capsys)
    assert "is a symbolic link" in line and list(elsewhere.iterdir()) == []


def test_a_run_folder_in_use_is_refused(box, capsys):
    """Another process holds the run folder's lock (a second `fit` of the same run)."""
    import fcntl
    box.out.mkdir()
    held = box.out / "busy"
    held.mkdir()
    with open(held / ".lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        pid = os.fork()
        if pid == 0:   # the child keeps the lock while the parent tries
            import time
            time.sleep(60)
            os._exit(0)
        try:
            fh.close()   # the child still holds it
            line = box.run(fit_args(box, "--set", "run.name=busy"), capsys)
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert "is in use by another xmodal process" in line
    assert sorted(p.name for p in held.iterdir()) == [".lock"]


def test_a_failed_fit_leaves_no_empty_run_folder(box, capsys):
    box.run(["fit", "--task", "npz:/no/such.npz", "--quiet", "--out", box.out / "a" / "b"],
            capsys)
    assert not (box.out / "a").exists()
