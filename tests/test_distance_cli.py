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
