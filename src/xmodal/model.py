"""The cross-modal model (embedder -> body -> predictor) and which parts of it train.

`build_model` assembles the three parts for a task and a body config; `apply_finetune_mode`
sets `requires_grad` for ORCA's fine-tuning methods and the ablation paper's freezing study,
and `trainable_summary` reports the counts.
"""

from __future__ import annotations

import torch
from torch import nn

from .bodies import Body, load_body, parameter_count
from .config import Config
from .embedders import Embedder
from .errors import UserError
from .predictors import build_predictor
from .tasks import TaskSpec

ATTENTION_KEYS = ("query", "key", "value", "q_proj", "k_proj", "v_proj", "qkv",
                  "q_lin", "k_lin", "v_lin")   # the last three: DistilBERT
LORA_TARGETS = {"text": ["query", "value", "q_lin", "v_lin"],  # q_lin / v_lin: DistilBERT
                "vit": ["query", "value"], "swin": ["query", "value"]}


class CrossModalModel(nn.Module):
    def __init__(self, embedder: Embedder, body: Body, predictor: nn.Module):
        super().__init__()
        self.embedder = embedder
        self.body = body
        self.predictor = predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, grid = self.embedder(x)
        hidden, grid = self.body(tokens, grid)
        return self.predictor(hidden, grid)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Mean-over-tokens embedder features (what the alignment stage compares)."""
        return self.embedder(x)[0].mean(dim=1)


def build_model(spec: TaskSpec, cfg: Config) -> tuple[CrossModalModel, list[str]]:
    """Seeded construction of embedder + body + predictor; returns the model and init notes."""
    torch.manual_seed(cfg.run.seed)
    body = load_body(cfg.body)
    ec = cfg.embedder
    embedder = Embedder(spec.input_shape, body, ec.seq_len, ec.patch, ec.conv_init, ec.norm_order)
    notes = embedder.init_from_body(body) if cfg.embedder.init_from_body else []
    with torch.no_grad():
        body.eval()
        tokens, grid = embedder(torch.zeros(1, *spec.input_shape))
        hidden, out_grid = body(tokens, grid)
    predictor = build_predictor(spec, body.info.out_dim, out_grid)
    return CrossModalModel(embedder, body, predictor), notes


def apply_finetune_mode(model: CrossModalModel, mode: str, lora_rank: int = 8) -> CrossModalModel:
    """Set which parameters train. Returns the model (wrapped body for `lora`)."""
    for p in model.parameters():
        p.requires_grad = True
    body_params = dict(model.body.named_parameters())
    if mode == "all":
        pass
    elif mode == "layernorm":
        _freeze(body_params, keep=lambda n: "layernorm" in n.lower() or ".norm" in n.lower())
    elif mode == "non-attn":
        _freeze(body_params, keep=lambda n: not any(f".{k}." in n for k in ATTENTION_KEYS))
    elif mode == "freeze-embedder":
        _set(model.embedder, False)
    elif mode == "freeze-body":
        _set(model.body, False)
    elif mode == "predictor-only":
        _set(model.embedder, False)
        _set(model.body, False)
    elif mode == "lora":
        _apply_lora(model, lora_rank)
    else:
        raise UserError(f"unknown fine-tune mode '{mode}'")
    return model


def _freeze(params: dict, keep) -> None:
    for name, p in params.items():
        p.requires_grad = bool(keep(name))


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
