"""Domain baselines: the obvious methods that every xmodal number is measured against.

A baseline is a run like any other: `fit()` dispatches here when `baseline.method` is set, and
the run folder gets the same `config.yaml`, `metrics.jsonl` and `summary.json` (no
`best.safetensors`: these are scikit-learn models, kept in memory only). Methods, all from
existing libraries and fitted on exactly the training split the fine-tuned model sees:

- `logreg`: standardised raw values -> scikit-learn LogisticRegression (one-vs-rest for
  multi-label tasks);
- `minirocket`: aeon's MiniRocket features -> RidgeClassifierCV, for 1D series
  (classification; series shorter than 9 steps are edge-padded, as MiniRocket needs 9);
- `ridge`: standardised raw values -> RidgeCV per output value, for dense tasks;
- `mean`: the mean training target (dense) or the majority class (classification).

`default_methods(spec)` names the methods that apply to a task.
"""

from __future__ import annotations

import time

import numpy as np

from ..config.choices import BASELINES
from ..data.types import TaskData, TaskSpec
from ..errors import UserError
from ..stages.metrics import METRIC_LABELS, compute_metric
from .folder import Summary

METHODS = tuple(BASELINES)
MINIROCKET_MIN_LENGTH = 9


def applies(method: str, spec: TaskSpec) -> bool:
    """Whether `method` fits `spec` (its row in `config.choices.BASELINES`)."""
    row = BASELINES[method]
    return spec.kind in row.kinds and spec.modality in row.modalities


def default_methods(spec: TaskSpec) -> list[str]:
    return [m for m, row in BASELINES.items() if row.default and applies(m, spec)] or ["mean"]


def check_method(method: str, spec: TaskSpec) -> None:
    if method not in BASELINES:
        raise UserError(f"unknown baseline '{method}'; choose one of {', '.join(BASELINES)}")
    if not applies(method, spec):
        fits = ", ".join(m for m in BASELINES if applies(m, spec))
        raise UserError(f"baseline '{method}' does not apply to task '{spec.name}' "
                        f"({spec.kind}, input {spec.input_shape}); use one of: {fits}")


def run_baseline(method: str, data: TaskData, seed: int, run_id: str,
                 started: float) -> tuple[Summary, list[dict]]:
    """Fit `method` on the training split and score it like a fine-tuned run: the summary and
    the one-epoch history a run folder holds."""
    outputs = predict_baseline(method, data, seed)
    val = _score(data, outputs["val"], data.y_val) if len(data.x_val) else None
    test, info = _score(data, outputs["test"], data.y_test, details=True)
    record = {"epoch": 1, "train_loss": None, "val_metric": val, "lr": None,
              "seconds": time.time() - started, "test_metric": test}
    summary = Summary(run_id=run_id, task=data.spec.name, body=method, baseline=method,
                      metric=data.spec.metric, metric_label=METRIC_LABELS[data.spec.metric],
                      sizes=data.sizes(), notes=data.notes, seed=seed, selection=data.selection,
                      best_epoch=1, best_val_metric=val, last_val_metric=val,
                      test_metric_best=test, test_metric_last=test, epochs=1, extra=info,
                      seconds=time.time() - started)
    return summary, [record]


def _score(data: TaskData, out: np.ndarray, y: np.ndarray, details: bool = False):
    """The task metric (dense outputs decoded to the targets' units first)."""
    if data.spec.kind == "dense":
        out, y = data.decode_y(out), data.decode_y(y)
    value, info = compute_metric(data.spec.metric, out, y)
    return (value, info) if details else value


def predict_baseline(method: str, data: TaskData, seed: int) -> dict[str, np.ndarray]:
    """Fit `method` on the training split; outputs for `val` and `test` in the metric's format
    (class scores, label scores or normalised dense fields)."""
    check_method(method, data.spec)
    splits = {k: x for k, x in (("val", data.x_val), ("test", data.x_test))
              if x is not None and len(x)}
    fit_predict = {"logreg": _logreg, "minirocket": _minirocket, "ridge": _ridge,
                   "mean": _mean}[method]
    return fit_predict(data, splits, seed)


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(len(x), -1).astype(np.float64)


def _scores(clf, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Class scores as an (N, n_classes) array; classes absent from training score -inf."""
    raw = clf.decision_function(x)
    if raw.ndim == 1:
        raw = np.stack([-raw, raw], axis=1)
    out = np.full((len(x), n_classes), -np.inf)
    out[:, clf.classes_.astype(int)] = raw
    return out


def _logreg(data: TaskData, splits: dict, seed: int) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    clf = LogisticRegression(max_iter=2000, random_state=seed)
    if data.spec.kind == "multilabel":
        model = make_pipeline(StandardScaler(), OneVsRestClassifier(clf))
        model.fit(_flat(data.x_train), data.y_train.astype(int))
        return {k: model.decision_function(_flat(x)) for k, x in splits.items()}
    model = make_pipeline(StandardScaler(), clf).fit(_flat(data.x_train), data.y_train)
    return {k: _scores(model, _flat(x), data.spec.n_out) for k, x in splits.items()}


def _minirocket(data: TaskData, splits: dict, seed: int) -> dict:
    from aeon.transformations.collection.convolution_based import MiniRocket
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    pad = max(0, MINIROCKET_MIN_LENGTH - data.x_train.shape[-1])
    prep = lambda x: np.pad(x, ((0, 0), (0, 0), (0, pad)), mode="edge").astype(np.float64)  # noqa: E731
    rocket = MiniRocket(random_state=seed)
    features = rocket.fit_transform(prep(data.x_train))
    clf = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=np.logspace(-3, 3, 10)))
    clf.fit(features, data.y_train)
    return {k: _scores(clf, rocket.transform(prep(x)), data.spec.n_out)
            for k, x in splits.items()}


def _ridge(data: TaskData, splits: dict, seed: int) -> dict:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    shape = data.y_train.shape[1:]
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 7)))
    model.fit(_flat(data.x_train), _flat(data.y_train))
    return {k: model.predict(_flat(x)).reshape(len(x), *shape).astype(np.float32)
            for k, x in splits.items()}


def _mean(data: TaskData, splits: dict, seed: int) -> dict:
    if data.spec.kind == "dense":
        mean = data.y_train.mean(axis=0, keepdims=True)
        return {k: np.repeat(mean, len(x), axis=0) for k, x in splits.items()}
    counts = np.bincount(data.y_train, minlength=data.spec.n_out).astype(np.float64)
    return {k: np.repeat(counts[None], len(x), axis=0) for k, x in splits.items()}
