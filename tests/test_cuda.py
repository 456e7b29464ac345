"""The CUDA code paths, run wherever a GPU exists (skipped elsewhere: CI has none): device
resolution, bf16 autocast, pinned-memory loading, the timed steps' synchronisation, the
allocator's peak memory, Sinkhorn's kernel path on the GPU, and predicting on the GPU from a
run trained there. Each compares against the same computation on the CPU."""

import numpy as np
import pytest
import torch

from xmodal.config import TaskConfig
from xmodal.data.registry import load_task
from xmodal.runs.fit import fit
from xmodal.runs.predict import load_run
from xmodal.stages.device import autocast, resolve_device, resolve_precision

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = {"task": {"name": "italypower", "max_train": 48}, "body": {"name": "bert-tiny-random"},
        "embedder": {"seq_len": 8}, "train": {"epochs": 2, "batch_size": 8},
        "run": {"save_checkpoint": True, "precision": "fp32"}}


@pytest.fixture(autouse=True)
def _env(offline_env):
    """conftest.py's offline_env for every test here."""


def _fit(tmp_path, name, **run):
    cfg = {**TINY, "run": {**TINY["run"], "out": str(tmp_path / name), **run}}
    return fit(cfg, progress=False, log=lambda m: None)


def test_device_and_precision_resolve_to_the_gpu():
    device = resolve_device("auto")
    assert device.type == "cuda" and resolve_device("cuda:0") == torch.device("cuda", 0)
    want = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    assert resolve_precision(device, "auto") == want
    x = torch.ones(4, 4, device=device)
    with autocast(device, "bf16"):
        assert (x @ x).dtype == torch.bfloat16


def test_a_cuda_fit_matches_the_cpu_one_and_records_gpu_measurements(tmp_path):
    gpu = _fit(tmp_path, "gpu", device="cuda", pin_memory=True)
    cpu = _fit(tmp_path, "cpu", device="cpu")
    config = (gpu.run_dir / "config.yaml").read_text()
    assert "device: cuda" in config
    losses = [[e["train_loss"] for e in r.history] for r in (gpu, cpu)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-3)   # fp32: same seed, same data
    peak = gpu.summary["peak_memory"]
    assert peak["how"].startswith("cuda:") and peak["bytes"] > 0
    assert gpu.summary["step_seconds"] > 0
    again = _fit(tmp_path, "gpu2", device="cuda")
    np.testing.assert_allclose([e["train_loss"] for e in again.history], losses[0], rtol=1e-5)


def test_bf16_autocast_trains_on_the_gpu(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    res = _fit(tmp_path, "bf16", device="cuda", precision="bf16")
    assert res.summary["precision"] == "bf16" and res.status == "done"
    assert all(np.isfinite(e["train_loss"]) for e in res.history)


def test_predicting_on_the_gpu_equals_the_cpu(tmp_path):
    res = _fit(tmp_path, "gpu", device="cuda")
    x = load_task(TaskConfig(name="italypower")).x_test[:32]
    on_gpu = load_run(res.run_dir, device="cuda").predict_proba(x)
    on_cpu = load_run(res.run_dir, device="cpu").predict_proba(x)
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)


def test_sinkhorn_on_the_gpu_equals_the_cpu():
    from xmodal.ot.sinkhorn import sinkhorn_cost, sq_dists
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(200, 5, generator=g), torch.randn(150, 5, generator=g)
    loga = torch.full((1, 200), -np.log(200.0))
    logb = torch.full((1, 150), -np.log(150.0))
    cpu = sinkhorn_cost(sq_dists(x, z)[None], loga, logb, 0.1)
    gpu = sinkhorn_cost(sq_dists(x.cuda(), z.cuda())[None], loga.cuda(), logb.cuda(), 0.1)
    assert float(gpu) == pytest.approx(float(cpu), rel=1e-4)
