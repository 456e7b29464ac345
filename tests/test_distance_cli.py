"""`xmodal distance`: npz files (value, JSON output, bad files -> exit 2) and named datasets."""

import json

import numpy as np
import pytest
import torch

from xmodal.cli import main
from xmodal.ot.otdd import otdd


def run(capsys, *argv):
    rc = main(["distance", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def pair(tmp_path):
    rng = np.random.default_rng(0)
    xs = 0.2 * rng.normal(size=(30, 4))
    xs[10:20] += 0.5
    xt = 0.2 * rng.normal(size=(20, 4)) + 0.3
    ys, yt = np.arange(30) % 3, np.arange(20) % 2
    np.savez(tmp_path / "s.npz", x=xs, y=ys)
    np.savez(tmp_path / "t.npz", x=xt, y=yt)
    return tmp_path, (xs, ys, xt, yt)


def test_npz_json_matches_otdd(pair, capsys):
    folder, (xs, ys, xt, yt) = pair
    rc, out, _ = run(capsys, "--source", folder / "s.npz", "--target", folder / "t.npz",
                     "--eps", "0.5", "--json")
    assert rc == 0
    result = json.loads(out)
    expected = otdd(torch.as_tensor(xs), torch.as_tensor(ys), torch.as_tensor(xt),
                    torch.as_tensor(yt), inner="sinkhorn", eps=0.5)
    assert result["otdd"] == pytest.approx(float(expected), rel=1e-6, abs=1e-9)
    assert (result["n_source"], result["n_target"], result["dim"]) == (30, 20, 4)
    assert result["inner"] == "sinkhorn" and result["eps"] == 0.5
    rc, out, _ = run(capsys, "--source", folder / "s.npz", "--target", folder / "t.npz",
                     "--eps", "0.5")
    assert rc == 0 and out.startswith("otdd: ")


def _bad_files(folder):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 4))
    nan = x.copy()
    nan[0, 0] = np.nan
    return {
        "no_y": dict(x=x),
        "no_x": dict(y=np.arange(10) % 2),
        "short_y": dict(x=x, y=np.arange(7) % 2),
        "wide": dict(x=rng.normal(size=(10, 6)), y=np.arange(10) % 2),
        "nan": dict(x=nan, y=np.arange(10) % 2),
        "lonely": dict(x=x, y=np.array([0] * 9 + [1])),
    }


@pytest.mark.parametrize("case", ["no_y", "no_x", "short_y", "wide", "nan", "lonely"])
def test_bad_npz_files_exit_2(case, pair, capsys):
    folder, _ = pair
    path = folder / f"{case}.npz"
    np.savez(path, **_bad_files(folder)[case])
    rc, out, err = run(capsys, "--source", path, "--target", folder / "t.npz")
    assert rc == 2 and out == ""
    assert err.startswith("xmodal: error: ") and len(err.strip().splitlines()) == 1


def test_missing_file_and_unknown_names_exit_2(pair, capsys):
    folder, _ = pair
    rc, _, err = run(capsys, "--source", folder / "nope.npz", "--target", folder / "t.npz")
    assert rc == 2 and "nope.npz" in err


def test_named_source_and_task_target(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    rc, out, err = run(capsys, "--source", "fake-text", "--target", "italypower",
                       "--max-samples", "40", "--eps", "10", "--json")
    assert rc == 0, err
    result = json.loads(out)
    assert result["dim"] == 384 and result["n_source"] == 40 and result["n_target"] == 40
    assert np.isfinite(result["otdd"]) and result["target_classes"] == 2
    assert "initialisation" in result["target_features"]
    rc, _, err = run(capsys, "--source", "cifar10", "--target", "italypower")
    assert rc == 2 and "needs a vision body" in err
    rc, _, err = run(capsys, "--source", "wikipedia", "--target", "italypower")
    assert rc == 2 and "unknown source 'wikipedia'" in err


@pytest.mark.parametrize("inner", ["gaussian", "exact"])
def test_inner_choice_reaches_the_distance(pair, capsys, inner):
    folder, (xs, ys, xt, yt) = pair
    rc, out, _ = run(capsys, "--source", folder / "s.npz", "--target", folder / "t.npz",
                     "--eps", "0.5", "--inner", inner, "--json")
    assert rc == 0
    result = json.loads(out)
    tensors = [torch.as_tensor(a) for a in (xs, ys, xt, yt)]
    expected = float(otdd(*tensors, inner=inner, eps=0.5))
    assert result["inner"] == inner
    assert result["otdd"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    sinkhorn = float(otdd(*tensors, inner="sinkhorn", eps=0.5))
    assert abs(expected - sinkhorn) > 1e-4 * abs(sinkhorn)        # a different quantity


def test_target_run_folder_uses_the_runs_trained_embedder(capsys, tmp_path, monkeypatch):
    """`--target RUN_DIR`: the run's task through its trained embedder. Checked against the
    same OTDD computed from features taken out of the run by hand (xmodal.load_run)."""
    import xmodal
    from xmodal.data.registry import load_task
    from xmodal.data.proxies import sample_indices
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    cfg = xmodal.load_config(overrides={
        "task.name": "italypower", "task.max_train": 40, "body.num_layers": 1,
        "embedder.seq_len": 4, "train.epochs": 2, "train.lr": 1e-2, "run.device": "cpu",
        "run.out": str(tmp_path / "runs"), "run.threads": 1})
    result = xmodal.fit(cfg, progress=False, log=lambda m: None)
    rc, out, err = run(capsys, "--source", "fake-text", "--target", result.run_dir,
                       "--max-samples", "30", "--eps", "10", "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert "trained embedder" in got["target_features"] and got["n_target"] == 30
    # by hand: the run's embedder on its own (normalised) training split, same sample
    loaded = xmodal.load_run(result.run_dir)
    data = load_task(cfg.task)
    idx = sample_indices(np.asarray(data.y_train), 30, seed=0)
    with torch.no_grad():
        xt = loaded.model.embed(torch.from_numpy(data.x_train[idx]).float()).double().numpy()
    untrained = run(capsys, "--source", "fake-text", "--target", "italypower", "--max-samples",
                    "30", "--eps", "10", "--json", "--body", "minilm")
    assert json.loads(untrained[1])["otdd"] != got["otdd"]   # the embedder trained: it moved
    src = tmp_path / "src.npz"
    from xmodal.data.proxies import ProxySource, proxy_features
    from xmodal.model.bodies import load_body
    torch.manual_seed(0)
    body = load_body(cfg.body).eval()
    xs, ys, _ = proxy_features("fake-text", body, ProxySource(30, None, None))
    np.savez(src, x=xs.double().numpy(), y=ys.numpy())
    np.savez(tmp_path / "tgt.npz", x=xt, y=np.asarray(data.y_train)[idx])
    rc, out, _ = run(capsys, "--source", src, "--target", tmp_path / "tgt.npz", "--eps", "10",
                     "--json")
    assert json.loads(out)["otdd"] == pytest.approx(got["otdd"], rel=1e-6)
