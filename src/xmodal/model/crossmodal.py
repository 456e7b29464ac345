"""The cross-modal model (embedder -> body -> predictor) and which parts of it train.

`build_model` assembles the three parts for a task from the `body` and `embedder` sections;
which parts train is `finetune.py`. `used_parameters`, `used_state_dict` and `load_used_state`
leave out the body's own input embedding, which the forward pass never reads: checkpoints and
parameter counts hold only what the model computes with.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .bodies import INPUT_EMBEDDING, Body, load_body
from ..config import BodyConfig, EmbedderConfig
from .embedders import Embedder
from .predictors import build_predictor
from ..data.types import TaskSpec

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

    def used_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything `forward` uses (not the body's input embedding)."""
        return [(n, p) for n, p in self.named_parameters() if is_used(n)]

    def used_state_dict(self) -> dict:
        """The state dict without the body's input embedding: what a checkpoint holds."""
        return {k: v for k, v in self.state_dict().items() if is_used(k)}

    def without_input_embedding(self) -> "CrossModalModel":
        """A copy without the body's bypassed input embedding (for export: nothing unused)."""
        out = copy.deepcopy(self)
        out.body.model.embeddings = nn.Identity()
        return out

    def load_used_state(self, state: dict) -> tuple[list, list]:
        """Load a `used_state_dict` (or a full state dict, from before it existed); returns the
        (missing, unexpected) keys, the input embedding's not counted as missing. A tensor of
        another shape raises `RuntimeError` (torch's)."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        return [k for k in missing if is_used(k)], list(unexpected)


def is_used(name: str) -> bool:
    """False for a state-dict key of the body's input embedding (never in the forward pass)."""
    return not name.startswith("body." + INPUT_EMBEDDING)


def build_model(spec: TaskSpec, body_cfg: BodyConfig, embedder_cfg: EmbedderConfig,
                seed: int = 0) -> tuple[CrossModalModel, list[str]]:
    """Seeded construction of embedder + body + predictor; returns the model and init notes."""
    torch.manual_seed(seed)
    body = load_body(body_cfg)
    ec = embedder_cfg
    embedder = Embedder(spec.input_shape, body, ec.seq_len, ec.patch, ec.conv_init, ec.norm_order,
                        ec.kind)
    notes = embedder.init_from_body(body) if ec.init_from_body else []
    with torch.no_grad():
        body.eval()
        tokens, grid = embedder(torch.zeros(1, *spec.input_shape))
        hidden, out_grid = body(tokens, grid)
    predictor = build_predictor(spec, body.info.out_dim, out_grid)
    return CrossModalModel(embedder, body, predictor), notes


def checkpoint_state(module: nn.Module) -> dict:
    """What a checkpoint of `module` holds: `used_state_dict` for a `CrossModalModel`, else the
    whole state dict (e.g. the predictor trained on cached body outputs)."""
    return module.used_state_dict() if isinstance(module, CrossModalModel) else module.state_dict()


def load_checkpoint_state(module: nn.Module, state: dict) -> None:
    """Inverse of `checkpoint_state` (strict: a missing or unexpected tensor raises)."""
    if isinstance(module, CrossModalModel):
        missing, unexpected = module.load_used_state(state)
        if missing or unexpected:
            raise RuntimeError(f"{len(missing)} missing tensors ({', '.join(missing[:3])}), "
                               f"{len(unexpected)} unexpected ({', '.join(unexpected[:3])})")
    else:
        module.load_state_dict(state)
