"""Regression tests from a review of the core modules: DataLoader workers must not change what a
run computes, UCR statistics never see the validation split, and every listed text family
(DistilBERT, small ELECTRA) builds, runs and gives proxy features of the body's width."""

import numpy as np
import pytest
import torch

from xmodal.runs.fit import trainer_for

import xmodal
from xmodal.stages import training
from xmodal.model.bodies import load_body
from xmodal.config import BodyConfig, load_config
from xmodal.model.crossmodal import build_model
from xmodal.data.types import TaskSpec
from xmodal.data.registry import load_task

TINY = {"task": {"name": "italypower", "max_train": 24, "max_test": 24},
        "body": {"name": "bert-tiny-random", "num_layers": 1}, "embedder": {"seq_len": 4},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3},
        "run": {"seed": 3, "device": "cpu", "save_checkpoint": False}}


def test_training_sees_the_loader_order_of_one_iterator(monkeypatch):
    seen = []
    original = training.Trainer._step_loss

    def spy(self, xb, yb):
        seen.append(yb.clone())
        return original(self, xb, yb)
    monkeypatch.setattr(training.Trainer, "_step_loss", spy)
    cfg = load_config(overrides={"task.name": "italypower", "task.max_train": 24,
                                 "body.name": "bert-tiny-random", "body.num_layers": 1,
                                 "embedder.seq_len": 4, "train.batch_size": 8})
    data = load_task(cfg.task)
    model, _ = build_model(data.spec, cfg.body, cfg.embedder, cfg.run.seed)
    trainer = trainer_for(cfg, model, data, torch.device("cpu"), progress=False)
    trainer._train_epoch(1)
    expected = [yb for _, yb in trainer._loader(1)]
    assert len(seen) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(seen, expected))


def test_num_workers_do_not_change_the_numbers(tmp_path):
    # run.num_workers is a non-identity key (same run folder), so it must not change results
    runs = [xmodal.fit({**TINY, "run": {**TINY["run"], "out": str(tmp_path / str(nw)),
                                        "num_workers": nw}}, progress=False, log=lambda m: None)
            for nw in (0, 2)]
    assert runs[0].run_dir.name == runs[1].run_dir.name
    assert [r["train_loss"] for r in runs[0].history] == [r["train_loss"] for r in runs[1].history]
    assert runs[0].summary["test_metric_best"] == runs[1].summary["test_metric_best"]


def test_ucr_statistics_come_from_the_training_split_only():
    # basicmotions is not z-normalised per series (italypower etc. are: any statistics give 0/1)
    cfg = load_config(overrides={"task.name": "basicmotions", "task.validation": "carve"})
    data = load_task(cfg.task)
    # standardised with statistics of exactly the rows that train: mean 0, std 1 per channel
    assert np.abs(data.x_train.mean(axis=(0, 2))).max() < 1e-5
    assert np.abs(data.x_train.std(axis=(0, 2)) - 1).max() < 1e-4
    # the validation split is the same one `prepare` would carve (seeded, stratified)
    assert data.sizes() == {"train": 32, "val": 8, "test": 40}


def _save_tiny(tmp_path, model_type, **kw):
    from transformers import AutoConfig, AutoModel
    torch.manual_seed(0)
    folder = tmp_path / model_type
    AutoModel.from_config(AutoConfig.for_model(model_type, **kw)).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("model_type, kw", [
    ("distilbert", dict(dim=32, n_layers=1, n_heads=2, hidden_dim=64, vocab_size=100,
                        max_position_embeddings=64)),
    ("electra", dict(embedding_size=16, hidden_size=32, num_hidden_layers=1,
                     num_attention_heads=2, intermediate_size=64, vocab_size=100,
                     max_position_embeddings=64)),
])
def test_every_listed_text_family_builds_runs_and_gives_body_width_features(tmp_path, model_type,
                                                                           kw):
    folder = _save_tiny(tmp_path, model_type, **kw)
    cfg = load_config(overrides={"body.name": folder, "embedder.seq_len": 8})
    spec = TaskSpec("t", "", "1d", "classification", (1, 30), 2)
    model, notes = build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)
    assert model(torch.randn(2, 1, 30)).shape == (2, 2)
    body = load_body(BodyConfig(name=folder))
    feats = body.original_features(torch.randint(0, 100, (2, 5)))
    assert feats.shape == (2, body.info.in_dim)
    if model_type == "distilbert":
        assert "position embeddings" in notes


def test_distilbert_attention_is_frozen_by_non_attn_and_adapted_by_lora(tmp_path):
    from xmodal.model.finetune import apply_finetune_mode
    folder = _save_tiny(tmp_path, "distilbert", dim=32, n_layers=1, n_heads=2, hidden_dim=64,
                        vocab_size=100, max_position_embeddings=64)
    cfg = load_config(overrides={"body.name": folder, "embedder.seq_len": 8})
    spec = TaskSpec("t", "", "1d", "classification", (1, 30), 2)
    model = apply_finetune_mode(build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)[0], "non-attn")
    frozen = [n for n, p in model.body.named_parameters() if not p.requires_grad
              and not n.startswith("model.embeddings.")]   # bypassed: never trained
    assert frozen and all(any(k in n for k in ("q_lin", "k_lin", "v_lin")) for n in frozen)
    model = apply_finetune_mode(build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)[0], "lora")
    trainable = [n for n, p in model.body.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
