"""Damaged files in the checkpoint cache and the results folder (reliability review: BUG 4, 6, 7; cases 3.5, 3.10).

Every damaged file must be reported by name with what is wrong, and the run must recover (retrain) or go on
(list the other files, give a note), never crash with a bare decode error. Tiny models, temporary folders.
"""
import errno
import json
import pickle
import warnings

import pytest
import torch

import robustness_book.data
import robustness_book.models
from conftest import TINY, TinyNet, make_blobs
from robustness_book import _io, zoo
from robustness_book.cli import main
from robustness_book.data import ArrayDataset
from robustness_book.results import load_results, record, write_results
from robustness_book.train import (CheckpointError, TrainConfig, cached_train, export_entry, load_checkpoint,
                              load_export, save_checkpoint)

CONFIG = TrainConfig(epochs=1, batch_size=32, seed=1)


def _flip_to_non_utf8(path, at: int = 5) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] = 0xFF  # never valid in UTF-8
    path.write_bytes(bytes(raw))


def _as_list(side):
    side.write_text("[]")


def _no_sha256(side):
    side.write_text(json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "sha256"}))


def _sha256_not_a_string(side):
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": 5}))


def _no_history(side):
    side.write_text(json.dumps({k: v for k, v in json.loads(side.read_text()).items() if k != "history"}))


SIDECAR_DAMAGE = {"not UTF-8": _flip_to_non_utf8, "a JSON array": _as_list, "no sha256": _no_sha256,
                  "sha256 not a string": _sha256_not_a_string}


# --------------------------------------------------------------------------- BUG 4: a damaged sidecar


@pytest.mark.parametrize("damage", SIDECAR_DAMAGE.values(), ids=SIDECAR_DAMAGE.keys())
def test_a_damaged_sidecar_raises_a_checkpoint_error_naming_it(tmp_path, damage):
    path = tmp_path / "m.pt"
    save_checkpoint(TinyNet(), path, {"recipe": {"a": 1}})
    damage(path.with_suffix(".json"))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(TinyNet(), path)
    assert str(path.with_suffix(".json")) in str(caught.value)
    assert "unreadable" in str(caught.value) or "malformed" in str(caught.value)


@pytest.fixture()
def blobs():
    x, y = make_blobs(n=64)
    return ArrayDataset("blobs", "train", x, y, "synthetic")


@pytest.mark.parametrize("damage", [_flip_to_non_utf8, _as_list, _no_history], ids=["not UTF-8", "[]", "no history"])
def test_cached_train_retrains_over_a_damaged_sidecar_and_rewrites_it(blobs, tmp_path, damage):
    recipe = {"model": "tiny", "dataset": "blobs"}
    first, meta = cached_train(recipe, TinyNet, blobs, CONFIG, device="cpu", cache=tmp_path)
    side = tmp_path / meta["path"].rsplit("/", 1)[1].replace(".pt", ".json")
    damage(side)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again, meta2 = cached_train(recipe, TinyNet, blobs, CONFIG, device="cpu", cache=tmp_path)
    assert not meta2["cached"]  # retrained, not crashed, not trusted
    assert any(side.name in str(w.message) and "retraining it" in str(w.message) for w in caught)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    _, meta3 = cached_train(recipe, TinyNet, blobs, CONFIG, device="cpu", cache=tmp_path)
    assert meta3["cached"] and isinstance(meta3["history"]["epochs"], list)  # the rewritten sidecar is good


def test_load_export_reports_a_damaged_sidecar(tmp_path):
    from robustness_book.models import build_model

    path = tmp_path / "dd.pt"
    for damage in (_flip_to_non_utf8, _as_list):
        meta = {"path": str(path), "sha256": save_checkpoint(build_model("lenet_like", "mnist"), path, {})}
        entry = export_entry(meta, "Deep Defense", "mnist", "lenet_like")
        damage(path.with_suffix(".json"))
        with pytest.raises(CheckpointError, match="dd.json"):  # what the chapter catches
            load_export(entry, device="cpu")


# --------------------------------------------------------------------------- the tiny zoo (as in test_zoo.py)



def test_models_train_retrains_over_a_sidecar_that_is_not_an_object(tiny_zoo, capsys):
    assert main(["models", "train", "tiny-synth", "--profile", "smoke"]) == 0
    TINY.path().with_suffix(".json").write_text("[]")
    assert main(["models", "train", "tiny-synth", "--profile", "smoke"]) == 0
    captured = capsys.readouterr()
    assert "retraining it" in captured.err and "trained in" in captured.out
    (row,) = zoo.listing("smoke")
    assert row["state"] == "cached"


# --------------------------------------------------------------------------- case 3.5: a pickle payload


class Payload:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _write_payload(path, marker, how: str) -> None:
    if how == "torch.save":
        torch.save({"net.1.weight": Payload(marker)}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(Payload(marker), fh, protocol=2)


def _assert_reported_as_unsafe(message: str, path) -> None:
    assert str(path) in message and "not a plain weights file" in message and "delete it and retrain" in message
    assert "does not fit" not in message
    assert "False" not in message and "safe_globals" not in message  # never torch's advice to turn it off


@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_a_pickle_payload_with_a_matching_hash_is_refused_as_unsafe_not_as_a_misfit(tmp_path, how):
    path, marker = tmp_path / "evil.pt", tmp_path / "MARKER"
    _write_payload(path, marker, how)
    path.with_suffix(".json").write_text(json.dumps({"sha256": _io.sha256_file(path)}))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(TinyNet(), path)
    _assert_reported_as_unsafe(str(caught.value), path)
    assert caught.value.__cause__ is None  # torch's message is not chained into a traceback either
    assert not marker.exists()


def test_load_export_and_the_zoo_listing_report_a_pickle_payload_as_unsafe(tiny_zoo, tmp_path):
    marker = tmp_path / "MARKER"
    evil = tmp_path / "evil.pt"
    _write_payload(evil, marker, "torch.save")
    evil.with_suffix(".json").write_text(json.dumps({"sha256": _io.sha256_file(evil)}))
    entry = {"label": "x", "dataset": "mnist", "model": "lenet_like", "checkpoint": str(evil),
             "sha256": _io.sha256_file(evil), "setting": {}}
    with pytest.raises(CheckpointError) as caught:
        load_export(entry, device="cpu")
    _assert_reported_as_unsafe(str(caught.value), evil)
    # the listing: the zoo's file replaced by the payload, its sidecar's sha256 rewritten to match
    zoo.get("tiny-synth", "smoke", device="cpu")
    (tiny_zoo / zoo.INDEX_NAME).unlink()  # so the listing loads the file to measure it
    _write_payload(TINY.path(), marker, "torch.save")
    side = TINY.path().with_suffix(".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "sha256": _io.sha256_file(TINY.path())}))
    (row,) = zoo.listing("smoke")
    assert row["state"] == "corrupted" and row["accuracy"] is None
    _assert_reported_as_unsafe(row["error"], TINY.path())
    assert not marker.exists()


# --------------------------------------------------------------------------- case 3.10: an unwritable index


def test_a_read_only_checkpoint_folder_shows_the_measured_accuracy_and_says_the_index_was_not_saved(
        tiny_zoo, monkeypatch, capsys):
    _, meta = zoo.get("tiny-synth", "smoke", device="cpu")
    (tiny_zoo / zoo.INDEX_NAME).unlink()

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tiny_zoo / ".zoo-index.json.x.tmp"))

    monkeypatch.setattr(zoo, "_write_index_entry", read_only)
    (row,) = zoo.listing("smoke")
    assert row["state"] == "cached" and row["accuracy"] == meta["accuracy"]
    assert "not measured" not in row["error"]
    assert str(tiny_zoo) in row["error"] and "not writable" in row["error"] and zoo.INDEX_NAME in row["error"]
    assert main(["models", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert f"{100 * meta['accuracy']:.2f}%" in out and "accuracy not measured" not in out
    assert "not writable" in out


# --------------------------------------------------------------------------- BUG 6 and 7: damaged results files

CFG = {"chapter": "demo", "profile": "smoke", "requested_profile": "smoke", "device": "cpu", "seed": 3,
       "overridden": []}


def _good_results(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    return write_results(CFG, [record(CFG, dataset="mnist", model="m", metric="accuracy", value=0.5, n=10)])


def test_results_lists_every_file_and_the_bad_ones_with_their_problem(tmp_path, monkeypatch, capsys):
    good = _good_results(tmp_path, monkeypatch)
    flipped = good.with_name("flipped.json")
    flipped.write_bytes(good.read_bytes())
    _flip_to_non_utf8(flipped, at=len(good.read_bytes()) // 2)
    good.with_name("array.json").write_text("[]")
    good.with_name("records5.json").write_text('{"records": 5}')
    good.with_name("cut.json").write_bytes(good.read_bytes()[:40])
    assert main(["results"]) == 0
    lines = {line.split()[-1].rsplit("/", 1)[1]: line for line in capsys.readouterr().out.splitlines()}
    assert set(lines) == {"demo.json", "flipped.json", "array.json", "records5.json", "cut.json"}
    assert "1 records" in lines["demo.json"] and "not a results file" not in lines["demo.json"]
    for name in ("flipped.json", "array.json", "records5.json", "cut.json"):
        assert "not a results file: " in lines[name], lines[name]
    assert "UTF-8" in lines["flipped.json"] and "records" in lines["records5.json"]


@pytest.mark.parametrize("damage", ["truncated", "not UTF-8", "[]"])
def test_load_results_names_a_damaged_file_and_the_command_that_rewrites_it(tmp_path, monkeypatch, damage):
    good = _good_results(tmp_path, monkeypatch)
    if damage == "truncated":
        good.write_bytes(good.read_bytes()[:100])
    elif damage == "not UTF-8":
        _flip_to_non_utf8(good, at=100)
    else:
        good.write_text("[]")
    with pytest.raises(ValueError) as caught:
        load_results("demo", "smoke")
    assert type(caught.value).__name__ == "ResultsFileError"
    message = str(caught.value)
    assert str(good) in message and "python -m robustness_book run demo --profile smoke" in message


def test_exported_models_turns_a_truncated_results_file_into_a_note(tmp_path, monkeypatch):
    from robustness_book.chapters import deep_defense
    from robustness_book.chapters import transferable_adversaries as chapter
    from robustness_book.config import resolve
    from robustness_book.results import results_path

    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    path = write_results(resolve(deep_defense.SPEC, "smoke"), [], extra={"models": []})
    assert path == results_path("deep_defense", "smoke")
    path.write_bytes(path.read_bytes()[:200])
    found, notes = chapter.exported_models(resolve(chapter.SPEC, "smoke"))
    assert found == []
    (note,) = [n for n in notes if "deep_defense" in n]
    assert str(path) in note and "python -m robustness_book run deep_defense --profile smoke" in note
