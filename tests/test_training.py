"""Fine-tuning: LR schedules, gradient accumulation and clipping (against a hand-computed
reference on a tiny deterministic model), fine-tune modes and their parameter counts, and a
NaN loss stopping the run with a 'failed' summary."""

import copy
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xmodal.stages import training
from xmodal import cli
from xmodal.model.bodies import parameter_count
from xmodal.config import load_config
from xmodal.errors import UserError, one_line
from xmodal.runs.fit import fit
from xmodal.model.finetune import apply_finetune_mode, trainable_summary
from xmodal.model.crossmodal import build_model
from xmodal.data.types import TaskData, TaskSpec
from xmodal.runs.fit import trainer_for
from xmodal.stages import device as device_module
from xmodal.stages import evaluate as evaluate_module
from xmodal.stages.optim import lr_factor, make_optimizer

CPU = torch.device("cpu")


# ---------------------------------------------------------------- schedules

def test_warmup_then_cosine_values():
    total, warmup = 10, 2
    f = [lr_factor(s, total, warmup, "cosine") for s in range(total + 1)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)   # linear warm-up
    assert f[2] == pytest.approx(1.0)                                   # peak after warm-up
    assert f[6] == pytest.approx(0.5)                                   # half-way through decay
    assert f[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 8)))
    assert f[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(f[1:], f[2:]))                    # monotone decay


def test_warmup_then_linear_and_constant():
    f = [lr_factor(s, 10, 2, "linear") for s in range(11)]
    assert f[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert f[6] == pytest.approx(0.5) and f[8] == pytest.approx(0.25) and f[10] == 0.0
    assert [lr_factor(s, 10, 0, "constant") for s in range(12)] == [1.0] * 12
    assert lr_factor(0, 10, 4, "constant") == pytest.approx(0.25)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("total, warmup", [(10, 0), (10, 3), (1, 0), (4, 10), (7, 7)])
def test_schedule_never_negative_nor_above_one(schedule, total, warmup):
    for s in range(3 * total + 5):   # also past the end (e.g. a resumed or extended run)
        assert 0.0 <= lr_factor(s, total, warmup, schedule) <= 1.0


def test_scheduler_steps_once_per_optimizer_step_with_warmup(monkeypatch):
    """Through the Trainer: 8 samples, batch 2, accumulate 2 -> 2 optimizer steps per epoch;
    2 epochs, warm-up 0.5 epoch = 1 step, cosine to 0 at step 4."""
    lrs = count_steps(monkeypatch)
    trainer = make_trainer(toy_data(8), **{"train.batch_size": 2, "train.accumulate": 2,
                                           "train.epochs": 2, "train.warmup_epochs": 0.5,
                                           "train.lr": 0.1, "train.schedule": "cosine"})
    state = trainer.run()
    expected = [0.1 * lr_factor(s, 4, 1, "cosine") for s in range(4)]
    assert lrs == pytest.approx(expected)
    assert lrs == pytest.approx([0.1, 0.1, 0.075, 0.025])
    # metrics.jsonl logs the rate the epoch's last optimizer step used
    assert [r["lr"] for r in state.history] == pytest.approx([lrs[1], lrs[3]])
    assert all(r["lr"] >= 0 for r in state.history)


# ---------------------------------------------------------------- accumulation and clipping

class Linear(nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(5, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(3, 5, generator=g))
            self.lin.bias.copy_(torch.randn(3, generator=g))

    def forward(self, x):
        return self.lin(x.flatten(1))


def toy_data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1, 5)).astype(np.float32)
    y = rng.integers(0, 3, n)
    spec = TaskSpec("toy", "toy", "1d", "classification", (1, 5), 3)
    return TaskData(spec, x, y, x[:4], y[:4], x[:4], y[:4])


def make_trainer(data, model=None, **overrides):
    base = {"train.optimizer": "sgd", "train.momentum": 0.0, "train.schedule": "constant",
            "train.clip": None, "train.epochs": 1, "train.lr": 0.1, "run.device": "cpu",
            "run.precision": "fp32"}  # exact comparisons below
    cfg = load_config(overrides={**base, **overrides})
    return trainer_for(cfg, model or Linear(), data, CPU, progress=False)


def record_batches(trainer):
    """Record the (x, y) of every training forward, in order."""
    seen = []
    loss_fn = trainer.loss_fn

    def wrapped(out, y):
        seen.append(y.clone())
        return loss_fn(out, y)
    trainer.loss_fn = wrapped
    model_forward = trainer.model.forward

    def forward(x):
        if trainer.model.training:
            seen.append(x.clone())
        return model_forward(x)
    trainer.model.forward = forward
    return seen


def grad_of(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return [p.grad.clone() for p in model.parameters()]


def count_steps(monkeypatch):
    """Record the learning rate of every SGD step (patched before the optimizer exists)."""
    calls = []
    original = torch.optim.SGD.step

    def step(self, *a, **k):
        calls.append(self.param_groups[0]["lr"])
        return original(self, *a, **k)
    monkeypatch.setattr(torch.optim.SGD, "step", step)
    return calls


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_accumulation_equals_one_big_batch(monkeypatch):
    data = toy_data(8)
    ref = Linear()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    expected = [p - 0.1 * g for p, g in zip(params(ref), grad_of(ref, x, y))]
    for batch, acc in [(4, 2), (2, 4), (8, 1)]:
        steps = count_steps(monkeypatch)
        trainer = make_trainer(data, **{"train.batch_size": batch, "train.accumulate": acc})
        trainer.run()
        assert len(steps) == 1, (batch, acc)
        for got, want in zip(params(trainer.model), expected):
            assert torch.allclose(got, want, atol=1e-6), (batch, acc)


def test_steps_once_per_accumulated_batch_and_flushes_the_rest(monkeypatch):
    data = toy_data(10)             # batch 2 -> 5 batches; accumulate 2 -> steps after 2, 4, 5
    steps = count_steps(monkeypatch)
    trainer = make_trainer(data, **{"train.batch_size": 2, "train.accumulate": 2,
                                    "train.epochs": 2})
    trainer.run()
    assert trainer.steps_per_epoch == 3
    assert len(steps) == 6
    assert trainer.sched.last_epoch == 6


def test_partial_last_group_steps_with_its_own_mean_gradient():
    data = toy_data(6)               # batches of 2: groups [b0, b1], [b2]
    trainer = make_trainer(data, **{"train.batch_size": 2, "train.accumulate": 2})
    ref = copy.deepcopy(trainer.model)
    seen = record_batches(trainer)
    trainer.run()
    xs, ys = seen[0::2], seen[1::2]
    assert len(xs) == 3
    w = params(ref)
    g = grad_of(ref, torch.cat(xs[:2]), torch.cat(ys[:2]))
    with torch.no_grad():
        for p, gi in zip(ref.parameters(), g):
            p -= 0.1 * gi
    g = grad_of(ref, xs[2], ys[2])
    with torch.no_grad():
        for p, gi in zip(ref.parameters(), g):
            p -= 0.1 * gi
    assert not all(torch.equal(a, b) for a, b in zip(w, params(ref)))
    for got, want in zip(params(trainer.model), params(ref)):
        assert torch.allclose(got, want, atol=1e-6)


def test_clipping_applies_once_to_the_accumulated_gradient(monkeypatch):
    data = toy_data(8)
    ref = Linear()
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    g = grad_of(ref, x, y)
    norm = torch.sqrt(sum((gi ** 2).sum() for gi in g)).item()
    clip = norm / 10                         # the full gradient is 10x too long
    norms = []
    original = torch.nn.utils.clip_grad_norm_

    def spy(parameters, max_norm, *a, **k):
        total = original(parameters, max_norm, *a, **k)
        norms.append((float(total), max_norm))
        return total
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    trainer = make_trainer(data, **{"train.batch_size": 4, "train.accumulate": 2,
                                    "train.clip": clip, "train.lr": 1.0})
    trainer.run()
    assert len(norms) == 1                                   # once per optimizer step
    assert norms[0][0] == pytest.approx(norm, rel=1e-5)     # on the accumulated gradient
    scale = clip / (norm + 1e-6)
    for got, p0, gi in zip(params(trainer.model), params(ref), g):
        assert torch.allclose(got, p0 - 1.0 * gi * scale, atol=1e-6)
    # per-batch gradients are shorter than the sum of them: each half alone is not what was clipped
    half = grad_of(ref, x[:4], y[:4])
    assert torch.sqrt(sum((h ** 2).sum() for h in half)).item() != pytest.approx(norm, rel=1e-3)


# ---------------------------------------------------------------- fine-tune modes

QKV = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "qkv")


def owned_params(module, predicate):
    """Ids of the parameters of every submodule for which predicate(name, module) holds."""
    out = set()
    for name, sub in module.named_modules():
        if predicate(name, sub):
            out |= {id(p) for p in sub.parameters()}
    return out


def is_norm(name, sub):
    return isinstance(sub, nn.LayerNorm)


def is_qkv(name, sub):
    return isinstance(sub, nn.Linear) and name.rsplit(".", 1)[-1] in QKV


@pytest.fixture(scope="module")
def models():
    spec1 = TaskSpec("t", "t", "1d", "classification", (2, 24), 3)
    spec2 = TaskSpec("t", "t", "2d", "classification", (3, 16, 16), 3)
    out = {}
    for body, spec in [("bert-tiny-random", spec1), ("vit-tiny-random", spec2),
                       ("swin-tiny-random", spec2)]:
        cfg = load_config(overrides={"body.name": body, "embedder.seq_len": 8})
        out[body] = build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)[0]
    return out


def trainable_ids(module):
    return {id(p) for p in module.parameters() if p.requires_grad}


def all_ids(module):
    return {id(p) for p in module.parameters()}


@pytest.mark.parametrize("body", ["bert-tiny-random", "vit-tiny-random", "swin-tiny-random"])
def test_finetune_modes_set_requires_grad_as_named(models, body):
    base = models[body]
    for mode in ("all", "layernorm", "non-attn", "freeze-embedder", "freeze-body",
                 "predictor-only"):
        model = apply_finetune_mode(copy.deepcopy(base), mode)
        emb, bod, pred = model.embedder, model.body, model.predictor
        # the body's own input embedding is bypassed (the embedder replaces it): never trained
        unused = all_ids(bod.model.embeddings)
        body_ids = all_ids(bod) - unused
        t = trainable_ids(model)
        assert not t & unused
        if mode == "all":
            assert t == all_ids(model) - unused
        elif mode == "layernorm":
            norms = owned_params(bod, is_norm) - unused
            assert norms and t & body_ids == norms
            assert all_ids(emb) | all_ids(pred) <= t
        elif mode == "non-attn":
            qkv = owned_params(bod, is_qkv)
            assert len(qkv) >= 6 and t & body_ids == body_ids - qkv
            assert all_ids(emb) | all_ids(pred) <= t
        elif mode == "freeze-embedder":
            assert t == body_ids | all_ids(pred)
        elif mode == "freeze-body":
            assert t == all_ids(emb) | all_ids(pred)
        elif mode == "predictor-only":
            assert t == all_ids(pred)
        counts = trainable_summary(model)
        assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert counts["total"] == sum(p.numel() for p in model.parameters()) - sum(
            p.numel() for p in bod.model.embeddings.parameters())
    with pytest.raises(ValueError, match="unknown fine-tune mode 'attention-only'"):
        apply_finetune_mode(copy.deepcopy(base), "attention-only")
        assert counts["trainable"] == sum(counts[f"{k}_trainable"]
                                          for k in ("embedder", "body", "predictor"))
        assert counts["body_trainable"] == parameter_count(bod, True)
        if mode not in ("all", "freeze-embedder"):
            assert counts["body_trainable"] < counts["body_total"]
        # the optimizer only gets trainable parameters
        opt = make_optimizer(model.parameters(), load_config().train, 1e-3)
        assert {id(p) for g in opt.param_groups for p in g["params"]} == t


def test_each_part_trains_at_its_own_learning_rate(models):
    """One optimizer group per part: embedder and predictor at lr x their multipliers, the
    body at lr; frozen parts get no group."""
    model = copy.deepcopy(models["bert-tiny-random"])
    tc = load_config(overrides={"train.embedder_lr_mult": 2.0,
                                "train.predictor_lr_mult": 10.0}).train
    groups = {g["name"]: g for g in make_optimizer(model, tc, 1e-3).param_groups}
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx(
        {"body": 1e-3, "embedder": 2e-3, "predictor": 1e-2})
    for part in ("embedder", "body", "predictor"):
        assert {id(p) for p in groups[part]["params"]} == all_ids(getattr(model, part))
    frozen = apply_finetune_mode(model, "freeze-body")
    assert [g["name"] for g in make_optimizer(frozen, tc, 1e-3).param_groups] == \
        ["embedder", "predictor"]


def test_lora_trains_adapters_embedder_and_predictor(models):
    model = copy.deepcopy(models["bert-tiny-random"])
    x = torch.randn(2, 2, 24)
    model.eval()
    with torch.no_grad():
        before = model(x)
    model = apply_finetune_mode(model, "lora", lora_rank=4)
    body_trainable = [n for n, p in model.body.named_parameters() if p.requires_grad]
    assert body_trainable and all("lora_" in n for n in body_trainable)
    counts = trainable_summary(model)
    # rank 4 on query and value of 2 layers of width 64: 2 * 2 * 4 * (64 + 64)
    assert counts["body_trainable"] == 2 * 2 * 4 * 128
    assert counts["embedder_trainable"] == counts["embedder_total"]
    assert counts["predictor_trainable"] == counts["predictor_total"]
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)   # LoRA starts as the identity


def test_lora_layers_add_alpha_over_r_times_b_a(models):
    """Each adapted Linear (query and value of every layer, nothing else) computes
    W x + (alpha / r) B A x with alpha = 2 r and no dropout: checked against the formula with
    B set to non-zero values (at init B = 0 hides the scaling). Rank 3, because at rank 4 peft's
    default alpha (8) would give the same scaling."""
    model = apply_finetune_mode(copy.deepcopy(models["bert-tiny-random"]), "lora", lora_rank=3)
    adapted = {n: m for n, m in model.body.named_modules() if hasattr(m, "lora_A")}
    assert sorted(n.rsplit(".", 1)[-1] for n in adapted) == ["query"] * 2 + ["value"] * 2
    gen = torch.Generator().manual_seed(0)
    for layer in adapted.values():
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        assert a.shape[0] == 3 and b.shape[1] == 3
        assert isinstance(layer.lora_dropout["default"], nn.Identity)
        with torch.no_grad():
            b.copy_(torch.randn(b.shape, generator=gen))
            x = torch.randn(3, a.shape[1], generator=gen)
            want = F.linear(x, layer.base_layer.weight, layer.base_layer.bias) \
                + 2.0 * x @ a.T @ b.T
            assert torch.allclose(layer(x), want, atol=1e-5)


def test_frozen_parts_do_not_move_during_training(models):
    model = apply_finetune_mode(copy.deepcopy(models["bert-tiny-random"]), "freeze-body")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2, 24)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    spec = TaskSpec("t", "t", "1d", "classification", (2, 24), 3)
    data = TaskData(spec, x, y, x[:4], y[:4], x[:4], y[:4])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = load_config(overrides={"train.batch_size": 4, "train.lr": 1e-2, "train.epochs": 1})
    trainer = trainer_for(cfg, model, data, CPU, progress=False)
    trainer.run()
    after = model.state_dict()
    body = [k for k in before if k.startswith("body.")]
    rest = [k for k in before if not k.startswith("body.")]
    assert all(torch.equal(before[k], after[k]) for k in body)
    assert sum(not torch.equal(before[k], after[k]) for k in rest) >= 4


# ---------------------------------------------------------------- NaN / inf loss

def nan_after(calls_ok, value=float("nan")):
    """A loss that is real for the first `calls_ok` batches, then `value`."""
    real = training.make_loss
    count = [0]

    def make(kind, pos_weight=None):
        fn = real(kind, pos_weight)

        def loss(out, y):
            count[0] += 1
            base = fn(out, y)
            return base if count[0] <= calls_ok else base * value
        return loss
    return make


def tiny_fit_config(tmp_path, **extra):
    return load_config(overrides={"task.name": "digits", "task.max_train": 32, "task.max_test": 16,
                                  "body.name": "bert-tiny-random", "embedder.seq_len": 4,
                                  "train.epochs": 3, "train.batch_size": 16,
                                  "run.out": str(tmp_path / "runs"), "run.device": "cpu", **extra})


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_fails_the_run_with_a_summary(tmp_path, monkeypatch, value):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(training, "make_loss", nan_after(2, value))   # epoch 1 is fine
    lines = []
    result = fit(tiny_fit_config(tmp_path), progress=False, log=lines.append)
    assert result.status == "failed"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed"
    word = "nan" if np.isnan(value) else "inf"
    assert f"training loss became {word} at epoch 2, batch 1;" in summary["error"]
    assert "train.lr" in summary["error"]                 # says what to do
    assert any("run failed" in line and word in line for line in lines)
    history = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1]
    assert not (result.run_dir / "best.safetensors").exists()
    assert not (result.run_dir / "resume.pt").exists()
    assert summary["metric"] == "error" and "parameters" in summary


def test_non_finite_loss_via_cli_exits_1(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(training, "make_loss", nan_after(0))
    rc = cli.main(["fit", "--task", "digits", "--body", "bert-tiny-random", "--seq-len", "4",
                   "--max-train", "16", "--max-test", "8", "--epochs", "1", "--quiet",
                   "--out", str(tmp_path / "runs"), "--device", "cpu"])
    out, err = capsys.readouterr()
    assert rc == 1
    result = json.loads(out.strip().splitlines()[-1])
    assert result["status"] == "failed" and "training loss became nan" in result["error"]
    assert "Traceback" not in err and "run failed" not in err   # --quiet: the JSON line says it


# ---------------------------------------------------------------- one training step

class Scale(nn.Module):
    """out = w * x: a model without embedder/body/predictor parts (one optimizer group)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, x):
        return self.w * x


def test_dense_loss_is_on_decoded_fields_after_augmentation():
    """A dense task's training loss is the relative L2 of the decoded output and target
    (y * std + mean, with the task's normalisation), on the augmented batch."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 1, 4, 4)).astype(np.float32)
    y = rng.normal(size=(6, 1, 4, 4)).astype(np.float32)
    spec = TaskSpec("d", "d", "2d", "dense", (1, 4, 4), 1, "relative-l2", (1, 4, 4))
    data = TaskData(spec, x, y, x[:2], y[:2], x[:2], y[:2], y_mean=np.float32(3.0),
                    y_std=np.float32(2.0), augment=lambda t: t + 1.0)
    cfg = load_config(overrides={"run.precision": "fp32", "train.epochs": 1})
    trainer = trainer_for(cfg, Scale(), data, CPU, progress=False)
    loss = float(trainer._step_loss(torch.from_numpy(x), torch.from_numpy(y)).detach())
    out = (0.5 * (x + 1.0)) * 2.0 + 3.0
    target = y * 2.0 + 3.0
    want = np.mean([np.linalg.norm(o - t) / np.linalg.norm(t) for o, t in zip(out, target)])
    assert loss == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("flags, native", [
    ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),
    ("fpu sse avx2 amx_bf16 amx_tile", True),
    ("fpu sse avx2 avx512f avx512_vnni", False)])
def test_cpu_bf16_is_read_from_the_cpu_flags(monkeypatch, flags, native):
    read = []

    def fake_read(path, *a, **k):
        read.append(str(path))
        return f"processor\t: 0\nflags\t\t: {flags}\n"
    monkeypatch.setattr(device_module.Path, "read_text", fake_read)
    assert device_module.cpu_has_bf16() is native
    assert read == ["/proc/cpuinfo"]


def test_no_progress_bar_when_stderr_is_not_a_terminal(capsys):
    """Progress bars are for terminals: with progress on and stderr captured (a log file, CI),
    training writes no bar."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2)).astype(np.float32)
    spec = TaskSpec("c", "c", "1d", "classification", (2,), 2)
    y = (x[:, 0] > 0).astype(np.int64)
    data = TaskData(spec, x, y, x[:4], y[:4], x[:4], y[:4])
    cfg = load_config(overrides={"train.epochs": 2, "train.batch_size": 4})
    trainer_for(cfg, nn.Linear(2, 2), data, CPU, progress=True).run()
    err = capsys.readouterr().err
    assert "epoch" not in err and "fine-tuning" not in err and "it/s" not in err


def test_one_line_error_text():
    assert one_line(ValueError("  bad shape\n  at layer 3\n")) == "ValueError: bad shape"
    assert one_line(KeyError()) == "KeyError"
    long = one_line(RuntimeError("x" * 500), limit=20)
    assert long == "RuntimeError: xxx..." and len(long) == 20
    assert one_line(RuntimeError("y" * 6), limit=20) == "RuntimeError: yyyyyy"



def test_track_best_keeps_the_first_lowest_finite_validation():
    """Model selection: a worse, tied or NaN validation epoch keeps the earlier best (its
    weights too); a lower one replaces it."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = TaskData(TaskSpec("c", "c", "1d", "classification", (2,), 2), x, y, x, y, x, y)
    model = nn.Linear(2, 2)
    trainer = trainer_for(load_config(overrides={"train.epochs": 1}), model, data, CPU,
                          progress=False)
    for epoch, val in enumerate([0.5, 0.7, 0.5, float("nan"), 0.3, 0.4], start=1):
        with torch.no_grad():
            model.bias.fill_(epoch)
        trainer._track_best(epoch, val)
        if epoch == 4:
            assert trainer.state.best_epoch == 1 and trainer.state.best_metric == 0.5
            assert float(trainer.state.best_state["bias"][0]) == 1.0
    assert trainer.state.best_epoch == 5 and trainer.state.best_metric == 0.3
    assert float(trainer.state.best_state["bias"][0]) == 5.0


def test_multilabel_loss_uses_the_configured_pos_weight():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)).astype(np.float32)
    y = rng.integers(0, 2, (6, 3)).astype(np.float32)
    spec = TaskSpec("m", "m", "1d", "multilabel", (3,), 3, "1-auroc")
    data = TaskData(spec, x, y, x, y, x, y)
    cfg = load_config(overrides={"train.pos_weight": 4.0, "run.precision": "fp32",
                                 "train.epochs": 1})
    loss = trainer_for(cfg, Scale(), data, CPU, progress=False)._step_loss(
        torch.from_numpy(x), torch.from_numpy(y))
    logits, t = 0.5 * x, y
    want = np.mean(-(4.0 * t * np.log(1 / (1 + np.exp(-logits)))
                     + (1 - t) * np.log(1 - 1 / (1 + np.exp(-logits)))))
    assert float(loss.detach()) == pytest.approx(want, rel=1e-5)


def test_auto_device_and_precision_on_a_cuda_machine(monkeypatch):
    """`auto` picks CUDA when there is one, and bf16 there when the GPU supports it (checked
    with CUDA's answers replaced: CI has no GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert device_module.resolve_device("auto") == torch.device("cuda")
    cuda = torch.device("cuda")
    for supported, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        assert device_module.resolve_precision(cuda, "auto") == want
    assert device_module.resolve_precision(cuda, "fp32") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_module.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: False)
    assert device_module.resolve_precision(CPU, "auto") == "fp32"
    monkeypatch.setattr(device_module, "cpu_has_bf16", lambda: True)
    assert device_module.resolve_precision(CPU, "auto") == "bf16"
    with pytest.raises(UserError, match="no CUDA device"):
        device_module.resolve_device("cuda")


@pytest.mark.parametrize("body", ["bert-tiny-random", "vit-tiny-random", "swin-tiny-random"])
def test_model_forward_gives_one_row_of_logits_per_sample(models, body):
    model = models[body].eval()
    x = torch.randn(2, 2, 24) if body == "bert-tiny-random" else torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


def test_build_model_reports_what_it_copied_from_the_body():
    spec = TaskSpec("t", "t", "1d", "classification", (2, 24), 3)
    cfg = load_config(overrides={"body.name": "bert-tiny-random", "embedder.seq_len": 8})
    _, notes = build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)
    assert "position embeddings" in notes and all(isinstance(n, str) for n in notes)
    cfg = load_config(overrides={"body.name": "bert-tiny-random", "embedder.seq_len": 8,
                                 "embedder.init_from_body": False})
    assert build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)[1] == []
    image = TaskSpec("i", "i", "2d", "classification", (3, 16, 16), 3)
    cfg = load_config(overrides={"body.name": "vit-tiny-random", "embedder.patch": 8})
    model = build_model(image, cfg.body, cfg.embedder, cfg.run.seed)[0]
    assert model.embedder.proj.kernel_size == (8, 8) and model.embedder.grid == (4, 4)



def test_evaluation_runs_at_the_runs_precision(monkeypatch):
    seen = []
    real = evaluate_module.predict

    def spy(model, x, batch_size, device, precision, *rest):
        seen.append((batch_size, precision))
        return real(model, x, batch_size, device, precision, *rest)
    monkeypatch.setattr(evaluate_module, "predict", spy)
    x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    y = np.array([0, 1, 0, 1, 1])
    data = TaskData(TaskSpec("c", "c", "1d", "classification", (2,), 2), x, y, x, y, x, y)
    cfg = load_config(overrides={"run.precision": "bf16", "train.eval_batch_size": 3})
    evaluate_module.evaluate(nn.Linear(2, 2), x, y, data, CPU, cfg.train.eval_batch_size,
                             cfg.run.precision)
    assert seen == [(3, "bf16")]



def test_each_epoch_reshuffles_the_training_set_reproducibly():
    x = np.arange(40, dtype=np.float32).reshape(20, 2)
    y = np.zeros(20, dtype=np.int64)
    data = TaskData(TaskSpec("c", "c", "1d", "classification", (2,), 2), x, y, x, y, x, y)
    cfg = load_config(overrides={"train.batch_size": 5, "train.epochs": 2})

    def order(epoch):
        trainer = trainer_for(cfg, nn.Linear(2, 2), data, CPU, progress=False)
        return [int(v) for xb, _ in trainer._loader(epoch) for v in xb[:, 0] // 2]
    first = order(1)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert order(2) != first and order(1) == first
