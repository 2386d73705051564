"""robustness_book.data: offline loading from a mirror, checksum handling, error messages, splits.

Everything runs in temporary folders. torchvision's download URLs are pointed at
a file:// path that does not exist, so "the download failed" happens at once and
no test ever touches the network.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness_book import data
from robustness_book._io import md5_file
from robustness_book._torchvision import import_torchvision
from robustness_book.data import (
    DATASETS,
    ArrayDataset,
    CorruptDataError,
    CorruptDataWarning,
    DatasetNotFoundError,
    dataset_info,
    load_dataset,
    train_val_split,
)

SHARED = Path("/work/shared/data")
SHARED_MNIST = SHARED / "MNIST" / "raw"
needs_mnist_mirror = pytest.mark.skipif(
    not SHARED_MNIST.is_dir(), reason="offline MNIST mirror not present on this machine"
)
MNIST_FILES = [f for f, _ in import_torchvision().datasets.MNIST.resources]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No env settings leak in, the cache is clean, and downloads fail instantly."""
    tv = import_torchvision()
    for var in (data.ENV_ROOT, data.ENV_MIRROR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    nowhere = (tmp_path / "no-network").as_uri() + "/"
    monkeypatch.setattr(tv.datasets.MNIST, "mirrors", [nowhere])
    monkeypatch.setattr(tv.datasets.FashionMNIST, "mirrors", [nowhere])
    monkeypatch.setattr(tv.datasets.CIFAR10, "url", nowhere + "cifar-10-python.tar.gz")
    data.clear_cache()
    yield
    data.clear_cache()


def flip_byte(path: Path, offset: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- metadata


def test_dataset_info():
    assert DATASETS == ("mnist", "fashion_mnist", "cifar10")
    mnist = dataset_info("mnist")
    assert (mnist.shape, mnist.num_classes, mnist.mean, mnist.std) == ((1, 28, 28), 10, (0.1307,), (0.3081,))
    assert dataset_info("fashion_mnist").mean == (0.2860,) and dataset_info("fashion_mnist").std == (0.3530,)
    cifar = dataset_info("cifar10")
    assert cifar.shape == (3, 32, 32) and cifar.classes[0] == "airplane" and cifar.classes[-1] == "truck"
    assert cifar.mean == (0.4914, 0.4822, 0.4465) and cifar.std == (0.2023, 0.1994, 0.2010)
    for name in DATASETS:
        info = dataset_info(name)
        assert len(info.classes) == info.num_classes and len(info.mean) == len(info.std) == info.shape[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        mnist.num_classes = 3


def test_official_split_sizes():
    """The official sizes (LeCun et al.; Xiao et al.; Krizhevsky) as per-data-set facts."""
    sizes = {name: (dataset_info(name).n_train, dataset_info(name).n_test) for name in DATASETS}
    assert sizes == {"mnist": (60_000, 10_000), "fashion_mnist": (60_000, 10_000), "cifar10": (50_000, 10_000)}
    cifar = dataset_info("cifar10")
    assert (cifar.split_size("train"), cifar.split_size("test")) == (50_000, 10_000)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        cifar.split_size("val")


def test_unknown_name_and_split():
    for call in (lambda: dataset_info("imagenet"), lambda: load_dataset("imagenet")):
        with pytest.raises(ValueError, match="imagenet") as info:
            call()
        assert "mnist, fashion_mnist, cifar10" in str(info.value)
    with pytest.raises(ValueError, match="train, test"):
        load_dataset("mnist", "validation")


def test_resolve_root_and_mirror(tmp_path, monkeypatch):
    assert data.resolve_root() == tmp_path / "xdg-cache" / "robustness-book" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_root() == tmp_path / "home" / ".cache" / "robustness-book" / "data"
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path / "env-root"))
    assert data.resolve_root() == tmp_path / "env-root"
    assert data.resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_mirror() is None
    monkeypatch.setenv(data.ENV_MIRROR, str(tmp_path / "env-mirror"))
    assert data.resolve_mirror() == tmp_path / "env-mirror"
    assert data.resolve_mirror(tmp_path / "arg") == tmp_path / "arg"


# --------------------------------------------------------------------------- MNIST


@needs_mnist_mirror
def test_mnist_loads_offline_from_mirror(tmp_path):
    root = tmp_path / "root"
    train = load_dataset("mnist", "train", root=root, mirror=SHARED)
    test = load_dataset("mnist", "test", root=root, mirror=SHARED)
    info = dataset_info("mnist")
    for ds, n in ((train, info.n_train), (test, info.n_test)):  # the loaded splits match the facts
        assert len(ds) == n
        assert ds.x.dtype == torch.float32 and ds.x.shape == (n, 1, 28, 28) and ds.x.is_contiguous()
        assert ds.y.dtype == torch.int64 and ds.y.shape == (n,)
        assert 0.0 <= ds.x.min() and ds.x.max() == 1.0
        assert set(ds.y.unique().tolist()) == set(range(10))
        assert str(root / "MNIST") in ds.source
    assert "copied from offline mirror" in train.source
    assert test.y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first MNIST test labels
    # The archives in the root are exact copies; a second call is served from the cache.
    for f, md5 in import_torchvision().datasets.MNIST.resources:
        assert md5_file(root / "MNIST" / "raw" / f) == md5
    assert load_dataset("mnist", "test", root=root, mirror=SHARED) is test


@needs_mnist_mirror
def test_corrupt_mirror_file_is_reported_and_never_used(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "MNIST" / "raw").mkdir(parents=True)
    for f in MNIST_FILES:
        (mirror / "MNIST" / "raw" / f).symlink_to(SHARED_MNIST / f)
    bad = mirror / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    bad.unlink()
    shutil.copyfile(SHARED_MNIST / bad.name, bad)
    flip_byte(bad)
    root = tmp_path / "root"
    with pytest.warns(CorruptDataWarning, match="train-labels-idx1-ubyte.gz.*d53e105ee54ea40749a09fcbcd1e9432"):
        with pytest.raises(DatasetNotFoundError) as info:
            load_dataset("mnist", "train", root=root, mirror=mirror)
    message = str(info.value)
    assert "'mnist'" in message and str(root / "MNIST" / "raw") in message and str(mirror) in message
    assert "train-labels-idx1-ubyte.gz" in message and "internet" in message
    assert not (root / "MNIST" / "raw" / bad.name).exists()
    assert not (root / "MNIST" / "raw" / "train-labels-idx1-ubyte").exists()


@needs_mnist_mirror
def test_corrupt_file_in_root_is_moved_aside_and_replaced(tmp_path):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_FILES:
        shutil.copyfile(SHARED_MNIST / f, raw / f)
    bad = raw / "t10k-labels-idx1-ubyte.gz"
    flip_byte(bad)
    bad_md5 = md5_file(bad)
    # A stale extracted file from the bad archive must not be used either.
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    with pytest.warns(CorruptDataWarning, match=f"t10k-labels-idx1-ubyte.gz has md5 {bad_md5}, expected ec29112d"):
        test = load_dataset("mnist", "test", root=tmp_path / "root", mirror=SHARED)
    assert md5_file(bad) == "ec29112dd5afa0611ce80d1b7f02629c"
    assert md5_file(raw / "t10k-labels-idx1-ubyte.gz.corrupt") == bad_md5
    assert len(test) == 10_000 and test.y[:5].tolist() == [7, 2, 1, 0, 4]


def test_no_mirror_no_data_names_both_places(tmp_path, monkeypatch):
    root = tmp_path / "empty-root"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion_mnist", "test", root=root)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    assert "'fashion_mnist'" in message and str(root / "FashionMNIST" / "raw") in message
    assert "no mirror set (ROBUSTNESS_DATA_MIRROR)" in message
    assert "FashionMNIST/raw/*.gz" in message and "ROBUSTNESS_DATA " in message

    # The same through the environment variables.
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path / "env-root"))
    monkeypatch.setenv(data.ENV_MIRROR, str(tmp_path / "env-mirror"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist")
    assert str(tmp_path / "env-root" / "MNIST" / "raw") in str(info.value)
    assert str(tmp_path / "env-mirror" / "MNIST" / "raw") in str(info.value)


# --------------------------------------------------------------------------- CIFAR-10


def fake_cifar_mirror(tmp_path, monkeypatch, n_test=1000, n_train=50):
    """A mirror with small npz files, and the expected sha256s patched to theirs."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "mirror" / "cifar10"
    folder.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255
        y = rng.integers(0, 10, size=n, dtype=np.uint8)
        np.savez(folder / f"{split}.npz", x=x, y=y)
        digest = hashlib.sha256((folder / f"{split}.npz").read_bytes()).hexdigest()
        monkeypatch.setitem(data.CIFAR10_MIRROR_SHA256, split, digest)
        arrays[split] = (x, y)
    return tmp_path / "mirror", arrays


def test_cifar_npz_loads_from_mirror(tmp_path, monkeypatch):
    mirror, arrays = fake_cifar_mirror(tmp_path, monkeypatch)
    test = load_dataset("cifar10", "test", root=tmp_path / "root", mirror=mirror)
    x, y = arrays["test"]
    assert test.x.shape == (1000, 3, 32, 32) and test.x.dtype == torch.float32 and test.x.is_contiguous()
    assert test.y.dtype == torch.int64 and test.y.tolist() == y.tolist()
    assert test.x.min() == 0.0 and test.x.max() == 1.0
    assert torch.equal(test.x, torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255)
    assert "first 1,000 of 10,000 test images" in test.source and "offline mirror" in test.source
    train = load_dataset("cifar10", "train", root=tmp_path / "root", mirror=mirror)
    assert len(train) == 50 and "first 50 of 50,000 training images" in train.source
    with pytest.raises(ValueError, match="only 1,000 exist") as info:
        test.first(5000)
    assert "first 1,000 of 10,000" in str(info.value)
    assert len(test.first(10)) == 10


def test_mean_image_is_the_per_pixel_training_mean_and_is_cached(tmp_path, monkeypatch):
    mirror, arrays = fake_cifar_mirror(tmp_path, monkeypatch)
    mean = data.mean_image("cifar10", root=tmp_path / "root", mirror=mirror)
    x, _ = arrays["train"]
    expected = torch.from_numpy(x).permute(0, 3, 1, 2).double().div(255).mean(0).float()
    assert mean.shape == (3, 32, 32) and mean.dtype == torch.float32
    assert torch.allclose(mean, expected, atol=1e-7)
    assert data.mean_image("cifar10", "train", root=tmp_path / "root", mirror=mirror) is mean  # cached
    test_mean = data.mean_image("cifar10", "test", root=tmp_path / "root", mirror=mirror)
    assert not torch.equal(test_mean, mean)
    data.clear_cache()
    assert data.mean_image("cifar10", root=tmp_path / "root", mirror=mirror) is not mean
    with pytest.raises(ValueError, match="train, test"):
        data.mean_image("cifar10", "val", mirror=mirror)
    with pytest.raises(ValueError, match="allowed"):
        data.mean_image("svhn")


def test_threat_eps_and_normalized_units():
    assert data.threat_eps("mnist") == 0.3 and data.threat_eps("cifar10") == 8 / 255
    assert data.threat_eps("fashion_mnist") == 0.1
    step = data.normalized_to_pixels("cifar10", 0.01)
    assert step.shape == (3, 1, 1) and step.dtype == torch.float32
    assert torch.allclose(step.flatten(), 0.01 * torch.tensor(dataset_info("cifar10").std))


def test_cifar_npz_with_wrong_sha256_is_refused(tmp_path, monkeypatch):
    mirror, _ = fake_cifar_mirror(tmp_path, monkeypatch, n_test=10)
    monkeypatch.setitem(data.CIFAR10_MIRROR_SHA256, "test", "0" * 64)
    with pytest.raises(CorruptDataError) as info:
        load_dataset("cifar10", "test", root=tmp_path / "root", mirror=mirror)
    message = str(info.value)
    actual = hashlib.sha256((mirror / "cifar10" / "test.npz").read_bytes()).hexdigest()
    assert str(mirror / "cifar10" / "test.npz") in message and "0" * 64 in message and actual in message
    assert "will not be used" in message


def test_cifar_nothing_anywhere(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", "test", root=root)
    message = str(info.value)
    assert "'cifar10'" in message and str(root / "cifar-10-batches-py") in message
    assert "no mirror set (ROBUSTNESS_DATA_MIRROR)" in message and "cifar10/test.npz" in message


def test_cifar_torchvision_batches_preferred_and_checked(tmp_path, monkeypatch):
    """Fake torchvision batches (md5s patched to theirs) are used; a bad one sends us to the mirror."""
    cls = import_torchvision().datasets.CIFAR10
    folder = tmp_path / "root" / cls.base_folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lists = {}
    for key, names in (("train_list", [f"data_batch_{i}" for i in range(1, 6)]), ("test_list", ["test_batch"])):
        lists[key] = []
        for name in names:
            batch = {"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4]}
            (folder / name).write_bytes(pickle.dumps(batch))
            lists[key].append([name, md5_file(folder / name)])
        monkeypatch.setattr(cls, key, lists[key])
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": list(dataset_info("cifar10").classes)}))
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5_file(folder / "batches.meta")})

    test = load_dataset("cifar10", "test", root=tmp_path / "root")
    expected = pickle.loads((folder / "test_batch").read_bytes())["data"].reshape(4, 3, 32, 32)
    assert torch.equal(test.x, torch.from_numpy(expected).float() / 255) and test.x.is_contiguous()
    assert test.y.tolist() == [1, 2, 3, 4] and "torchvision CIFAR10" in test.source
    assert len(load_dataset("cifar10", "train", root=tmp_path / "root")) == 20

    data.clear_cache()
    flip_byte(folder / "data_batch_3")
    mirror, _ = fake_cifar_mirror(tmp_path, monkeypatch, n_test=7)
    with pytest.warns(CorruptDataWarning, match="data_batch_3"):
        test = load_dataset("cifar10", "test", root=tmp_path / "root", mirror=mirror)
    assert len(test) == 7 and "offline mirror" in test.source


# --------------------------------------------------------------------------- ArrayDataset and splits


def numbered(n=100):
    """Labels are the sample indices, so we can tell which samples a split holds."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2) / n
    return ArrayDataset("mnist", "train", x.contiguous(), torch.arange(n), "synthetic")


def test_first():
    ds = numbered()
    assert ds.first(3).y.tolist() == [0, 1, 2] and ds.first(100) is ds
    assert ds.first(3).x.data_ptr() == ds.x.data_ptr()  # a view, not a copy
    with pytest.raises(ValueError, match="only 100 exist") as info:
        ds.first(101)
    assert "synthetic" in str(info.value)


def test_train_val_split():
    ds = numbered()
    train, val = train_val_split(ds, 20, seed=0)
    again_train, again_val = train_val_split(ds, 20, seed=0)
    assert torch.equal(val.y, again_val.y) and torch.equal(train.y, again_train.y)
    assert len(train) == 80 and len(val) == 20
    assert set(train.y.tolist()).isdisjoint(val.y.tolist())
    assert sorted(train.y.tolist() + val.y.tolist()) == list(range(100))
    assert torch.equal(train.x[:, 0, 0, 0], ds.x[train.y, 0, 0, 0])  # x and y stay paired
    assert not torch.equal(train_val_split(ds, 20, seed=1)[1].y, val.y)
    for bad in (100, 101, -1):
        with pytest.raises(ValueError, match="n_val"):
            train_val_split(ds, bad)
