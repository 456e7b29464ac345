"""`xmodal nb360 fixtures DIR`: synthetic files that the real loaders read at full input size,
with every class present, and the CLI's refusal to write over a user's folder."""

import numpy as np
import pytest

from xmodal.cli import main
from xmodal.config import TaskConfig
from xmodal.data.nb360.fixtures import write_fixtures
from xmodal.data.registry import REGISTRY, load_task

CLASSES = {"cifar100": 100, "cifar10": 10, "ninapro": 18, "satellite": 24, "ecg": 4}
OPTIONS: dict = {}   # darcy-nb360 takes its counts from the fixtures marker file


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("nb360")
    assert main(["nb360", "fixtures", str(folder / "data")]) == 0
    return folder / "data"


@pytest.mark.parametrize("task", sorted(CLASSES) + ["darcy-nb360", "deepsea"])
def test_every_task_loads_at_its_published_shape(fixtures, task):
    data = load_task(TaskConfig(name=task, data_dir=str(fixtures),
                                options=OPTIONS.get(task, {})))
    spec = REGISTRY[task].spec
    for x in (data.x_train, data.x_test):
        assert x.shape[1:] == spec.input_shape and np.isfinite(x).all()
    if task in CLASSES:
        assert set(np.unique(data.y_train)) == set(range(CLASSES[task]))
        assert data.y_test.max() < CLASSES[task]
    elif task == "deepsea":
        assert data.y_train.shape[1:] == (36,) and set(np.unique(data.y_test)) == {0, 1}
        assert (data.y_test.min(axis=0) == 0).all() and (data.y_test.max(axis=0) == 1).all()
    else:
        assert data.y_test.shape[1:] == spec.output_shape


def test_proxy_files_read_as_the_proxies_read_them(fixtures):
    from xmodal.data.nb360.images import read_cifar10
    from xmodal.data.proxies.images import read_mnist
    from xmodal.data.proxies.text import _orca_text_files
    x, y = read_mnist(fixtures)
    assert x.shape == (100, 1, 28, 28) and set(y.tolist()) == set(range(10))
    x, y = read_cifar10(fixtures)
    assert x.shape == (100, 3, 32, 32) and set(y.tolist()) == set(range(10))
    xs, ys = _orca_text_files(str(fixtures))
    assert xs.name == "text_xs_32.npy"
    assert np.load(xs).shape == (64, 32, 768) and np.load(ys).shape == (64,)


def test_fixtures_are_seeded(tmp_path):
    a = write_fixtures(tmp_path / "a", seed=3)
    b = write_fixtures(tmp_path / "b", seed=3)
    c = write_fixtures(tmp_path / "c", seed=4)
    pa, pb, pc = (d["satellite"][0] for d in (a, b, c))
    assert pa.read_bytes() == pb.read_bytes() != pc.read_bytes()


def test_a_folder_that_holds_files_is_refused(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["nb360", "fixtures", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_darcy_preset_counts_are_capped_at_what_the_fixtures_hold(fixtures):
    """The nb360/darcy preset asks for 1000 / 100 fields; the fixtures hold 10 / 5."""
    data = load_task(TaskConfig(name="darcy-nb360", data_dir=str(fixtures),
                                options={"n_train": 1000, "n_test": 100}))
    assert len(data.x_train) + len(data.x_val) == 10 and len(data.x_test) == 5
