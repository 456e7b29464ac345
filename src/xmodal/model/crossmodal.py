"""The cross-modal model (embedder -> body -> predictor) and which parts of it train.

`build_model` assembles the three parts for a task from the `body` and `embedder` sections;
which parts train is `finetune.py`.
"""

from __future__ import annotations

import torch
from torch import nn

from .bodies import Body, load_body
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


def build_model(spec: TaskSpec, body_cfg: BodyConfig, embedder_cfg: EmbedderConfig,
                seed: int = 0) -> tuple[CrossModalModel, list[str]]:
    """Seeded construction of embedder + body + predictor; returns the model and init notes."""
    torch.manual_seed(seed)
    body = load_body(body_cfg)
    ec = embedder_cfg
    embedder = Embedder(spec.input_shape, body, ec.seq_len, ec.patch, ec.conv_init, ec.norm_order)
    notes = embedder.init_from_body(body) if ec.init_from_body else []
    with torch.no_grad():
        body.eval()
        tokens, grid = embedder(torch.zeros(1, *spec.input_shape))
        hidden, out_grid = body(tokens, grid)
    predictor = build_predictor(spec, body.info.out_dim, out_grid)
    return CrossModalModel(embedder, body, predictor), notes
