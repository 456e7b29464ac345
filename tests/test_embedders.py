"""Embedders: the 1D / 2D patching plans, output shapes through the whole model, the
`init_from_body` switch, and the predictors' output shapes."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from xmodal.model.bodies import BodyInfo, load_body
from xmodal.config import BodyConfig, load_config
from xmodal.model.embedders import Embedder, plan_1d, plan_2d
from xmodal.errors import UserError
from xmodal.model.crossmodal import build_model
from xmodal.model.predictors import DensePredictor, PointPredictor
from xmodal.data.types import TaskSpec


# ---------------------------------------------------------------- plans

@pytest.mark.parametrize("length, seq_len, plan", [
    (100, 16, (10, 100, 10)),    # ORCA: smallest divisor s with L/s <= 16 is 10
    (24, 8, (3, 24, 8)),
    (1000, 64, (20, 1000, 50)),  # ECG in ORCA: 50 tokens
    (200, 16, (20, 200, 10)),
    (150, 16, (10, 150, 15)),
    (8, 16, (1, 8, 8)),          # short series: one token per step
    (16, 16, (1, 16, 16)),
    (251, 16, (16, 256, 16)),    # prime: ORCA would give 1 token; we pad to 256
    (17, 16, (2, 18, 9)),        # prime just above the target
    (427, 16, (27, 432, 16)),    # 7 x 61: the divisor 61 gives 7 < 8 tokens -> pad
    (46, 16, (3, 48, 16)),       # 2 x 23: the divisor 23 gives 2 tokens -> pad
])
def test_plan_1d_table(length, seq_len, plan):
    assert plan_1d(length, seq_len) == plan


def orca_divisor(length, seq_len):
    return next(s for s in range(1, length + 1) if length % s == 0 and length // s <= seq_len)


@pytest.mark.parametrize("seq_len", [4, 8, 16, 64])
def test_plan_1d_properties(seq_len):
    for length in range(1, 700):
        stride, padded, tokens = plan_1d(length, seq_len)
        assert stride * tokens == padded >= length
        assert padded - length < stride                      # padding is less than one patch
        assert tokens <= seq_len
        assert tokens >= min(length, math.ceil(seq_len / 2))  # never collapses
        if length <= seq_len:
            assert (stride, padded, tokens) == (1, length, length)
            continue
        orca = orca_divisor(length, seq_len)
        if length // orca >= seq_len / 2:
            assert (stride, padded) == (orca, length)        # ORCA's choice when it is good
        else:
            assert padded > length                           # otherwise pad


def fake_body(family="text", image_size=None, patch_size=None, max_tokens=512, dim=8):
    return SimpleNamespace(info=BodyInfo(family, dim, dim, max_tokens, image_size, patch_size, "x"))


@pytest.mark.parametrize("hw, seq_len, patch, plan", [
    ((8, 8), 16, None, (8, 2, 4)),
    ((8, 8), 8, None, (8, 4, 2)),
    ((8, 8), 4, None, (8, 4, 2)),
    ((32, 32), 16, None, (32, 8, 4)),
    ((16, 52), 16, None, (52, 13, 4)),     # non-square: resized to a square of the long side
    ((8, 8), 16, 3, (9, 3, 3)),            # patch override
    ((85, 85), 64, None, (88, 11, 8)),
])
def test_plan_2d_text_bodies(hw, seq_len, patch, plan):
    side, p, g = plan_2d(*hw, fake_body(), seq_len, patch)
    assert (side, p, g) == plan
    assert g * p == side and g * g <= seq_len and side >= max(hw) and side - max(hw) < p


def test_plan_2d_vision_bodies_use_their_image_and_patch_size():
    body = fake_body("vit", image_size=224, patch_size=16)
    assert plan_2d(8, 8, body, 16, None) == (224, 16, 14)
    assert plan_2d(8, 8, body, 16, 32) == (224, 32, 7)
    assert plan_2d(64, 64, fake_body("swin", 32, 4), 4, None) == (32, 4, 8)


# ---------------------------------------------------------------- shapes

@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    return load_body(BodyConfig(name="bert-tiny-random"))


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return load_body(BodyConfig(name="vit-tiny-random"))


@pytest.mark.parametrize("shape, seq_len, tokens, grid", [
    ((2, 251), 16, 16, (16,)),
    ((6, 100), 16, 10, (10,)),
    ((1, 8), 16, 8, (8,)),
    ((1, 8, 8), 16, 16, (4, 4)),
    ((3, 16, 52), 16, 16, (4, 4)),
])
def test_embedder_shapes_on_a_text_body(bert, shape, seq_len, tokens, grid):
    emb = Embedder(shape, bert, seq_len)
    out, g = emb(torch.randn(5, *shape))
    assert out.shape == (5, tokens, 64) and g == grid and emb.n_tokens == tokens
    # the padded part of a 1D series is zeros: the last token only sees the real tail
    if len(shape) == 2 and emb.padded > shape[1]:
        x = torch.randn(2, *shape)
        y = x.clone()
        y[..., -1] += 1.0
        a, _ = emb(x)
        b, _ = emb(y)
        assert torch.equal(a[:, :-1], b[:, :-1]) and not torch.equal(a[:, -1], b[:, -1])


def test_embedder_shapes_on_vision_bodies(vit):
    emb = Embedder((1, 28, 28), vit, 16)
    out, grid = emb(torch.randn(3, 1, 28, 28))
    assert emb.resize == (32, 32) and grid == (8, 8) and out.shape == (3, 64, 64)
    swin = load_body(BodyConfig(name="swin-tiny-random"))
    emb = Embedder((3, 32, 32), swin, 16)
    assert emb.resize is None and emb.pos is None        # Swin has relative positions only
    out, grid = emb(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 64, 32) and grid == (8, 8)


def test_embedder_errors(bert):
    with pytest.raises(UserError, match="at most 128"):
        Embedder((1, 1000), bert, 200)                   # 200 tokens > 128 positions
    with pytest.raises(UserError, match=r"\(C, L\) or \(C, H, W\)"):
        Embedder((5,), bert, 16)
    emb = Embedder((2, 40), bert, 8)
    with pytest.raises(UserError, match="expects inputs of shape"):
        emb(torch.randn(2, 3, 40))


@pytest.mark.parametrize("body, shape, kind, out", [
    ("bert-tiny-random", (2, 251), "classification", (3,)),
    ("bert-tiny-random", (1, 9, 9), "dense", (1, 9, 9)),
    ("bert-tiny-random", (2, 50), "dense", (1, 50)),
    ("bert-tiny-random", (4, 30), "multilabel", (5,)),
    ("vit-tiny-random", (1, 20, 20), "dense", (1, 20, 20)),
    ("swin-tiny-random", (3, 16, 16), "dense", (2, 16, 16)),
    ("swin-tiny-random", (3, 16, 16), "classification", (3,)),
    ("swin-tiny-random", (2, 100), "classification", (3,)),   # 1D on Swin, as ORCA allows
    ("swin-tiny-random", (1, 50), "dense", (1, 50)),
])
def test_whole_model_output_shapes(body, shape, kind, out):
    spec = TaskSpec("t", "t", "1d" if len(shape) == 2 else "2d", kind, shape, out[0],
                    output_shape=out if kind == "dense" else ())
    cfg = load_config(overrides={"body.name": body, "embedder.seq_len": 16})
    model, _ = build_model(spec, cfg.body, cfg.embedder, cfg.run.seed)
    with torch.no_grad():
        y = model(torch.randn(2, *shape))
    assert y.shape == (2, *out)


def test_1d_tokens_on_swin_use_its_image_grid():
    """10 tokens go on a 4 x 3 grid resized to Swin's 8 x 8 token grid (32 / 4), not on a
    1 x 10 strip whose windows would hold one token each."""
    swin = load_body(BodyConfig(name="swin-tiny-random"))
    swin.eval()
    tokens = torch.randn(1, 10, 32)
    with torch.no_grad():
        hidden, grid = swin(tokens, (10,))
        moved = tokens.clone()
        moved[0, 0] += 1.0
        hidden2, _ = swin(moved, (10,))
    assert grid == (hidden.shape[1],) and hidden.shape[0] == 1
    assert hidden.shape[1] == 16                             # 8 x 8, one merge: 4 x 4
    assert not torch.allclose(hidden, hidden2)


# ---------------------------------------------------------------- init from the body

def spec_1d():
    return TaskSpec("t", "t", "1d", "classification", (3, 40), 2)


def test_build_model_switch_copies_positions_only_when_on():
    on_cfg = load_config(overrides={"body.name": "bert-tiny-random", "embedder.seq_len": 8})
    off_cfg = load_config(overrides={"body.name": "bert-tiny-random", "embedder.seq_len": 8,
                                     "embedder.init_from_body": False})
    on, notes_on = build_model(spec_1d(), on_cfg.body, on_cfg.embedder, on_cfg.run.seed)
    off, notes_off = build_model(spec_1d(), off_cfg.body, off_cfg.embedder, off_cfg.run.seed)
    assert notes_on == ["position embeddings", "embedding LayerNorm"] and notes_off == []
    n = on.embedder.n_tokens
    assert n == 8
    body_pos = on.body.position_embeddings()[:n]
    assert torch.equal(on.embedder.pos, body_pos)
    # same seed: the body is identical, but the embedder keeps its own random positions
    assert torch.equal(off.body.position_embeddings(), on.body.position_embeddings())
    assert not torch.allclose(off.embedder.pos, off.body.position_embeddings()[:n])
    # a copy, not a shared tensor
    assert off.embedder.pos.data_ptr() != off.body.position_embeddings().data_ptr()


def test_init_from_body_copies_the_embedding_layernorm(bert):
    with torch.no_grad():
        ln = bert.embedding_layernorm()
        saved = (ln.weight.clone(), ln.bias.clone())
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
    try:
        torch.manual_seed(1)
        emb = Embedder((3, 40), bert, 8)
        assert not torch.equal(emb.norm.weight, ln.weight)
        notes = emb.init_from_body(bert)
        assert "embedding LayerNorm" in notes and "position embeddings" in notes
        assert torch.equal(emb.norm.weight, ln.weight) and torch.equal(emb.norm.bias, ln.bias)
        assert torch.equal(emb.pos, bert.position_embeddings()[:8])
        with torch.no_grad():
            emb.norm.weight.add_(1.0)
        assert not torch.equal(emb.norm.weight, ln.weight)   # copied, not shared
    finally:
        with torch.no_grad():
            ln.weight.copy_(saved[0])
            ln.bias.copy_(saved[1])


def test_roberta_positions_skip_the_padding_offset():
    body = load_body(BodyConfig(name="bert-tiny-random"))
    offset_free = body.position_embeddings()
    assert offset_free.shape[0] == body.info.max_tokens == 128
    body.model.config.model_type = "roberta"
    body.model.config.pad_token_id = 1
    assert torch.equal(body.position_embeddings(), body.model.embeddings.position_embeddings.weight[2:])


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_init_from_vit_tiles_patch_filters_and_copies_positions(vit, channels):
    emb = Embedder((channels, 32, 32), vit, 16)
    notes = emb.init_from_body(vit)
    assert "patch filters (tiled over input channels)" in notes and "position embeddings" in notes
    w, b = vit.patch_weight()
    idx = torch.arange(channels) % 3
    assert torch.allclose(emb.proj.weight, w[:, idx] * (3 / channels))
    assert torch.equal(emb.proj.bias, b)
    # the same image replicated over channels gives the body's own patch projection
    img = torch.randn(2, 1, 32, 32)
    ours = emb.proj(img.repeat(1, channels, 1, 1))
    if channels % 3 == 0:
        theirs = F.conv2d(img.repeat(1, 3, 1, 1), w, b, stride=4)
        assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.equal(emb.pos, vit.position_embeddings())   # 8 x 8 grid = the body's own


def test_init_from_vit_interpolates_positions_for_another_grid(vit):
    emb = Embedder((3, 32, 32), vit, 16, patch=8)
    notes = emb.init_from_body(vit)
    assert emb.grid == (4, 4) and emb.pos.shape == (16, 64)
    assert "patch filters (tiled over input channels)" not in notes   # 8x8 kernel != 4x4
    pos = vit.position_embeddings().T.reshape(1, 64, 8, 8)
    expected = F.interpolate(pos, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(emb.pos, expected.reshape(64, 16).T, atol=1e-6)


# ---------------------------------------------------------------- predictors

def test_point_predictor_mean_pools():
    pred = PointPredictor(6, 3)
    tokens = torch.randn(4, 7, 6)
    assert torch.allclose(pred(tokens, (7,)), pred.head(tokens.mean(1)))


@pytest.mark.parametrize("out_shape, grid", [((1, 251), (16,)), ((2, 9, 9), (4, 4)),
                                             ((1, 8, 8), (4, 4)), ((1, 7, 12), (2, 3))])
def test_dense_predictor_lays_tokens_back_on_the_grid(out_shape, grid):
    pred = DensePredictor(6, out_shape, grid)
    y = pred(torch.randn(3, math.prod(grid), 6), grid)
    assert y.shape == (3, *out_shape)


def test_dense_predictor_token_owns_its_patch():
    # 2x2 grid, 8x8 field: each token fills exactly its own 4x4 block (no resize needed)
    pred = DensePredictor(4, (1, 8, 8), (2, 2))
    tokens = torch.zeros(1, 4, 4)
    tokens[0, 3] = torch.randn(4)                        # bottom-right token only
    with torch.no_grad():
        pred.head.bias.zero_()
        y = pred(tokens, (2, 2))[0, 0]
    assert torch.count_nonzero(y[:4]) == 0 and torch.count_nonzero(y[:, :4]) == 0
    assert torch.count_nonzero(y[4:, 4:]) == 16


# ---------------------------------------------------------------- conv init and norm order

@pytest.mark.parametrize("shape", [(1, 64), (1, 8, 8)])
def test_orca_conv_init_is_xavier_with_zero_bias(bert, shape):
    torch.manual_seed(0)
    emb = Embedder(shape, bert, 16, conv_init="orca")
    w = emb.proj.weight
    fan_in = w.shape[1] * math.prod(w.shape[2:])
    fan_out = w.shape[0] * math.prod(w.shape[2:])
    bound = math.sqrt(2.0) * math.sqrt(6.0 / (fan_in + fan_out))
    assert torch.count_nonzero(emb.proj.bias) == 0
    assert w.abs().max() <= bound
    assert w.std().item() == pytest.approx(bound / math.sqrt(3.0), rel=0.1)  # uniform(-b, b)


def test_torch_and_trunc_normal_conv_inits(bert):
    torch.manual_seed(0)
    old = Embedder((1, 64), bert, 16, conv_init="torch")
    assert old.proj.bias.abs().max() > 0.1                   # PyTorch's +-1/sqrt(fan_in) bias
    torch.manual_seed(0)
    naive = Embedder((1, 64), bert, 16, conv_init="trunc-normal")
    assert torch.count_nonzero(naive.proj.bias) == 0
    assert naive.proj.weight.std().item() == pytest.approx(0.02, rel=0.15)
    assert abs(naive.proj.weight.mean().item()) < 0.01       # (ORCA truncates at +-2, absolute)


@pytest.mark.parametrize("order", ["pre-pos", "post-pos"])
def test_norm_order(bert, order):
    torch.manual_seed(0)
    emb = Embedder((2, 40), bert, 8, norm_order=order)
    with torch.no_grad():
        emb.pos.normal_()
        x = torch.randn(3, 2, 40)
        tokens, _ = emb(x)
        patches = emb.proj(x).transpose(1, 2)
        expected = (emb.norm(patches) + emb.pos if order == "pre-pos"
                    else emb.norm(patches + emb.pos))
    torch.testing.assert_close(tokens, expected)


def test_conv_init_and_norm_order_are_config_keys():
    cfg = load_config(overrides=["embedder.conv_init=torch", "embedder.norm_order=post-pos"])
    assert (cfg.embedder.conv_init, cfg.embedder.norm_order) == ("torch", "post-pos")
    with pytest.raises(UserError, match="embedder.conv_init"):
        load_config(overrides=["embedder.conv_init=kaiming"])


# ---------------------------------------------------------------- RQ6: embedder kinds

def _patch_map(emb, x):
    """The per-patch linear map computed independently: unfold into patches, one matmul."""
    s = emb.stride
    patches = x.unfold(-1, s, s).permute(0, 2, 1, 3).flatten(2)          # (B, N, C*s)
    return patches @ emb.proj.weight.flatten(1).T + emb.proj.bias


def test_patch_linear_is_the_per_patch_map_plus_positions_without_layernorm(bert):
    torch.manual_seed(0)
    emb = Embedder((2, 40), bert, 8, kind="patch-linear")
    assert emb.norm is None and emb.mix is None
    with torch.no_grad():
        emb.proj.bias.normal_()
        x = torch.randn(3, 2, 40)
        tokens, grid = emb(x)
        torch.testing.assert_close(tokens, _patch_map(emb, x) + emb.pos)
    assert grid == (8,)
    # a change in one patch changes only its token
    y = x.clone()
    y[..., 0] += 1.0
    with torch.no_grad():
        a, b = emb(x)[0], emb(y)[0]
    assert not torch.equal(a[:, 0], b[:, 0]) and torch.equal(a[:, 1:], b[:, 1:])


def test_linear_embedder_is_one_affine_map_of_the_whole_input(bert):
    torch.manual_seed(0)
    emb = Embedder((2, 40), bert, 8, kind="linear")
    assert emb.norm is None and torch.equal(emb.mix, torch.eye(8))   # starts as per-patch
    with torch.no_grad():
        emb.mix.normal_()
        x, y = torch.randn(3, 2, 40), torch.randn(3, 2, 40)
        f = lambda v: emb(v)[0]                                       # noqa: E731
        zero = f(torch.zeros_like(x))
        torch.testing.assert_close(f(x + 2 * y) - zero, (f(x) - zero) + 2 * (f(y) - zero),
                                   atol=1e-4, rtol=1e-4)
        expected = torch.einsum("ts,bsd->btd", emb.mix, _patch_map(emb, x)) + emb.pos
        torch.testing.assert_close(f(x), expected)
        y = x.clone()
        y[..., 0] += 1.0
        assert (f(y) - f(x)).abs().amax(dim=-1).gt(0).all()           # every token moves


def test_embedder_kinds_parameter_counts_and_body_init(bert, vit):
    counts = {k: sum(p.numel() for p in Embedder((3, 16, 16), vit, 16, kind=k).parameters())
              for k in ("conv", "patch-linear", "linear")}
    dim = vit.info.in_dim
    tokens = Embedder((3, 16, 16), vit, 16).n_tokens
    assert counts["conv"] - counts["patch-linear"] == 2 * dim               # LayerNorm
    assert counts["linear"] - counts["patch-linear"] == tokens * tokens      # token mixing
    emb = Embedder((1, 8, 8), bert, 16, kind="linear")
    assert emb.init_from_body(bert) == ["position embeddings"]
    swin = load_body(BodyConfig(name="swin-tiny-random"))                  # no positions
    emb = Embedder((3, 32, 32), swin, 16, kind="linear")
    out, grid = emb(torch.randn(2, 3, 32, 32))
    assert emb.pos is None and emb.mix.shape == (64, 64) and out.shape == (2, 64, 32)


def test_embedder_kind_is_a_config_key_and_reaches_the_model():
    cfg = load_config(overrides=["embedder.kind=linear", "body.name=bert-tiny-random"])
    spec = TaskSpec("t", "t", "1d", "classification", (1, 32), 3)
    model, _ = build_model(spec, cfg.body, cfg.embedder)
    assert model.embedder.kind == "linear" and model.embedder.mix is not None
    with pytest.raises(UserError, match="embedder.kind"):
        load_config(overrides=["embedder.kind=mlp"])
