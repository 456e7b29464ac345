"""Embedders: ORCA's task-specific input layers that turn raw inputs into body tokens.

1D inputs `(B, C, L)`: Conv1d patching (kernel = stride = s) to at most `seq_len` tokens,
LayerNorm, learned position embeddings. 2D inputs `(B, C, H, W)`: resize, Conv2d patching,
flatten, LayerNorm, position embeddings. `init_from_body` copies the body's position embeddings
and embedding LayerNorm and tiles a vision body's patch filters over the input channels; it is
independent of whether the alignment stage runs.

Three kinds (`kind`, RQ6 "which embedder?"; the paper names "a much simpler embedder than the
convolution, e.g. a linear projection" as future work):
- `conv` (ORCA, the default): the patch projection above, LayerNorm, position embeddings.
- `patch-linear`: the same per-patch linear map (a conv with kernel = stride *is* a per-patch
  linear map) with nothing after it but the position embeddings: no LayerNorm.
- `linear`: one affine map of the whole input, as FPT's input layer: every token is a linear
  function of every input value. Factored so it fits any input size: the per-patch map, then a
  learned token-mixing matrix (tokens x tokens, started at the identity) and a per-token bias
  (the position embeddings, copied from the body when `init_from_body`). No LayerNorm.

Two choices are settings because they change what a model learns (docs/benchmarks.md measures
them): `conv_init` (`orca`: xavier_uniform with gain sqrt(2) and zero bias, as ORCA; `torch`:
PyTorch's default, whose bias dwarfs small-fan-in signals; `trunc-normal`: std 0.02 and zero
bias, ORCA's re-draw for the paper's naive baseline) and `norm_order` (`post-pos`, the default:
LayerNorm(patches + positions), as BERT's own embedding; `pre-pos`: LayerNorm(patches) +
positions, as ORCA). With a zero conv bias and patches of few values (a 1-channel series, an
8x8 image), the conv output spans a few dimensions and LayerNorm(patches) keeps only its
direction: the amplitude of the signal is lost. Adding the positions first keeps it. Swin
bodies always normalise first.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config.choices import CONV_INITS, EMBEDDER_KINDS
from .bodies import Body
from ..errors import UserError


def plan_1d(length: int, seq_len: int) -> tuple[int, int, int]:
    """(stride, padded length, tokens) for a length-L series and a target of `seq_len` tokens.

    ORCA takes the smallest divisor s of L with L/s <= seq_len, which collapses a prime L to
    one token. We use that divisor only when it keeps at least half the target tokens, and
    otherwise pad L up to a multiple of s = ceil(L / seq_len).
    """
    if length <= seq_len:
        return 1, length, length
    for s in range(math.ceil(length / seq_len), length + 1):
        if length % s == 0:
            if length // s >= seq_len / 2:
                return s, length, length // s
            break
    s = math.ceil(length / seq_len)
    tokens = math.ceil(length / s)
    return s, s * tokens, tokens


def plan_2d(height: int, width: int, body: Body, seq_len: int, patch: int | None):
    """(resize side, patch size, grid side). Vision bodies: their image and patch size;
    text bodies: a g x g grid with g*g <= seq_len tokens."""
    if body.info.family != "text":
        p = patch or body.info.patch_size
        side = body.info.image_size
        return side, p, side // p
    g = max(1, math.isqrt(seq_len))
    p = patch or max(1, math.ceil(max(height, width) / g))
    g = min(g, math.ceil(max(height, width) / p))
    return g * p, p, g


class Embedder(nn.Module):
    """Patch projection [-> token mixing] [-> LayerNorm] -> + position embeddings (see the module
    docstring for the kinds). `forward(x) -> (tokens, grid)`."""

    def __init__(self, input_shape: tuple, body: Body, seq_len: int, patch: int | None = None,
                 conv_init: str = "orca", norm_order: str = "post-pos", kind: str = "conv"):
        super().__init__()
        if kind not in EMBEDDER_KINDS:
            raise UserError(f"embedder.kind must be one of {', '.join(EMBEDDER_KINDS)}; "
                            f"got {kind!r}")
        self.kind = kind
        dim = body.info.in_dim
        self.input_shape = tuple(input_shape)
        if len(input_shape) == 2:
            channels, length = input_shape
            self.stride, self.padded, tokens = plan_1d(length, seq_len)
            self.proj = nn.Conv1d(channels, dim, self.stride, self.stride)
            self.grid = (tokens,)
            self.resize = None
        elif len(input_shape) == 3:
            channels, h, w = input_shape
            side, p, g = plan_2d(h, w, body, seq_len, patch)
            self.resize = None if (h, w) == (side, side) else (side, side)
            self.proj = nn.Conv2d(channels, dim, p, p)
            self.grid = (g, g)
        else:
            raise UserError(f"inputs must be (C, L) or (C, H, W) per sample; got {input_shape}")
        init_conv(self.proj, conv_init)
        n_tokens = math.prod(self.grid)
        check_token_budget(n_tokens, body)
        self.norm = nn.LayerNorm(dim) if kind == "conv" else None
        self.mix = _identity_mix(n_tokens) if kind == "linear" else None
        self.norm_first = body.info.family == "swin" or norm_order == "pre-pos"
        self.use_pos = body.info.family != "swin" or body.position_embeddings() is not None
        self.pos = nn.Parameter(torch.zeros(n_tokens, dim)) if self.use_pos else None
        if self.pos is not None:
            nn.init.trunc_normal_(self.pos, std=0.02)

    @property
    def n_tokens(self) -> int:
        return math.prod(self.grid)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        if x.shape[1:] != self.input_shape:
            raise UserError(f"embedder expects inputs of shape (B, {', '.join(map(str, self.input_shape))}), "
                            f"got {tuple(x.shape)}")
        if x.dim() == 3 and self.padded != x.shape[-1]:
            x = F.pad(x, (0, self.padded - x.shape[-1]))
        elif x.dim() == 4 and self.resize is not None:
            x = F.interpolate(x, size=self.resize, mode="bilinear", align_corners=False)
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        if self.mix is not None:   # (B, N, D): each token a linear function of all patches
            tokens = torch.einsum("ts,bsd->btd", self.mix, tokens)
        if self.norm is None:
            return (tokens if self.pos is None else tokens + self.pos), self.grid
        if self.norm_first:  # ORCA and Swin: patch LayerNorm, then (optional) positions
            tokens = self.norm(tokens)
            return (tokens if self.pos is None else tokens + self.pos), self.grid
        if self.pos is not None:  # `post-pos`, as BERT's own embedding: LN(patches + positions)
            tokens = tokens + self.pos
        return self.norm(tokens), self.grid

    @torch.no_grad()
    def init_from_body(self, body: Body) -> list[str]:
        """Copy what fits from the body's own embedding; returns what was copied."""
        done = []
        pos = body.position_embeddings()
        if self.pos is not None and pos is not None and pos.shape[-1] == self.pos.shape[-1]:
            self.pos.copy_(_fit_positions(pos.detach(), self.grid))
            done.append("position embeddings")
        norm = body.embedding_layernorm()
        if (norm is not None and self.norm is not None
                and norm.weight.shape == self.norm.weight.shape):
            self.norm.load_state_dict(norm.state_dict())
            done.append("embedding LayerNorm")
        patch = body.patch_weight()
        if patch is not None and patch[0].shape[2:] == self.proj.weight.shape[2:]:
            weight, bias = patch
            channels = self.proj.weight.shape[1]
            idx = torch.arange(channels) % weight.shape[1]
            self.proj.weight.copy_(weight[:, idx] * (weight.shape[1] / channels))
            if bias is not None:
                self.proj.bias.copy_(bias)
            done.append("patch filters (tiled over input channels)")
        return done


def _identity_mix(n_tokens: int) -> nn.Parameter:
    """The `linear` kind's token-mixing matrix, started at the identity (the per-patch map)."""
    return nn.Parameter(torch.eye(n_tokens))


@torch.no_grad()
def init_conv(conv: nn.Module, how: str) -> None:
    """Initialise the patch projection: `orca`, `torch` (leave PyTorch's) or `trunc-normal`."""
    if how == "orca":
        nn.init.xavier_uniform_(conv.weight, gain=math.sqrt(2.0))
    elif how == "trunc-normal":
        nn.init.trunc_normal_(conv.weight, std=0.02)
    elif how != "torch":
        raise UserError(f"embedder.conv_init must be one of {', '.join(CONV_INITS)}; got {how!r}")
    if how != "torch" and conv.bias is not None:
        conv.bias.zero_()


def _fit_positions(pos: torch.Tensor, grid: tuple) -> torch.Tensor:
    """Take the first rows (1D / text) or interpolate a square position grid (vision)."""
    n = math.prod(grid)
    if len(grid) == 1 or pos.shape[0] != n and math.isqrt(pos.shape[0]) ** 2 != pos.shape[0]:
        if pos.shape[0] < n:
            raise UserError(f"the body has {pos.shape[0]} positions but the embedder needs {n}")
        return pos[:n]
    if pos.shape[0] == n:
        return pos
    side = math.isqrt(pos.shape[0])
    img = pos.T.reshape(1, -1, side, side)
    img = F.interpolate(img, size=grid, mode="bicubic", align_corners=False)
    return img.reshape(pos.shape[1], n).T


def check_token_budget(n_tokens: int, body: Body) -> None:
    limit = body.info.max_tokens
    if limit is not None and n_tokens > limit:
        raise UserError(f"the embedder makes {n_tokens} tokens but the body takes at most {limit}; "
                        f"lower embedder.seq_len")
