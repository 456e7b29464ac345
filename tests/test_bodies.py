"""Bodies: the bundled MiniLM, local folders, random init, overrides and clear offline errors."""

import subprocess
import sys

import pytest
import torch

from xmodal.model.bodies import load_body
from xmodal.config import BodyConfig
from xmodal.errors import UserError


@pytest.fixture(scope="module")
def minilm():
    return load_body(BodyConfig(name="minilm", num_layers=2))


def test_minilm_is_the_pretrained_sentence_encoder(minilm):
    info = minilm.info
    assert (info.family, info.in_dim, info.out_dim, info.max_tokens) == ("text", 384, 384, 512)
    assert minilm.model.config.num_hidden_layers == 2 and len(minilm.model.encoder.layer) == 2
    tokens = torch.randn(3, 5, 384)
    out, grid = minilm(tokens, (5,))
    assert out.shape == (3, 5, 384) and grid == (5,)


def test_random_init_keeps_the_architecture_but_not_the_weights(minilm):
    torch.manual_seed(0)
    rand = load_body(BodyConfig(name="minilm", num_layers=2, pretrained=False))
    pre = dict(minilm.named_parameters())
    names = [n for n, _ in rand.named_parameters()]
    assert names == list(pre)
    weight = "model.encoder.layer.0.attention.self.query.weight"
    assert not torch.allclose(dict(rand.named_parameters())[weight], pre[weight])


def test_dropout_and_layer_overrides():
    body = load_body(BodyConfig(name="bert-tiny-random", dropout=0.3, num_layers=1))
    cfg = body.model.config
    assert cfg.hidden_dropout_prob == cfg.attention_probs_dropout_prob == 0.3
    assert len(body.model.encoder.layer) == 1
    with pytest.raises(UserError, match="num_layers must be 1..2"):
        load_body(BodyConfig(name="bert-tiny-random", num_layers=5))


def test_dropout_leaves_swins_stochastic_depth_alone():
    default = load_body(BodyConfig(name="swin-tiny-random", dropout=0.0)).model
    assert default.config.hidden_dropout_prob == 0.0 and default.config.drop_path_rate == 0.1
    probs = [m.drop_prob for m in default.modules() if hasattr(m, "drop_prob")]
    assert probs and max(probs) > 0                  # stochastic depth still on
    off = load_body(BodyConfig(name="swin-tiny-random", dropout=0.0, drop_path=0.0)).model
    assert off.config.drop_path_rate == 0.0
    assert all(m.drop_prob == 0 for m in off.modules() if hasattr(m, "drop_prob"))
    with pytest.raises(UserError, match="body.drop_path"):
        load_body(BodyConfig(name="bert-tiny-random", drop_path=0.1))


def test_local_folder_round_trip(tmp_path):
    torch.manual_seed(0)
    saved = load_body(BodyConfig(name="bert-tiny-random"))
    saved.model.save_pretrained(tmp_path / "tiny")
    again = load_body(BodyConfig(name=str(tmp_path / "tiny")))
    for (n, a), (_, b) in zip(saved.model.named_parameters(), again.model.named_parameters()):
        assert torch.equal(a, b), n
    assert again.info.family == "text" and again.info.in_dim == 64


@pytest.mark.parametrize("name, message", [
    ("/no/such/folder", "does not exist"),
    ("some-org/some-model-that-is-not-cached", "offline"),
])
def test_missing_bodies_give_one_clear_error(name, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match=message):
        load_body(BodyConfig(name=name))


def test_folder_without_config_is_rejected(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        load_body(BodyConfig(name=str(tmp_path)))


def test_offline_hub_name_via_cli_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "xmodal.cli", "fit", "--task", "italypower",
                           "--body", "roberta-base", "--out", str(tmp_path)],
                          capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                               "HF_HOME": str(tmp_path / "hf")})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "roberta-base" in lines[0] and "--body DIR" in lines[0]
    assert "Traceback" not in proc.stderr


def test_paper_bodies_build_at_full_size_offline_with_random_weights(monkeypatch):
    """roberta-base (and the MiniBERTas) and Swin-base ship as architecture files: with
    body.pretrained=false they build with no download, at the paper's size, and say the
    weights are random."""
    from xmodal.config.bodies import body_family, model_type
    from xmodal.model.bodies import parameter_count
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-hub-cache")
    body = load_body(BodyConfig(name="nyu-mll/roberta-base-10M-3", pretrained=False))
    c = body.model.config
    assert (c.model_type, c.num_hidden_layers, c.hidden_size, c.vocab_size) == \
        ("roberta", 12, 768, 50265)
    # embeddings (50265 + 514 + 1 tokens x 768, LayerNorm) + 12 layers of 7,087,872; no pooler
    assert parameter_count(body.model) == (50265 + 514 + 1) * 768 + 2 * 768 + 12 * 7_087_872
    assert "random weights" in body.info.source and body.info.max_tokens == 512
    swin = load_body(BodyConfig(name="microsoft/swin-base-patch4-window7-224-in22k",
                                pretrained=False))
    assert (swin.info.family, swin.info.in_dim, swin.info.out_dim, swin.info.image_size) == \
        ("swin", 128, 1024, 224)
    assert [len(stage.blocks) for stage in swin.model.encoder.layers] == [2, 2, 18, 2]
    assert model_type("roberta-base") == "roberta"
    assert body_family("microsoft/swin-base-patch4-window7-224-in22k") == "vision"
    with pytest.raises(UserError, match="roberta-base"):      # the weights still need the hub
        load_body(BodyConfig(name="roberta-base", pretrained=True))
