"""Parameter validation: bad values fail early with a message naming the parameter."""
import pytest

from robustness.chapters import get_chapter
from robustness.config import resolve, resolve_profile

SPEC = get_chapter("baselines")


def test_profile_values_fill_unset_parameters():
    cfg = resolve(SPEC, profile="smoke")
    assert cfg.profile == "smoke" and cfg.dataset == "mnist" and cfg.model == "lenet_like"
    assert cfg.eps == 0.3 and cfg.overridden == []


def test_explicit_value_overrides_profile_and_is_recorded():
    cfg = resolve(SPEC, profile="smoke", eps=0.1, n_attack=50)
    assert cfg.eps == 0.1 and cfg.n_attack == 50
    assert cfg.overridden == ["eps", "n_attack"]
    assert "`eps` = `0.1` (set)" in cfg.markdown()


def test_per_dataset_defaults_follow_the_chosen_dataset():
    cfg = resolve(SPEC, profile="smoke", dataset="cifar10")
    assert cfg.model == "alex_like" and cfg.eps == pytest.approx(8 / 255)


def test_auto_profile_picks_by_gpu():
    assert resolve_profile("auto", cuda_available=True) == "paper"
    assert resolve_profile("auto", cuda_available=False) == "laptop"


@pytest.mark.parametrize("kwargs, fragment", [
    ({"profile": "fast"}, "profile='fast'"),
    ({"dataset": "imagenet"}, "dataset='imagenet'"),
    ({"model": "vgg"}, "model='vgg'"),
    ({"eps": -0.1}, "eps=-0.1"),
    ({"eps": 1.5}, "eps=1.5"),
    ({"n_attack": 0}, "n_attack=0"),
    ({"epochs": 2.5}, "epochs=2.5"),
    ({"eps_grid_linf": [0.1, 2.0]}, "eps_grid_linf"),
    ({"eps_grid_l2": []}, "eps_grid_l2"),
    ({"seed": True}, "seed=True"),
])
def test_bad_values_raise_naming_the_parameter(kwargs, fragment):
    kwargs = {"profile": "smoke", **kwargs}
    with pytest.raises(ValueError) as err:
        resolve(SPEC, **kwargs)
    assert fragment in str(err.value)
    assert "expected" in str(err.value)


def test_allowed_values_are_listed():
    with pytest.raises(ValueError, match="lenet_like"):
        resolve(SPEC, profile="smoke", model="vgg")


def test_unknown_parameter_and_incompatible_model():
    with pytest.raises(ValueError, match="unknown parameter.*epsilon"):
        resolve(SPEC, profile="smoke", epsilon=0.3)
    with pytest.raises(ValueError, match="alex_like.*cifar10"):
        resolve(SPEC, profile="smoke", model="alex_like")
    with pytest.raises(ValueError, match="n_attack"):
        resolve(SPEC, profile="smoke", n_attack=2000, n_clean=1000)


def test_cli_rejects_bad_parameter_before_running(capsys):
    from robustness.cli import main

    assert main(["run", "baselines", "--profile", "smoke", "-p", "eps", "-1"]) == 2
    assert "eps=-1" in capsys.readouterr().err
