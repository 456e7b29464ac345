"""`xmodal predict` and `xmodal.load_run`: a finished run predicts on raw inputs with the
preprocessing it used, reproduces its stored test metric exactly on its own test split (a
bundled task with fitted normalisation, and the user's npz), and rejects mismatched inputs with
one line and exit 2."""

import json

import numpy as np
import pytest
import torch

import xmodal
from xmodal import cli

TINY = {"body.name": "minilm", "body.num_layers": 1, "embedder.seq_len": 4,
        "task.max_train": 32, "train.epochs": 1, "train.batch_size": 16, "run.device": "cpu",
        "run.threads": 1, "train.eval_batch_size": 64}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))


def fit_tiny(out, **overrides):
    threads = torch.get_num_threads()
    cfg = xmodal.load_config(overrides={**TINY, "run.out": str(out), **overrides})
    result = xmodal.fit(cfg, progress=False, log=lambda msg: None)
    torch.set_num_threads(threads)
    assert result.status == "done"
    return result


@pytest.fixture(scope="module")
def italypower(tmp_path_factory):
    """A run on the bundled UCR task italypower (standardised with train statistics) and its
    raw test split as aeon gives it, labels mapped through the run's label names."""
    from aeon.datasets import load_classification
    result = fit_tiny(tmp_path_factory.mktemp("italy"), **{"task.name": "italypower"})
    x, y = load_classification("ItalyPowerDemand", split="test")
    names = xmodal.load_run(result.run_dir).label_names
    return result, x, np.array([names.index(str(v)) for v in y])


def own_npz(path, seed=0):
    """Single-channel series given as (N, L): the run adds the channel axis, so must predict."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, 90)
    x = rng.normal(size=(90, 20)) + y[:, None] * 0.8
    np.savez(path, x_train=x[:60], y_train=y[:60], x_test=x[60:], y_test=y[60:])
    return x[60:], y[60:]


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_predict_reproduces_the_stored_test_metric_on_a_bundled_task(italypower, tmp_path,
                                                                       capsys):
    result, x, y = italypower
    np.savez(tmp_path / "in.npz", x=x, y=y)
    rc, out, err = run_cli(["predict", str(result.run_dir), "--input", str(tmp_path / "in.npz"),
                            "--output", str(tmp_path / "pred.npz"), "--labels"], capsys)
    assert rc == 0, err
    assert out.strip() == f"error: {result.summary['test_metric_best']!r}"
    with np.load(tmp_path / "pred.npz", allow_pickle=False) as f:
        pred, proba, names, stored_y = f["pred"], f["proba"], f["label_names"], f["y"]
    assert (stored_y == y).all()      # --labels copies y into the output
    assert pred.shape == (len(x),) and proba.shape == (len(x), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert (pred == proba.argmax(axis=1)).all()
    assert np.mean(pred != y) == result.summary["test_metric_best"]
    assert list(names) == ["1", "2"]


def test_the_run_stores_the_normalisation_it_fitted_on_train(italypower):
    from xmodal.data.registry import load_task
    result, x, _ = italypower
    run = xmodal.load_run(result.run_dir)
    data = load_task(xmodal.load_config(overrides={**TINY, "task.name": "italypower"}).task)
    np.testing.assert_array_equal(run.prepare(x), data.x_test)   # bit for bit
    assert np.abs(run.prepare(x) - x).max() > 1e-3               # it did change the inputs


def test_load_run_predicts_from_python(italypower):
    result, x, y = italypower
    run = xmodal.load_run(result.run_dir)
    assert isinstance(run.model, torch.nn.Module) and not run.model.training
    assert run.config.task.name == "italypower" and run.config.train.epochs == 1
    proba = run.predict_proba(x[:50])
    assert proba.shape == (50, 2)
    assert (run.predict(x[:50]) == proba.argmax(axis=1)).all()
    assert run.score(x, y) == result.summary["test_metric_best"]


def test_predict_reproduces_the_stored_test_metric_on_an_npz_task(tmp_path, capsys):
    x_test, y_test = own_npz(tmp_path / "own.npz")
    result = fit_tiny(tmp_path / "runs", **{"task.name": f"npz:{tmp_path / 'own.npz'}"})
    np.savez(tmp_path / "in.npz", x=x_test, y=y_test)
    rc, out, err = run_cli(["predict", str(result.run_dir), "--input", str(tmp_path / "in.npz"),
                            "--output", str(tmp_path / "p.npz"), "--labels"], capsys)
    assert rc == 0, err
    assert float(out.split(": ")[1]) == result.summary["test_metric_best"]
    with np.load(tmp_path / "p.npz", allow_pickle=False) as f:
        assert "label_names" not in f.files and f["proba"].shape == (30, 3)
    assert json.loads((result.run_dir / "task.json").read_text())["preprocess"]["x_mean"] is None


@pytest.mark.parametrize("case", ["channels", "length", "no_x", "no_y", "nan"])
def test_mismatched_input_is_one_line_exit_2(italypower, tmp_path, capsys, case):
    result, x, y = italypower
    arrays = {"channels": {"x": np.repeat(x[:5], 2, axis=1)}, "length": {"x": x[:5, :, :20]},
              "no_x": {"inputs": x[:5]}, "no_y": {"x": x[:5]},
              "nan": {"x": np.where(np.arange(24) == 3, np.nan, x[:5])}}[case]
    np.savez(tmp_path / "bad.npz", **arrays)
    labels = ["--labels"] if case == "no_y" else []
    rc, out, err = run_cli(["predict", str(result.run_dir), "--input", str(tmp_path / "bad.npz"),
                            "--output", str(tmp_path / "p.npz"), *labels], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("xmodal: error: ")
    assert "Traceback" not in err and not (tmp_path / "p.npz").exists()
    if case in ("channels", "length"):
        assert "(N, 1, 24)" in err


def test_a_folder_that_is_not_a_run_is_an_error(tmp_path, capsys):
    np.savez(tmp_path / "in.npz", x=np.zeros((2, 24)))
    rc, _, err = run_cli(["predict", str(tmp_path), "--input", str(tmp_path / "in.npz"),
                          "--output", str(tmp_path / "p.npz")], capsys)
    assert rc == 2 and "not a run folder" in err


def test_darcy_normalisation_is_one_stored_transform_of_the_raw_channels():
    """The dense loader's input encoding (pointwise-normalised coefficient + two coordinate
    channels) equals the stored (x_mean, x_std) applied to [raw coefficient, coordinates]."""
    from xmodal.data.darcy import dense_task_data, grid_channels
    from xmodal.data.registry import REGISTRY
    from xmodal.data.splits import normalise_x
    rng = np.random.default_rng(0)
    pair = lambda n: (rng.uniform(3, 12, (n, 8, 8)), rng.normal(size=(n, 8, 8)))  # noqa: E731
    test = pair(5)
    data = dense_task_data(REGISTRY["darcy"].spec, pair(12), pair(3), test, [])
    raw = np.concatenate([test[0][:, None], np.broadcast_to(grid_channels(8), (5, 2, 8, 8))], 1)
    np.testing.assert_array_equal(normalise_x(raw, data.x_mean, data.x_std), data.x_test)


def test_a_dense_run_predicts_values_in_the_targets_units(tmp_path):
    from xmodal.data.darcy import STREAM_TEST, grid_channels, load_or_generate
    opts = {"task.name": "darcy", "task.options": {"resolution": 8, "n_train": 20, "n_test": 6},
            "task.max_train": None}
    result = fit_tiny(tmp_path / "runs", **opts)
    coeff, sol = load_or_generate(6, 8, 0, STREAM_TEST)
    x = np.concatenate([coeff[:, None], np.broadcast_to(grid_channels(8), (6, 2, 8, 8))], 1)
    run = xmodal.load_run(result.run_dir)
    pred = run.predict(x)
    assert pred.shape == (6, 1, 8, 8)
    rel = np.linalg.norm((pred[:, 0] - sol).reshape(6, -1), axis=1) / \
        np.linalg.norm(sol.reshape(6, -1), axis=1)
    assert np.isclose(rel.mean(), result.summary["test_metric_best"], rtol=1e-4)
    assert np.isclose(run.score(x, sol), result.summary["test_metric_best"], rtol=1e-4)
    with pytest.raises(xmodal.UserError, match="not probabilities"):
        run.predict_proba(x)


def test_a_lora_run_loads_its_adapters_and_reproduces_its_metric(tmp_path):
    from xmodal.data.registry import load_task
    result = fit_tiny(tmp_path / "runs", **{"task.name": "digits", "train.finetune": "lora",
                                            "task.max_test": 64})
    run = xmodal.load_run(result.run_dir)
    assert any("lora_" in name for name, _ in run.model.named_parameters())
    data = load_task(run.config.task)          # digits fit no statistics: x as in the task
    assert run.score(data.x_test, data.y_test) == result.summary["test_metric_best"]
    assert run.label_names == [str(d) for d in range(10)]


def _damage(run_dir, tmp_path, case):
    """A copy of the finished run with one file damaged the way `case` says."""
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    task = copy / "task.json"
    doc = json.loads(task.read_text())
    if case in ("std0", "stdnan"):
        blob = {"dtype": "float32", "shape": [1, 1, 24],
                "data": [0.0 if case == "std0" else float("nan")] * 24}
        doc["preprocess"]["x_mean"] = {**blob, "data": [0.0] * 24}
        doc["preprocess"]["x_std"] = blob
        task.write_text(json.dumps(doc))
    elif case == "task_garbage":
        task.write_text("{not json")
    elif case == "truncated":
        data = (copy / "best.safetensors").read_bytes()
        (copy / "best.safetensors").write_bytes(data[: len(data) // 2])
    elif case == "wrong_shape":
        from safetensors.torch import load_file, save_file
        state = load_file(str(copy / "best.safetensors"))
        key = next(k for k in state if k.startswith("predictor."))
        state[key] = torch.zeros(7, *state[key].shape[1:])
        save_file(state, str(copy / "best.safetensors"))
    return copy


@pytest.mark.parametrize("case, fragment", [
    ("std0", "x_std holds NaN, inf or (for a std) values <= 0"),
    ("stdnan", "x_std holds NaN, inf"),
    ("task_garbage", "task.json is damaged"),
    ("truncated", "best.safetensors cannot be loaded"),
    ("wrong_shape", "best.safetensors cannot be loaded"),
])
def test_a_damaged_run_folder_is_one_line(italypower, tmp_path, capsys, case, fragment):
    result, x, _ = italypower
    run_dir = _damage(result.run_dir, tmp_path, case)
    np.savez(tmp_path / "in.npz", x=x[:5])
    rc, out, err = run_cli(["predict", str(run_dir), "--input", str(tmp_path / "in.npz"),
                            "--output", str(tmp_path / "p.npz")], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "p.npz").exists()


@pytest.mark.parametrize("case, fragment", [
    ("empty", "x has no samples"),
    ("npy", "is a single .npy array, not an .npz archive"),
    ("out_folder", "--output"),
    ("out_under_file", "cannot create the folder of --output"),
])
def test_bad_predict_input_or_output_is_one_line(italypower, tmp_path, capsys, case, fragment):
    result, x, _ = italypower
    inp, outp = tmp_path / "in.npz", tmp_path / "p.npz"
    if case == "npy":
        inp = tmp_path / "in.npy"
        np.save(inp, x[:5])
    else:
        np.savez(inp, x=x[:0] if case == "empty" else x[:5])
    if case == "out_folder":
        outp.mkdir()
    if case == "out_under_file":
        (tmp_path / "afile").write_text("")
        outp = tmp_path / "afile" / "p.npz"
    rc, out, err = run_cli(["predict", str(result.run_dir), "--input", str(inp),
                            "--output", str(outp)], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and fragment in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("task", ["italypower", "darcy"])
def test_export_folder_reproduces_predict_in_a_fresh_process_without_xmodal(tmp_path, capsys,
                                                                           task):
    """`xmodal export RUN_DIR --out FOLDER`, loaded in a new Python process that only imports
    torch (xmodal is blocked from importing there), gives the outputs of `LoadedRun.outputs`
    on raw inputs (normalisation and dense decoding included)."""
    import subprocess
    import sys
    over = {"task.name": task}
    if task == "darcy":
        over.update({"task.options": {"n_train": 20, "n_test": 6, "resolution": 16}})
    result = fit_tiny(tmp_path / "runs", **over)
    out = tmp_path / "exported"
    assert cli.main(["export", str(result.run_dir), "--out", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.pt", "task.json"]
    x = np.random.default_rng(1).normal(size=(5, *info["input_shape"])).astype(np.float32) * 3 + 1
    np.save(tmp_path / "x.npy", x)
    code = ("import sys; sys.modules['xmodal'] = None\n"   # any import of xmodal would fail
            "import numpy as np, torch\n"
            f"m = torch.jit.load({str(out / 'model.pt')!r})\n"
            f"x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))\n"
            f"np.save({str(tmp_path / 'y.npy')!r}, m(x).detach().numpy())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = np.load(tmp_path / "y.npy")
    np.testing.assert_allclose(got, xmodal.load_run(result.run_dir).outputs(x), rtol=1e-4,
                               atol=1e-5)
    assert json.loads((out / "task.json").read_text())["spec"]["name"] == task
    # the body's bypassed input embedding (MiniLM's 30522 x 384 word table) is not exported
    names = [n for n, _ in torch.jit.load(str(out / "model.pt")).named_parameters()]
    assert names and not [n for n in names if ".embeddings." in n and "embedder" not in n]
