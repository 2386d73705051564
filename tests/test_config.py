"""Parameter validation: bad values fail early with a message naming the parameter."""
import pytest

from robustness_book.chapters import get_chapter
from robustness_book.config import ChapterSpec, Param, resolve, resolve_profile

SPEC = get_chapter("baselines")


def test_profile_values_fill_unset_parameters():
    cfg = resolve(SPEC, profile="smoke")
    assert cfg.profile == "smoke" and cfg.dataset == "mnist" and cfg.model == "lenet_like"
    assert cfg.eps == 0.3 and cfg.overridden == []


def test_explicit_value_overrides_profile_and_is_recorded():
    cfg = resolve(SPEC, profile="smoke", eps=0.1, n_attack=50)
    assert cfg.eps == 0.1 and cfg.n_attack == 50
    assert cfg.overridden == ["eps", "n_attack"]
    banner = cfg.markdown()
    assert "| `eps` | `0.1` | set |" in banner and "| `seed` | `0` | profile |" in banner
    assert banner.startswith("::::{admonition} Profile `smoke`") and banner.endswith("::::")


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
    from robustness_book.cli import main

    assert main(["run", "baselines", "--profile", "smoke", "-p", "eps", "-1"]) == 2
    assert "eps=-1" in capsys.readouterr().err


MULTI = ChapterSpec(
    name="multi", title="t", notebook="n.py",
    params={"datasets": Param("subset", "data sets", ("mnist", "fashion_mnist", "cifar10")),
            "epochs": Param("pos_int", "epochs", per_dataset=True),
            "seed": Param("nonneg_int", "seed")},
    profiles={"smoke": {"datasets": ["mnist", "cifar10"], "epochs": {"mnist": 1, "fashion_mnist": 1, "cifar10": 2},
                        "seed": 0},
              "laptop": {"datasets": ["mnist"], "epochs": 3, "seed": 0}})


def test_per_dataset_values_resolve_to_a_mapping_over_the_chosen_data_sets():
    assert resolve(MULTI, "smoke").epochs == {"mnist": 1, "cifar10": 2}
    assert resolve(MULTI, "smoke", epochs=5).epochs == {"mnist": 5, "cifar10": 5}  # one value for all
    assert resolve(MULTI, "smoke", epochs={"cifar10": 7}).epochs == {"mnist": 1, "cifar10": 7}
    assert resolve(MULTI, "smoke", datasets=["fashion_mnist"]).epochs == {"fashion_mnist": 1}
    assert resolve(MULTI, "laptop", datasets=["cifar10", "mnist"]).epochs == {"cifar10": 3, "mnist": 3}


@pytest.mark.parametrize("kwargs, fragment", [
    ({"epochs": {"cifar": 2}}, "unknown data set(s) cifar; allowed keys: mnist, fashion_mnist, cifar10"),
    ({"epochs": {"cifar10": 0}}, "epochs['cifar10']=0"),
    ({"epochs": -1}, "epochs['mnist']=-1"),
    ({"datasets": ["svhn"]}, "datasets=['svhn']"),
])
def test_bad_per_dataset_values_name_the_parameter_and_the_data_set(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        resolve(MULTI, "smoke", **kwargs)
    assert fragment in str(err.value)


def test_every_chapter_profile_resolves_on_every_data_set_it_knows():
    from robustness_book.chapters import CHAPTER_IDS

    for chapter in CHAPTER_IDS:
        spec = get_chapter(chapter)
        selector = "datasets" if "datasets" in spec.params else "dataset"
        for profile in ("smoke", "laptop", "paper"):
            for d in spec.params[selector].choices:
                resolve(spec, profile, **{selector: [d] if selector == "datasets" else d})


def test_params_command_prints_help_and_every_profile(capsys):
    from robustness_book.cli import main

    assert main(["params", "baselines"]) == 0
    out = capsys.readouterr().out
    for name, param in SPEC.params.items():
        assert f"{name}  —  {param.help}" in out
    assert "laptop:" in out and "paper:" in out
