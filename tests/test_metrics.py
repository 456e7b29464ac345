"""Metrics against scikit-learn / numpy on random data, computed over the whole evaluation set
(also through the batched `evaluate`), and the matching training losses."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from torch import nn

from xmodal.config import load_config
from xmodal.stages.metrics import (compute_metric, make_loss, one_minus_macro_f1, one_minus_mean_auroc,
                            relative_l2, relative_l2_loss, zero_one_error)
from xmodal.data.types import TaskData, TaskSpec
from xmodal.stages.evaluate import evaluate


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def test_zero_one_error_matches_sklearn(rng):
    logits = rng.normal(size=(257, 7))
    y = rng.integers(0, 7, 257)
    expected = 1.0 - accuracy_score(y, logits.argmax(1))
    assert zero_one_error(logits, y) == pytest.approx(expected, abs=1e-12)
    assert compute_metric("error", logits, y) == (pytest.approx(expected, abs=1e-12), {})
    assert zero_one_error(np.eye(5), np.arange(5)) == 0.0
    assert zero_one_error(np.eye(5), (np.arange(5) + 1) % 5) == 1.0


def test_macro_f1_matches_sklearn_including_absent_classes(rng):
    logits = rng.normal(size=(300, 5))
    logits[:, 4] -= 100.0                          # class 4 is never predicted
    y = rng.integers(0, 4, 300)                    # ... and never present
    expected = 1.0 - f1_score(y, logits.argmax(1), average="macro", labels=np.arange(5),
                              zero_division=0)
    assert one_minus_macro_f1(logits, y) == pytest.approx(expected, abs=1e-12)
    # an absent class counts as F1 = 0 in the macro mean (the metric covers every output class)
    present = 1.0 - f1_score(y, logits.argmax(1), average="macro", labels=np.arange(4))
    assert one_minus_macro_f1(logits, y) == pytest.approx(1 - (1 - present) * 4 / 5, abs=1e-12)
    assert compute_metric("1-macro-f1", logits, y)[0] == pytest.approx(expected, abs=1e-12)


def test_mean_auroc_matches_sklearn_and_skips_single_class_labels(rng):
    n, k = 200, 6
    y = (rng.random((n, k)) < 0.3).astype(np.float32)
    scores = rng.normal(size=(n, k)) + 1.5 * y        # informative scores
    y[:, 2] = 0                                       # only negatives
    y[:, 5] = 1                                       # only positives
    kept = [0, 1, 3, 4]
    expected = 1.0 - np.mean([roc_auc_score(y[:, j], scores[:, j]) for j in kept])
    value, skipped = one_minus_mean_auroc(scores, y)
    assert value == pytest.approx(expected, abs=1e-12)
    assert skipped == [2, 5]
    assert 0.0 < value < 0.5
    with pytest.warns(UserWarning, match="skipped 2 label"):
        value2, info = compute_metric("1-auroc", scores, y)
    assert value2 == pytest.approx(expected, abs=1e-12)
    assert info == {"auroc_skipped_labels": [2, 5]}


def test_mean_auroc_all_labels_single_class_is_nan_and_no_warning_when_none_skipped(rng):
    y = np.zeros((20, 3))
    value, skipped = one_minus_mean_auroc(rng.normal(size=(20, 3)), y)
    assert np.isnan(value) and skipped == [0, 1, 2]
    y = (rng.random((50, 3)) < 0.5).astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, info = compute_metric("1-auroc", rng.normal(size=(50, 3)), y)
    assert info == {"auroc_skipped_labels": []}


def test_relative_l2_is_the_mean_of_per_sample_ratios(rng):
    y = rng.normal(size=(40, 1, 9, 9)) * rng.uniform(0.1, 10, size=(40, 1, 1, 1))
    pred = y + rng.normal(scale=0.3, size=y.shape)
    ratios = [np.linalg.norm(pred[i] - y[i]) / np.linalg.norm(y[i]) for i in range(len(y))]
    assert relative_l2(pred, y) == pytest.approx(np.mean(ratios), rel=1e-12)
    # not the ratio of the norms over the whole set
    whole = np.linalg.norm(pred - y) / np.linalg.norm(y)
    assert abs(relative_l2(pred, y) - whole) > 1e-3
    assert relative_l2(y, y) == 0.0
    assert compute_metric("relative-l2", pred, y)[0] == pytest.approx(np.mean(ratios), rel=1e-12)
    # the training loss is the same quantity
    loss = relative_l2_loss(torch.tensor(pred), torch.tensor(y)).item()
    assert loss == pytest.approx(np.mean(ratios), rel=1e-9)


def test_unknown_metric():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metric("accuracy", np.zeros((2, 2)), np.zeros(2))


def test_losses_match_torch_reference(rng):
    logits = torch.tensor(rng.normal(size=(16, 4)), dtype=torch.float32)
    y = torch.tensor(rng.integers(0, 4, 16))
    ce = make_loss("classification")(logits, y)
    assert ce.item() == pytest.approx(nn.CrossEntropyLoss()(logits, y).item(), rel=1e-6)
    targets = torch.tensor((rng.random((16, 4)) < 0.5).astype(np.float32))
    bce = make_loss("multilabel", pos_weight=4.0)(logits, targets)
    ref = nn.BCEWithLogitsLoss(pos_weight=torch.full((4,), 4.0))(logits, targets)
    assert bce.item() == pytest.approx(ref.item(), rel=1e-6)
    plain = make_loss("multilabel")(logits, targets)
    assert plain.item() == pytest.approx(nn.BCEWithLogitsLoss()(logits, targets).item(), rel=1e-6)
    assert plain.item() != pytest.approx(bce.item())
    with pytest.raises(ValueError):
        make_loss("ranking")


# ---------------------------------------------------------------- whole-set evaluation

class Fixed(nn.Module):
    """A deterministic 'model': a fixed linear map of the flattened input."""

    def __init__(self, d_in, d_out, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(d_in, d_out, generator=g))

    def forward(self, x):
        return x.flatten(1) @ self.w


def _spec(kind, metric="", n_out=3, input_shape=(1, 5), output_shape=()):
    return TaskSpec("t", "test", "1d", kind, input_shape, n_out, metric=metric,
                    output_shape=output_shape)


@pytest.mark.parametrize("metric", ["error", "1-macro-f1", "1-auroc"])
def test_evaluate_in_small_batches_equals_the_whole_set_metric(rng, metric):
    n = 37
    x = rng.normal(size=(n, 1, 5)).astype(np.float32)
    if metric == "1-auroc":
        spec = _spec("multilabel", metric, n_out=3)
        y = (rng.random((n, 3)) < 0.4).astype(np.float32)
    else:
        spec = _spec("classification", metric, n_out=3)
        y = rng.integers(0, 3, n)
    data = TaskData(spec, x, y, x, y, x, y)
    model = Fixed(5, 3)
    cfg = load_config(overrides={"train.eval_batch_size": 4})
    value, _ = evaluate(model, x, y, data, torch.device("cpu"), cfg.train.eval_batch_size, cfg.run.precision)
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    expected, _ = compute_metric(metric, out, y)
    assert value == pytest.approx(expected, abs=1e-9)
    # ... which is not the mean of per-batch metrics
    with warnings.catch_warnings():  # small chunks have single-class labels: that is the point
        warnings.simplefilter("ignore")
        chunks = [compute_metric(metric, out[i:i + 4], y[i:i + 4])[0] for i in range(0, n, 4)]
    chunks = [c for c in chunks if np.isfinite(c)]
    if metric != "error":
        assert abs(np.mean(chunks) - expected) > 1e-6


def test_dense_metric_is_computed_in_original_units(rng):
    n = 12
    x = rng.normal(size=(n, 1, 5)).astype(np.float32)
    y_mean = rng.normal(size=(1, 5)).astype(np.float32) + 3.0
    y_std = rng.uniform(0.5, 2.0, size=(1, 5)).astype(np.float32)
    y = rng.normal(size=(n, 1, 5)).astype(np.float32)            # normalised targets
    spec = _spec("dense", n_out=1, output_shape=(1, 5))
    data = TaskData(spec, x, y, x, y, x, y, y_mean=y_mean, y_std=y_std)
    model = nn.Sequential(Fixed(5, 5, seed=3), nn.Unflatten(1, (1, 5)))
    cfg = load_config(overrides={"train.eval_batch_size": 5, "run.precision": "fp32"})
    value, _ = evaluate(model, x, y, data, torch.device("cpu"), cfg.train.eval_batch_size, cfg.run.precision)
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    decoded = relative_l2(out * y_std + y_mean, y * y_std + y_mean)
    assert value == pytest.approx(decoded, rel=1e-5)
    assert abs(value - relative_l2(out, y)) > 1e-3


# ---------------------------------------------------------------- losses (mutation survivors)

def test_relative_l2_loss_equals_the_metric_for_small_and_large_targets():
    rng = np.random.default_rng(0)
    for scale in (1e-3, 1.0, 50.0):                 # ||y|| well below and above 1
        y = rng.normal(size=(4, 1, 5, 5)) * scale
        pred = y + rng.normal(size=y.shape) * scale * 0.1
        loss = relative_l2_loss(torch.from_numpy(pred), torch.from_numpy(y)).item()
        assert loss == pytest.approx(relative_l2(pred, y), rel=1e-9)


def test_make_loss_by_kind():
    rng = np.random.default_rng(1)
    out = torch.from_numpy(rng.normal(size=(1, 3)))    # a batch of one sample
    y = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    bce = make_loss("multilabel", pos_weight=4.0)(out, y).item()
    p = 1 / (1 + np.exp(-out.numpy()))
    expected = -np.mean(4.0 * y.numpy() * np.log(p) + (1 - y.numpy()) * np.log(1 - p))
    assert bce == pytest.approx(expected, rel=1e-9)
    dense = make_loss("dense")
    field = torch.from_numpy(rng.normal(size=(2, 1, 4, 4)))
    assert dense(field * 1.1, field).item() == pytest.approx(0.1, rel=1e-9)
    with pytest.raises(ValueError, match="unknown task kind 'points'"):
        make_loss("points")
