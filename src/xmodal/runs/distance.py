"""Backing for `xmodal distance`: the OTDD between two labelled datasets.

`distance_command(args) -> dict`. Two .npz files (`x` (N, d), `y` (N,) int; `y` optional in the
target) go straight to `distance_from_npz`. Otherwise each side is resolved by name in the
embedding space of `--body` (default minilm):
* source: a proxy name (digits, mnist, cifar10, fakedata, text, fake-text, npz:PATH - the body's
  own input embedding, as in alignment; `proxy:NAME` forces this reading), else a task name
  (`task:NAME` forces it), or an .npz file;
* target: a task name, an .npz file, or a finished run folder: its own task through its
  trained embedder (`best.safetensors`), with the proxy source through that run's body.
A task's features are what alignment compares: its embedder at initialisation (built for the
task and the body with seed 0, initialised from the body), mean over tokens, on up to
`--max-samples` training samples (seeded, at least 2 per class); its labels are the classes
(k-means pseudo-labels, k = 10, for dense / multi-label tasks). The value is the full labelled
OTDD between the two sets, computed in float64.
"""

from __future__ import annotations


import numpy as np
import torch

from ..io import artifacts
from ..errors import UserError

SEED = 0
PSEUDO_K = 10


def distance_command(args) -> dict:
    if args.max_samples is not None and args.max_samples < 2:
        raise UserError(f"--max-samples must be >= 2; got {args.max_samples}")
    if args.max_iter < 1:
        raise UserError(f"--max-iter must be >= 1; got {args.max_iter}")
    if _is_npz(args.source) and _is_npz(args.target):
        out = distance_from_npz(args.source, args.target, args.inner, args.eps, args.max_iter)
        return {"otdd": out.pop("otdd"), "source": args.source, "target": args.target, **out}
    from ..model.bodies import load_body
    from ..config import BodyConfig
    torch.manual_seed(SEED)
    run = _finished_run(args.target)
    body = load_body(run.config.body if run is not None else BodyConfig(name=args.body))
    body.eval()
    xs, ys, sdesc = _side(args.source, "source", body, args)
    xt, yt, tdesc = (_run_side(run, args) if run is not None
                     else _side(args.target, "target", body, args))
    if xs.shape[1] != xt.shape[1]:
        raise UserError(f"source and target feature dimensions differ: "
                        f"{xs.shape[1]} vs {xt.shape[1]}")
    value = _otdd(xs, ys, xt, yt, args.inner, args.eps, args.max_iter)
    return {"otdd": value, "source": args.source, "target": args.target, "inner": args.inner,
            "eps": float(args.eps), "n_source": int(len(xs)), "n_target": int(len(xt)),
            "dim": int(xs.shape[1]), "body": run.config.body.name if run else args.body, "source_features": sdesc,
            "target_features": tdesc, "source_classes": _n_classes(ys),
            "target_classes": _n_classes(yt)}


def _n_classes(y) -> int:
    return 1 if y is None else int(len(torch.unique(y)))


def _otdd(xs, ys, xt, yt, inner: str, eps: float, max_iter: int) -> float:
    from ..ot.otdd import otdd
    try:
        return float(otdd(xs.double(), ys, xt.double(), yt, inner=inner, eps=eps,
                          max_iter=max_iter))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _is_npz(name: str) -> bool:
    return str(name).endswith(".npz") and not str(name).startswith("npz:")


# ----------------------------------------------------------------------------- one side

def _side(name: str, role: str, body, args):
    """(features, labels or None, description) for one side of the distance."""
    from ..config.choices import IMAGE_PROXIES, TEXT_PROXIES
    if _is_npz(name):
        x, y = read_features_npz(name, role, need_y=role == "source")
        return x, y, f"features from {name}"
    forced_task = name.startswith("task:")
    bare = name.removeprefix("task:").removeprefix("proxy:")
    is_proxy = name.startswith("proxy:") or (
        role == "source" and not forced_task
        and (bare in IMAGE_PROXIES + TEXT_PROXIES or bare.startswith("npz:")))
    if is_proxy:
        return _proxy_side(bare, body, args)
    return _task_side(bare, role, body, args)


def _proxy_side(name: str, body, args):
    from ..data.proxies import ProxySource, proxy_features
    source = ProxySource(args.max_samples or 5000, args.proxy_dir,
                         args.cache_dir)
    try:
        x, y, info = proxy_features(name, body, source)
    except UserError as exc:
        if name in _task_names():
            raise UserError(f"{exc} (to use the task '{name}' through its embedder instead, "
                            f"pass task:{name})") from None
        raise
    return x, y, f"proxy '{name}' through the body's input embedding ({info.get('source')})"


def _task_names() -> list:
    from ..data.registry import list_specs
    return [s.name for s in list_specs()]


def _task_side(name: str, role: str, body, args):
    from ..config import TaskConfig
    from ..config.choices import IMAGE_PROXIES, TEXT_PROXIES
    from ..data.registry import REGISTRY, load_task
    if name not in REGISTRY and not name.startswith("npz:"):
        proxies = ", ".join(IMAGE_PROXIES + TEXT_PROXIES + ("npz:PATH",))
        what = f"a proxy ({proxies}), " if role == "source" else ""
        raise UserError(f"unknown {role} '{name}': expected {what}a task name "
                        f"({', '.join(REGISTRY)}), or an .npz file of features")
    data = load_task(TaskConfig(name=name, data_dir=args.data_dir))
    labels, idx = _labels_and_sample(data, args.max_samples)
    x = task_features(data.x_train[idx], data.spec.input_shape, body,
                      args.seq_len)
    return x, torch.as_tensor(labels[idx]), (f"task '{name}' embedder at initialisation "
                                             f"(seed {SEED}), mean over tokens")


def _finished_run(target: str):
    """The `LoadedRun` when `target` is a run folder (`xmodal fit`'s), else None."""
    from pathlib import Path
    from .folder import RunFolder
    path = Path(target).expanduser()
    if not (path.is_dir() and (path / RunFolder.CONFIG).is_file()):
        return None
    from .predict import load_run
    return load_run(path, "cpu")


def _labels_and_sample(data, max_samples):
    from ..stages.align import pseudo_labels
    from ..data.proxies import sample_indices
    if data.spec.kind == "classification":
        labels = np.asarray(data.y_train)
    else:
        labels = pseudo_labels(data.y_train, PSEUDO_K, SEED)
    return labels, sample_indices(labels, max_samples or len(labels), seed=SEED)


@torch.no_grad()
def _run_side(run, args):
    """The run's own task (its config's task section) through the run's trained embedder (its
    best.safetensors), mean over tokens, as alignment measures it."""
    from ..data.registry import load_task
    data = load_task(run.config.task)
    labels, idx = _labels_and_sample(data, args.max_samples)
    x = data.x_train[idx]
    model = run.model.eval()
    out = [model.embed(torch.from_numpy(np.ascontiguousarray(x[s: s + 256])).float())
           for s in range(0, len(x), 256)]
    return torch.cat(out), torch.as_tensor(labels[idx]), (
        f"run {run.run_dir.name}: task '{data.spec.name}' through the run's trained embedder "
        f"(best.safetensors), mean over tokens")


@torch.no_grad()
def task_features(x: np.ndarray, input_shape, body, seq_len: int, batch: int = 256):
    """Mean-over-tokens output of a fresh embedder for the task (seeded, initialised from the
    body), as `CrossModalModel.embed` computes it."""
    from ..model.embedders import Embedder
    torch.manual_seed(SEED)
    embedder = Embedder(tuple(input_shape), body, seq_len)
    embedder.init_from_body(body)
    out = [embedder(torch.from_numpy(np.ascontiguousarray(x[s: s + batch])).float())[0].mean(1)
           for s in range(0, len(x), batch)]
    return torch.cat(out)


def read_features_npz(path: str, role: str, need_y: bool):
    """x (N, d) float64 and y (N,) int (or None) tensors from a user's .npz."""
    x, y = artifacts.read_features_npz(path, role, need_y)
    return torch.as_tensor(x, dtype=torch.float64), None if y is None else torch.as_tensor(y)


def distance_from_npz(source_path, target_path, inner: str = "sinkhorn",
                      eps: float = 0.1, max_iter: int = 2000) -> dict:
    """OTDD between two .npz files holding ``x`` (N, d) and ``y`` (N,) int (``y`` optional in
    the target: one class). Bad input raises :class:`xmodal.errors.UserError`."""
    xs, ys = read_features_npz(source_path, "source", need_y=True)
    xt, yt = read_features_npz(target_path, "target", need_y=False)
    if xs.shape[1] != xt.shape[1]:
        raise UserError(f"source and target feature dimensions differ: "
                        f"{xs.shape[1]} vs {xt.shape[1]}")
    value = _otdd(xs, ys, xt, yt, inner, eps, max_iter)
    return {"otdd": float(value), "n_source": int(xs.shape[0]), "n_target": int(xt.shape[0]),
            "dim": int(xs.shape[1]), "inner": inner, "eps": float(eps),
            "source_classes": int(len(np.unique(ys))),
            "target_classes": 1 if yt is None else int(len(np.unique(yt)))}
