"""Parameter checks found weak by the reliability review (reviews/reliability-review.md, cases 1.10–1.17):
each bad value is refused in ``resolve`` (before any kernel starts) with one line naming it."""
from __future__ import annotations

import numpy as np
import pytest

from robustness_book import data
from robustness_book.chapters import CHAPTER_IDS, get_chapter
from robustness_book.config import resolve

BASELINES = get_chapter("baselines")
JUMPRELU = get_chapter("jumprelu")


@pytest.fixture(autouse=True)
def no_data_env(tmp_path, monkeypatch):
    """An empty data root and no mirror: the official split sizes apply unless a test sets a mirror."""
    monkeypatch.setenv(data.ENV_ROOT, str(tmp_path / "root"))
    monkeypatch.delenv(data.ENV_MIRROR, raising=False)


def small_cifar_mirror(path, n_test: int):
    """A mirror whose CIFAR-10 test.npz holds ``n_test`` images (nothing else)."""
    folder = path / "cifar10"
    folder.mkdir(parents=True)
    np.savez(folder / "test.npz", x=np.zeros((n_test, 32, 32, 3), np.uint8), y=np.zeros(n_test, np.uint8))
    return path


# ------------------------------------------------------------------ BUG 2 (case 1.13): baselines' counts


@pytest.mark.parametrize("kwargs, message", [
    ({"train_size": 100_000}, "parameter train_size=100000 exceeds the 60,000 MNIST training images"),
    ({"n_clean": 20_000}, "parameter n_clean=20000 exceeds the 10,000 MNIST test images"),
    ({"dataset": "cifar10", "train_size": 50_001}, "parameter train_size=50001 exceeds the 50,000 CIFAR-10 training"),
])
def test_baselines_refuses_counts_beyond_the_data_set(kwargs, message):
    with pytest.raises(ValueError) as err:
        resolve(BASELINES, "smoke", **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------ case 1.14: the mirror's CIFAR-10 test images

#: Per chapter: how to run it on CIFAR-10 only, and its count of test images (each smoke value is > 10).
TEST_COUNT = {"baselines": ({"dataset": "cifar10"}, "n_clean"),
              "jumprelu": ({"datasets": ["cifar10"]}, "n_clean['cifar10']"),
              "deep_defense": ({"datasets": ["cifar10"]}, "n_eval['cifar10']"),
              "entropic_retraining": ({"datasets": ["cifar10"]}, "n_test['cifar10']"),
              "fragile_neurons": ({"datasets": ["cifar10"]}, "n_test['cifar10']"),
              "transferable_adversaries": ({"datasets": ["cifar10"]}, "n_set['cifar10']"),
              "defenses_compared": ({"datasets": ["cifar10"]}, "n_test['cifar10']")}


def test_every_chapter_is_covered():
    assert set(TEST_COUNT) == set(CHAPTER_IDS)


@pytest.mark.parametrize("chapter", sorted(TEST_COUNT))
def test_counts_are_checked_against_the_images_the_mirror_holds(chapter, tmp_path, monkeypatch):
    mirror = small_cifar_mirror(tmp_path / "mirror", 10)
    monkeypatch.setenv(data.ENV_MIRROR, str(mirror))
    select, label = TEST_COUNT[chapter]
    with pytest.raises(ValueError) as err:
        resolve(get_chapter(chapter), "smoke", **select)
    text = str(err.value)
    assert f"parameter {label}=" in text and "exceeds the 10 CIFAR-10 test images" in text
    assert f"the offline mirror {mirror / 'cifar10' / 'test.npz'} holds 10 CIFAR-10 test images" in text
    assert "\n" not in text


@pytest.mark.parametrize("chapter", sorted(TEST_COUNT))
def test_torchvisions_full_set_in_the_root_lifts_the_mirror_limit(chapter, tmp_path, monkeypatch):
    monkeypatch.setenv(data.ENV_MIRROR, str(small_cifar_mirror(tmp_path / "mirror", 10)))
    cls = data._tv().datasets.CIFAR10
    folder = tmp_path / "root" / cls.base_folder
    folder.mkdir(parents=True)
    for filename, _ in cls.train_list + cls.test_list + [[cls.meta["filename"], None]]:
        (folder / filename).write_bytes(b"")  # present (the loader verifies them; the count needs only that)
    resolve(get_chapter(chapter), "smoke", **TEST_COUNT[chapter][0])


def test_images_available_reads_the_count_from_the_npz(tmp_path):
    mirror = small_cifar_mirror(tmp_path / "mirror", 37)
    root = tmp_path / "root"
    count, note = data.images_available("cifar10", "test", root=root, mirror=mirror)
    assert count == 37 and f"the offline mirror {mirror / 'cifar10' / 'test.npz'} holds 37 CIFAR-10 test" in note
    assert data.images_available("cifar10", "train", root=root, mirror=mirror) == (50_000, None)  # no train.npz
    assert data.images_available("cifar10", "test", root=root) == (10_000, None)  # no mirror: download
    assert data.images_available("mnist", "train", root=root, mirror=mirror) == (60_000, None)


# ------------------------------------------------------------------ case 1.10: a mapping for an unused data set


def test_mapping_for_a_data_set_the_run_does_not_use_is_refused():
    with pytest.raises(ValueError) as err:
        resolve(JUMPRELU, "smoke", datasets=["mnist"], epochs={"cifar10": 5})
    assert str(err.value) == ("parameter epochs={'cifar10': 5} sets data set(s) cifar10, which this run does not "
                              "use (datasets=['mnist'])")
    with pytest.raises(ValueError, match=r"sets data set\(s\) cifar10, which this run does not use \(dataset='mnist'\)"):
        resolve(BASELINES, "smoke", eps={"mnist": 0.2, "cifar10": 0.1})
    # a mapping of the run's own data sets still works, and only it counts as set by hand
    cfg = resolve(JUMPRELU, "smoke", datasets=["mnist"], epochs={"mnist": 2})
    assert cfg.epochs == {"mnist": 2} and cfg.overridden == ["datasets", "epochs"]


# ------------------------------------------------------------------ case 1.17: the allowed text is what is checked


def test_adv_ratio_allowed_text_and_check_agree():
    param = JUMPRELU.params["adv_ratio"]
    assert param.allowed.startswith("a number in [0, 1]")
    with pytest.raises(ValueError, match=r"adv_ratio=1.5 is invalid: expected a number in \[0, 1\]"):
        param.check("adv_ratio", 1.5)
    assert param.check("adv_ratio", 1) == 1.0


#: Values the chapters' _check refused while the parameter's kind (and so ``params``' allowed text) admitted them.
LOOSER_KIND = [
    ("jumprelu", "adv_ratio", 1.5),
    ("jumprelu", "deepfool_classes", 11),
    ("jumprelu", "deepfool_classes", 1),
    ("entropic_retraining", "at_mix", 1.5),
    ("transferable_adversaries", "diversity", 1.5),
    ("transferable_adversaries", "fixed_a", 1.5),
    ("transferable_adversaries", "at_mix", 1.5),
    ("transferable_adversaries", "premise_radii", [0.0, 0.5]),
    ("transferable_adversaries", "premise_steps", [0, 1]),
    ("deep_defense", "l2_eps", [0.0, 1.0]),
]


@pytest.mark.parametrize("chapter, name, value", LOOSER_KIND)
def test_param_kind_refuses_what_the_chapter_check_refuses(chapter, name, value):
    param = get_chapter(chapter).params[name]
    with pytest.raises(ValueError) as err:
        param.check(name, value)
    allowed = param.allowed.split(", or a mapping")[0]
    assert str(err.value) == f"parameter {name}={value!r} is invalid: expected {allowed}"


# ------------------------------------------------------------------ case 1.11: a malformed literal


@pytest.mark.parametrize("text, fragment", [
    ("[0, 0.1", "'[' was never closed"),
    ("(1, 2", "'(' was never closed"),
    ("{'cifar10': 5", "'{' was never closed"),
    ("'mnist", "unterminated string literal"),
    ("0.1.2", "invalid"),
    ("1/255", "not an expression"),
])
def test_malformed_literal_is_reported_as_such(text, fragment):
    from robustness_book.cli import parse_value

    with pytest.raises(ValueError) as err:
        parse_value(text)
    assert str(err.value).startswith(f"parameter value {text!r} is not a valid Python literal: ")
    assert fragment in str(err.value)
    assert type(err.value) is not ValueError  # a subclass, so the CLI can report it as one line


@pytest.mark.parametrize("text, value", [
    ("mnist", "mnist"), ("abc", "abc"), ("nan", "nan"), ("-inf", "-inf"), ("-5", -5), ("0.1", 0.1),
    ("[0, 0.1]", [0, 0.1]), ("True", True), ("{'cifar10': 5}", {"cifar10": 5}), ("'mnist'", "mnist"),
    ("1e400", float("inf")),
])
def test_plain_words_and_literals_still_parse(text, value):
    from robustness_book.cli import parse_value

    assert parse_value(text) == value
