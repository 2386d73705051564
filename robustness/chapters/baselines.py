"""Chapter 1 — threat model and attacks on an undefended model (chapter id ``baselines``)."""
from __future__ import annotations

from ..config import ChapterSpec, Param, RunConfig
from ..data import DATASETS
from ..models import MODELS, check_model


def _check(cfg: RunConfig) -> None:
    check_model(cfg.model, cfg.dataset)
    if cfg.n_attack > cfg.n_clean:
        raise ValueError(f"parameter n_attack={cfg.n_attack} must not exceed n_clean={cfg.n_clean}")


PARAMS = {
    "dataset": Param("choice", "data set", DATASETS),
    "model": Param("choice", "architecture from robustness.models", tuple(MODELS)),
    "train_size": Param("pos_int", "training images used (the first N)"),
    "epochs": Param("pos_int", "training epochs"),
    "lr": Param("pos_float", "SGD learning rate"),
    "n_clean": Param("pos_int", "test images for clean accuracy (the first N)"),
    "n_attack": Param("pos_int", "test images attacked (the first N)"),
    "eps": Param("eps_linf", "L∞ threat-model radius on [0, 1] pixels"),
    "eps_grid_linf": Param("eps_linf_list", "L∞ radii for the accuracy curves"),
    "eps_grid_l2": Param("nonneg_float_list", "L2 radii for the accuracy curves"),
    "pgd_steps": Param("pos_int", "PGD iterations"),
    "restarts": Param("pos_int", "PGD random restarts (worst case kept per image)"),
    "deepfool_iter": Param("pos_int", "DeepFool maximum iterations"),
    "ddn_steps": Param("pos_int", "DDN (minimum-norm L2 attack) iterations"),
    "square_queries": Param("pos_int", "queries per image of the Square member of the adaptive worst case"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed"),
}

_COMMON = {
    "dataset": "mnist", "model": {"mnist": "lenet_like", "fashion_mnist": "lenet_like", "cifar10": "alex_like"},
    "lr": 0.02, "eps": {"mnist": 0.3, "fashion_mnist": 0.1, "cifar10": 8 / 255},
    "batch_size": 256, "seed": 0,
}
_GRID_LINF = {"mnist": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4],
              "fashion_mnist": [0.0, 0.025, 0.05, 0.1, 0.15, 0.2],
              "cifar10": [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]}
_GRID_L2 = {"mnist": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0], "fashion_mnist": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0],
            "cifar10": [0.0, 0.125, 0.25, 0.5, 1.0]}

PROFILES = {
    "smoke": {**_COMMON, "train_size": 10000, "epochs": 1, "n_clean": 1000, "n_attack": 100,
              "eps_grid_linf": {k: v[::2] for k, v in _GRID_LINF.items()},
              "eps_grid_l2": {k: v[::2] for k, v in _GRID_L2.items()},
              "pgd_steps": 10, "restarts": 1, "deepfool_iter": 20, "ddn_steps": 30, "square_queries": 500},
    "laptop": {**_COMMON, "train_size": {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 10000},
               "epochs": {"mnist": 6, "fashion_mnist": 6, "cifar10": 10},
               "n_clean": {"mnist": 10000, "fashion_mnist": 10000, "cifar10": 1000}, "n_attack": 1000,
               "eps_grid_linf": _GRID_LINF, "eps_grid_l2": _GRID_L2,
               "pgd_steps": 40, "restarts": 1, "deepfool_iter": 50, "ddn_steps": 100,
               "square_queries": 5000},
    "paper": {**_COMMON, "train_size": {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000},
              "epochs": 90, "n_clean": {"mnist": 10000, "fashion_mnist": 10000, "cifar10": 1000},
              "n_attack": {"mnist": 10000, "fashion_mnist": 10000, "cifar10": 1000},
              "eps_grid_linf": _GRID_LINF, "eps_grid_l2": _GRID_L2,
              "pgd_steps": 40, "restarts": 5, "deepfool_iter": 50, "ddn_steps": 1000,
              "square_queries": 5000},
}

SPEC = ChapterSpec(
    name="baselines",
    title="Threat model and attacks on an undefended model",
    notebook="notebooks/baselines.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)
