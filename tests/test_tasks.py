"""Tasks: the user's own npz (layouts, kind inference, errors), the seeded validation split,
subsampling, and every task listed by `xmodal tasks`."""

import json

import numpy as np
import pytest

from xmodal import cli
from xmodal.config import TaskConfig
from xmodal.errors import UserError
from xmodal.data.registry import REGISTRY, list_specs, load_task
from xmodal.data.types import TaskData, TaskSpec
from xmodal.data.splits import carve_validation, validate

# Tasks that need nothing but the installed packages; the rest read files from --data-dir
# (their loaders are exercised on tiny files in test_nb360.py).
OFFLINE = {"digits": {}, "arrowhead": {}, "osuleaf": {}, "basicmotions": {}, "gunpoint": {},
           "italypower": {}, "dna": {}, "darcy": {"resolution": 8, "n_train": 10, "n_test": 4}}
DATA_DIR = {"cifar100", "cifar10", "ninapro", "darcy-nb360", "satellite", "deepsea", "ecg"}


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("XMODAL_DATA_DIR", raising=False)


def save(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def ids(x):
    """Sample ids planted in the first input value."""
    return set(np.asarray(x).reshape(len(x), -1)[:, 0].round().astype(int).tolist())


def labelled(n, shape, classes=3, start=0, seed=0):
    """Inputs of `shape` whose first value is the sample id; balanced integer labels."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape)).astype(np.float32)
    x.reshape(n, -1)[:, 0] = np.arange(start, start + n)
    y = np.arange(n) % classes
    return x, y


def load(name, **kw):
    kw.setdefault("validation", "carve")   # these tests check the carve itself
    return load_task(TaskConfig(name=name, **kw))


# ---------------------------------------------------------------- layouts and kinds

def test_npz_1d_channels_first(tmp_path):
    x, y = labelled(30, (2, 16))
    xt, yt = labelled(10, (2, 16), start=100)
    d = load(save(tmp_path / "a.npz", x_train=x, y_train=y, x_test=xt, y_test=yt))
    s = d.spec
    assert (s.modality, s.kind, s.input_shape, s.n_out) == ("1d", "classification", (2, 16), 3)
    assert s.loss == "cross-entropy" and s.metric == "error" and s.name == "npz:a"
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert d.x_train.shape[1:] == (2, 16) and len(d.x_train) + len(d.x_val) == 30
    np.testing.assert_array_equal(d.x_test, xt)
    np.testing.assert_array_equal(d.y_test, yt)


def test_npz_1d_without_channel_axis(tmp_path):
    x, y = labelled(30, (16,), classes=2)
    xt, yt = labelled(6, (16,), classes=2)
    d = load(save(tmp_path / "b.npz", x_train=x, y_train=y.astype(np.uint8), x_test=xt, y_test=yt))
    assert (d.spec.modality, d.spec.input_shape, d.spec.n_out) == ("1d", (1, 16), 2)
    assert d.x_test.shape == (6, 1, 16)
    np.testing.assert_array_equal(d.x_test[:, 0], xt)


def test_npz_2d_channels_first(tmp_path):
    x, y = labelled(30, (3, 8, 6), classes=4)
    xt, yt = labelled(8, (3, 8, 6), classes=4)
    d = load(save(tmp_path / "c.npz", x_train=x, y_train=y, x_test=xt, y_test=yt))
    assert (d.spec.modality, d.spec.kind, d.spec.input_shape, d.spec.n_out) == \
        ("2d", "classification", (3, 8, 6), 4)


def test_npz_2d_without_channel_axis_via_layout_option(tmp_path):
    x, y = labelled(30, (8, 6))
    xt, yt = labelled(8, (8, 6))
    name = save(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    # a 3D x with class labels is (N, C, L) by default; layout "nhw" reads it as images
    assert load(name).spec.input_shape == (8, 6)
    d = load(name, options={"layout": "nhw"})
    assert (d.spec.modality, d.spec.input_shape) == ("2d", (1, 8, 6))
    np.testing.assert_array_equal(d.x_test[:, 0], xt)


def test_npz_dense_2d_from_nhw_fields(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 9, 9))
    y = rng.normal(size=(20, 9, 9))
    d = load(save(tmp_path / "e.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4]))
    s = d.spec
    assert (s.modality, s.kind, s.input_shape, s.output_shape, s.n_out) == \
        ("2d", "dense", (1, 9, 9), (1, 9, 9), 1)
    assert s.loss == "relative-l2" and s.metric == "relative-l2"
    assert d.y_train.dtype == np.float32 and d.y_test.shape == (4, 1, 9, 9)


def test_npz_dense_1d_and_2d_with_channels(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2, 12))
    y = rng.normal(size=(20, 12))
    d = load(save(tmp_path / "f.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4]))
    assert (d.spec.modality, d.spec.kind, d.spec.output_shape) == ("1d", "dense", (1, 12))
    x = rng.normal(size=(20, 3, 6, 6))
    y = rng.normal(size=(20, 6, 6))
    d = load(save(tmp_path / "g.npz", x_train=x, y_train=y, x_test=x[:4], y_test=y[:4]))
    assert (d.spec.modality, d.spec.kind, d.spec.input_shape, d.spec.output_shape) == \
        ("2d", "dense", (3, 6, 6), (1, 6, 6))


def test_npz_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4, 20))
    y = (rng.random((30, 5)) < 0.5).astype(np.int64)
    d = load(save(tmp_path / "h.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6]))
    s = d.spec
    assert (s.kind, s.n_out, s.loss, s.metric) == ("multilabel", 5, "bce", "1-auroc")
    assert d.y_train.dtype == np.float32 and set(np.unique(d.y_train)) <= {0.0, 1.0}


def test_npz_kind_override_and_given_validation_split(tmp_path):
    x, y = labelled(20, (1, 10), classes=2)
    xv, yv = labelled(5, (1, 10), classes=2, start=50)
    xt, yt = labelled(5, (1, 10), classes=2, start=100)
    name = save(tmp_path / "i.npz", x_train=x, y_train=y.astype(np.float64), x_val=xv, y_val=yv,
                x_test=xt, y_test=yt)
    with pytest.raises(UserError, match="cannot tell the task kind"):
        load(name)                                     # float (N,) labels are ambiguous
    d = load(name, kind="classification")
    assert d.spec.kind == "classification" and d.y_train.dtype == np.int64
    # the given validation split is used as is, nothing carved from train
    assert len(d.x_train) == 20 and ids(d.x_val) == set(range(50, 55))
    np.testing.assert_array_equal(d.y_val, yv)


# ---------------------------------------------------------------- errors

def good_arrays(n=20):
    x, y = labelled(n, (1, 10), classes=2)
    xt, yt = labelled(6, (1, 10), classes=2, start=100)
    return dict(x_train=x, y_train=y, x_test=xt, y_test=yt)


def test_npz_missing_file_and_unreadable_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load(f"npz:{tmp_path / 'nope.npz'}")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(UserError, match="could not read"):
        load(f"npz:{bad}")


def test_npz_missing_arrays_are_named(tmp_path):
    arrays = good_arrays()
    del arrays["y_test"], arrays["x_train"]
    with pytest.raises(UserError) as err:
        load(save(tmp_path / "m.npz", **arrays))
    assert "x_train" in str(err.value) and "y_test" in str(err.value)
    assert "x_val" in str(err.value)  # says what an xmodal npz holds
    arrays = good_arrays()
    with pytest.raises(UserError, match="both x_val and y_val"):
        load(save(tmp_path / "v.npz", **arrays, x_val=arrays["x_test"]))


@pytest.mark.parametrize("split", ["train", "test", "val"])
def test_npz_mismatched_lengths(tmp_path, split):
    arrays = good_arrays()
    if split == "val":
        arrays.update(x_val=arrays["x_test"], y_val=arrays["y_test"])
    arrays[f"y_{split}"] = arrays[f"y_{split}"][:-1]
    with pytest.raises(UserError, match=f"x_{split} has \\d+ rows but y_{split} has"):
        load(save(tmp_path / "l.npz", **arrays))


@pytest.mark.parametrize("where, value", [("x_train", np.nan), ("x_test", np.inf),
                                          ("x_train", -np.inf)])
def test_npz_non_finite_inputs(tmp_path, where, value):
    arrays = good_arrays()
    arrays[where] = arrays[where].copy()
    arrays[where][3, 0, 4] = value
    with pytest.raises(UserError, match="NaN or inf"):
        load(save(tmp_path / "n.npz", **arrays))


def test_npz_nan_in_a_sample_that_becomes_validation(tmp_path):
    arrays = good_arrays()
    name = save(tmp_path / "clean.npz", **arrays)
    victim = sorted(ids(load(name).x_val))[0]
    arrays["x_train"] = arrays["x_train"].copy()
    arrays["x_train"][victim, 0, 5] = np.nan
    with pytest.raises(UserError, match="val split: inputs contain NaN or inf"):
        load(save(tmp_path / "dirty.npz", **arrays))


def test_npz_non_finite_dense_targets(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 6, 6)), rng.normal(size=(20, 6, 6))
    y[2, 1, 1] = np.nan
    with pytest.raises(UserError, match="targets contain NaN"):
        load(save(tmp_path / "t.npz", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3]),
             val_fraction=0.1)


def test_npz_bad_labels(tmp_path):
    arrays = good_arrays()
    arrays["y_test"] = arrays["y_test"].copy()
    arrays["y_test"][0] = -1
    with pytest.raises(UserError, match="negative class labels"):
        load(save(tmp_path / "neg.npz", **arrays))
    arrays = good_arrays()
    arrays["y_train"] = arrays["y_train"] + 0.5
    with pytest.raises(UserError, match="non-integer"):
        load(save(tmp_path / "frac.npz", **arrays), kind="classification")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, (20, 4))   # not 0/1
    with pytest.raises(UserError, match="0/1 matrix"):
        load(save(tmp_path / "ml.npz", x_train=arrays["x_train"], y_train=y,
                  x_test=arrays["x_test"], y_test=y[:6]), kind="multilabel")
    with pytest.raises(UserError, match="must be numeric"):
        load(save(tmp_path / "str.npz", **{**good_arrays(), "x_train": np.array(["a"] * 20)}))


def _spec(n_out=3, kind="classification"):
    return TaskSpec("toy", "toy", "1d", kind, (1, 4), n_out)


@pytest.mark.parametrize("bad", [3, 7, -1])
def test_labels_out_of_range_of_the_task(bad):
    x = np.zeros((6, 1, 4), np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    yb = y.copy()
    yb[4] = bad
    validate(TaskData(_spec(), x, y, x, y, x, y))        # the good one passes
    for split in ("train", "val", "test"):
        arrays = {s: y for s in ("train", "val", "test")}
        arrays[split] = yb
        with pytest.raises(UserError, match=rf"{split} split: labels must lie in 0..2"):
            validate(TaskData(_spec(), x, arrays["train"], x, arrays["val"], x, arrays["test"]))


def test_wrong_input_shape_and_empty_split():
    x = np.zeros((6, 1, 4), np.float32)
    y = np.zeros(6, np.int64)
    with pytest.raises(UserError, match="inputs have shape"):
        validate(TaskData(_spec(), x, y, x, y, np.zeros((6, 1, 5), np.float32), y))
    with pytest.raises(UserError, match="empty"):
        validate(TaskData(_spec(), x[:0], y[:0], x, y, x, y))
    validate(TaskData(_spec(), x, y, x[:0], y[:0], x, y))   # no validation split is allowed


def test_unknown_task_suggests():
    with pytest.raises(UserError, match="unknown task 'digit'; did you mean 'digits'"):
        load("digit")


# ---------------------------------------------------------------- validation split, subsampling

@pytest.fixture
def own(tmp_path):
    x, y = labelled(50, (1, 12), classes=5)
    xt, yt = labelled(10, (1, 12), classes=5, start=1000)
    return save(tmp_path / "own.npz", x_train=x, y_train=y, x_test=xt, y_test=yt), xt, yt


def test_validation_is_carved_from_train_with_a_fixed_seed(own):
    name, xt, yt = own
    a, b = load(name), load(name)
    c = load(name, split_seed=1)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert ids(a.x_val) != ids(c.x_val)
    for d in (a, c):
        assert len(d.x_val) == 10 and len(d.x_train) == 40       # val_fraction 0.2
        assert not ids(d.x_val) & ids(d.x_train)                 # disjoint
        assert ids(d.x_val) | ids(d.x_train) == set(range(50))   # only from train
        assert ids(d.x_test) == set(range(1000, 1010))            # test untouched
        np.testing.assert_array_equal(d.x_test, xt)
        np.testing.assert_array_equal(d.y_test, yt)
        # labels follow their inputs
        np.testing.assert_array_equal(d.y_val, np.array(sorted(ids(d.x_val))) % 5)
        # stratified: every class keeps the same share in validation
        assert np.bincount(d.y_val, minlength=5).tolist() == [2] * 5
    assert len(load(name, val_fraction=0.5).x_val) == 25


def test_carving_needs_at_least_two_samples():
    x = np.zeros((1, 1, 4), np.float32)
    y = np.zeros(1, np.int64)
    with pytest.raises(UserError, match="too few"):
        carve_validation(TaskData(_spec(1), x, y, None, None, x, y), 0.2, 0)


def test_max_train_subsamples_train_only_and_is_seeded(own):
    name, _, _ = own
    full = load(name)
    a, b = load(name, max_train=12), load(name, max_train=12)
    assert len(a.x_train) == 12
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert ids(a.x_train) < ids(full.x_train)                    # a subset of the carved train
    np.testing.assert_array_equal(a.x_val, full.x_val)           # validation is unchanged
    np.testing.assert_array_equal(a.x_test, full.x_test)
    np.testing.assert_array_equal(a.y_train, np.array(sorted(ids(a.x_train))) % 5)
    assert len(load(name, max_train=1000).x_train) == 40         # larger than train: no-op
    t = load(name, max_test=4)
    assert len(t.x_test) == 4 and ids(t.x_test) < set(range(1000, 1010))
    assert len(t.x_val) == 4 and ids(t.x_val) < ids(full.x_val)


# ---------------------------------------------------------------- every listed task

def test_every_listed_task_loads_or_asks_for_its_data_folder(capsys):
    assert cli.main(["tasks", "--json"]) == 0
    listed = {t["name"]: t for t in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(OFFLINE) | DATA_DIR
    assert {s.name for s in list_specs()} == set(listed)
    for name in DATA_DIR:
        with pytest.raises(UserError, match="--data-dir"):
            load(name)
    for name, options in OFFLINE.items():
        d = load(name, max_train=24, max_test=8, options=options)
        s = d.spec
        assert s.kind == listed[name]["kind"] and s.loss == listed[name]["loss"]
        if name != "darcy":  # darcy's shape follows its resolution option
            assert s.input_shape == tuple(listed[name]["input_shape"]) == REGISTRY[name].spec.input_shape
        assert len(d.x_train) <= 24 and len(d.x_test) <= 8 and len(d.x_val) >= 1
        for split in ("train", "val", "test"):
            x, y = getattr(d, f"x_{split}"), getattr(d, f"y_{split}")
            assert x.shape[1:] == s.input_shape and x.dtype == np.float32
            assert np.isfinite(x).all() and len(x) == len(y)
            if s.kind == "classification":
                assert y.dtype == np.int64 and 0 <= y.min() and y.max() < s.n_out
            else:
                assert y.shape[1:] == s.output_shape
    assert load("basicmotions", max_train=8).spec.input_shape == (6, 100)
    dna = load("dna", max_train=8, max_test=8)
    assert np.all(dna.x_test.sum(axis=1) <= 1.0)     # one-hot over ACGT


def test_darcy_is_generated_at_the_requested_size_and_decodes(tmp_path):
    d = load("darcy", options={"resolution": 8, "n_train": 10, "n_test": 4})
    assert d.spec.input_shape == (3, 8, 8) and d.spec.output_shape == (1, 8, 8)
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (8, 2, 4)
    # targets are normalised with train statistics; decoded solutions are positive (f = 1 > 0)
    assert abs(float(d.y_train.mean())) < 1e-4
    u = d.decode_y(d.y_test)
    assert (u[:, :, 1:-1, 1:-1] > 0).all()
    assert len(list((tmp_path / "cache").rglob("*.npz"))) == 2   # train + test, cached
    with pytest.raises(UserError, match="unknown option 'resolutoin'; did you mean 'resolution'"):
        load("darcy", options={"resolutoin": 8})


def test_dna_heldout_test_comes_from_the_training_files_stratified():
    official = load_task(TaskConfig(name="dna"))
    held = load_task(TaskConfig(name="dna", options={"heldout_test": 600}, max_val=50))
    pool_y = np.concatenate([official.y_train, official.y_val])
    assert len(held.x_test) == 600     # stratified: the pool's class balance
    assert held.y_test.mean() == pytest.approx(pool_y.mean(), abs=1 / 600)
    assert len(held.x_val) == 50
    # disjoint from training and validation, and none of the 200 official test sequences
    key = lambda x: {a.tobytes() for a in x}  # noqa: E731
    assert not key(held.x_test) & (key(held.x_train) | key(held.x_val))
    pool = key(official.x_train) | key(official.x_val)
    assert key(held.x_test) <= pool and not key(held.x_test) & key(official.x_test)
    with pytest.raises(UserError, match="heldout_test"):
        load_task(TaskConfig(name="dna", options={"heldout_test": 10 ** 6}))
    with pytest.raises(UserError, match="unknown option 'test'"):
        load_task(TaskConfig(name="dna", options={"test": 5}))


@pytest.mark.parametrize("key", ["max_train", "max_test", "max_val"])
def test_subsample_sizes_below_one_are_refused(key):
    from xmodal.config import from_dict
    with pytest.raises(UserError, match=f"task.{key}' must be >= 1"):
        from_dict({"task": {"name": "dna", key: 0}})


@pytest.mark.parametrize("labels", [[0, 1, 5], [0, 1, 10 ** 9], [1, 2, 3]])
def test_npz_class_labels_with_gaps_are_refused(tmp_path, labels):
    x, _ = labelled(30, (2, 16))
    y = np.array([labels[i % 3] for i in range(30)])
    path = save(tmp_path / "a.npz", x_train=x, y_train=y, x_test=x[:6], y_test=y[:6])
    with pytest.raises(UserError, match=r"0\.\.K-1 without gaps \(3 classes, largest label"):
        load(path)
