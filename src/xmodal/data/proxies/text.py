"""Text proxies for text bodies: token features tagged with a linguistic class, from ORCA's
precomputed CoNLL feature files, CoNLL-2003 files, or (offline default) the Brill POS lexicon
of the textblob wheel, passed through the body's word embedding.
"""

from __future__ import annotations

import importlib.util
from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ...errors import UserError
from .npz import _check_xy
from .sampling import _codes, sample_indices


CONLL_TAGS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


POS_CLASSES = {  # Penn Treebank tag -> coarse class (anything else: OTHER)
    "NOUN": ("NN", "NNS"), "PROPN": ("NNP", "NNPS"), "ADJ": ("JJ", "JJR", "JJS"),
    "VERB": ("VB", "VBD", "VBG", "VBN", "VBP", "VBZ", "MD"), "ADV": ("RB", "RBR", "RBS", "WRB"),
    "NUM": ("CD",), "FUNC": ("IN", "DT", "PDT", "PRP", "PRP$", "WP", "WP$", "WDT", "CC", "TO",
                             "EX", "RP", "POS"),
}


POS_ORDER = tuple(POS_CLASSES) + ("OTHER",)


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
