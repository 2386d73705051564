"""Adversary sets in robustness_book.data: round trip, checksum, stale recipe, missing set, atomic writes (in tmp folders)."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from robustness_book import data
from robustness_book.data import (CorruptDataError, DatasetNotFoundError, StaleAdversarySetError, adversary_dir,
                             load_adversary_set, load_dataset, write_adversary_set)

RECIPE = {"attack": "mi_fgsm", "eps": 0.3, "steps": 10, "surrogates": ["lenet-seed1", "lenet-seed2"], "seed": 0}


@pytest.fixture(autouse=True)
def folders(tmp_path, monkeypatch):
    """The adversary folder is tmp_path/adv; no data root or cache of the user leaks in."""
    monkeypatch.setenv(data.ENV_ADVERSARIES, str(tmp_path / "adv"))
    monkeypatch.delenv(data.ENV_ROOT, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(12, 1, 6, 6, generator=g), torch.randint(0, 4, (12,), generator=g)


def flip_byte(path, offset=-10):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_adversary_dir_follows_the_env_var_then_the_data_root(folders, monkeypatch):
    assert adversary_dir() == folders / "adv"
    assert adversary_dir(folders / "elsewhere") == folders / "elsewhere"  # the argument wins
    monkeypatch.delenv(data.ENV_ADVERSARIES)
    monkeypatch.setenv(data.ENV_ROOT, str(folders / "data"))
    assert adversary_dir() == folders / "data" / "adversaries"
    monkeypatch.delenv(data.ENV_ROOT)
    assert adversary_dir() == folders / "xdg-cache" / "robustness-book" / "data" / "adversaries"


def test_round_trip_by_name_and_through_load_dataset(folders, batch):
    x, y = batch
    path = write_adversary_set("mnist-mi", x, y, RECIPE)
    assert path == folders / "adv" / "mnist-mi.pt"
    assert sorted(p.name for p in path.parent.iterdir()) == ["mnist-mi.json", "mnist-mi.pt"]  # no temp files left
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and meta["recipe"] == RECIPE
    # the same recipe, with a tuple where JSON has a list, is the same recipe
    same = {**RECIPE, "surrogates": tuple(RECIPE["surrogates"])}
    for ds in (load_adversary_set("mnist-mi", recipe=same), load_dataset("adversary:mnist-mi", "test")):
        assert torch.equal(ds.x, x) and torch.equal(ds.y, y)
        assert (ds.name, ds.split, len(ds)) == ("adversary:mnist-mi", "test", 12)
        assert ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64


def test_load_dataset_with_root_reads_its_adversaries_folder(folders, batch):
    write_adversary_set("s", *batch, RECIPE, root=folders / "data" / "adversaries")
    assert torch.equal(load_dataset("adversary:s", "test", root=folders / "data").x, batch[0])
    with pytest.raises(DatasetNotFoundError):
        load_dataset("adversary:s", "test")  # not in $ROBUSTNESS_ADVERSARIES


def test_a_flipped_byte_is_refused_by_checksum(batch):
    path = write_adversary_set("s", *batch, RECIPE)
    flip_byte(path)
    with pytest.raises(CorruptDataError, match="sha256") as err:
        load_adversary_set("s", recipe=RECIPE)
    assert not isinstance(err.value, StaleAdversarySetError)
    assert str(path) in str(err.value) and "rerunning the chapter" in str(err.value)


def test_a_stale_recipe_is_refused(batch):
    path = write_adversary_set("s", *batch, RECIPE)
    with pytest.raises(StaleAdversarySetError, match="eps: stored 0.3, asked 0.1") as err:
        load_adversary_set("s", recipe={**RECIPE, "eps": 0.1})
    assert isinstance(err.value, CorruptDataError)
    assert str(path) in str(err.value) and "Delete" in str(err.value)
    assert len(load_adversary_set("s")) == 12  # without a recipe to insist on, the set loads


def test_a_missing_set_is_not_found(folders):
    with pytest.raises(DatasetNotFoundError, match="ROBUSTNESS_ADVERSARIES") as err:
        load_dataset("adversary:nothing", "test")
    assert isinstance(err.value, FileNotFoundError) and str(folders / "adv" / "nothing.pt") in str(err.value)


def test_a_missing_sidecar_or_unreadable_file_is_corrupt(batch):
    path = write_adversary_set("s", *batch, RECIPE)
    sidecar = path.with_suffix(".json")
    meta = sidecar.read_text()
    sidecar.unlink()
    with pytest.raises(CorruptDataError, match="sidecar"):
        load_adversary_set("s")
    # garbage whose checksum the sidecar vouches for: the checksum passes, loading fails cleanly
    path.write_bytes(b"not a torch file")
    sidecar.write_text(json.dumps({**json.loads(meta), "sha256": hashlib.sha256(b"not a torch file").hexdigest()}))
    with pytest.raises(CorruptDataError, match="unreadable"):
        load_adversary_set("s")


def test_a_failed_write_leaves_the_old_set(batch, monkeypatch):
    x, y = batch
    path = write_adversary_set("s", x, y, RECIPE)

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half")  # a partial file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        write_adversary_set("s", 1 - x, y, {**RECIPE, "eps": 0.1})
    monkeypatch.undo()
    monkeypatch.setenv(data.ENV_ADVERSARIES, str(path.parent))
    assert sorted(p.name for p in path.parent.iterdir()) == ["s.json", "s.pt"]
    assert torch.equal(load_adversary_set("s", recipe=RECIPE).x, x)


@pytest.mark.parametrize("change, name", [
    (lambda x, y, r: (x.double(), y, r), "x must be a float32"),
    (lambda x, y, r: (x[0], y, r), "x must be a float32"),
    (lambda x, y, r: (x, y[:5], r), "y must be an int64"),
    (lambda x, y, r: (x, y.int(), r), "y must be an int64"),
    (lambda x, y, r: (x + 1, y, r), r"\[0, 1\]"),
    (lambda x, y, r: (x * float("nan"), y, r), r"\[0, 1\]"),
    (lambda x, y, r: (x, y, {"eps": torch.tensor(0.3)}), "recipe"),
    (lambda x, y, r: (x, y, [("eps", 0.3)]), "recipe"),
])
def test_bad_sets_are_refused_before_writing(batch, folders, change, name):
    with pytest.raises(ValueError, match=name):
        write_adversary_set("s", *change(*batch, RECIPE))
    assert not (folders / "adv").exists()


@pytest.mark.parametrize("bad", ["../escape", ".hidden", "a/b", ""])
def test_bad_names_are_refused(bad, batch):
    with pytest.raises(ValueError, match="name"):
        write_adversary_set(bad, *batch, RECIPE)
    with pytest.raises(ValueError, match="name"):
        load_adversary_set(bad)


def test_a_training_subset_set_loads_only_as_the_split_it_was_made_from(folders, batch):
    x, y = batch
    path = write_adversary_set("t", x, y, RECIPE, split="train")
    ds = load_dataset("adversary:t", "train")
    assert (ds.split, len(ds)) == ("train", 12) and torch.equal(ds.x, x)
    with pytest.raises(ValueError, match="split='train'"):
        load_dataset("adversary:t", "test")
    with pytest.raises(ValueError, match="split='val'"):
        write_adversary_set("v", x, y, RECIPE, split="val")
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["split"]  # a sidecar from before splits were stored: a test set
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert load_adversary_set("t").split == "test"


def test_load_dataset_names_adversary_sets_in_its_errors(batch):
    write_adversary_set("s", *batch, RECIPE)
    with pytest.raises(ValueError, match="split='test'"):
        load_dataset("adversary:s")  # the default split is "train"
    with pytest.raises(ValueError, match="adversary:<name>"):
        load_dataset("imagenet")
