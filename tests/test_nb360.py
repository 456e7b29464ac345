"""NAS-Bench-360 loaders on tiny files written in the published formats, and the presets."""

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from xmodal.data.nb360 import fields, images, series
from xmodal.config import load_config
from xmodal.config import TaskConfig
from xmodal.errors import UserError
from xmodal.data.registry import REGISTRY, load_task

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ["cifar100", "ninapro", "darcy", "satellite", "deepsea", "ecg"]


def load(name, folder, **kw):
    kw.setdefault("validation", "carve")   # the fixtures are tiny; the real files carve anyway
    return load_task(TaskConfig(name=name, data_dir=str(folder), **kw))


# ---------------------------------------------------------------- writers (published formats)

def write_cifar(folder: Path, classes: int, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    key = b"fine_labels" if classes == 100 else b"labels"
    files = {"train": ["train"], "test": ["test"]} if classes == 100 else \
        {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, names in files.items():
        n = (n_train if split == "train" else n_test) // len(names)
        for name in names:
            d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 key: rng.integers(0, classes, n).tolist(), b"batch_label": b"x"}
            with open(folder / name, "wb") as fh:
                pickle.dump(d, fh, protocol=2)


def write_ninapro(folder: Path, sizes=(30, 10, 12), shape=(52, 16)):
    rng = np.random.default_rng(1)
    for split, n in zip(("train", "val", "test"), sizes):
        np.save(folder / f"ninapro_{split}.npy", rng.normal(size=(n, *shape)).astype(np.float32))
        np.save(folder / f"label_{split}.npy", rng.integers(0, 18, n).astype(np.uint8))


def darcy_fields(n, s=21, seed=0):
    rng = np.random.default_rng(seed)
    coeff = np.where(rng.normal(size=(n, s, s)) > 0, 12.0, 3.0)
    sol = rng.uniform(0.0, 0.01, (n, s, s))
    return coeff, sol


def write_darcy_v5(folder: Path, n_train=12, n_test=6):
    for name, n, seed in ((fields.DARCY_FILES["train"], n_train, 0), (fields.DARCY_FILES["test"], n_test, 1)):
        coeff, sol = darcy_fields(n, seed=seed)
        scipy.io.savemat(folder / name, {"coeff": coeff, "sol": sol})


def write_darcy_v73(folder: Path, n_train=12, n_test=6):
    """HDF5 as MATLAB -v7.3 writes it: the axes are stored reversed."""
    for name, n, seed in ((fields.DARCY_FILES["train"], n_train, 0), (fields.DARCY_FILES["test"], n_test, 1)):
        coeff, sol = darcy_fields(n, seed=seed)
        with h5py.File(folder / name, "w") as f:
            f["coeff"] = coeff.transpose(2, 1, 0)
            f["sol"] = sol.transpose(2, 1, 0)


def write_satellite(folder: Path, n_train=96, n_test=24, cols=46, low=1):
    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("test", n_test)):
        d = {"data": rng.normal(size=(n, cols)), "label": np.arange(n) % 24 + low}
        np.save(folder / f"satellite_{split}.npy", d, allow_pickle=True)


def write_deepsea(folder: Path, sizes=(10, 4, 6)):
    rng = np.random.default_rng(3)
    arrays = {}
    for split, n in zip(("train", "val", "test"), sizes):
        arrays[f"x_{split}"] = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (n, 1000))]  # (n, 1000, 4)
        arrays[f"y_{split}"] = rng.integers(0, 2, (n, 36)).astype(bool if split == "val" else np.uint8)
    np.savez(folder / "deepsea_filtered.npz", **arrays)
    return arrays


def ecg_records(n=40, seed=4):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2500, 4500, n)
    lengths[0] = 700                                     # shorter than one window
    data = np.empty(n, dtype=object)
    for i, length in enumerate(lengths):
        data[i] = rng.normal(50.0, 10.0, length)
    labels = [("N", "A", "O", "~")[i % 4] for i in range(n)]
    return data, labels


def write_ecg(folder: Path, **kw):
    data, labels = ecg_records(**kw)
    with open(folder / "challenge2017.pkl", "wb") as fh:
        pickle.dump({"data": data, "label": labels}, fh)
    return data, labels


# ---------------------------------------------------------------- CIFAR

def test_cifar100_from_subfolder(tmp_path):
    write_cifar(tmp_path / "cifar-100-python", 100)
    data = load("cifar100", tmp_path)
    assert data.spec.input_shape == (3, 32, 32) and data.spec.n_out == 100
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.sizes() == {"train": 32, "val": 8, "test": 20}         # val carved from train
    assert data.augment is not None


def test_cifar_normalisation_uses_standard_statistics(tmp_path):
    write_cifar(tmp_path, 100)
    with open(tmp_path / "test", "rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"].reshape(-1, 3, 32, 32)
    data = load("cifar100", tmp_path)
    mean, std = images.CIFAR_STATS[100]
    np.testing.assert_allclose(data.x_test[:, 1], (raw[:, 1] / 255.0 - mean[1]) / std[1], atol=1e-5)


def test_cifar10_task_and_reader(tmp_path):
    write_cifar(tmp_path, 10, n_train=50, n_test=10)
    x, y = images.read_cifar10(tmp_path)
    assert x.shape == (50, 3, 32, 32) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert y.dtype == np.int64 and y.max() <= 9
    assert images.read_cifar10(tmp_path, "test")[0].shape == (10, 3, 32, 32)
    assert load("cifar10", tmp_path).spec.n_out == 10
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="data_batch_1"):
        images.read_cifar10(tmp_path / "empty")


def test_random_crop_flip_is_a_seeded_crop_or_flip():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) + 1
    torch.manual_seed(0)
    out = images.random_crop_flip(x, pad=2)
    torch.manual_seed(0)
    np.testing.assert_array_equal(out, images.random_crop_flip(x, pad=2))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        candidates = [c for i in range(5) for j in range(5)
                      for c in (padded[b, :, i:i + 8, j:j + 8], padded[b, :, i:i + 8, j:j + 8].flip(-1))]
        assert any(torch.equal(out[b], c) for c in candidates)


# ---------------------------------------------------------------- NinaPro

def test_ninapro_published_split_and_layout(tmp_path):
    write_ninapro(tmp_path)
    data = load("ninapro", tmp_path)
    assert data.sizes() == {"train": 30, "val": 10, "test": 12}
    assert data.x_train.shape[1:] == (1, 16, 52) and data.x_train.dtype == np.float32
    raw = np.load(tmp_path / "ninapro_val.npy")
    np.testing.assert_array_equal(data.x_val[3, 0], raw[3].T)
    np.testing.assert_array_equal(data.y_test, np.load(tmp_path / "label_test.npy"))
    assert data.y_train.dtype == np.int64


def test_ninapro_in_orca_subfolder(tmp_path):
    (tmp_path / "ninaPro").mkdir()
    write_ninapro(tmp_path / "ninaPro")
    assert load("ninapro", tmp_path).x_test.shape == (12, 1, 16, 52)


def test_ninapro_wrong_shape_names_the_file(tmp_path):
    write_ninapro(tmp_path, shape=(16, 52))
    with pytest.raises(UserError, match=r"ninapro_train\.npy.*\(N, 52, 16\)"):
        load("ninapro", tmp_path)


def test_ninapro_label_out_of_range(tmp_path):
    write_ninapro(tmp_path)
    np.save(tmp_path / "label_val.npy", np.full(10, 18))
    with pytest.raises(UserError, match=r"label_val\.npy.*0\.\.17"):
        load("ninapro", tmp_path)


# ---------------------------------------------------------------- Darcy Flow (.mat)

def test_darcy_nb360_matlab_v5(tmp_path):
    write_darcy_v5(tmp_path)
    data = load("darcy-nb360", tmp_path, options={"n_train": 10, "n_test": 4})
    assert data.spec.input_shape == (3, 5, 5) and data.spec.output_shape == (1, 5, 5)
    assert data.sizes() == {"train": 8, "val": 2, "test": 4}
    coeff, sol = darcy_fields(12, seed=0)
    train_sol = sol[:8, ::5, ::5]
    np.testing.assert_allclose(data.y_mean[0], train_sol.mean(0), rtol=1e-5)   # stats from train only
    np.testing.assert_allclose(data.decode_y(data.y_val)[:, 0], sol[8:10, ::5, ::5], rtol=1e-4, atol=1e-7)
    test_sol = darcy_fields(6, seed=1)[1][:4, ::5, ::5]
    np.testing.assert_allclose(data.decode_y(data.y_test)[:, 0], test_sol, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(data.x_train[:, 1, 0, :], np.tile(np.linspace(0, 1, 5), (8, 1)), atol=1e-6)
    np.testing.assert_allclose(data.x_train[:, 2, :, 0], np.tile(np.linspace(0, 1, 5), (8, 1)), atol=1e-6)


def test_darcy_nb360_hdf5_equals_v5(tmp_path):
    (tmp_path / "v5").mkdir()
    (tmp_path / "v73").mkdir()
    write_darcy_v5(tmp_path / "v5")
    write_darcy_v73(tmp_path / "v73")
    opts = {"n_train": 10, "n_test": 4}
    a, b = load("darcy-nb360", tmp_path / "v5", options=opts), load("darcy-nb360", tmp_path / "v73", options=opts)
    for key in ("x_train", "y_train", "x_val", "x_test", "y_test", "y_std"):
        np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-6)


def test_darcy_nb360_too_few_samples(tmp_path):
    write_darcy_v5(tmp_path)
    with pytest.raises(UserError, match=r"smooth1\.mat.*at least 1000"):
        load("darcy-nb360", tmp_path)


def test_darcy_nb360_wrong_field(tmp_path):
    write_darcy_v5(tmp_path)
    scipy.io.savemat(tmp_path / fields.DARCY_FILES["test"], {"coef": np.zeros((6, 21, 21))})
    with pytest.raises(UserError, match=r"smooth2\.mat.*'coeff'"):
        load("darcy-nb360", tmp_path, options={"n_train": 10, "n_test": 4})


# ---------------------------------------------------------------- Satellite

def test_satellite_labels_shifted_and_val_carved(tmp_path):
    write_satellite(tmp_path)
    data = load("satellite", tmp_path)
    assert data.x_train.shape[1:] == (1, 46)
    assert data.y_train.min() == 0 and max(data.y_train.max(), data.y_val.max()) == 23
    assert data.sizes() == {"train": 77, "val": 19, "test": 24}


def test_satellite_wrong_shape_and_labels(tmp_path):
    write_satellite(tmp_path, cols=45)
    with pytest.raises(UserError, match=r"satellite_train\.npy.*\(N, 46\)"):
        load("satellite", tmp_path)
    write_satellite(tmp_path, low=0)
    with pytest.raises(UserError, match=r"satellite_train\.npy.*1\.\.24"):
        load("satellite", tmp_path)


# ---------------------------------------------------------------- DeepSEA

def test_deepsea_layout_and_split(tmp_path):
    arrays = write_deepsea(tmp_path)
    data = load("deepsea", tmp_path)
    assert data.spec.kind == "multilabel" and data.spec.metric == "1-auroc"
    assert data.sizes() == {"train": 10, "val": 4, "test": 6}
    assert data.x_val.shape == (4, 4, 1000) and data.y_val.dtype == np.float32
    np.testing.assert_array_equal(data.x_test[2], arrays["x_test"][2].T)
    np.testing.assert_array_equal(data.y_train, arrays["y_train"])


def test_deepsea_missing_array(tmp_path):
    np.savez(tmp_path / "deepsea_filtered.npz", x_train=np.zeros((2, 1000, 4)))
    with pytest.raises(UserError, match=r"deepsea_filtered\.npz.*y_train"):
        load("deepsea", tmp_path)


# ---------------------------------------------------------------- ECG

def _window_sources(records):
    """Map a window's first 8 samples to the recording it was cut from."""
    index = {}
    for rid, r in enumerate(records):
        r = np.pad(r, (0, max(0, 1000 - len(r))))
        for j in range(len(r) - 1000 + 1):
            index[r[j:j + 8].tobytes()] = rid
    return index


def test_ecg_split_by_recording_windows_and_strides(tmp_path):
    data_raw, labels = write_ecg(tmp_path)
    data = load("ecg", tmp_path)
    assert data.spec.input_shape == (1, 1000) and data.spec.metric == "1-macro-f1"
    records, y = series.read_ecg(tmp_path / "challenge2017.pkl")
    assert abs(records[1].mean()) < 1e-5 and abs(records[1].std() - 1) < 1e-4   # z-scored
    index = _window_sources(records)
    owners = {s: {index[w[0, :8].tobytes()] for w in getattr(data, f"x_{s}")}
              for s in ("train", "val", "test")}
    assert not (owners["train"] & owners["val"]) and not (owners["train"] & owners["test"])
    assert not (owners["val"] & owners["test"])
    from sklearn.model_selection import train_test_split
    _, orca_test = train_test_split(np.arange(40), test_size=0.1, random_state=0)
    assert owners["test"] == set(orca_test.tolist())                  # ORCA's test recordings
    assert len(owners["val"]) == round(36 * 0.2)
    # test windows do not overlap: floor(L / 1000) per recording (one for a short one)
    expected = sum(max(1, len(records[i]) // 1000) for i in owners["test"])
    assert len(data.x_test) == expected
    # train strides depend on the class (N 500, A 83, O 250, ~ 25)
    train_ids = owners["train"]
    n_expected = sum((max(len(records[i]), 1000) - 1000) // series.ECG_TRAIN_STRIDE[y[i]] + 1
                     for i in train_ids)
    assert len(data.x_train) == n_expected
    for c in range(4):
        assert (data.y_train == c).any()


def test_ecg_bad_label(tmp_path):
    data, labels = ecg_records(n=8)
    labels[3] = "X"
    with open(tmp_path / "challenge2017.pkl", "wb") as fh:
        pickle.dump({"data": data, "label": labels}, fh)
    with pytest.raises(UserError, match=r"challenge2017\.pkl.*N, A, O, ~"):
        load("ecg", tmp_path)


# ---------------------------------------------------------------- finding files

MISSING = {"cifar100": "train", "cifar10": "data_batch_1", "ninapro": "ninapro_train.npy",
           "darcy-nb360": "piececonst_r421_N1024_smooth1.mat", "satellite": "satellite_train.npy",
           "deepsea": "deepsea_filtered.npz", "ecg": "challenge2017.pkl"}


@pytest.mark.parametrize("task", sorted(MISSING))
def test_empty_folder_names_the_missing_file(tmp_path, task):
    with pytest.raises(UserError) as err:
        load(task, tmp_path)
    msg = str(err.value)
    assert str(tmp_path / MISSING[task]) in msg
    assert "nas-bench-360.md" in msg and ("pde-xd" in msg or "toronto" in msg)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_satellite(tmp_path)
    monkeypatch.setenv("XMODAL_DATA_DIR", str(tmp_path))
    assert load_task(TaskConfig(name="satellite")).x_test.shape == (24, 1, 46)
    monkeypatch.delenv("XMODAL_DATA_DIR")
    with pytest.raises(UserError, match="XMODAL_DATA_DIR"):
        load_task(TaskConfig(name="satellite"))
    with pytest.raises(UserError, match="does not exist"):
        load(name="satellite", folder=tmp_path / "missing")


def test_unknown_option_rejected(tmp_path):
    write_satellite(tmp_path)
    with pytest.raises(UserError, match="unknown option"):
        load("satellite", tmp_path, options={"n_train": 3})


def test_registered_specs():
    shapes = {"cifar100": (3, 32, 32), "cifar10": (3, 32, 32), "ninapro": (1, 16, 52),
              "darcy-nb360": (3, 85, 85), "satellite": (1, 46), "deepsea": (4, 1000),
              "ecg": (1, 1000)}
    for name, shape in shapes.items():
        assert REGISTRY[name].spec.input_shape == shape
    assert REGISTRY["darcy-nb360"].spec.output_shape == (1, 85, 85)


# ---------------------------------------------------------------- presets

@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads(name):
    cfg = load_config(ROOT / "configs" / "nb360" / f"{name}.yaml")
    assert cfg.task.name in REGISTRY
    two_d = REGISTRY[cfg.task.name].spec.modality == "2d"
    assert cfg.body.name == ("microsoft/swin-base-patch4-window7-224-in22k" if two_d else "roberta-base")
    assert cfg.align.proxy == ("cifar10" if two_d else "text")
    assert cfg.align.epochs > 0 and cfg.train.warmup_epochs > 0
    # stage 2 as ORCA: task's optimiser type (Adam for NinaPro / DeepSEA), betas (0.9, 0.98),
    # 10x lr only up to 1e-3, x0.2 after embedder epochs 20, 40, 60, detached label term
    from xmodal.config.derived import align_optimizer
    assert align_optimizer(cfg) == ("adam" if name in ("ninapro", "deepsea") else cfg.train.optimizer)
    assert cfg.align.betas == [0.9, 0.98] and cfg.align.lr_rule == "orca"
    assert cfg.align.lr_milestones == [20, 40, 60] and cfg.align.lr_gamma == 0.2
    assert cfg.align.label_grad is False


def test_preset_task_specific_values():
    cfg = {n: load_config(ROOT / "configs" / "nb360" / f"{n}.yaml") for n in PRESETS}
    assert cfg["deepsea"].train.pos_weight == 4
    assert cfg["ecg"].embedder.seq_len == 64
    assert [(cfg[n].train.epochs, cfg[n].align.epochs) for n in PRESETS] == \
        [(60, 60), (60, 100), (100, 60), (60, 60), (13, 60), (15, 60)]


# ---------------------------------------------------------------- decoded values vs the files

PUBLISHED_STATS = {  # per-channel mean / std of the training images (torchvision / ORCA)
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    10: ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def _pickled(path):
    with open(path, "rb") as fh:
        return pickle.load(fh, encoding="bytes")


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_test_split_decodes_to_the_files_pixels_and_labels(classes, tmp_path):
    write_cifar(tmp_path, classes, n_train=50, n_test=10)
    raw = _pickled(tmp_path / ("test" if classes == 100 else "test_batch"))
    pixels = raw[b"data"].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0   # R, G, B planes
    labels = raw[b"fine_labels" if classes == 100 else b"labels"]
    data = load(f"cifar{classes}", tmp_path)
    mean, std = (np.array(v)[None, :, None, None] for v in PUBLISHED_STATS[classes])
    np.testing.assert_allclose(data.x_test, (pixels - mean) / std, atol=1e-5)
    np.testing.assert_array_equal(data.y_test, labels)
    if classes == 10:
        x, y = images.read_cifar10(tmp_path)
        first = _pickled(tmp_path / "data_batch_1")
        np.testing.assert_allclose(x[:10], first[b"data"].reshape(-1, 3, 32, 32) / 255.0,
                                   atol=1e-7)
        np.testing.assert_array_equal(y[:10], first[b"labels"])


def test_satellite_values_as_stored_and_labels_shifted(tmp_path):
    write_satellite(tmp_path)
    stored = np.load(tmp_path / "satellite_test.npy", allow_pickle=True).item()
    data = load("satellite", tmp_path)
    np.testing.assert_allclose(data.x_test[:, 0], stored["data"], rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, stored["label"] - 1)
    train = np.load(tmp_path / "satellite_train.npy", allow_pickle=True).item()
    rows = np.concatenate([data.x_train[:, 0], data.x_val[:, 0]])
    labels = np.concatenate([data.y_train, data.y_val])
    order = np.lexsort(rows.T[::-1])
    want = np.lexsort(train["data"].T[::-1])
    np.testing.assert_allclose(rows[order], train["data"][want], rtol=1e-6)   # a partition
    np.testing.assert_array_equal(labels[order], train["label"][want] - 1)
