"""Proxy (source) datasets of the alignment stage, as features in the body's own input space:
`features` (the entry point and its cache), `images`, `text`, `npz`, `sampling`.

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

import hashlib
import json
import os
from pathlib import Path
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from ...config.choices import NO_PROXY, NPZ_PREFIX, PROXIES, TEXT_PROXIES
from ...errors import UserError
from ...io import artifacts
from .images import _image_features, _image_source
from .npz import _npz_proxy
from .sampling import SEED, _check_classes, _uniform_labels
from .images import _mnist_files
from .text import _lexicon_path, _orca_text_files, _text_files, text_features

RECIPE = "proxy-v1"    # bump when a feature recipe changes: invalidates cached features


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
    if name.startswith(NPZ_PREFIX):
        x, y, info = _npz_proxy(name[len(NPZ_PREFIX):], body, src.n_source)
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
    if name not in PROXIES:
        valid = (*PROXIES, f"{NPZ_PREFIX}PATH", NO_PROXY)
        raise UserError(f"unknown proxy '{name}'; valid: {', '.join(valid)}")
    own = "text" if body.info.family == "text" else "vision"
    need = PROXIES[name].modality
    if need is not None and need != own:
        fitting = [k for k, p in PROXIES.items() if p.modality == own]
        width = f" with features of width {body.info.in_dim}" if own == "text" else ""
        raise UserError(f"proxy '{name}' needs a {need} body; {own} bodies use "
                        f"{_either(fitting)} (or {NPZ_PREFIX}PATH{width})")


def _either(names: list) -> str:
    """`a, b or c`."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


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
    if name in TEXT_PROXIES:
        npy = list(_orca_text_files(folder) or [])
        files = (npy or _text_files(folder)
                 or [_lexicon_path(required=False)])
    elif name == "mnist" and folder:
        files = list(_mnist_files(Path(folder), required=False))
    elif name == "cifar10" and folder:
        files = sorted(Path(folder).rglob("data_batch_*"))
    return [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in files
            if p is not None and Path(p).is_file()]


# ----------------------------------------------------------------------------- images


# ----------------------------------------------------------------------------- text


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


