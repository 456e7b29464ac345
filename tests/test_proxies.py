"""Proxy datasets: shapes, labels, modality rules, file formats and the on-disk cache."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from xmodal.data.proxies import features as proxies
from xmodal.data.proxies import text as text_proxies
from xmodal.model.bodies import load_body
from xmodal.config import BodyConfig, load_config
from xmodal.errors import UserError
from xmodal.data.proxies import ProxySource, proxy_features, sample_indices


@pytest.fixture(scope="module")
def text_body():
    return load_body(BodyConfig(name="minilm", num_layers=1))


@pytest.fixture(scope="module")
def vit_body():
    torch.manual_seed(0)
    return load_body(BodyConfig(name="vit-tiny-random"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def cfg_for(cache, n=200, **extra):
    cfg = load_config(overrides={"align.n_source": n, "align.cache_dir": str(cache), **extra})
    return ProxySource.of(cfg.align)


def test_text_proxy_shapes_labels_and_cache(text_body, cache, monkeypatch):
    cfg = cfg_for(cache)
    x, y, info = proxy_features("text", text_body, cfg)
    assert x.shape == (200, 384) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.shape == (200,)
    assert info["classes"] == int(y.max()) + 1 == len(info["label_names"]) == 8
    assert torch.bincount(y).min() >= 2 and torch.isfinite(x).all()
    assert info["level"] == "token" and not info["cached"]
    monkeypatch.setattr(proxies, "_compute", lambda *a: pytest.fail("cache not used"))
    x2, y2, info2 = proxy_features("text", text_body, cfg)
    assert info2["cached"] and torch.equal(x, x2) and torch.equal(y, y2)


def test_fake_text_matches_text(text_body, cache):
    cfg = cfg_for(cache)
    xt, yt, _ = proxy_features("text", text_body, cfg)
    xf, yf, info = proxy_features("fake-text", text_body, cfg)
    assert xf.shape == xt.shape and info["classes"] == int(yt.max()) + 1
    assert torch.bincount(yf).min() >= 2
    assert abs(float(xf.std() / xt.std()) - 1) < 0.1
    assert abs(float(xf.norm(dim=1).mean() / xt.norm(dim=1).mean()) - 1) < 0.1


def test_cache_key_depends_on_size_and_body(text_body, vit_body, cache):
    a = proxies.cache_path("fakedata", vit_body, cfg_for(cache, 100))
    b = proxies.cache_path("fakedata", vit_body, cfg_for(cache, 200))
    torch.manual_seed(1)
    other = load_body(BodyConfig(name="vit-tiny-random"))
    c = proxies.cache_path("fakedata", other, cfg_for(cache, 100))
    assert len({a, b, c}) == 3


@pytest.mark.parametrize("name", ["digits", "fakedata"])
def test_image_proxies_on_vision_body(name, vit_body, cache):
    x, y, info = proxy_features(name, vit_body, cfg_for(cache, 300))
    assert x.shape == (300, vit_body.info.in_dim) and info["classes"] == 10
    assert y.min() == 0 and y.max() == 9 and torch.isfinite(x).all()


def test_modality_rules_and_unknown_names(text_body, vit_body, cache):
    with pytest.raises(UserError, match="needs a vision body"):
        proxy_features("cifar10", text_body, cfg_for(cache))
    with pytest.raises(UserError, match="needs a text body"):
        proxy_features("text", vit_body, cfg_for(cache))
    with pytest.raises(UserError, match="valid: digits, mnist, cifar10, fakedata, text"):
        proxy_features("imagenet", vit_body, cfg_for(cache))


def _write_idx(path, array, magic_dims):
    header = bytes([0, 0, 8, magic_dims]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_idx_files(vit_body, tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (40, 28, 28)), 3)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(40) % 4, 1)
    cfg = cfg_for(tmp_path / "c", 30, **{"align.proxy_dir": str(tmp_path)})
    x, y, info = proxy_features("mnist", vit_body, cfg)
    assert x.shape == (30, vit_body.info.in_dim) and info["classes"] == 4
    with pytest.raises(UserError, match="align.proxy_dir"):
        proxy_features("mnist", vit_body, cfg_for(tmp_path / "c", 30))


def test_cifar10_batches(vit_body, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8),
                 b"labels": list(range(10))}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    cfg = cfg_for(tmp_path / "c", 40, **{"align.proxy_dir": str(tmp_path)})
    x, y, info = proxy_features("cifar10", vit_body, cfg)
    assert x.shape == (40, vit_body.info.in_dim) and info["classes"] == 10


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
in IN B-PP O
London NNP B-NP B-LOC
"""


def test_text_from_conll_files(text_body, tmp_path):
    (tmp_path / "eng.train").write_text(CONLL * 3)
    cfg = cfg_for(tmp_path / "c", 1000, **{"align.proxy_dir": str(tmp_path)})
    sentences, tags = text_proxies.read_conll([tmp_path / "eng.train"])
    assert len(sentences) == 6 and tags[1][:2] == ["B-PER", "I-PER"]
    x, y, info = proxy_features("text", text_body, cfg)
    assert x.shape == (27, 384) and info["level"] == "token"
    assert info["label_names"] == ["O", "B-PER", "I-PER", "B-ORG", "B-LOC", "B-MISC"]


def test_text_from_precomputed_arrays(text_body, tmp_path):
    np.save(tmp_path / "text_xs.npy", np.random.default_rng(0).normal(size=(50, 384)))
    np.save(tmp_path / "text_ys.npy", np.arange(50) % 5)
    cfg = cfg_for(tmp_path / "c", 20, **{"align.proxy_dir": str(tmp_path)})
    x, y, info = proxy_features("text", text_body, cfg)
    assert x.shape == (20, 384) and info["classes"] == 5


def test_text_from_orcas_3d_token_arrays(text_body, tmp_path):
    """ORCA's text_xs_32.npy is (samples, 32 tokens, d); ORCA averages over the tokens."""
    xs = np.random.default_rng(0).normal(size=(40, 32, 384)).astype(np.float32)
    np.save(tmp_path / "text_xs_32.npy", xs)
    np.save(tmp_path / "text_ys_32.npy", np.arange(40) % 4)
    cfg = cfg_for(tmp_path / "c", 40, **{"align.proxy_dir": str(tmp_path)})
    x, y, info = proxy_features("text", text_body, cfg)
    assert x.shape == (40, 384) and info["classes"] == 4 and "text_xs_32.npy" in info["source"]
    rows = {tuple(np.round(r, 4)) for r in xs.mean(axis=1)}
    assert all(tuple(np.round(r, 4)) in rows for r in x.numpy())
    (tmp_path / "text_ys_32.npy").unlink()
    with pytest.raises(UserError, match="text_xs_32.npy but no text_ys_32.npy"):
        proxy_features("text", text_body, cfg_for(tmp_path / "d", 40,
                                                  **{"align.proxy_dir": str(tmp_path)}))


def test_npz_proxy(text_body, tmp_path):
    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, x=np.ones((30, 384)) + np.arange(30)[:, None], y=np.arange(30) % 3)
    np.savez(bad, x=np.ones((30, 16)), y=np.arange(30) % 3)
    x, y, info = proxy_features(f"npz:{good}", text_body, cfg_for(tmp_path, 10))
    assert x.shape == (10, 384) and info["classes"] == 3
    with pytest.raises(UserError, match="width 16"):
        proxy_features(f"npz:{bad}", text_body, cfg_for(tmp_path))


def test_sample_indices_keeps_rare_classes():
    labels = np.array([0] * 1000 + [1] * 3 + [2])
    idx = sample_indices(labels, 10)
    assert len(idx) == 10 and (labels[idx] == 1).sum() >= 2 and 2 not in labels[idx]
    assert np.array_equal(idx, sample_indices(labels, 10))


def test_image_proxy_rows_are_the_bodys_embedding_of_the_images(vit_body, tmp_path):
    """With n_source >= the file's rows every image is used, in file order: row i is the mean
    over tokens of the ViT's own embedding (patches + CLS + positions) of image i, scaled to
    [0, 1] and normalised with ImageNet's statistics (the random ViT has no preprocessor)."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (50, 3072), dtype=np.uint8)
    for i in range(1, 6):
        batch = {b"data": data[10 * (i - 1): 10 * i], b"labels": list(range(10))}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    cfg = cfg_for(tmp_path / "c", 50, **{"align.proxy_dir": str(tmp_path)})
    x, y, _ = proxy_features("cifar10", vit_body, cfg)
    assert y.tolist() == list(range(10)) * 5
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    rows = [0, 17, 49]
    pixels = torch.from_numpy(data[rows].reshape(3, 3, 32, 32).astype(np.float32) / 255.0)
    with torch.no_grad():
        tokens = vit_body.model.embeddings((pixels - mean) / std)
    assert tokens.shape[1] == (32 // 4) ** 2 + 1                      # 64 patches + CLS
    torch.testing.assert_close(x[rows], tokens.mean(1), rtol=1e-5, atol=1e-5)


def test_text_proxy_row_is_the_bodys_embedding_of_the_word_in_its_sentence(text_body, tmp_path):
    """Row 8 of the CoNLL proxy is 'London' in 'Peter Blackburn in London': the mean over its
    word pieces of MiniLM's input embedding of [CLS] + the sentence's pieces + [SEP]."""
    from transformers import AutoTokenizer
    (tmp_path / "eng.train").write_text(CONLL * 3)
    cfg = cfg_for(tmp_path / "c", 1000, **{"align.proxy_dir": str(tmp_path)})
    x, y, info = proxy_features("text", text_body, cfg)
    tok = AutoTokenizer.from_pretrained(text_body.info.source)
    words = ["Peter", "Blackburn", "in", "London"]
    pieces = [tok.tokenize(w) for w in words]
    ids = [tok.cls_token_id] + tok.convert_tokens_to_ids(sum(pieces, [])) + [tok.sep_token_id]
    with torch.no_grad():
        emb = text_body.model.embeddings(input_ids=torch.tensor([ids]))[0]
    start = 1 + sum(len(p) for p in pieces[:3])
    expected = emb[start: start + len(pieces[3])].mean(0)
    torch.testing.assert_close(x[8], expected, rtol=1e-5, atol=1e-5)
    assert info["label_names"][int(y[8])] == "B-LOC"
    first = emb[1: 1 + len(pieces[0])].mean(0)                         # 'Peter', B-PER
    torch.testing.assert_close(x[5], first, rtol=1e-5, atol=1e-5)
