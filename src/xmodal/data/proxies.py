"""Proxy (source) datasets of the alignment stage, as features in the body's own input space.

`proxy_features(name, body, src, device) -> (x (n, d), y (n,), info)` passes a labelled proxy
dataset through the body's ORIGINAL input-embedding layer (ORCA's source side) and caches the
result on disk, once per (proxy, body embedding weights, n_source, proxy files, recipe).
The proxy must match the BODY's modality (ORCA's rule), not the task's:

* image proxies (vision bodies): `digits` (scikit-learn 8x8, bundled MNIST stand-in), `mnist`
  (IDX files), `cifar10` (python-pickle batches), `fakedata` (seeded Gaussian-noise images,
  uniform random labels, 10 classes). Resized to the body's image size, 3 channels, normalised
  with the body's image statistics, mean over the embedding's tokens.
* text proxies (text bodies): `text` (token-level features with a linguistic tag per token:
  ORCA's precomputed `text_xs.npy`/`text_ys.npy` or `text_xs_32.npy`/`text_ys_32.npy` (3-D:
  averaged over the token axis, as ORCA), or CoNLL-2003 files with NER tags, from
  `align.proxy_dir`; offline default: the Brill part-of-speech lexicon shipped in the textblob
  wheel, coarse POS classes) and `fake-text` (Gaussian vectors with the per-dimension mean/std of
  `text`, uniform random labels over as many classes as `text`).
* `npz:PATH`: the user's own features `x` (n, d = body input width) and labels `y` (n,).

Sampling (which `n_source` items) uses a fixed seed, so a proxy is the same data in every run.
See docs/alignment.md for the choices and their limits.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import struct
from collections import defaultdict
from pathlib import Path
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ..io import artifacts
from ..errors import UserError

IMAGE_PROXIES = ("digits", "mnist", "cifar10", "fakedata")
TEXT_PROXIES = ("text", "fake-text")
PROXY_NAMES = IMAGE_PROXIES + TEXT_PROXIES + ("npz:PATH", "none")
SEED = 0               # proxies are fixed datasets: their sampling never depends on run.seed
RECIPE = "proxy-v1"    # bump when a feature recipe changes: invalidates cached features
FAKE_CLASSES = 10
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
POS_CLASSES = {  # Penn Treebank tag -> coarse class (anything else: OTHER)
    "NOUN": ("NN", "NNS"), "PROPN": ("NNP", "NNPS"), "ADJ": ("JJ", "JJR", "JJS"),
    "VERB": ("VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "MD"), "ADV": ("RB", "RBR", "RBS", "WRB"),
    "NUM": ("CD",), "FUNC": ("IN", "DT", "PDT", "PRP", "PRP$", "WP", "WP$", "WDT", "CC", "TO",
                             "EX", "RP", "POS"),
}
POS_ORDER = tuple(POS_CLASSES) + ("OTHER",)


# ----------------------------------------------------------------------------- public API

@dataclass(frozen=True)
class ProxySource:
    """Where proxy samples come from and how many: `align.n_source`, `align.proxy_dir`, and the
    feature cache (`align.cache_dir`, else $XMODAL_CACHE, else ~/.cache/xmodal)."""
    n_source: int = 5000
    proxy_dir: Optional[str] = None
    cache_dir: Optional[str] = None

    @classmethod
    def of(cls, align) -> "ProxySource":
        """From the `align` section (or the resolved `AlignSettings`)."""
        return cls(align.n_source, align.proxy_dir, align.cache_dir)


def proxy_features(name: str, body, src: ProxySource, device=None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Features (n, d) float32, labels (n,) int64 (codes 0..K-1) and an info dict."""
    device = torch.device(device or "cpu")
    if name.startswith("npz:"):
        x, y, info = _npz_proxy(name[4:], body, src.n_source)
        return x.to(device), y.to(device), info
    check_compatible(name, body)
    path = cache_path(name, body, src)
    if path.is_file():
        x, y, info = _read_cache(path)
        return x.to(device), y.to(device), {**info, "cached": True, "cache_path": str(path)}
    x, y, info = _compute(name, body, src)
    _check_classes(y, f"proxy '{name}'")
    info = {**info, "proxy": name, "n": int(len(y)), "classes": int(y.max()) + 1,
            "dim": int(x.shape[1])}
    artifacts.save_safetensors({"x": x, "y": y}, path, {"info": json.dumps(info)})
    return x.to(device), y.to(device), {**info, "cached": False, "cache_path": str(path)}


def check_compatible(name: str, body) -> None:
    """Unknown names and modality mismatches -> UserError (ORCA: the proxy matches the body)."""
    text_body = body.info.family == "text"
    if name in IMAGE_PROXIES and text_body:
        raise UserError(f"proxy '{name}' needs a vision body; text bodies use text or fake-text "
                        f"(or npz:PATH with features of width {body.info.in_dim})")
    if name in TEXT_PROXIES and not text_body:
        raise UserError(f"proxy '{name}' needs a text body; vision bodies use digits, mnist, "
                        f"cifar10 or fakedata (or npz:PATH)")
    if name not in IMAGE_PROXIES + TEXT_PROXIES:
        raise UserError(f"unknown proxy '{name}'; valid: {', '.join(PROXY_NAMES)}")


def cache_root(src) -> Path:
    """`align.cache_dir`, else $XMODAL_CACHE, else ~/.cache/xmodal."""
    root = src.cache_dir or os.environ.get("XMODAL_CACHE") or "~/.cache/xmodal"
    return Path(root).expanduser()


def cache_path(name: str, body, src) -> Path:
    ident = {"recipe": RECIPE, "proxy": name, "n_source": src.n_source,
             "body": body_fingerprint(body), "files": _source_fingerprint(name, src)}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(src) / "proxies" / f"{name}-{digest}.safetensors"


def body_fingerprint(body) -> str:
    """Hash of the body's input-embedding weights and geometry (what proxy features depend on)."""
    h = hashlib.sha256(json.dumps([body.info.family, body.info.in_dim, body.info.image_size,
                                   body.info.patch_size]).encode())
    for key, value in sorted(body.model.embeddings.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- plumbing

def _compute(name: str, body, src) -> tuple[torch.Tensor, torch.Tensor, dict]:
    n = src.n_source
    if name == "text":
        return text_features(body, src)
    if name == "fake-text":
        return _fake_text(body, src)
    images, labels, info = _image_source(name, src.proxy_dir, n)
    x = _image_features(images, body)
    return x, torch.as_tensor(labels, dtype=torch.int64), {**info, "level": "image"}


def _read_cache(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["info"])
        return f.get_tensor("x"), f.get_tensor("y"), info


def _source_fingerprint(name: str, src) -> list:
    """Identity of the files a proxy reads (path, size, mtime); [] for generated proxies."""
    folder = src.proxy_dir
    files = []
    if name in ("text", "fake-text"):
        npy = list(_orca_text_files(folder) or [])
        files = (npy or _text_files(folder)
                 or [_lexicon_path(required=False)])
    elif name == "mnist" and folder:
        files = list(_mnist_files(Path(folder), required=False))
    elif name == "cifar10" and folder:
        files = sorted(Path(folder).rglob("data_batch_*"))
    return [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in files
            if p is not None and Path(p).is_file()]


def _check_classes(y: torch.Tensor, what: str) -> None:
    counts = torch.bincount(y)
    small = (counts < 2).nonzero().flatten()
    if len(small):
        raise UserError(f"{what}: class {int(small[0])} has {int(counts[small[0]])} sample(s); "
                        f"every class needs at least 2 (raise align.n_source)")


def sample_indices(labels: np.ndarray, n: int, seed: int = SEED, floor: int = 2) -> np.ndarray:
    """`n` indices at random (seeded), but at least `floor` of every class when it has them.
    Classes with fewer than `floor` members are dropped. Returns sorted indices."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    usable = np.isin(labels, classes[counts >= floor])
    pool = np.flatnonzero(usable)
    if n >= len(pool):
        return pool
    reserved = [rng.choice(np.flatnonzero(labels == c), floor, replace=False)
                for c in classes[counts >= floor]]
    reserved = np.concatenate(reserved) if reserved else np.array([], int)
    rest = np.setdiff1d(pool, reserved)
    extra = rng.choice(rest, max(0, n - len(reserved)), replace=False)
    return np.sort(np.concatenate([reserved, extra]).astype(int))


def _codes(labels: np.ndarray, order: list) -> tuple[np.ndarray, list]:
    """Labels -> codes 0..K-1 over the classes present, in the given order."""
    present = [c for c in order if c in set(labels.tolist())]
    lookup = {c: i for i, c in enumerate(present)}
    return np.array([lookup[v] for v in labels.tolist()], dtype=np.int64), present


# ----------------------------------------------------------------------------- images

def _image_source(name: str, folder: Optional[str], n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images float32 in [0, 1] (n, C, H, W), labels (n,), info) for an image proxy."""
    if name == "fakedata":
        return fake_images(n)
    if name == "digits":
        from sklearn.datasets import load_digits
        d = load_digits()
        images, labels = (d.images / 16.0).astype(np.float32)[:, None], d.target
        source = "sklearn.datasets.load_digits (8x8 handwritten digits)"
    elif name == "mnist":
        images, labels = read_mnist(_need_dir(name, folder))
        source = f"MNIST IDX files in {folder}"
    else:
        from .nb360 import read_cifar10
        images, labels = read_cifar10(_need_dir(name, folder))
        source = f"CIFAR-10 batches in {folder}"
    idx = sample_indices(np.asarray(labels), n)
    return np.asarray(images[idx], np.float32), np.asarray(labels[idx], np.int64), {"source": source}


def fake_images(n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray, dict]:
    """White-noise images N(0.5, 0.25^2) clipped to [0, 1], uniform labels over 10 classes."""
    rng = np.random.default_rng(SEED)
    images = np.clip(rng.normal(0.5, 0.25, (n, 3, size, size)), 0, 1).astype(np.float32)
    labels = _uniform_labels(rng, n, FAKE_CLASSES)
    return images, labels, {"source": f"seeded Gaussian-noise images {size}x{size}, "
                                      f"{FAKE_CLASSES} random classes"}


def _uniform_labels(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Uniform random labels in 0..k-1 with every class present at least twice (n >= 2k)."""
    k = max(1, min(k, n // 2))
    base = np.repeat(np.arange(k), 2)
    labels = np.concatenate([base, rng.integers(0, k, n - len(base))])
    return rng.permutation(labels).astype(np.int64)


def _need_dir(name: str, folder: Optional[str]) -> Path:
    if not folder or not Path(folder).is_dir():
        what = ("train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]"
                if name == "mnist" else "the CIFAR-10 python batches (data_batch_1..5)")
        raise UserError(f"proxy '{name}' needs align.proxy_dir: a folder with {what}; "
                        f"got {folder!r}")
    return Path(folder)


def _mnist_files(folder: Path, required: bool = True) -> tuple:
    found = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        hits = [p for d in (folder, folder / "MNIST" / "raw", folder / "raw")
                for p in (d / stem, d / f"{stem}.gz", d / stem.replace("-idx", ".idx"))
                if p.is_file()]
        if not hits and required:
            raise UserError(f"proxy 'mnist': no {stem}[.gz] in {folder}")
        found.append(hits[0] if hits else None)
    return tuple(found)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4: 4 + 4 * ndim])
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise UserError(f"{path}: expected {int(np.prod(shape))} values for shape {shape}, "
                        f"found {data.size} (truncated file?)")
    return data.reshape(shape)


def read_mnist(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """MNIST training images (N, 1, 28, 28) float32 in [0, 1] and labels (N,) int64."""
    img_path, lab_path = _mnist_files(folder)
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"MNIST in {folder}: images {images.shape} and labels {labels.shape} "
                        f"do not match")
    return (images[:, None] / 255.0).astype(np.float32), labels.astype(np.int64)


def image_stats(body) -> tuple[tuple, tuple]:
    """The body's pixel mean/std from its preprocessor_config.json, else ImageNet's."""
    path = Path(str(body.info.source)) / "preprocessor_config.json"
    if path.is_file():
        conf = json.loads(path.read_text())
        if "image_mean" in conf and "image_std" in conf:
            return tuple(conf["image_mean"]), tuple(conf["image_std"])
    return IMAGENET_STATS


@torch.no_grad()
def _image_features(images: np.ndarray, body, batch: int = 128) -> torch.Tensor:
    import torch.nn.functional as F
    side = body.info.image_size
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1) for v in image_stats(body))
    device = next(body.parameters()).device
    out = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s: s + batch])
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
        if x.shape[-2:] != (side, side):
            x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > side)
        x = ((x - mean) / std).to(device)
        out.append(body.original_features(x).float().cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------------- text

def text_features(body, src) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Token-level text features (see the module docstring for the sources, in order)."""
    folder, n = src.proxy_dir, src.n_source
    pair = _orca_text_files(folder)
    if pair:
        return _precomputed_text(pair, body, n)
    files = _text_files(folder)
    if files:
        sentences, tags = read_conll(files)
        order, source = list(CONLL_TAGS) + sorted({t for s in tags for t in s} - set(CONLL_TAGS)), \
            f"CoNLL files {', '.join(str(f) for f in files)} (NER tag per token)"
    else:
        sentences, tags = read_lexicon(_lexicon_path())
        order, source = list(POS_ORDER), ("Brill part-of-speech lexicon (textblob wheel, "
                                          "en-lexicon.txt), one word per item, coarse POS class")
    x, y, names = _tagged_token_features(sentences, tags, order, body, n)
    return x, y, {"source": source, "level": "token", "label_names": names}


ORCA_TEXT_FILES = (("text_xs.npy", "text_ys.npy"), ("text_xs_32.npy", "text_ys_32.npy"))


def _orca_text_files(folder: Optional[str]) -> Optional[tuple[Path, Path]]:
    """ORCA's precomputed text features in `folder` (features, labels), if there are any."""
    for xs, ys in ORCA_TEXT_FILES:
        if folder and (Path(folder) / xs).is_file():
            if not (Path(folder) / ys).is_file():
                raise UserError(f"{folder} has {xs} but no {ys}")
            return Path(folder) / xs, Path(folder) / ys
    return None


def _precomputed_text(pair: tuple[Path, Path], body,
                      n: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """ORCA's features: (n, d), or (n, tokens, d) (`text_xs_32.npy`: 32 tokens), which ORCA
    averages over the token axis."""
    x, y = np.load(pair[0]), np.load(pair[1])
    x, y = _check_xy(x.mean(axis=1) if x.ndim == 3 else x, y, body, pair[0])
    idx = sample_indices(y, n)
    codes, names = _codes(y[idx], sorted(set(y[idx].tolist())))
    return (torch.as_tensor(x[idx], dtype=torch.float32), torch.as_tensor(codes),
            {"source": f"precomputed ORCA text features {pair[0]}", "level": "token",
             "label_names": [str(v) for v in names]})


def _text_files(folder: Optional[str]) -> list[Path]:
    """CoNLL training files in `folder` (eng.train, train.txt, *.conll, ...)."""
    if not folder or not Path(folder).is_dir():
        return []
    d = Path(folder)
    for name in ("eng.train", "train.txt", "train.conll", "conll2003/train.txt"):
        if (d / name).is_file():
            return [d / name]
    return sorted(d.glob("*.conll"))


def read_conll(files: list[Path]) -> tuple[list[list[str]], list[list[str]]]:
    """Sentences and their per-token NER tags (last column) from CoNLL-2003 column files."""
    sentences, tags, words, labels = [], [], [], []
    for path in files:
        for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines() + [""]:
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                if words:
                    sentences.append(words)
                    tags.append(labels)
                words, labels = [], []
                continue
            if len(cols) < 2:
                raise UserError(f"{path}: line {line!r} is not 'token ... NER-tag'")
            words.append(cols[0])
            labels.append(cols[-1])
    if not sentences:
        raise UserError(f"no sentences in {', '.join(map(str, files))}")
    return sentences, tags


def _lexicon_path(required: bool = True) -> Optional[Path]:
    spec = importlib.util.find_spec("textblob")
    path = None if spec is None or not spec.submodule_search_locations else \
        Path(list(spec.submodule_search_locations)[0]) / "en" / "en-lexicon.txt"
    if (path is None or not path.is_file()) and required:
        raise UserError("proxy 'text' has no corpus: put CoNLL-2003 files (eng.train or *.conll) "
                        "or ORCA's text_xs.npy/text_ys.npy in align.proxy_dir, or install the "
                        "offline default (pip install textblob)")
    return path


def read_lexicon(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """Brill lexicon lines 'word TAG' -> one-word items with their coarse POS class."""
    coarse = {tag: name for name, tags in POS_CLASSES.items() for tag in tags}
    words, tags = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        cols = line.split()
        if len(cols) != 2 or line.startswith(";;;"):
            continue
        words.append([cols[0]])
        tags.append([coarse.get(cols[1].split("|")[0], "OTHER")])
    return words, tags


def load_tokenizer(body):
    """The body's own tokenizer (from its model folder / hub cache)."""
    from transformers import AutoTokenizer
    roberta = body.model.config.model_type in ("roberta", "xlm-roberta", "camembert")
    try:
        return AutoTokenizer.from_pretrained(body.info.source, use_fast=True,
                                             **({"add_prefix_space": True} if roberta else {}))
    except (OSError, ValueError) as exc:
        raise UserError(f"the text proxies need the body's tokenizer, which could not be loaded "
                        f"from '{body.info.source}': {str(exc).splitlines()[0]}. Use npz:PATH "
                        f"features instead") from None


def _tagged_token_features(sentences, tags, order, body, n):
    flat = [(s, w) for s, sent in enumerate(tags) for w in range(len(sent))]
    labels = np.array([tags[s][w] for s, w in flat], dtype=object)
    idx = sample_indices(labels, n)
    wanted = [flat[i] for i in idx]
    x, found = token_features(sentences, wanted, load_tokenizer(body), body)
    codes, names = _codes(labels[idx][found.numpy()], order)
    return x[found], torch.as_tensor(codes), names


@torch.no_grad()
def token_features(sentences, wanted, tokenizer, body, batch: int = 128):
    """Per-word features: mean over the word's word pieces of the body's input embedding
    (word + position + type embeddings, LayerNorm) of the whole sentence, special tokens
    included as the body sees them. `wanted` = [(sentence, word)]. Returns (features, found)."""
    by_sent = defaultdict(list)
    for row, (s, w) in enumerate(wanted):
        by_sent[s].append((w, row))
    out = torch.full((len(wanted), body.info.in_dim), float("nan"))
    device = next(body.parameters()).device
    sent_ids = sorted(by_sent)
    for start in range(0, len(sent_ids), batch):
        chunk = sent_ids[start: start + batch]
        enc = tokenizer([sentences[s] for s in chunk], is_split_into_words=True, truncation=True,
                        max_length=body.info.max_tokens, padding=True, return_tensors="pt")
        emb = body.model.embeddings(input_ids=enc["input_ids"].to(device)).float().cpu()
        for b, s in enumerate(chunk):
            word_ids = torch.tensor([-1 if w is None else w for w in enc.word_ids(b)])
            for w, row in by_sent[s]:
                mask = word_ids == w
                if mask.any():
                    out[row] = emb[b, mask].mean(0)
    return out, ~torch.isnan(out[:, 0])


def _fake_text(body, src) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Gaussian vectors with the per-dimension mean/std of the real `text` features; uniform
    random labels over as many classes as `text` has."""
    xt, yt, tinfo = proxy_features("text", body, src)
    k = int(yt.max()) + 1
    gen = torch.Generator().manual_seed(SEED)
    n = src.n_source
    x = xt.mean(0) + xt.std(0) * torch.randn(n, xt.shape[1], generator=gen)
    y = torch.as_tensor(_uniform_labels(np.random.default_rng(SEED), n, k))
    return x.float(), y, {"source": f"random vectors matching the mean/std of text "
                                    f"({tinfo['source']}), {k} random classes",
                          "level": "random"}


# ----------------------------------------------------------------------------- user npz

def _check_xy(x: np.ndarray, y: np.ndarray, body, path) -> tuple[np.ndarray, np.ndarray]:
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise UserError(f"{path}: features must be a numeric (n, d) array, got {x.shape} {x.dtype}")
    if x.shape[1] != body.info.in_dim:
        raise UserError(f"{path}: features have width {x.shape[1]}, but the body's input "
                        f"embedding has width {body.info.in_dim}")
    if y.ndim != 1 or len(y) != len(x):
        raise UserError(f"{path}: labels must have shape ({len(x)},), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{path}: labels must be integers, got {y.dtype}")
    if not np.isfinite(x).all():
        raise UserError(f"{path}: features contain NaN or inf")
    return x, y


def _npz_proxy(path: str, body, n: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from ..io.artifacts import read_features_npz
    p = Path(path).expanduser()
    x, y = read_features_npz(p, "proxy", need_y=True)
    x, y = _check_xy(x, y, body, path)
    codes, names = _codes(y, sorted(set(y.tolist())))
    yt = torch.as_tensor(codes)
    _check_classes(yt, f"proxy '{path}'")
    idx = sample_indices(codes, n)
    info = {"proxy": f"npz:{path}", "source": str(p), "level": "user", "n": int(len(idx)),
            "classes": len(names), "dim": int(x.shape[1]), "cached": False}
    return torch.as_tensor(x[idx], dtype=torch.float32), yt[idx], info
