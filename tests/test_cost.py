"""Run costs (`runs/cost.py`, `study/costs.py`): FLOPs counted on the meta device against the
closed form of a BERT encoder, what the fine-tune mode leaves out of the backward pass, and the
GPU-hours of `study run --dry-run` from them."""

import pytest

from xmodal import study
from xmodal.config import load_config
from xmodal.data.registry import REGISTRY
from xmodal.runs.cost import gpu_hours, run_cost, sample_flops
from xmodal.study.costs import plan_cost

TINY = {"task.name": "gunpoint", "body.name": "bert-tiny-random", "embedder.seq_len": 10}


def encoder_forward_flops(tokens: int, width: int, layers: int, ff: int) -> int:
    """2 x multiply-adds of one sample through a BERT encoder: Q, K, V, output projections,
    the two feed-forward matmuls and the two attention products (QK^T and AV)."""
    per_layer = 4 * 2 * tokens * width * width + 2 * 2 * tokens * width * ff
    per_layer += 2 * 2 * tokens * tokens * width
    return layers * per_layer


def test_forward_flops_equal_the_closed_form():
    cfg = load_config(overrides=TINY)
    spec = REGISTRY["gunpoint"].spec                 # (1, 150): stride 15, 10 tokens
    flops = sample_flops(cfg, spec)
    tokens, width, stride = 10, 64, 15
    embedder = 2 * tokens * width * 1 * stride       # the patch conv: 1 channel x 15 steps
    head = 2 * width * spec.n_out
    want = encoder_forward_flops(tokens, width, 2, 128) + embedder + head
    assert flops.forward == pytest.approx(want, rel=1e-9)


def test_backward_covers_only_what_trains():
    """Full fine-tuning: backward ~ 2x forward (input and weight gradients), but the patch conv
    needs no input gradient. Predictor-only: backward is the head's alone."""
    spec = REGISTRY["gunpoint"].spec
    full = sample_flops(load_config(overrides=TINY), spec)
    head = sample_flops(load_config(overrides={**TINY, "train.finetune": "predictor-only"}),
                        spec)
    conv = 2 * 10 * 64 * 15
    assert full.train == pytest.approx(3 * full.forward - conv, rel=1e-9)
    assert head.forward == full.forward
    assert head.train == pytest.approx(full.forward + 2 * 64 * spec.n_out, rel=1e-9)


def test_run_cost_counts_epochs_validation_and_two_test_passes():
    cfg = load_config(overrides={**TINY, "train.epochs": 3})
    spec = REGISTRY["gunpoint"].spec
    sizes = {"train": 40, "val": 10, "test": 150}
    cost = run_cost(cfg, spec, sizes)
    per = cost.per_sample
    assert cost.epochs == 3
    assert cost.flops == pytest.approx(3 * (40 * per.train + 10 * per.forward)
                                       + 2 * 150 * per.forward)
    assert gpu_hours(cost.flops, 1.0) == pytest.approx(cost.flops / 1e12 / 3600)
    with pytest.raises(ValueError):
        gpu_hours(1.0, 0.0)


def test_paper_dry_run_hours_come_from_counted_flops(tmp_path, capsys):
    """paper-pretraining at full size (RoBERTa-base, nothing downloaded): the printed hours are
    the FLOPs of each run at the stated throughput; Satellite's all-layers run is
    ~6 x 85M parameters x 46 tokens per training sample."""
    from xmodal.cli import main
    out = tmp_path / "never"
    assert main(["study", "run", "paper-pretraining", "--out", str(out), "--dry-run",
                 "--gpu-tflops", "50"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert not out.exists()
    assert "from FLOPs counted on their architectures" in lines[-2] and "50 TFLOP/s" in lines[-2]
    plan = study.expand(study.load_spec("paper-pretraining"), out)
    cost = plan_cost(plan, 50.0)
    assert cost.unknown == 0 and cost.counted == len(plan.runs)
    hours = float(lines[-1].split("about ")[1].split()[0])
    assert hours == pytest.approx(cost.hours, abs=0.5)

    sat = next(r for r in plan.runs if r.task == "satellite" and r.config.body.pretrained)
    per = sample_flops(sat.config, REGISTRY["satellite"].spec)
    encoder = 12 * (12 * 768 ** 2 + 13 * 768)        # RoBERTa-base's 12 layers, weights only
    assert 0.9 < per.train / (6 * encoder * 46) < 1.2
