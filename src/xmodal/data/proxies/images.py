"""Image proxies for vision bodies: scikit-learn digits, MNIST (IDX files), CIFAR-10 (python
batches) and FakeData (seeded Gaussian noise, uniform random labels), resized to the body's
image size, normalised with its image statistics and passed through its patch embedding.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...errors import UserError
from .sampling import FAKE_CLASSES, SEED, _need_dir, _uniform_labels, sample_indices


IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


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
        from ..nb360 import read_cifar10
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
