"""Cached body outputs for `predictor-only` runs (`stages/frozen.py`): used exactly when the
embedder and body are frozen, the same numbers as the uncached loop when dropout is off (eval
and train mode then compute the same function), the front never runs during the epochs, and
`train.cache_frozen` is part of a run's identity only where it can change the result."""

import pytest
import torch

from xmodal.config import config_hash, load_config
from xmodal.data.registry import load_task
from xmodal.model.crossmodal import build_model
from xmodal.model.finetune import apply_finetune_mode
from xmodal.runs.fit import fit, trainer_for
from xmodal.stages.frozen import front_is_frozen

TINY = {"task.name": "digits", "task.max_train": 24, "task.max_test": 16, "body.name": "minilm",
        "body.num_layers": 1, "embedder.seq_len": 4, "train.epochs": 3, "train.batch_size": 8,
        "run.precision": "fp32", "run.threads": 1, "run.device": "cpu", "run.seed": 3,
        "align.proxy": "none", "run.save_checkpoint": False}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))


def _trainer(overrides):
    cfg = load_config(overrides={**TINY, **overrides})
    data = load_task(cfg.task)
    model = build_model(data.spec, cfg.body, cfg.embedder, cfg.run.seed)[0]
    model = apply_finetune_mode(model, cfg.train.finetune, cfg.train.lora_rank)
    return trainer_for(cfg, model, data, CPU, progress=False)


@pytest.mark.parametrize("mode, cached", [("predictor-only", True), ("all", False),
                                          ("freeze-body", False), ("freeze-embedder", False),
                                          ("lora", False)])
def test_cache_only_when_embedder_and_body_are_frozen(mode, cached):
    trainer = _trainer({"train.finetune": mode})
    assert trainer.cached is cached
    assert front_is_frozen(trainer.model) is cached


def test_cache_off_by_config_and_under_augmentation():
    assert _trainer({"train.finetune": "predictor-only", "train.cache_frozen": False}).cached is False
    cfg = load_config(overrides={**TINY, "train.finetune": "predictor-only"})
    data = load_task(cfg.task)
    data.augment = lambda xb: xb + 0.0
    model = apply_finetune_mode(build_model(data.spec, cfg.body, cfg.embedder, 0)[0],
                                "predictor-only")
    assert trainer_for(cfg, model, data, CPU, progress=False).cached is False


def test_cached_features_are_the_body_outputs_in_eval_mode():
    trainer = _trainer({"train.finetune": "predictor-only"})
    model = trainer.model.eval()
    with torch.no_grad():
        tokens, grid = model.embedder(torch.from_numpy(trainer.data.x_train))
        hidden, _ = model.body(tokens, grid)
    assert trainer.x_train.shape == tuple(hidden.shape)
    torch.testing.assert_close(torch.from_numpy(trainer.x_train), hidden, rtol=1e-5, atol=1e-5)
    assert len(trainer.x_val) == len(trainer.data.x_val)


def test_cached_run_matches_the_uncached_loop_without_dropout(tmp_path):
    """With dropout 0, train and eval mode compute the same function, so the cached and the
    uncached run must give the same losses, validation curve and test metrics."""
    base = {**TINY, "train.finetune": "predictor-only", "body.dropout": 0.0}
    runs = [fit(load_config(overrides={**base, "train.cache_frozen": flag,
                                       "run.out": str(tmp_path / str(flag))}),
                progress=False, log=lambda m: None) for flag in (True, False)]
    (a, b) = runs
    for ra, rb in zip(a.history, b.history, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-4)
        assert ra["val_metric"] == pytest.approx(rb["val_metric"], abs=1e-6)
    for key in ("test_metric_best", "test_metric_last", "best_epoch"):
        assert a.summary[key] == pytest.approx(b.summary[key], abs=1e-6)


def test_front_never_runs_during_the_epochs():
    trainer = _trainer({"train.finetune": "predictor-only"})
    calls = []
    trainer.model.body.register_forward_hook(lambda *a: calls.append(1))
    trainer.run()
    assert calls == []
    assert trainer.state.epoch == TINY["train.epochs"]


def test_cache_frozen_changes_the_run_id_only_for_predictor_only():
    def h(mode, flag):
        return config_hash(load_config(overrides={**TINY, "train.finetune": mode,
                                                  "train.cache_frozen": flag}))
    assert h("all", True) == h("all", False)
    assert h("freeze-body", True) == h("freeze-body", False)
    assert h("predictor-only", True) != h("predictor-only", False)
