"""Which parameters train in stage 3: the fine-tune modes of `config.choices.FINETUNE_MODES`
(ORCA's methods and the ablation paper's freezing study), LoRA through peft, and the counts of
trainable parameters per part.

A mode's row names the parts that train; this module knows how to select each part's
parameters, never the mode names themselves.
"""

from __future__ import annotations

from torch import nn

from ..config.choices import FINETUNE_MODES
from .bodies import parameter_count
from .crossmodal import CrossModalModel

ATTENTION_KEYS = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "qkv",
                  "q_lin", "k_lin", "v_lin")   # the last three: DistilBERT
LORA_TARGETS = {"text": ["query", "value", "q_lin", "v_lin"],  # q_lin / v_lin: DistilBERT
                # transformers 5 names ViT and Swin projections q_proj / v_proj (4.x: query / value)
                "vit": ["query", "value", "q_proj", "v_proj"],
                "swin": ["query", "value", "q_proj", "v_proj"]}


def _is_norm(name: str) -> bool:
    return "layernorm" in name.lower() or ".norm" in name.lower()


def _is_non_attn(name: str) -> bool:
    return not any(f".{k}." in name for k in ATTENTION_KEYS)


BODY_SELECTORS = {"body": lambda name: True, "body-norm": _is_norm,
                  "body-non-attn": _is_non_attn}


def apply_finetune_mode(model: CrossModalModel, mode: str, lora_rank: int = 8) -> CrossModalModel:
    """Set which parameters train. Returns the model (with LoRA adapters for `body-lora`)."""
    if mode not in FINETUNE_MODES:
        raise ValueError(f"unknown fine-tune mode '{mode}'; valid: {', '.join(FINETUNE_MODES)}")
    trains = FINETUNE_MODES[mode].trains
    _set(model.embedder, "embedder" in trains)
    _set(model.predictor, "predictor" in trains)
    body = [part for part in trains if part.startswith("body")]
    if body == ["body-lora"]:
        _apply_lora(model, lora_rank)
    else:
        keep = BODY_SELECTORS[body[0]] if body else (lambda name: False)
        for name, p in model.body.named_parameters():
            p.requires_grad = bool(keep(name))
    _freeze_input_embedding(model)
    return model


def _freeze_input_embedding(model: CrossModalModel) -> None:
    """The body's own input embedding is never in the forward pass: it never trains."""
    used = {id(p) for _, p in model.body.used_parameters()}
    for p in model.body.parameters():
        if id(p) not in used:
            p.requires_grad = False


def _set(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad = flag


def _apply_lora(model: CrossModalModel, rank: int) -> None:
    from peft import LoraConfig, inject_adapter_in_model
    targets = LORA_TARGETS[model.body.info.family]
    lcfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets)
    _set(model.body, False)
    inject_adapter_in_model(lcfg, model.body.model)
    for name, p in model.body.named_parameters():
        p.requires_grad = "lora_" in name


def trainable_summary(model: CrossModalModel) -> dict:
    parts = {"embedder": model.embedder, "body": model.body, "predictor": model.predictor}
    out = {f"{k}_trainable": parameter_count(m, True) for k, m in parts.items()}
    out.update({f"{k}_total": parameter_count(m) for k, m in parts.items()})
    out["trainable"] = parameter_count(model, True)
    out["total"] = parameter_count(model)
    return out
