"""End to end: `xmodal fit` (a real subprocess) and `xmodal.fit(config)` write the run folder
(config.yaml, metrics.jsonl, summary.json, best.safetensors); the same seed gives the same
numbers; bad input is one line on stderr with exit code 2; `--dry-run` trains nothing; files
are written atomically."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

import xmodal
from xmodal.io import artifacts
from xmodal import cli
from xmodal.config import config_hash, from_dict, load_config
from xmodal.model.crossmodal import build_model
from xmodal.data.registry import load_task
from xmodal.stages.evaluate import evaluate

# MiniLM cut to one layer, 4 tokens, 32 training samples, 2 epochs; one thread each, as the
# two runs go side by side (run.threads does not enter the run id).
FLAGS = ["--task", "digits", "--body", "minilm", "--set", "body.num_layers=1", "--seq-len", "4",
         "--max-train", "32", "--max-test", "32", "--epochs", "2", "--batch-size", "16",
         "--seed", "3", "--device", "cpu", "--set", "train.lr=5e-4", "--set", "run.threads=1"]
OVERRIDES = {"task.name": "digits", "body.name": "minilm", "body.num_layers": 1,
             "embedder.seq_len": 4, "task.max_train": 32, "task.max_test": 32, "train.epochs": 2,
             "train.batch_size": 16, "run.seed": 3, "run.device": "cpu", "train.lr": 5e-4,
             "run.threads": 1}
TEMP = re.compile(r"^\..*\.tmp$|^\.tmp-")


def env_for(cache: Path) -> dict:
    env = dict(os.environ, XMODAL_CACHE=str(cache), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    env.pop("XMODAL_DATA_DIR", None)
    return env


def xmodal_command() -> list:
    script = Path(sys.executable).with_name("xmodal")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "xmodal.cli"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XMODAL_DATA_DIR", raising=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same configuration run twice: by the CLI in a subprocess and by `xmodal.fit` here,
    concurrently."""
    root = tmp_path_factory.mktemp("fit")
    proc = subprocess.Popen(xmodal_command() + ["fit", *FLAGS, "--out", str(root / "cli"),
                                                "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_for(root / "cache"))
    threads = torch.get_num_threads()
    try:
        cfg = load_config(overrides={**OVERRIDES, "run.out": str(root / "py")})
        lines = []
        result = xmodal.fit(cfg.to_dict(), progress=False, log=lines.append)
        out, err = proc.communicate(timeout=540)
    finally:
        torch.set_num_threads(threads)   # fit applied run.threads to this process
        if proc.poll() is None:
            proc.kill()
    return {"cfg": cfg, "result": result, "log": lines, "rc": proc.returncode, "out": out,
            "err": err, "root": root}


def cli_run_dir(runs) -> Path:
    assert runs["rc"] == 0, runs["err"]
    return Path(json.loads(runs["out"].strip().splitlines()[-1])["run_dir"])


def test_cli_prints_a_result_line_and_both_runs_share_the_run_id(runs):
    assert runs["rc"] == 0, runs["err"]
    assert runs["err"] == ""                 # --quiet: no progress, no log lines
    assert len(runs["out"].splitlines()) == 1
    line = json.loads(runs["out"])
    assert line["status"] == "done" and line["metric"] == "error" and line["error"] is None
    cli_dir = Path(line["run_dir"])
    assert cli_dir.parent == runs["root"] / "cli"
    assert cli_dir.name == runs["result"].run_dir.name == f"digits-minilm-{config_hash(runs['cfg'])}"
    summary = json.loads((cli_dir / "summary.json").read_text())
    assert line["test_metric"] == summary["test_metric_best"]
    assert runs["result"].status == "done"
    total = runs["result"].summary["parameters"]["total"]
    assert any(f"{total:,} of {total:,} parameters trainable (all)" in line for line in runs["log"])
    assert runs["result"].test_metric == runs["result"].summary["test_metric_best"]


@pytest.mark.parametrize("which", ["cli", "py"])
def test_run_folder_contents(runs, which):
    run_dir = cli_run_dir(runs) if which == "cli" else runs["result"].run_dir
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "summary.json", "best.safetensors"} <= names
    assert "resume.pt" not in names                   # removed once the run is complete
    assert not [n for n in names if TEMP.search(n)]   # no temp files left behind
    cfg = runs["cfg"]

    doc = yaml.safe_load((run_dir / "config.yaml").read_text())
    expected = cfg.to_dict()
    expected["run"]["out"] = str(runs["root"] / which)        # the full resolved config
    assert doc["config"] == expected
    assert from_dict(doc["config"]) == from_dict(expected)
    assert config_hash(from_dict(doc["config"])) == config_hash(cfg) == doc["config_hash"]
    assert doc["config"]["body"]["num_layers"] == 1 and doc["config"]["embedder"]["seq_len"] == 4
    assert doc["seed"] == 3
    assert doc["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert doc["versions"]["xmodal"] == xmodal.__version__ and doc["versions"]["transformers"]
    assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", doc["git_commit"])

    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    for r in history:
        assert {"train_loss", "val_metric", "lr", "seconds"} <= set(r)
        assert np.isfinite(r["train_loss"]) and r["train_loss"] > 0
        assert 0.0 <= r["val_metric"] <= 1.0 and r["lr"] >= 0 and r["seconds"] > 0
    assert history[0]["lr"] > history[-1]["lr"] > 0   # cosine: the rate each epoch's last step used

    summary = json.loads((run_dir / "summary.json").read_text())
    vals = [r["val_metric"] for r in history]
    assert summary["status"] == "done" and summary["epochs"] == 2
    assert summary["metric"] == "error" and summary["metric_label"] == "0-1 error"
    assert summary["best_epoch"] == 1 + int(np.argmin(vals))
    assert summary["best_val_metric"] == min(vals)
    assert summary["last_val_metric"] == vals[-1]
    for key in ("test_metric_best", "test_metric_last"):
        assert 0.0 <= summary[key] <= 1.0
    if summary["best_epoch"] == 2:
        assert summary["test_metric_best"] == summary["test_metric_last"]
    assert summary["sizes"]["train"] == 32 and summary["sizes"]["test"] == 32
    p = summary["parameters"]
    assert p["trainable"] == p["total"] > 0                          # finetune: all
    assert p["trainable"] == p["embedder_trainable"] + p["body_trainable"] + p["predictor_trainable"]
    assert summary["embedder_init"] == ["position embeddings", "embedding LayerNorm"]


def test_same_seed_gives_identical_numbers(runs):
    a = json.loads((cli_run_dir(runs) / "summary.json").read_text())
    b = json.loads((runs["result"].run_dir / "summary.json").read_text())
    for key in ("best_epoch", "best_val_metric", "test_metric_best", "test_metric_last",
                "last_val_metric", "parameters", "sizes"):
        assert a[key] == b[key], key
    ha = artifacts.read_jsonl(cli_run_dir(runs) / "metrics.jsonl")
    hb = artifacts.read_jsonl(runs["result"].run_dir / "metrics.jsonl")
    assert [(r["train_loss"], r["val_metric"], r["lr"]) for r in ha] == \
        [(r["train_loss"], r["val_metric"], r["lr"]) for r in hb]
    assert ha[0]["train_loss"] != ha[1]["train_loss"]              # it did train
    wa = load_file(cli_run_dir(runs) / "best.safetensors")
    wb = load_file(runs["result"].run_dir / "best.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_best_checkpoint_reproduces_the_best_test_metric(runs):
    run_dir, cfg = runs["result"].run_dir, runs["cfg"]
    summary = runs["result"].summary
    with safe_open(str(run_dir / "best.safetensors"), "pt") as fh:
        meta = fh.metadata()
    assert meta["epoch"] == str(summary["best_epoch"]) and meta["config_hash"] == config_hash(cfg)
    data = load_task(cfg.task)
    model, _ = build_model(data.spec, cfg.body, cfg.embedder, cfg.run.seed)
    state = load_file(run_dir / "best.safetensors")
    # everything but the body's bypassed input embedding (the embedder replaces it)
    assert set(state) == {k for k in model.state_dict()
                          if not k.startswith("body.model.embeddings.")}
    fresh, _ = evaluate(model, data.x_test, data.y_test, data, torch.device("cpu"), cfg.train.eval_batch_size, cfg.run.precision)
    model.load_state_dict(state, strict=False)
    value, _ = evaluate(model, data.x_test, data.y_test, data, torch.device("cpu"), cfg.train.eval_batch_size, cfg.run.precision)
    assert value == summary["test_metric_best"]
    val, _ = evaluate(model, data.x_val, data.y_val, data, torch.device("cpu"), cfg.train.eval_batch_size, cfg.run.precision)
    assert val == summary["best_val_metric"]


def test_finished_run_is_not_retrained(runs):
    run_dir = runs["result"].run_dir
    before = (run_dir / "metrics.jsonl").stat().st_mtime_ns
    lines = []
    threads = torch.get_num_threads()
    again = xmodal.fit(runs["cfg"], progress=False, log=lines.append)
    torch.set_num_threads(threads)
    assert again.status == "done" and again.summary == runs["result"].summary
    assert (run_dir / "metrics.jsonl").stat().st_mtime_ns == before
    assert again.reused and not runs["result"].reused
    assert not any("--force" in line for line in lines)  # Python callers have no CLI flags


def test_cli_says_how_to_retrain_a_finished_run(runs, capsys):
    out_dir = runs["result"].run_dir.parent
    assert cli.main(["fit", *FLAGS, "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    assert "already complete (use --force to retrain)" in err
    assert json.loads(out.strip().splitlines()[-1])["run_dir"] == str(runs["result"].run_dir)


def test_package_fit_is_the_function_of_the_run_recipe():
    import importlib
    importlib.import_module("xmodal.runs.fit")
    assert xmodal.fit is sys.modules["xmodal.runs.fit"].fit and callable(xmodal.fit)
    assert xmodal.FitResult is sys.modules["xmodal.runs.fit"].FitResult
    code = "import sys, xmodal.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr   # the CLI starts without importing torch


# ---------------------------------------------------------------- bad input

def write_npz(path: Path, **changes) -> str:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(20, 1, 16)).astype(np.float32),
              "y_train": np.arange(20) % 2,
              "x_test": rng.normal(size=(6, 1, 16)).astype(np.float32),
              "y_test": np.arange(6) % 2}
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return f"npz:{path}"


def nan_x():
    x = np.zeros((20, 1, 16), np.float32)
    x[5, 0, 3] = np.nan
    return x


BAD = {  # name -> (extra args (may use {tmp}), fragment of the message)
    "unknown task": (["--task", "digitz"], "unknown task 'digitz'; did you mean 'digits'"),
    "unknown body": (["--task", "digits", "--body", "no-such-org/no-such-model"],
                     "cannot load body 'no-such-org/no-such-model'"),
    "missing body folder": (["--task", "digits", "--body", "./no/such/folder"], "does not exist"),
    "unknown key": (["--task", "digits", "--set", "train.lrr=0.1"],
                    "unknown config key 'train.lrr'; did you mean 'train.lr'"),
    "wrong type via --set": (["--task", "digits", "--set", "train.epochs=two"],
                             "'train.epochs' must be int"),
    "wrong type via flag": (["--task", "digits", "--epochs", "two"], "invalid int value: 'two'"),
    "bad choice": (["--task", "digits", "--finetune", "everything"],
                   "'train.finetune' must be one of"),
    "missing config file": (["--config", "{tmp}/nope.yaml"], "does not exist"),
    "missing npz": (["--task", "npz:{tmp}/nope.npz"], "does not exist"),
    "npz missing arrays": (["--task", "npz:{tmp}/missing.npz"], "lacks array(s) y_test"),
    "npz mismatched lengths": (["--task", "npz:{tmp}/lengths.npz"], "x_train has 20 rows but y_train has 19"),
    "npz NaN": (["--task", "npz:{tmp}/nan.npz"], "inputs contain NaN or inf"),
    "npz negative labels": (["--task", "npz:{tmp}/negative.npz"], "negative class labels"),
    "too many tokens": (["--task", "npz:{tmp}/long.npz", "--body", "bert-tiny-random",
                         "--seq-len", "200"], "makes 200 tokens but the body takes at most 128"),
}


@pytest.fixture
def bad_files(tmp_path):
    write_npz(tmp_path / "good.npz")
    write_npz(tmp_path / "long.npz", x_train=np.zeros((20, 1, 400), np.float32),
              x_test=np.zeros((6, 1, 400), np.float32))
    write_npz(tmp_path / "missing.npz", y_test=None)
    write_npz(tmp_path / "lengths.npz", y_train=np.arange(19) % 2)
    write_npz(tmp_path / "nan.npz", x_train=nan_x())
    write_npz(tmp_path / "negative.npz", y_test=np.array([0, 1, -1, 0, 1, 0]))
    return tmp_path


def run_main(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:        # argparse
        return exc.code


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_code_2(bad_files, capsys, case):
    args, fragment = BAD[case]
    out_dir = bad_files / "runs"
    # small-run flags first (should a case wrongly pass, it trains briefly); the case's own win
    argv = ["fit", "--epochs", "1", "--max-train", "8", "--quiet", "--out", str(out_dir),
            *[a.format(tmp=bad_files) for a in args]]
    rc = run_main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "error:" in lines[0] and fragment in lines[0], lines[0]
    assert "Traceback" not in err and out == ""
    # nothing was trained
    assert not list(out_dir.rglob("summary.json")) and not list(out_dir.rglob("*.safetensors"))


def test_bad_input_in_a_real_process(bad_files):
    """The same, through the installed entry point: exit status 2, one stderr line, no traceback."""
    cases = ["wrong type via flag", "npz NaN"]     # argparse and UserError paths
    procs = {}
    for case in cases:
        args = [a.format(tmp=bad_files) for a in BAD[case][0]]
        procs[case] = subprocess.Popen(xmodal_command() + ["fit", *args, "--out",
                                                           str(bad_files / "runs")],
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                       env=env_for(bad_files / "cache"))
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (case, err)
        assert len(lines) == 1 and BAD[case][1] in lines[0], (case, err)
        assert "Traceback" not in err and out == ""


# ---------------------------------------------------------------- dry run

def test_dry_run_prints_the_config_and_trains_nothing(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    path = write_npz(tmp_path / "own.npz")
    rc = cli.main(["fit", "--task", path, "--body", "bert-tiny-random", "--seq-len", "4",
                   "--lr", "0.01", "--set", "train.warmup_epochs=1", "--out", str(out_dir),
                   "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 0 and "Traceback" not in err
    printed = yaml.safe_load(out)            # the summary lines are YAML comments
    expected = load_config(overrides={"task.name": path, "body.name": "bert-tiny-random",
                                      "embedder.seq_len": 4, "train.lr": 0.01,
                                      "train.warmup_epochs": 1, "run.out": str(out_dir)})
    assert printed == expected.to_dict()
    assert "# task npz:own: input (1, 16), classification" in out
    assert "# embedder: 4 tokens" in out and "# parameters:" in out
    assert not out_dir.exists()


# ---------------------------------------------------------------- atomic files

def leftovers(folder: Path):
    return [p.name for p in folder.iterdir() if TEMP.search(p.name)]


def test_atomic_write_success(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    artifacts.write_text(target, "hello")
    assert target.read_text() == "hello" and leftovers(target.parent) == []
    artifacts.write_json(tmp_path / "s.json", {"a": np.float32(1.5), "b": np.arange(2)})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": 1.5, "b": [0, 1]}
    artifacts.append_jsonl(tmp_path / "m.jsonl", {"epoch": 1})
    artifacts.append_jsonl(tmp_path / "m.jsonl", {"epoch": 2})
    assert artifacts.read_jsonl(tmp_path / "m.jsonl") == [{"epoch": 1}, {"epoch": 2}]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [ValueError, KeyboardInterrupt])
def test_atomic_write_failure_leaves_target_and_no_temp(tmp_path, exc):
    target = tmp_path / "summary.json"
    target.write_text("old")

    def writer(tmp):
        Path(tmp).write_text("half a fi")
        raise exc("boom")
    with pytest.raises(exc):
        artifacts.atomic_write(target, writer)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_write_failing_rename_and_checkpoint(tmp_path, monkeypatch):
    target = tmp_path / "best.safetensors"
    artifacts.save_safetensors({"w": torch.ones(2)}, target, {"epoch": 1})
    good = target.read_bytes()
    with pytest.raises(AttributeError):      # not a tensor: fails while writing
        artifacts.save_safetensors({"w": "nope"}, target)
    assert target.read_bytes() == good and leftovers(tmp_path) == []

    def broken_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(artifacts.os, "replace", broken_replace)
    with pytest.raises(OSError):
        artifacts.save_safetensors({"w": torch.zeros(3)}, target)
    assert target.read_bytes() == good and leftovers(tmp_path) == []
    assert torch.equal(load_file(target)["w"], torch.ones(2))


@pytest.mark.parametrize("argv,needle", [
    (["--task", "arrowhed"], "did you mean 'arrowhead'"),
    (["--task", "italypower", "--device", "cuda"], "no CUDA device"),
    (["--task", "npz:/nonexistent/own.npz"], "does not exist"),
    (["--task", "italypower", "--body", "no-such-org/no-such-model"], "offline"),
])
def test_dry_run_errors_come_alone_before_any_config(argv, needle, tmp_path, capsys,
                                                     monkeypatch):
    if needle == "no CUDA device" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = cli.main(["fit", *argv, "--out", str(tmp_path / "runs"), "--dry-run"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("xmodal: error: ") and needle in err
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------- the parser

def _all_parsers(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, cli.argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_option_and_positional_has_help_and_every_command_a_description():
    parsers = list(_all_parsers(cli.build_parser()))
    assert len(parsers) >= 11    # xmodal, 6 commands, study and its 4 subcommands
    for parser in parsers:
        assert parser.description, parser.prog
        for action in parser._actions:
            assert action.help, (parser.prog, action.dest)


def test_fit_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "[train.epochs] (default: automatic)" in text and "[body.name] (default: minilm)" in text


def test_version_and_missing_subcommand(capsys):
    import xmodal as pkg
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"xmodal {pkg.__version__}"
    with pytest.raises(SystemExit) as exc:
        cli.main(["study"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "study_command" not in err and "COMMAND" in err


def test_npz_runs_are_keyed_by_content_not_path(tmp_path, monkeypatch):
    """The same `npz:data.npz` after an in-place edit, or in another folder, is other data: a
    new run, never the old result ("already complete")."""
    from xmodal.config import config_hash, load_config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_npz(tmp_path / "a" / "data.npz")
    rng = np.random.default_rng(5)
    write_npz(tmp_path / "b" / "data.npz", x_train=rng.normal(size=(20, 1, 16)).astype(np.float32))

    def h(folder):
        monkeypatch.chdir(tmp_path / folder)
        return config_hash(load_config(overrides={"task.name": "npz:data.npz"}))
    first, other = h("a"), h("b")
    assert first != other
    write_npz(tmp_path / "a" / "data.npz", y_train=(np.arange(20) + 1) % 2)   # edited in place
    assert h("a") not in (first, other)
    write_npz(tmp_path / "a" / "data.npz")                                    # edited back
    assert h("a") == first


def test_data_dir_is_keyed_by_its_absolute_path(tmp_path, monkeypatch):
    from xmodal.config import config_hash, load_config
    (tmp_path / "x" / "data").mkdir(parents=True)
    (tmp_path / "y" / "data").mkdir(parents=True)
    hashes = []
    for folder in ("x", "y"):
        monkeypatch.chdir(tmp_path / folder)
        hashes.append(config_hash(load_config(overrides={"task.data_dir": "data"})))
    assert hashes[0] != hashes[1]
    assert config_hash(load_config(overrides={"task.data_dir": str(tmp_path / "y" / "data")})) \
        == hashes[1]


def test_cuda_index_is_checked_against_the_gpus_this_process_sees(monkeypatch):
    from xmodal.errors import UserError
    from xmodal.stages.device import resolve_device
    assert resolve_device("cpu").type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="'cuda:1' but no CUDA device is available"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(UserError, match=r"sees 2 GPU\(s\) \(cuda:0 to cuda:1; CUDA_VISIBLE_DEVICES"):
        resolve_device("cuda:2")


def test_a_flag_takes_a_negative_number(tmp_path, capsys):
    """`--lr -1e-3` reaches the config (and is refused there as a negative lr), not argparse."""
    from xmodal.cli import join_negative_values
    assert join_negative_values(["--lr", "-1e-3", "--seed", "-2", "--quiet", "-x"]) == \
        ["--lr=-1e-3", "--seed=-2", "--quiet", "-x"]
    rc = cli.main(["fit", "--task", "digits", "--lr", "-1e-3", "--dry-run"])
    err = capsys.readouterr().err
    assert rc == 2 and "'train.lr' must be >= 0; got -0.001" in err


def test_dry_run_shows_the_budget_and_the_run_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = cli.main(["fit", "--task", "italypower", "--max-train", "40", "--out",
                   str(tmp_path / "runs"), "--dry-run", "--set", "train.min_steps=20"])
    out = capsys.readouterr().out
    assert rc == 0
    # 40 training series: batch min(32, max(8, 40 // 8)) = 8, 5 steps per epoch, 4 epochs
    assert "sizes {'train': 40," in out
    assert "# budget: batch 8, 4 epochs x 5 steps = 20 optimizer steps" in out
    assert f"# run folder: {tmp_path / 'runs'}/italypower-minilm-" in out
    assert not (tmp_path / "runs").exists()
