"""Fine-tune modes through `fit`: the summary's trainable counts, and the frozen parts of
`best.safetensors` still hold the seeded initial weights while the trained parts moved."""

import pytest
import torch
from safetensors.torch import load_file

from xmodal.config import load_config
from xmodal.fit import fit
from xmodal.model import LORA_TARGETS, build_model
from xmodal.tasks import load_task

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
    initial = build_model(load_task(cfg.task).spec, cfg)[0]     # the same seed as fit's
    result = fit(cfg, progress=False, log=lambda m: None)
    assert result.status == "done"

    sizes = {p: count(getattr(initial, p)) for p in PARTS}
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
        keys = [k for k in start if k.startswith(part + ".")]
        same = [torch.equal(best[stored_key(k, best)], start[k]) for k in keys]
        if part in FROZEN[mode]:
            assert all(same), f"{mode}: frozen {part} changed"
        else:
            assert not all(same), f"{mode}: {part} did not train"
    if mode == "lora":
        adapters = [k for k in best if "lora_B" in k]
        assert len(adapters) == 2 and any(best[k].abs().sum() > 0 for k in adapters)
