"""`xmodal fit --proxy NAME --align-epochs K` with every proxy kind, on a 1D and a 2D bundled
task: text proxies on a text body (MiniLM), image proxies on a vision body (tiny random ViT).
Tiny sizes; what is checked is that stage 2 runs, traces OTDD, and stage 3 finishes."""

import gzip
import json
import pickle
import struct

import numpy as np
import pytest

from xmodal.cli import main

TEXT_BODY = ["--body", "minilm", "--set", "body.num_layers=1"]
VISION_BODY = ["--body", "vit-tiny-random"]


def _write_mnist(folder):
    rng = np.random.default_rng(0)
    for name, arr, dims in [("train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28)), 3),
                            ("train-labels-idx1-ubyte.gz", np.arange(40) % 4, 1)]:
        header = struct.pack(">I", 0x800 + dims) + b"".join(struct.pack(">I", s) for s in arr.shape)
        with gzip.open(folder / name, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())


def _write_cifar10(folder):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (8, 3072), dtype=np.uint8),
                 b"labels": [j % 4 for j in range(8)]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))


def _write_npz_proxy(folder):
    rng = np.random.default_rng(0)
    np.savez(folder / "feats.npz", x=rng.normal(size=(60, 384)).astype(np.float32),
             y=np.arange(60) % 3)
    return f"npz:{folder / 'feats.npz'}"


CASES = [("text", TEXT_BODY), ("fake-text", TEXT_BODY), ("npz", TEXT_BODY),
         ("digits", VISION_BODY), ("fakedata", VISION_BODY), ("mnist", VISION_BODY),
         ("cifar10", VISION_BODY)]


@pytest.mark.parametrize("task", ["italypower", "digits"])
@pytest.mark.parametrize("proxy, body", CASES, ids=[c[0] for c in CASES])
def test_fit_aligns_with_every_proxy(proxy, body, task, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    proxy_dir = tmp_path / "proxy"
    proxy_dir.mkdir()
    _write_mnist(proxy_dir)
    _write_cifar10(proxy_dir)
    name = _write_npz_proxy(proxy_dir) if proxy == "npz" else proxy
    rc = main(["fit", "--task", task, *body, "--proxy", name, "--align-epochs", "2",
               "--epochs", "1", "--max-train", "40", "--max-test", "40", "--seq-len", "8",
               "--set", "align.n_source=40", "--set", "align.maxsamples=16",
               "--set", "align.eps=1.0", "--set", f"align.proxy_dir={proxy_dir}",
               "--set", f"align.cache_dir={tmp_path / 'cache'}", "--set", "run.save_checkpoint=false",
               "--out", str(tmp_path / "runs"), "--quiet"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "done"
    summary = json.loads((tmp_path / "runs" / result["run_dir"].split("/")[-1] /
                          "summary.json").read_text())
    trace = summary["align"]["trace"]
    assert [r["epoch"] for r in trace] == [0, 1, 2]
    assert all(np.isfinite(r["value"]) and r["value"] >= 0 for r in trace)
    assert np.isfinite(summary["test_metric_best"])
