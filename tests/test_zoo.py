"""The model zoo: one recipe per name and profile shared by the chapters, the listing, and the accuracy index.

Nothing here trains a real model: the cache tests swap the zoo's registry for one tiny synthetic recipe (a
TinyNet on blobs) and point ``ROBUSTNESS_CHECKPOINTS`` at a temporary folder.
"""
import json

import pytest
import torch

import robustness_book.data
import robustness_book.models
import robustness_book.train
from conftest import TINY, TinyNet, make_blobs
from robustness_book import _io, zoo
from robustness_book.chapters import baselines, jumprelu
from robustness_book.cli import main
from robustness_book.config import resolve
from robustness_book.data import ArrayDataset, DATASETS
from robustness_book.train import TrainConfig, official_milestones, recipe_key

# --------------------------------------------------------------------------- the recipes


@pytest.mark.parametrize("profile", zoo.PROFILES)
@pytest.mark.parametrize("dataset", DATASETS)
def test_both_chapters_ask_for_the_same_recipe(profile, dataset):
    """For the same (architecture, data set, profile) chapter 1 and JumpReLU's baseline ask for one recipe, the
    zoo's, with one cache key (so a model trained by one chapter is loaded by the other)."""
    shared = zoo.for_dataset(dataset, profile)
    ours = baselines.train_recipe(resolve(baselines.SPEC, profile, dataset=dataset))
    theirs = jumprelu.train_arguments(resolve(jumprelu.SPEC, profile, datasets=[dataset]), dataset)
    assert ours == theirs == shared.kwargs()
    assert zoo.find(**ours) is zoo.find(**theirs) is shared
    full = {"model": shared.model, "dataset": shared.dataset, "train_size": ours["train_size"],
            "train": ours["config"].key(), "loss": {"name": "cross_entropy"}, "n_train": ours["train_size"],
            "init": None, "epoch_callback": None}
    assert recipe_key(full) == shared.key()


@pytest.mark.parametrize("profile", zoo.PROFILES)
def test_the_zoos_key_is_trains_key_for_the_same_arguments(profile, tmp_path):
    """The zoo re-types no part of the cache key: for every recipe its whole recipe, key and file are train's for
    the same :func:`robustness_book.train.trained_model` arguments (no data is loaded to say so)."""
    for name in zoo.names():
        r = zoo.recipe(name, profile)
        full = robustness_book.train.trained_model_recipe(**r.kwargs())
        assert r.cache_recipe() == full and r.key() == recipe_key(full)
        path = robustness_book.train.checkpoint_path(full, tmp_path)
        assert r.path(tmp_path) == path == tmp_path / f"{r.model}-{r.key()}.pt"


@pytest.mark.parametrize("profile", zoo.PROFILES)
def test_the_chapters_profile_values_are_the_zoos(profile):
    for d in DATASETS:
        r = zoo.for_dataset(d, profile)
        b = resolve(baselines.SPEC, profile, dataset=d)
        assert (b.model, b.train_size, b.epochs, b.lr) == (r.model, r.train_size, r.config.epochs, r.config.lr)
        j = resolve(jumprelu.SPEC, profile, datasets=[d])
        assert jumprelu.ARCH[d] == r.model
        assert j.train_size[d] - j.n_val[d] == r.train_size  # validation images come after the training ones
        assert (j.epochs[d], j.lr[d], j.augment[d]) == (r.config.epochs, r.config.lr, r.config.augment)


def test_the_recipes_per_profile():
    for name in zoo.names():
        paper = zoo.recipe(name, "paper")
        assert paper.source == "paper" and zoo.recipe(name, "laptop").source == "book"
        # the official recipe: 90 epochs, SGD momentum 0.9, lr 0.02 × 0.2 at 30/60/80, weight decay 5e-4, batch 128
        c = paper.config
        assert (c.epochs, c.lr, c.momentum, c.milestones, c.gamma, c.weight_decay, c.batch_size) == (
            90, 0.02, 0.9, (30, 60, 80), 0.2, 5e-4, 128)
        assert c.augment == (paper.dataset == "cifar10")
        for profile in zoo.PROFILES:
            r = zoo.recipe(name, profile)
            assert r.loss is robustness_book.train.cross_entropy and r.name == name and r.profile == profile
            assert r.description and r.model in r.description
    assert zoo.recipe("alex_like-cifar10", "laptop").config == zoo.CIFAR10_LAPTOP
    assert zoo.recipe("alex_like-cifar10", "laptop").train_size == zoo.CIFAR10_LAPTOP_TRAIN_SIZE
    assert zoo.recipe("lenet_like-mnist", "laptop").config.epochs == 6
    assert set(zoo.names()) >= {"lenet_like-mnist", "lenet_like-fashion_mnist", "alex_like-cifar10"}


def test_unknown_names_fail_with_the_list():
    with pytest.raises(ValueError, match="unknown model 'vgg-mnist'; the zoo has: lenet_like-mnist, "
                                         "lenet_like-fashion_mnist, alex_like-cifar10"):
        zoo.recipe("vgg-mnist", "laptop")
    with pytest.raises(ValueError, match="unknown profile 'huge'.*smoke, laptop, paper"):
        zoo.recipe("lenet_like-mnist", "huge")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        zoo.get("nope", "smoke")


def test_an_override_is_the_chapters_own_recipe_and_changes_only_what_it_names():
    base = zoo.for_dataset("mnist", "laptop")
    cfg = resolve(baselines.SPEC, "laptop", epochs=12)
    mine = baselines.train_recipe(cfg)
    assert zoo.find(**mine) is None
    assert mine["config"].epochs == 12 and mine["config"].milestones == official_milestones(12)
    assert mine["config"].lr == base.config.lr and mine["train_size"] == base.train_size
    assert baselines.train_recipe(cfg, seed=7)["config"].seed == 7
    assert zoo.find(**baselines.train_recipe(resolve(baselines.SPEC, "laptop"), seed=1)) is None  # transfer source
    # a step schedule that is not the official one is rescaled
    custom = zoo.Recipe("x", "laptop", "lenet_like", "mnist", 10, TrainConfig(epochs=10, milestones=(5,)), "book",
                        "x")
    assert zoo.variant(custom, epochs=20)["config"].milestones == (10,)
    assert zoo.variant(custom)["config"] is custom.config


def test_chapters_take_the_zoo_model_unless_a_reader_changes_the_recipe(monkeypatch):
    got, trained = [], []
    monkeypatch.setattr(zoo, "get", lambda name, profile, device=None: (got.append((name, profile)) or "net", {}))
    monkeypatch.setattr(zoo, "trained_model", lambda *a, **k: (trained.append(k) or "own", {}))
    monkeypatch.setattr(robustness_book.train, "trained_model", lambda *a, **k: (trained.append(k) or "own", {}))
    assert baselines.train_model(resolve(baselines.SPEC, "laptop"))[0] == "net"
    cfg = resolve(jumprelu.SPEC, "laptop")
    assert jumprelu.train_baseline(cfg, "mnist")[0] == "net" and jumprelu.train_baseline(cfg, "cifar10")[0] == "net"
    assert got == [("lenet_like-mnist", "laptop"), ("lenet_like-mnist", "laptop"), ("alex_like-cifar10", "laptop")]
    assert not trained
    assert baselines.train_model(resolve(baselines.SPEC, "laptop", lr=0.05))[0] == "own"
    assert jumprelu.train_baseline(resolve(jumprelu.SPEC, "laptop", epochs=2), "mnist")[0] == "own"
    assert jumprelu.train_robust(cfg, "mnist")[0] == "own"  # adversarial training is JumpReLU's alone
    assert trained[-1]["loss"].spec["name"] == "adversarial" and len(got) == 3


def test_jumprelu_validation_images_are_never_trained_on(monkeypatch):
    x, y = make_blobs(n=100)
    monkeypatch.setattr(robustness_book.data, "load_dataset",
                        lambda name, split: ArrayDataset(name, split, x, y, "synthetic"))
    cfg = resolve(jumprelu.SPEC, "smoke", train_size={"mnist": 80}, n_val={"mnist": 30}, n_attack={"mnist": 20})
    from robustness_book.chapters import kit

    monkeypatch.setattr(kit, "load_dataset", lambda name, split: ArrayDataset(name, split, x, y, "synthetic"))
    # the networks train on the first train_size - n_val images; kappa is chosen on the n_val after them
    assert jumprelu.train_arguments(cfg, "mnist")["train_size"] == 50
    assert torch.equal(kit.holdout_split("mnist", 50, 80).x, x[50:80])


# --------------------------------------------------------------------------- the cache, with a tiny recipe



def _row():
    (row,) = zoo.listing("smoke")
    return row


def test_the_listing_marks_uncached_cached_and_corrupted_models(tiny_zoo):
    assert _row()["state"] == "not cached" and _row()["accuracy"] is None
    model, meta = zoo.get("tiny-synth", "smoke", device="cpu")
    assert not meta["cached"] and meta["zoo"] == "tiny-synth"
    assert meta["path"] == str(TINY.path())  # the zoo's key is the cache's
    row = _row()
    assert row["state"] == "cached" and row["accuracy"] == meta["accuracy"] and 0 <= row["accuracy"] <= 1
    assert row["size"] == TINY.path().stat().st_size and row["train_seconds"] == meta["train_seconds"]
    assert row["epochs"] == 1 and row["train_images"] == 64 and row["source"] == "book"
    _, again = zoo.get("tiny-synth", "smoke", device="cpu")
    assert again["cached"] and again["path"] == meta["path"]
    # a flipped byte: reported, not raised
    data = bytearray(TINY.path().read_bytes())
    data[-1] ^= 0xFF
    TINY.path().write_bytes(bytes(data))
    row = _row()
    assert row["state"] == "corrupted" and "sha256" in row["error"] and row["accuracy"] is None
    assert "CORRUPTED" in zoo.format_rows([row]) and "tiny-synth (smoke): sha256" in zoo.format_rows([row])
    # an unreadable sidecar too
    TINY.path().with_suffix(".json").write_text("{not json")
    assert _row()["state"] == "corrupted"


def test_train_writes_the_recipe_and_file_the_zoo_expects(tiny_zoo):
    # trained through train itself, not the zoo: the sidecar's recipe and the file are the ones the zoo computes
    _, meta = robustness_book.train.trained_model(**TINY.kwargs(), device="cpu")
    assert meta["path"] == str(TINY.path()) and meta["recipe"] == json.loads(json.dumps(TINY.cache_recipe()))
    assert zoo.status(TINY)["state"] == "cached"


def test_models_train_retrains_a_corrupted_model_and_lists_it(tiny_zoo, capsys):
    assert main(["models", "train", "tiny-synth", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "tiny-synth" in out and "trained in" in out
    TINY.path().write_bytes(b"garbage")
    assert _row()["state"] == "corrupted"
    assert main(["models", "train", "tiny-synth", "--profile", "smoke"]) == 0
    captured = capsys.readouterr()
    assert "corrupted" in captured.err and "trained in" in captured.out
    assert _row()["state"] == "cached"
    assert main(["models", "--profile", "smoke"]) == 0
    listed = capsys.readouterr().out
    assert "tiny-synth" in listed and " yes " in listed


def test_an_unknown_name_fails_before_any_work(tiny_zoo, monkeypatch, capsys):
    monkeypatch.setattr(zoo, "trained_model", lambda *a, **k: pytest.fail("no work for an unknown name"))
    assert main(["models", "train", "lenet_like-cifar10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown model 'lenet_like-cifar10'; the zoo has: tiny-synth" in err
    assert main(["models", "train"]) == 2 and "needs a NAME" in capsys.readouterr().err
    assert zoo.models_command("train", "nope", "smoke") == 2


def test_the_accuracy_index_is_recomputed_when_missing_and_written_atomically(tiny_zoo, monkeypatch):
    _, meta = zoo.get("tiny-synth", "smoke", device="cpu")
    index = tiny_zoo / zoo.INDEX_NAME
    entry = json.loads(index.read_text())["models"][TINY.path().name]
    assert entry["accuracy"] == meta["accuracy"] and entry["sha256"] == meta["sha256"] and entry["n"] == 128
    index.unlink()
    assert _row()["accuracy"] == meta["accuracy"] and index.exists()  # measured again and stored
    # the index goes through an atomic write: a failure while writing leaves the old file whole, no stray file
    data = json.loads(index.read_text())
    data["models"][TINY.path().name]["accuracy"] = None  # forces a new measurement, hence a write
    index.write_text(json.dumps(data))
    stale = index.read_text()

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(_io.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        zoo.accuracy(TINY)
    assert index.read_text() == stale
    assert [p.name for p in tiny_zoo.iterdir() if p.name.startswith(".")] == []  # the temporary file is gone


def test_a_stale_index_entry_is_not_trusted(tiny_zoo):
    zoo.get("tiny-synth", "smoke", device="cpu")
    index = tiny_zoo / zoo.INDEX_NAME
    data = json.loads(index.read_text())
    data["models"][TINY.path().name].update(sha256="0" * 64, accuracy=-1.0)  # written for other weights
    index.write_text(json.dumps(data))
    assert _row()["accuracy"] >= 0
