"""`fit` options end to end on a tiny run: fine-tune modes (the summary's trainable counts, and
the frozen parts of `best.safetensors` still hold the seeded initial weights while the trained
parts moved), `train.test_each_epoch` and `--force`."""

import json

import pytest
import torch
from safetensors.torch import load_file

from xmodal.config import load_config
from xmodal.runs.fit import fit
from xmodal.model.finetune import LORA_TARGETS
from xmodal.model.crossmodal import build_model
from xmodal.data.registry import load_task

TINY = {"task.name": "digits", "task.max_train": 16, "task.max_test": 16, "body.name": "minilm",
        "body.num_layers": 1, "embedder.seq_len": 4, "train.epochs": 1, "train.batch_size": 8,
        "run.precision": "fp32", "run.threads": 1, "run.device": "cpu", "run.seed": 5,
        "align.proxy": "none"}
PARTS = ("embedder", "body", "predictor")
FROZEN = {"freeze-body": {"body"}, "predictor-only": {"embedder", "body"},
          "freeze-embedder": {"embedder"}, "lora": {"body"}}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def forward_count(part) -> int:
    """What the forward pass uses: a text body runs its encoder layers only (the embedder
    replaces the word, position and token-type embeddings)."""
    return count(part.model.encoder) if hasattr(part, "info") else count(part)


def lora_count(body, rank: int) -> int:
    """r * (in + out) per adapted Linear: LoRA's A (r x in) and B (out x r)."""
    targets = LORA_TARGETS[body.info.family]
    return sum(rank * (m.in_features + m.out_features) for name, m in body.named_modules()
               if isinstance(m, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets)


def stored_key(key: str, names) -> str:
    """The key of an initial weight in the saved state (peft moves an adapted Linear's own
    weights to `<module>.base_layer.<name>`)."""
    if key in names:
        return key
    head, tail = key.rsplit(".", 1)
    return f"{head}.base_layer.{tail}"


@pytest.mark.parametrize("mode", sorted(FROZEN))
def test_fit_trains_only_what_the_mode_allows(mode, tmp_path):
    cfg = load_config(overrides={**TINY, "train.finetune": mode, "run.out": str(tmp_path)})
    initial = build_model(load_task(cfg.task).spec, cfg.body, cfg.embedder, cfg.run.seed)[0]     # the same seed as fit's
    result = fit(cfg, progress=False, log=lambda m: None)
    assert result.status == "done"

    sizes = {p: forward_count(getattr(initial, p)) for p in PARTS}
    extra = lora_count(initial.body, cfg.train.lora_rank) if mode == "lora" else 0
    assert extra == 0 or extra == 2 * cfg.train.lora_rank * 2 * 384   # 1 layer: query + value
    want = {p: 0 if p in FROZEN[mode] else sizes[p] for p in PARTS}
    want["body"] += extra
    params = result.summary["parameters"]
    assert {p: params[f"{p}_trainable"] for p in PARTS} == want
    assert params["trainable"] == sum(want.values())
    assert params["total"] == sum(sizes.values()) + extra
    assert params["body_total"] == sizes["body"] + extra

    best = load_file(str(result.run_dir / "best.safetensors"))
    start = initial.state_dict()
    for part in PARTS:
        keys = [k for k in start if k.startswith(part + ".")
                and not k.startswith("body.model.embeddings.")]
        same = [torch.equal(best[stored_key(k, best)], start[k]) for k in keys]
        if part in FROZEN[mode]:
            assert all(same), f"{mode}: frozen {part} changed"
        else:
            assert not all(same), f"{mode}: {part} did not train"
    if mode == "lora":
        adapters = [k for k in best if "lora_B" in k]
        assert len(adapters) == 2 and any(best[k].abs().sum() > 0 for k in adapters)


def test_test_each_epoch_records_curves_without_changing_the_run(tmp_path):
    """The per-epoch test metric of the last epoch is the last weights' test metric; epoch 1's
    is the best checkpoint's when epoch 1 is the best; training and selection are unchanged."""
    base = {**TINY, "train.epochs": 2, "task.max_test": 32, "run.out": str(tmp_path)}
    plain = fit(load_config(overrides=base), progress=False, log=lambda m: None)
    curves = fit(load_config(overrides={**base, "train.test_each_epoch": True}),
                 progress=False, log=lambda m: None)
    assert all("test_metric" not in r for r in plain.history)
    assert [r["val_metric"] for r in curves.history] == [r["val_metric"] for r in plain.history]
    for key in ("best_epoch", "test_metric_best", "test_metric_last"):
        assert curves.summary[key] == plain.summary[key]
    tests = [r["test_metric"] for r in curves.history]
    assert tests[-1] == pytest.approx(curves.summary["test_metric_last"])
    assert tests[curves.summary["best_epoch"] - 1] == pytest.approx(
        curves.summary["test_metric_best"])
    stored = [json.loads(line) for line in
              (curves.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_metric"] for r in stored] == tests


def test_force_retrains_a_finished_run(tmp_path, capsys):
    from xmodal.cli import main
    flags = ["fit", "--task", "digits", "--max-train", "16", "--max-test", "16", "--epochs", "1",
             "--seq-len", "4", "--set", "body.num_layers=1", "--set", "run.threads=1",
             "--set", "run.precision=fp32", "--device", "cpu", "--out", str(tmp_path)]
    assert main(flags) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run_dir = tmp_path / first["run_dir"].split("/")[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "metrics.jsonl").write_text("")          # a finished run: would be reused as is
    assert main(flags) == 0
    assert "already complete" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == ""
    assert main(flags + ["--force"]) == 0
    _, err = capsys.readouterr()
    assert "already complete" not in err
    again = json.loads((run_dir / "summary.json").read_text())
    assert again["seconds"] != summary["seconds"]       # written anew
    for key in ("test_metric_best", "test_metric_last", "best_epoch", "parameters"):
        assert again[key] == summary[key]                # same seed, same numbers
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1


def test_test_split_scored_once_when_the_last_epoch_is_kept(tmp_path, monkeypatch):
    """The best-validation weights are scored on the test split only when they are not the last
    epoch's (the same weights would give the same number)."""
    import xmodal.runs.fit as fit_module
    calls = []
    real = fit_module.evaluate

    def counting(model, x, *args, **kwargs):
        calls.append(len(x))
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(fit_module, "evaluate", counting)
    one = fit(load_config(overrides={**TINY, "run.out": str(tmp_path / "a")}), progress=False,
              log=lambda m: None)
    assert one.summary["best_epoch"] == 1 and len(calls) == 1
    assert one.summary["test_metric_best"] == one.summary["test_metric_last"]
    calls.clear()
    # lr 0: validation never improves after epoch 1, so epoch 1 is kept and the last differs
    two = fit(load_config(overrides={**TINY, "train.epochs": 2, "train.lr": 0.0,
                                     "run.out": str(tmp_path / "b")}), progress=False,
              log=lambda m: None)
    assert two.summary["best_epoch"] == 1 and len(calls) == 2


def test_report_of_one_run_folder(tmp_path, capsys):
    """`xmodal report RUN_DIR`: the run's numbers from its summary, its curves, its config."""
    from xmodal import cli
    result = fit(load_config(overrides={**TINY, "train.epochs": 2, "train.test_each_epoch": True,
                                        "run.out": str(tmp_path)}),
                 progress=False, log=lambda m: None)
    assert cli.main(["report", str(result.run_dir)]) == 0
    out = result.run_dir / "report"
    md = (out / "report.md").read_text()
    s = result.summary
    assert f"| test error (best validation epoch, epoch {s['best_epoch']}) | " \
           f"{s['test_metric_best']:.4f} |" in md
    assert f"| test error (last epoch) | {s['test_metric_last']:.4f} |" in md
    assert "| train.epochs | 2 |" in md and f"| seed | {TINY['run.seed']} |" in md
    assert (out / "curves.png").read_bytes().startswith(b"\x89PNG")
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert "report written to" in capsys.readouterr().out


def test_the_bodys_input_embedding_is_not_trained_counted_or_saved(tmp_path):
    """MiniLM's word-embedding table (11.7M of a 1-layer body's 13.5M weights) never takes
    part in the forward pass: it does not train, is not counted and is not in the checkpoint;
    a checkpoint written with it (before this change) still loads, to the same outputs."""
    import numpy as np
    from safetensors.torch import save_file
    from xmodal import load_run
    cfg = load_config(overrides={**TINY, "run.out": str(tmp_path)})
    result = fit(cfg, progress=False, log=lambda m: None)
    initial = build_model(load_task(cfg.task).spec, cfg.body, cfg.embedder, cfg.run.seed)[0]
    words = initial.body.model.embeddings.word_embeddings.weight
    assert words.numel() == 30522 * 384
    params = result.summary["parameters"]
    assert params["body_total"] == params["body_trainable"] == count(initial.body.model.encoder)
    assert params["total"] == count(initial) - count(initial.body.model.embeddings)

    path = result.run_dir / "best.safetensors"
    best = load_file(str(path))
    assert not [k for k in best if "embeddings.word_embeddings" in k]
    assert sum(t.numel() for t in best.values()) == params["total"]
    assert path.stat().st_size < 4 * params["total"] + 100_000    # fp32 and a small header

    run = load_run(result.run_dir, "cpu")
    assert all(not p.requires_grad or not n.startswith("body.model.embeddings.")
               for n, p in run.model.named_parameters())
    x = load_task(cfg.task).x_test[:8]
    before = run.outputs(x)
    full = {**best, **{f"body.model.embeddings.{k}": v.contiguous()
                       for k, v in initial.body.model.embeddings.state_dict().items()}}
    save_file(full, str(path))
    np.testing.assert_array_equal(load_run(result.run_dir, "cpu").outputs(x), before)


@pytest.mark.parametrize("body", ["vit-tiny-random", "swin-tiny-random"])
def test_lora_adapts_the_attention_of_vision_bodies(body):
    """transformers 5 names ViT's and Swin's projections q_proj / v_proj: LoRA must find them
    (it found none before, and LoRA on a vision body failed)."""
    from xmodal.model.finetune import apply_finetune_mode, trainable_summary
    cfg = load_config(overrides={**TINY, "body.name": body, "body.num_layers": None,
                                 "embedder.seq_len": 16})
    model = build_model(load_task(cfg.task).spec, cfg.body, cfg.embedder, 0)[0]
    want = lora_count(model.body, 4)
    model = apply_finetune_mode(model, "lora", 4)
    adapters = [n for n, p in model.body.named_parameters() if p.requires_grad]
    assert adapters and all("lora_" in n for n in adapters)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in adapters} == {"q_proj", "v_proj"}
    assert trainable_summary(model)["body_trainable"] == want > 0
