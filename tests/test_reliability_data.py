"""robustness_book.data under the reliability review's data cases (reviews/reliability-review.md, 2.x and 5.3).

Everything runs in temporary copies of the offline mirror; torchvision's download URLs point at a file:// path
that does not exist, so a download fails at once, as it does offline. A read-only folder is simulated by
refusing every write under it with EROFS (the tests may run as root, where chmod stops nothing).
"""
from __future__ import annotations

import builtins
import errno
import gzip
import hashlib
import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness_book import data
from robustness_book._io import md5_file, sha256_file
from robustness_book._torchvision import import_torchvision
from robustness_book.data import (CorruptDataError, CorruptDataWarning, DatasetNotFoundError, load_dataset,
                             write_adversary_set)

SHARED = Path("/work/shared/data")
SHARED_MNIST = SHARED / "MNIST" / "raw"
needs_mnist_mirror = pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="offline MNIST mirror not present")
MNIST_MD5 = dict(import_torchvision().datasets.MNIST.resources)
TEST_IMAGES = "t10k-images-idx3-ubyte"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """No env settings leak in, the cache is clean, and downloads fail instantly."""
    tv = import_torchvision()
    for var in (data.ENV_ROOT, data.ENV_MIRROR, data.ENV_ADVERSARIES):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    nowhere = (tmp_path / "no-network").as_uri() + "/"
    monkeypatch.setattr(tv.datasets.MNIST, "mirrors", [nowhere])
    monkeypatch.setattr(tv.datasets.CIFAR10, "url", nowhere + "cifar-10-python.tar.gz")
    data.clear_cache()
    yield
    data.clear_cache()


@pytest.fixture(scope="module")
def good_root(tmp_path_factory):
    """A data root as a finished load leaves it: the four verified archives and their extracted files."""
    if not SHARED_MNIST.is_dir():
        pytest.skip("offline MNIST mirror not present")
    root = tmp_path_factory.mktemp("good-root")
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in MNIST_MD5:
        shutil.copyfile(SHARED_MNIST / f, raw / f)
        with gzip.open(raw / f, "rb") as src:
            (raw / f[:-3]).write_bytes(src.read())
    return root


@pytest.fixture()
def root(good_root, tmp_path):
    """A private copy of ``good_root``."""
    return Path(shutil.copytree(good_root, tmp_path / "root"))


@pytest.fixture()
def read_only(monkeypatch):
    """``read_only(folder)`` makes every create, write, rename or delete under ``folder`` fail with EROFS, as
    on a read-only mount (reading still works)."""
    folders: list[Path] = []

    def under(path) -> bool:
        if isinstance(path, int):
            return False
        p = Path(os.fsdecode(path)).absolute()
        return any(p == f or f in p.parents for f in folders)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))

    def guard(real):
        def call(*args, **kwargs):
            for arg in args[:2]:  # the path, or source and destination
                if under(arg):
                    refuse(arg)
            return real(*args, **kwargs)
        return call

    for name in ("mkdir", "rename", "replace", "unlink", "remove", "rmdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    real_os_open, real_open = os.open, builtins.open

    def os_open(path, flags, *args, **kwargs):
        if flags & writes and under(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def open_(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(io, "open", open_)
    return lambda folder: folders.append(Path(folder).absolute())


def real_test_images() -> torch.Tensor:
    """The MNIST test images straight from the mirror's archive, as load_dataset returns them."""
    raw = gzip.decompress((SHARED_MNIST / f"{TEST_IMAGES}.gz").read_bytes())
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    return torch.from_numpy(pixels.copy()).float() / 255


def flip_pixel(path: Path, image: int = 5, pixel: int = 400) -> None:
    """XOR one pixel byte (after the 16-byte idx header) of an extracted images file."""
    raw = bytearray(path.read_bytes())
    raw[16 + image * 28 * 28 + pixel] ^= 0xFF
    path.write_bytes(bytes(raw))


def flip_byte(path: Path, offset: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- BUG 3 (case 2.6): extracted files


def test_a_flipped_byte_in_an_extracted_file_is_reported_set_aside_and_extracted_again(root):
    extracted = root / "MNIST" / "raw" / TEST_IMAGES
    flip_pixel(extracted)
    bad = sha256_file(extracted)
    good = hashlib.sha256(gzip.decompress((SHARED_MNIST / f"{TEST_IMAGES}.gz").read_bytes())).hexdigest()
    with pytest.warns(CorruptDataWarning, match=f"{TEST_IMAGES} has sha256 {bad}, expected {good}"):
        test = load_dataset("mnist", "test", root=root)
    assert torch.equal(test.x, real_test_images())  # the load succeeds with the real data
    assert sha256_file(extracted) == good  # extracted again from the verified archive
    assert sha256_file(extracted.with_name(extracted.name + ".corrupt")) == bad  # kept for inspection
    assert not [p for p in extracted.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_a_truncated_extracted_file_is_extracted_again(root):
    """Case 2.7 needed a manual step; the same check now repairs it."""
    extracted = root / "MNIST" / "raw" / TEST_IMAGES
    extracted.write_bytes(extracted.read_bytes()[:4_000_000])
    with pytest.warns(CorruptDataWarning, match=TEST_IMAGES):
        test = load_dataset("mnist", "test", root=root)
    assert torch.equal(test.x, real_test_images())


def test_a_read_only_root_with_verified_data_still_loads_without_a_word(root, read_only):
    """Case 2.10 (worked before; the new check of the extracted files must not write anything)."""
    read_only(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptDataWarning)
        test = load_dataset("mnist", "test", root=root)
    assert torch.equal(test.x, real_test_images())


def test_a_flipped_extracted_file_in_a_read_only_root_is_refused_by_name(root, read_only):
    extracted = root / "MNIST" / "raw" / TEST_IMAGES
    flip_pixel(extracted)
    bad = sha256_file(extracted)
    read_only(root)
    with pytest.raises(CorruptDataError) as info:
        load_dataset("mnist", "test", root=root)
    message = str(info.value)
    assert str(extracted) in message and f"sha256 {bad}" in message and "not writable" in message
    assert data.ENV_ROOT in message


# --------------------------------------------------------------------------- cases 2.1 / 2.2: corrupt mirror file


@needs_mnist_mirror
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_mirror_archive_is_named_in_the_final_error(tmp_path, monkeypatch, damage):
    mirror = tmp_path / "mirror"
    shutil.copytree(SHARED_MNIST, mirror / "MNIST" / "raw")
    bad = mirror / "MNIST" / "raw" / f"{TEST_IMAGES}.gz"
    os.chmod(bad, 0o644)
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:800_000])
    else:
        flip_byte(bad)
    bad_md5, good_md5 = md5_file(bad), MNIST_MD5[bad.name]
    monkeypatch.setenv(data.ENV_MIRROR, str(mirror))  # as in the review: the variable is set
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path / "data"))
    with pytest.warns(CorruptDataWarning), pytest.raises(DatasetNotFoundError) as info:
        load_dataset("mnist", "test")
    message = str(info.value)
    # the error itself (a warning in a notebook kernel is lost) names the file and both md5s, and the fix
    assert str(bad) in message and bad_md5 in message and good_md5 in message
    assert "corrupted" in message and "replace" in message and "good copy" in message
    assert f"set {data.ENV_MIRROR}" not in message  # it is set already, to a folder with that file


# --------------------------------------------------------------------------- case 2.8: mirror folder missing


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_mirror_variable_naming_a_missing_folder_is_called_out(tmp_path, monkeypatch, name):
    missing = tmp_path / "nonexistent"
    monkeypatch.setenv(data.ENV_MIRROR, str(missing))
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path / "data"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, "test")
    assert f"{data.ENV_MIRROR}={missing} does not exist (typo?)" in str(info.value)


# --------------------------------------------------------------------------- case 2.9: read-only empty root


@needs_mnist_mirror
@pytest.mark.parametrize("with_mirror", [True, False])
def test_a_read_only_empty_root_says_it_must_be_writable(tmp_path, monkeypatch, read_only, with_mirror):
    ro_empty = tmp_path / "ro_empty"
    ro_empty.mkdir()
    read_only(ro_empty)
    monkeypatch.setenv(data.ENV_ROOT, str(ro_empty))
    if with_mirror:
        monkeypatch.setenv(data.ENV_MIRROR, str(SHARED))
    with pytest.raises(DatasetNotFoundError) as info:  # an OSError, as the bare error before
        load_dataset("mnist", "test")
    message = str(info.value)
    assert f"data folder {ro_empty} is not writable" in message
    assert "MNIST needs a writable data folder to extract into" in message
    assert f"set {data.ENV_ROOT} to a writable folder" in message


# --------------------------------------------------------------------------- case 2.11: corrupt archive, read-only


def test_a_corrupt_archive_in_a_read_only_root_reports_the_md5_mismatch(root, monkeypatch, read_only):
    gz = root / "MNIST" / "raw" / f"{TEST_IMAGES}.gz"
    flip_byte(gz)
    bad_md5 = md5_file(gz)
    read_only(root)
    monkeypatch.setenv(data.ENV_MIRROR, str(SHARED))
    with pytest.raises(CorruptDataError) as info:
        load_dataset("mnist", "test", root=root)
    message = str(info.value)
    assert str(gz) in message and f"md5 {bad_md5}, expected {MNIST_MD5[gz.name]}" in message
    assert f"{gz.parent} is not writable" in message and "Read-only file system" in message
    assert md5_file(gz) == bad_md5  # nothing was changed


# --------------------------------------------------------------------------- case 5.3: unknown adversary set


def test_an_unknown_adversary_set_names_the_chapter_the_hash_suffix_and_the_sets_there(tmp_path, monkeypatch):
    folder = tmp_path / "adv"
    monkeypatch.setenv(data.ENV_ADVERSARIES, str(folder))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("adversary:nosuch", "test")
    message = str(info.value)
    assert "python -m robustness_book run transferable_adversaries --profile" in message
    assert "--<hash>" in message and "no adversary sets" in message and str(folder) in message

    x, y = torch.rand(3, 1, 4, 4), torch.arange(3)
    for name in ("transferable-mnist-smoke", "transferable-mnist-smoke--0123456789"):
        write_adversary_set(name, x, y, {"seed": 0})
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("adversary:transferable-mnist-laptop", "test")
    message = str(info.value)
    assert "transferable-mnist-smoke, transferable-mnist-smoke--0123456789" in message
    assert "no adversary sets" not in message
