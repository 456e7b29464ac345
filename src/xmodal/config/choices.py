"""One table per choice (timm's registry habit): every named option xmodal offers is defined
here once, with the words and plot style that describe it. Config validation, CLI help and
report labels all read these tables; the modules that implement a choice look its row up.

Torch-free and import-free (beyond the standard library), so the CLI and the study planner can
read it without starting torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    """A fine-tune mode: which parts train in stage 3.

    `trains` names the parts that keep `requires_grad`: `embedder`, `predictor`, and for the
    body either `body` (all of it), `body-norm` (its LayerNorms), `body-non-attn` (all but the
    attention q/k/v projections) or `body-lora` (LoRA adapters on q and v, the body frozen).
    """
    label: str
    trains: tuple[str, ...]
    style: tuple[str, str, str]      # (colour, marker, line style) in figures

    @property
    def trains_body(self) -> bool:
        return any(part.startswith("body") for part in self.trains)


FINETUNE_MODES: dict[str, Mode] = {
    "all": Mode("all (embedder + body + predictor)", ("embedder", "body", "predictor"),
                ("#1f77b4", "o", "-")),
    "freeze-embedder": Mode("freeze embedder", ("body", "predictor"), ("#ff7f0e", "s", "--")),
    "non-attn": Mode("all but attention", ("embedder", "body-non-attn", "predictor"),
                     ("#9467bd", "v", "-")),
    "layernorm": Mode("LayerNorm only", ("embedder", "body-norm", "predictor"),
                      ("#17becf", "P", "-")),
    "lora": Mode("LoRA", ("embedder", "body-lora", "predictor"), ("#bcbd22", "X", "-")),
    "freeze-body": Mode("freeze body", ("embedder", "predictor"), ("#2ca02c", "^", "-")),
    "predictor-only": Mode("predictor only", ("predictor",), ("#d62728", "D", ":")),
}
FULL_MODE = "all"   # the plain fine-tuned setting: every part trains


@dataclass(frozen=True)
class Objective:
    """A stage-2 alignment objective between proxy and target features."""
    label: str
    inner: str | None = None         # OTDD's label-to-label distance (None: not an OTDD)


OBJECTIVES: dict[str, Objective] = {
    "otdd": Objective("OTDD (Sinkhorn label distances)", "sinkhorn"),
    "otdd-gaussian": Objective("OTDD (Gaussian label distances)", "gaussian"),
    "mmd": Objective("MMD (Gaussian kernel, median bandwidth)"),
    "l2": Objective("squared distance of the means"),
}


@dataclass(frozen=True)
class Proxy:
    """An alignment source data set; `modality` is the body it needs (`text` or `vision`)."""
    label: str
    modality: str | None             # None: any body


PROXIES: dict[str, Proxy] = {
    "digits": Proxy("scikit-learn digits", "vision"),
    "mnist": Proxy("MNIST (align.proxy_dir)", "vision"),
    "cifar10": Proxy("CIFAR-10 (align.proxy_dir)", "vision"),
    "fakedata": Proxy("FakeData: noise images, random labels", "vision"),
    "text": Proxy("text: POS-tagged tokens (CoNLL or ORCA's files in align.proxy_dir)", "text"),
    "fake-text": Proxy("fake text: random vectors, random labels", "text"),
}
NO_PROXY = "none"
NPZ_PREFIX = "npz:"
IMAGE_PROXIES = tuple(k for k, p in PROXIES.items() if p.modality == "vision")
TEXT_PROXIES = tuple(k for k, p in PROXIES.items() if p.modality == "text")


@dataclass(frozen=True)
class Baseline:
    """A domain baseline fitted on the run's own split instead of fine-tuning."""
    label: str
    kinds: tuple[str, ...]           # task kinds it applies to
    modalities: tuple[str, ...] = ("1d", "2d")
    default: bool = True             # run by `xmodal baseline` when no --method is given


BASELINES: dict[str, Baseline] = {
    "logreg": Baseline("logistic regression", ("classification", "multilabel")),
    "minirocket": Baseline("MiniRocket", ("classification",), ("1d",)),
    "ridge": Baseline("ridge regression", ("dense",)),
    "mean": Baseline("majority class / mean field", ("classification", "dense"), default=False),
}
NO_BASELINE = "none"


@dataclass(frozen=True)
class Experiment:
    """A study part's question; `title` heads its report section."""
    title: str


EXPERIMENTS: dict[str, Experiment] = {
    "proxy": Experiment("RQ1: does the proxy dataset (or embedder training at all) matter?"),
    "align-epochs": Experiment("RQ2: does more embedder training (lower OTDD) give lower error?"),
    "freezing": Experiment("RQ3: which components need fine-tuning?"),
    "pretraining": Experiment("RQ4: how much does the body's pre-training matter?"),
    "scope": Experiment("RQ5: how much of the model must change in fine-tuning?"),
    "embedder": Experiment("RQ6: which embedder? ORCA's conv vs simpler linear maps"),
    "custom": Experiment("Custom study"),
    "baselines": Experiment("Domain baselines: does cross-modal fine-tuning beat the obvious method?"),
}


@dataclass(frozen=True)
class EmbedderKind:
    """An embedder architecture (RQ6: which embedder?)."""
    label: str
    style: tuple[str, str, str]      # (colour, marker, line style) in figures


EMBEDDER_KINDS: dict[str, EmbedderKind] = {
    "conv": EmbedderKind("ORCA conv (patch conv, LayerNorm, positions)", ("#1f77b4", "o", "-")),
    "patch-linear": EmbedderKind("per-patch linear (no LayerNorm)", ("#ff7f0e", "s", "--")),
    "linear": EmbedderKind("whole-input linear (FPT-style)", ("#2ca02c", "^", ":")),
}
DEFAULT_EMBEDDER = "conv"

# Embedder options: how the patch conv starts, and where the LayerNorm sits.
CONV_INITS = ("orca", "torch", "trunc-normal")   # xavier gain sqrt 2 bias 0 | torch's | ORCA's naive
NORM_ORDERS = ("pre-pos", "post-pos")            # LN(patches) + pos (ORCA) | LN(patches + pos)


def names(table: dict) -> tuple[str, ...]:
    return tuple(table)


def help_text(table: dict) -> str:
    """`a | b | c`, for CLI help."""
    return " | ".join(table)
