"""Chapter 2 — JumpReLU, reproduced and re-evaluated (chapter id ``jumprelu``).

The chapter's SPEC (parameters, profiles), its training recipes, the paper's protocol (a sweep over kappa in
the gray-box and white-box settings, in the official code's normalized units, and the validation rule that
picks kappa), the adaptive re-evaluation built on :mod:`robustness.evaluate`, the figures, and the verdict as a
pure function of the results.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import attacks, evaluate
from ..config import ChapterSpec, Param, RunConfig
from ..data import dataset_info, normalized_to_pixels, threat_eps
from ..defenses.jumprelu import bpda_relu, bpda_smooth, retrofit
from ..report import pct, show_image

#: The paper's models: (dataset, architecture) per data-set prefix of the parameters.
ARCH = {"mnist": "lenet_like", "cifar": "alex_like"}
DATASET = {"mnist": "mnist", "cifar": "cifar10"}
NAME = {"mnist": "MNIST", "cifar": "CIFAR-10"}
#: Members of the adaptive ensemble, in the order they run (each attacks only the images still standing).
#: ``pgd_true`` (PGD with autograd's gradient of the retrofit, the one the paper's white-box attacks follow) comes
#: first: alone it is the paper's own gradient under an eps bound, the like-for-like baseline of the verdict.
MEMBERS = ("pgd_true", "transfer", "pgd_bpda", "pgd_bpda_margin", "pgd_smooth", "square")
def _check(cfg: RunConfig) -> None:
    for d in ("mnist", "cifar"):
        if 0.0 not in cfg[f"{d}_kappas"]:
            raise ValueError(f"parameter {d}_kappas={cfg[f'{d}_kappas']} must contain 0 (the unmodified model)")
        if cfg[f"{d}_adv_ratio"] > 1:
            raise ValueError(f"parameter {d}_adv_ratio={cfg[f'{d}_adv_ratio']} must be in [0, 1]")
        if cfg[f"{d}_n_val"] >= cfg[f"{d}_train_size"]:
            raise ValueError(f"parameter {d}_n_val={cfg[f'{d}_n_val']} must be smaller than "
                             f"{d}_train_size={cfg[f'{d}_train_size']}")
        if cfg[f"{d}_n_attack"] > cfg[f"{d}_n_val"]:
            raise ValueError(f"parameter {d}_n_attack={cfg[f'{d}_n_attack']} must not exceed "
                             f"{d}_n_val={cfg[f'{d}_n_val']} (kappa is chosen by attacking validation images)")
        for small in ("n_attack", "n_deepfool", "n_adaptive", "n_autoattack"):
            if cfg[f"{d}_{small}"] > cfg[f"{d}_n_clean"]:
                raise ValueError(f"parameter {d}_{small}={cfg[f'{d}_{small}']} must not exceed "
                                 f"{d}_n_clean={cfg[f'{d}_n_clean']}")
    if cfg.mnist_train_size > 60000:
        raise ValueError(f"parameter mnist_train_size={cfg.mnist_train_size} exceeds the 60,000 MNIST training images")
    if cfg.cifar_train_size > 50000:
        raise ValueError(f"parameter cifar_train_size={cfg.cifar_train_size} exceeds the 50,000 CIFAR-10 "
                         "training images")
    if cfg.deepfool_classes < 2 or cfg.deepfool_classes > 10:
        raise ValueError(f"parameter deepfool_classes={cfg.deepfool_classes} must be in 2..10")
    if cfg.members[0] != "pgd_true":
        raise ValueError(f"parameter members={cfg.members} must start with 'pgd_true' (the verdict compares the "
                         "ensemble with the paper's own gradient under the same eps)")


def _per(prefix_help: dict[str, tuple[str, str]]) -> dict[str, Param]:
    out = {}
    for d, name in NAME.items():
        for key, (kind, text) in prefix_help.items():
            out[f"{d}_{key}"] = Param(kind, f"{name}: {text}")
    return out


PARAMS = {
    "datasets": Param("subset", "data sets the chapter runs on", tuple(DATASET)),
    **_per({
        "train_size": ("pos_int", "training images used (the first N), validation included"),
        "n_val": ("pos_int", "of those, images held out at random to choose kappa"),
        "epochs": ("pos_int", "training epochs"),
        "adv_ratio": ("nonneg_float", "fraction of each batch replaced by FGSM examples (robust model)"),
        "adv_eps_normalized": ("nonneg_float", "robust model's FGSM radius, official normalized units (× σ_c)"),
        "n_clean": ("pos_int", "test images for clean accuracy (the first N)"),
        "n_attack": ("pos_int", "test (and validation) images attacked with IFGSM (the first N)"),
        "n_deepfool": ("pos_int", "test images attacked with DeepFool (the first N)"),
        "n_adaptive": ("pos_int", "test images for the adaptive attacks and health checks (the first N)"),
        "n_autoattack": ("nonneg_int", "test images for AutoAttack (standard) at the chosen kappa (0: not run)"),
        "kappas": ("nonneg_float_list", "kappa grid (must contain 0)"),
        "iter": ("pos_int", "IFGSM and DeepFool iterations (official: 40 MNIST, 7 CIFAR)"),
        "pgd_eps": ("eps_linf_list", "L∞ radii on [0, 1] pixels of the adaptive attack ensemble"),
        "lr": ("pos_float", "initial SGD learning rate (× 0.2 at the official milestones, scaled to the epochs)"),
        "budget": ("nonneg_float", "largest clean-accuracy drop (fraction) allowed when choosing kappa"),
        "ddn_steps": ("nonneg_int", "iterations of the min-norm attack (DDN through BPDA; 0: not run)"),
    }),
    "cifar_augment": Param("bool", "CIFAR-10: random crops (pad 4) and flips in training, as the official code"),
    "ifgsm_step": Param("pos_float", "IFGSM step, official normalized units (× σ_c on pixels)"),
    "deepfool_classes": Param("pos_int", "DeepFool candidate classes (10: all, as the official code)"),
    "members": Param("subset", "adaptive-ensemble members in order, pgd_true first", MEMBERS),
    "pgd_steps": Param("pos_int", "PGD iterations of every adaptive-ensemble member"),
    "restarts": Param("pos_int", "random restarts of the BPDA members and of the transfer source's PGD"),
    "square_queries": Param("pos_int", "queries per image of the Square member"),
    "smooth_temperature": Param("pos_float", "temperature T of the smooth-surrogate BPDA member"),
    "health_steps": Param("pos_int", "PGD steps of the health checks"),
    "adaptive_all_kappas": Param("bool", "adaptive attacks on every kappa (else on 0, the chosen and the largest)"),
    "seeds": Param("nonneg_int_list", "attack seeds: the worst case at the threat radius is rerun with each "
                                      "and the page shows the spread"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed of training, the validation split and the attacks"),
}

_COMMON = {
    "datasets": ["mnist", "cifar"],
    "mnist_adv_ratio": 0.3, "mnist_adv_eps_normalized": 0.3, "cifar_adv_ratio": 0.6,
    "cifar_adv_eps_normalized": 0.031,
    "mnist_kappas": [0.0, 0.5, 1.0, 1.5], "cifar_kappas": [round(0.1 * i, 1) for i in range(9)],
    "mnist_iter": 40, "cifar_iter": 7, "ifgsm_step": 0.01, "mnist_lr": 0.02, "cifar_lr": 0.02,
    # the threat-model radii (0.3, 8/255) and a larger one, where a sound evaluation must approach 0
    "mnist_pgd_eps": [0.1, 0.2, 0.3, 0.4], "cifar_pgd_eps": [8 / 255, 16 / 255], "smooth_temperature": 0.1,
    "mnist_budget": 0.01, "cifar_budget": 0.03, "cifar_augment": True, "members": list(MEMBERS),
    "batch_size": 250, "seed": 0,
}

PROFILES = {
    "smoke": {**_COMMON, "mnist_train_size": 3000, "mnist_n_val": 500, "mnist_epochs": 1,
              "cifar_train_size": 1500, "cifar_n_val": 300, "cifar_epochs": 1,
              "mnist_n_clean": 500, "mnist_n_attack": 100, "mnist_n_deepfool": 50, "mnist_n_adaptive": 50,
              "cifar_n_clean": 300, "cifar_n_attack": 40, "cifar_n_deepfool": 16, "cifar_n_adaptive": 16,
              "mnist_n_autoattack": 20, "cifar_n_autoattack": 0,
              "mnist_kappas": [0.0, 1.0], "cifar_kappas": [0.0, 0.4], "mnist_iter": 10, "cifar_iter": 3,
              "mnist_pgd_eps": [0.1, 0.4], "cifar_pgd_eps": [8 / 255], "deepfool_classes": 3, "pgd_steps": 10,
              "restarts": 2, "square_queries": 100, "mnist_ddn_steps": 20, "cifar_ddn_steps": 20,
              "health_steps": 5, "adaptive_all_kappas": True, "seeds": [0, 1]},
    # Sized for 2 CPU cores (≤ 15 min). CIFAR-10 training is the expensive part: 9,000 training images for 4 of the
    # 90 epochs, without crops and flips and with a larger initial learning rate (in a 4-epoch trial on 10,000
    # images, crops and flips cost 8 points of clean accuracy, and lr 0.1 reached 49% where 0.05 reached 43%); the
    # official step schedule is scaled to the 4 epochs. CIFAR-10 also gets the paper's grid up to 0.6 (at 0.8 this
    # undertrained model is at chance), small attack subsets and no DDN. DeepFool keeps 3 of the official 9
    # candidate classes (its cost grows with them) and the official iterations; the adaptive ensemble runs on
    # kappa = 0, the chosen and the largest kappa.
    "laptop": {**_COMMON, "mnist_train_size": 60000, "mnist_n_val": 5000, "mnist_epochs": 3,
               "cifar_train_size": 10000, "cifar_n_val": 1000, "cifar_epochs": 4, "cifar_lr": 0.1,
               "cifar_augment": False,
               "mnist_n_clean": 10000, "mnist_n_attack": 1000, "mnist_n_deepfool": 500, "mnist_n_adaptive": 200,
               "cifar_n_clean": 1000, "cifar_n_attack": 200, "cifar_n_deepfool": 100, "cifar_n_adaptive": 100,
               "mnist_n_autoattack": 500, "cifar_n_autoattack": 0,
               "cifar_kappas": [0.0, 0.2, 0.4, 0.6], "deepfool_classes": 4,
               "pgd_steps": 100, "restarts": 2, "square_queries": 1000, "mnist_ddn_steps": 100,
               "cifar_ddn_steps": 0, "health_steps": 20, "adaptive_all_kappas": False, "seeds": [0, 1, 2]},
    "paper": {**_COMMON, "mnist_train_size": 60000, "mnist_n_val": 5000, "mnist_epochs": 90,
              "cifar_train_size": 50000, "cifar_n_val": 5000, "cifar_epochs": 90,
              "mnist_n_clean": 10000, "mnist_n_attack": 5000, "mnist_n_deepfool": 5000, "mnist_n_adaptive": 1000,
              "cifar_n_clean": 1000, "cifar_n_attack": 1000, "cifar_n_deepfool": 1000, "cifar_n_adaptive": 1000,
              "mnist_n_autoattack": 1000, "cifar_n_autoattack": 1000,
              "deepfool_classes": 10, "pgd_steps": 100, "restarts": 5, "square_queries": 5000,
              "mnist_ddn_steps": 1000, "cifar_ddn_steps": 1000, "health_steps": 100,
              "adaptive_all_kappas": True, "seeds": [0, 1, 2]},
}

SPEC = ChapterSpec(
    name="jumprelu",
    title="JumpReLU: a retrofit defense, reproduced and attacked adaptively",
    notebook="notebooks/jumprelu.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


# ---------------------------------------------------------------------------
# Glue the notebook calls


def step_pixels(cfg: RunConfig, d: str) -> torch.Tensor:
    """The official IFGSM step (normalized units) on [0, 1] pixels, per channel: ``ifgsm_step × σ_c``."""
    return normalized_to_pixels(DATASET[d], cfg.ifgsm_step)


def adv_eps_pixels(cfg: RunConfig, d: str) -> torch.Tensor:
    """The robust model's FGSM radius on [0, 1] pixels, per channel: the official normalized radius × σ_c."""
    return normalized_to_pixels(DATASET[d], cfg[f"{d}_adv_eps_normalized"])


def train_models(cfg: RunConfig, d: str) -> tuple[dict, dict, dict]:
    """Train (or load) the baseline and FGSM-mix models of data set prefix ``d`` on the training split
    minus a random validation hold-out. Returns ``(models, metas, splits)``; ``splits`` has ``val``."""
    from ..data import load_dataset, train_val_split
    from ..defenses.adversarial_training import AdversarialLoss
    from ..models import build_model
    from ..train import TrainConfig, cached_train, cross_entropy, official_milestones

    dataset, arch = DATASET[d], ARCH[d]
    full = load_dataset(dataset, "train").first(cfg[f"{d}_train_size"])
    train_part, val = train_val_split(full, cfg[f"{d}_n_val"], seed=cfg.seed)
    config = TrainConfig(epochs=cfg[f"{d}_epochs"], lr=cfg[f"{d}_lr"], milestones=official_milestones(cfg[f"{d}_epochs"]),
                         augment=d == "cifar" and cfg.cifar_augment, seed=cfg.seed)
    recipe = {"model": arch, "dataset": dataset, "train_size": len(full), "split": "train minus val",
              "n_val": cfg[f"{d}_n_val"], "val_seed": cfg.seed}
    # FGSM in the official normalized units: a per-channel radius on pixels, crafted in eval mode
    losses = {"baseline": cross_entropy,
              "robust": AdversarialLoss("fgsm", adv_eps_pixels(cfg, d), mix=cfg[f"{d}_adv_ratio"], replace=True)}
    models, metas = {}, {}
    for kind, loss in losses.items():
        models[kind], metas[kind] = cached_train(recipe, lambda: build_model(arch, dataset), train_part, config,
                                                 loss=loss)
    return models, metas, {"train": train_part, "val": val}


# ---------------------------------------------------------------------------
# The paper's protocol: a sweep over kappa in the gray-box and white-box settings


def _deepfool_stats(model, x, y, x_adv, dataset) -> dict:
    out = {}
    for p, key in ((2, "l2"), (math.inf, "linf")):
        s = evaluate.min_norm_summary(x, x_adv[key], y, model, p=p)
        out[f"deepfool_{key}_acc"] = evaluate.accuracy(model, x_adv[key], y)
        out[f"deepfool_{key}_rho"] = s["rho_mean"]  # the book's pixel ρ: mean over correct ∧ fooled
        out[f"deepfool_{key}_rho_paper"] = evaluate.jumprelu_rho(x, x_adv[key], dataset, p=p)["mean"]
        out[f"deepfool_{key}_success"] = s["success_rate"]
    return out


def _deepfool_both(model, x, y, *, max_iter, num_classes, batch_size) -> dict:
    return {key: evaluate.run_attack(attacks.deepfool, model, x, y, batch_size, desc=f"deepfool {key}", norm=p,
                                     max_iter=max_iter, num_classes=num_classes)
            for p, key in ((2, "l2"), (math.inf, "linf"))}


def kappa_sweep(model: nn.Module, kappas: Sequence[float], x: torch.Tensor, y: torch.Tensor, *,
                ifgsm_step, ifgsm_steps: int, dataset: str, deepfool_iter: int = 0, deepfool_classes: int = 10,
                n_deepfool: int | None = None, x_clean: torch.Tensor | None = None,
                y_clean: torch.Tensor | None = None, batch_size: int = 256) -> dict:
    """The paper's measurements for each kappa, on the retrofitted copies of ``model``.

    Per kappa (keys ``f"{kappa:g}"``): ``clean`` accuracy (on ``x_clean``/``y_clean`` when given, else on
    ``x``), and for ``white_box`` (attacks crafted on the retrofitted model, with autograd's gradient, as
    the paper) and ``gray_box`` (crafted once on the kappa = 0 model, evaluated on the retrofitted one):
    IFGSM accuracy (``ifgsm_step`` on pixels, per channel) and, when ``deepfool_iter > 0``, DeepFool L2 / L∞
    accuracy, the book's pixel ρ (mean over the correctly classified images it fools), the official code's ρ
    (normalized space, averaged as the official code averages) and the success rate, on the first
    ``n_deepfool`` images of ``x`` (all when ``None``).
    """
    x_clean, y_clean = (x, y) if x_clean is None else (x_clean, y_clean)
    ifgsm_kw = dict(step=ifgsm_step, steps=ifgsm_steps)
    df_kw = dict(max_iter=deepfool_iter, num_classes=deepfool_classes, batch_size=batch_size)
    gray_ifgsm = evaluate.run_attack(attacks.ifgsm, model, x, y, batch_size, desc="ifgsm (kappa=0)", **ifgsm_kw)
    xd, yd = (x, y) if n_deepfool is None else (x[:n_deepfool], y[:n_deepfool])
    gray_df = _deepfool_both(model, xd, yd, **df_kw) if deepfool_iter > 0 else None
    out = {}
    for kappa in kappas:
        net = retrofit(model, kappa)
        row = {"clean": evaluate.accuracy(net, x_clean, y_clean), "n_clean": len(y_clean),
               "clean_attack_subset": evaluate.accuracy(net, x, y)}
        white_ifgsm = (gray_ifgsm if kappa == 0 else
                       evaluate.run_attack(attacks.ifgsm, net, x, y, batch_size, desc=f"ifgsm kappa={kappa:g}",
                                           **ifgsm_kw))
        row["white_box"] = {"ifgsm_acc": evaluate.accuracy(net, white_ifgsm, y)}
        row["gray_box"] = {"ifgsm_acc": evaluate.accuracy(net, gray_ifgsm, y)}
        if deepfool_iter > 0:
            white_df = gray_df if kappa == 0 else _deepfool_both(net, xd, yd, **df_kw)
            row["white_box"].update(_deepfool_stats(net, xd, yd, white_df, dataset))
            # gray box: the perturbation is the kappa = 0 one; whether it still fools the retrofit is the question
            row["gray_box"].update(_deepfool_stats(net, xd, yd, gray_df, dataset))
        out[f"{kappa:g}"] = row
    return out


def choose_kappa(sweep: dict, budget: float) -> dict:
    """The validation rule: among the kappas whose clean accuracy is at most ``budget`` (a fraction)
    below kappa = 0's, the one with the highest white-box IFGSM accuracy (ties: the smaller kappa).

    ``sweep`` is a :func:`kappa_sweep` result on validation data and must contain kappa = 0.
    Returns ``{"kappa", "clean_drop", "ifgsm_acc", "admissible"}``.
    """
    if "0" not in sweep:
        raise ValueError("the kappa grid must contain 0 (the unmodified model is the reference)")
    base = sweep["0"]["clean"]
    admissible = sorted((float(k) for k, r in sweep.items() if base - r["clean"] <= budget + 1e-12))
    best = max(admissible, key=lambda k: (sweep[f"{k:g}"]["white_box"]["ifgsm_acc"], -k))
    row = sweep[f"{best:g}"]
    return {"kappa": best, "clean_drop": base - row["clean"], "ifgsm_acc": row["white_box"]["ifgsm_acc"],
            "admissible": admissible, "budget": budget}


def evaluated_kappa(choice: dict, grid: Sequence[float]) -> float:
    """The kappa the verdict judges: the chosen one, or the largest of the grid when validation chose 0."""
    return choice["kappa"] if choice["kappa"] > 0 else max(grid)


# ---------------------------------------------------------------------------
# Beyond the paper: the adaptive ensemble, built from the shared toolkit


def ensemble(net: nn.Module, source: nn.Module, kappa: float, names: Sequence[str], *, steps: int, restarts: int,
             queries: int, temperature: float) -> list:
    """The adaptive members for one retrofit ``net`` (``source``: the kappa = 0 network, for transfer).

    At kappa = 0 BPDA's backward is exact and the transfer source is the network itself, so those members
    would repeat ``pgd_true``; only ``pgd_true``, the margin-loss PGD and Square run there.
    """
    from ..evaluate import members as wc

    bpda = bpda_relu(net)
    make = {
        "pgd_true": lambda: wc.pgd(loss="ce", steps=steps, restarts=1, name="pgd_true"),
        "transfer": lambda: wc.transfer(source, loss="ce", steps=steps, restarts=restarts, name="transfer"),
        "pgd_bpda": lambda: wc.bpda(bpda, loss="ce", steps=steps, restarts=restarts, name="pgd_bpda"),
        "pgd_bpda_margin": lambda: wc.bpda(bpda, loss="margin", steps=steps, restarts=restarts,
                                           name="pgd_bpda_margin"),
        "pgd_smooth": lambda: wc.bpda(bpda_smooth(net, temperature), loss="ce", steps=steps, restarts=1,
                                      name="pgd_smooth"),
        "square": lambda: wc.square(queries=queries, restarts=1, name="square"),
    }
    at_zero = ("pgd_true", "pgd_bpda_margin", "square")
    return [make[m]() for m in names if kappa > 0 or m in at_zero]


def adaptive_evaluation(model: nn.Module, kappas: Sequence[float], x: torch.Tensor, y: torch.Tensor,
                        eps_list: Sequence[float], threat: float, cfg: RunConfig, ddn_steps: int = 0) -> dict:
    """Per kappa: clean accuracy, the worst case over ``cfg.members`` at every radius (nested balls: an image
    fooled at a smaller eps is fooled at a larger one), at the threat radius what each member added, the
    worst case rerun with each of ``cfg.seeds``, and (``ddn_steps`` > 0) the adaptive min-norm attack
    (DDN through BPDA, with its convergence check). Every accuracy carries n and a 95% Wilson interval."""
    kw = dict(steps=cfg.pgd_steps, restarts=cfg.restarts, queries=cfg.square_queries,
              temperature=cfg.smooth_temperature)
    source = retrofit(model, 0.0)
    out = {}
    for kappa in sorted({0.0, *(float(k) for k in kappas)}):
        net = retrofit(model, kappa)
        members = ensemble(net, source, kappa, cfg.members, **kw)
        correct = evaluate.predict(net, x) == y
        curve = evaluate.worst_case_curve(net, x, y, sorted(eps_list), members, batch_size=cfg.batch_size,
                                          seed=cfg.seed)
        at_threat = {s: evaluate.worst_case(net, x, y, threat, members, batch_size=cfg.batch_size, seed=s)
                     for s in cfg.seeds}
        row = {"clean": evaluate.accuracy_record(correct), "n": len(y),
               "curve": [evaluate.to_record(r) for r in curve],
               "threat": {"eps": threat, "members": [m.name for m in members],
                          "seeds": {str(s): evaluate.to_record(r) for s, r in at_threat.items()}}}
        if ddn_steps > 0:
            row["min_norm"] = evaluate.min_norm(net, x, y, attack_model=bpda_relu(net), steps=ddn_steps,
                                                batch_size=cfg.batch_size, seed=cfg.seed)
        out[f"{kappa:g}"] = row
    return out


def autoattack_at(model: nn.Module, kappa: float, x: torch.Tensor, y: torch.Tensor, eps: float,
                  cfg: RunConfig) -> dict:
    """AutoAttack (standard) on the ``kappa``-retrofit: the field's reference number. It follows the
    retrofit's own (masked) gradient and adds Square, so it is a reference, not an adaptive attack."""
    res = evaluate.autoattack_accuracy(retrofit(model, kappa), x, y, eps, norm="linf", batch_size=cfg.batch_size,
                                       seed=cfg.seed)
    return {"kappa": kappa, **{k: v for k, v in res.items() if k != "seconds"}}  # seconds are not a metric


def health(model: nn.Module, kappa: float, x: torch.Tensor, y: torch.Tensor, d: str, cfg: RunConfig,
           worst: dict | None = None) -> list[dict]:
    """The health table of one retrofit at the threat radius: attacks follow the BPDA copy, gradients are
    measured on the exact retrofit, the transfer check uses PGD examples of the kappa = 0 network."""
    eps = threat_eps(DATASET[d])
    gen = torch.Generator(evaluate.model_device(model)).manual_seed(cfg.seed)
    transfer = evaluate.run_attack(attacks.pgd_linf, model, x, y, cfg.batch_size, eps=eps, steps=cfg.health_steps,
                                   generator=gen, early_stop=False)
    jump = retrofit(model, kappa)
    return evaluate.health_checks(jump, x, y, eps=eps, norm="linf", steps=cfg.health_steps,
                                  num_classes=dataset_info(DATASET[d]).num_classes, attack_model=bpda_relu(jump),
                                  transfer_x_adv=transfer, worst=worst, batch_size=cfg.batch_size, seed=cfg.seed)


# ---------------------------------------------------------------------------
# The chapter's steps, one call each from the notebook, and their tables


def _datasets(cfg: RunConfig) -> list[str]:
    return [d for d in DATASET if d in cfg.datasets]


def train_all(cfg: RunConfig) -> tuple[dict, dict, dict, dict]:
    """Train (or load) every model of ``cfg.datasets``. Returns ``(nets, data, train_metrics, timings)``:
    ``nets[f"{d}_{kind}"]``, ``data[d] = {"test", "val", "info"}``; wall-clock seconds go to ``timings``."""
    from ..data import load_dataset

    nets, data, rows, timings = {}, {}, {}, {"train": {}}
    for d in _datasets(cfg):
        models, metas, splits = train_models(cfg, d)
        data[d] = {"test": load_dataset(DATASET[d], "test"), "val": splits["val"], "info": dataset_info(DATASET[d])}
        clean = data[d]["test"].first(cfg[f"{d}_n_clean"])
        for kind, net in models.items():
            key = f"{d}_{kind}"
            nets[key] = net
            rows[key] = {"architecture": ARCH[d], "train_images": len(splits["train"]), "epochs": cfg[f"{d}_epochs"],
                         "clean": evaluate.accuracy_record(evaluate.predict(net, clean.x) == clean.y),
                         "test_source": clean.source}
            timings["train"][key] = {"seconds": metas[kind]["train_seconds"], "cached": metas[kind]["cached"]}
    return nets, data, rows, timings


def training_table(rows: dict, timings: dict, cfg: RunConfig) -> str:
    """The models, their clean accuracy with its interval, and what the profile cut from the official recipe."""
    from ..report import markdown_table
    from ..train import official_milestones

    table = markdown_table(
        [{"model": k, **r, "seconds": timings["train"][k]["seconds"], "cached": timings["train"][k]["cached"]}
         for k, r in rows.items()],
        {"model": "model", "architecture": "architecture", "train_images": "train images", "epochs": "epochs",
         "clean": "clean test accuracy [95% CI]", "seconds": "train s", "cached": "from cache"},
        {"clean": lambda r: f"{_iv(r)} (n = {r['n']:,})", "seconds": lambda v: f"{v:.0f}"})
    cuts = []
    for d in _datasets(cfg):
        full_n = 60000 if d == "mnist" else 50000
        n_train, ep = cfg[f"{d}_train_size"] - cfg[f"{d}_n_val"], cfg[f"{d}_epochs"]
        if ep < 90 or cfg[f"{d}_train_size"] < full_n:
            cuts.append(f"{NAME[d]}: {n_train:,} training images × {ep} epochs = {n_train * ep / (full_n * 90):.1%} of "
                        f"the official {full_n:,} × 90 image-passes, initial learning rate {cfg[f'{d}_lr']:g} (× 0.2 "
                        f"at epochs {', '.join(str(e) for e in official_milestones(ep)) or 'none'})"
                        + (" (the paper's CIFAR-10 AlexLike reaches 87.52% clean)" if d == "cifar" else "")
                        + (", without the official crops and flips" if d == "cifar" and not cfg.cifar_augment else ""))
    sources = "; ".join(f"{NAME[k.split('_')[0]]} — {r['test_source']}" for k, r in rows.items()
                        if k.endswith("baseline"))
    note = ("\n\n**Shortened training.** " + "; ".join(cuts) + ". Robustness numbers of an undertrained model are "
            "not the paper's; the comparisons below are within this run." if cuts else "")
    return table + f"\n\nTest sets: {sources}." + note


def choose_all(nets: dict, data: dict, cfg: RunConfig) -> tuple[dict, dict]:
    """The kappa sweep on validation images and the chosen kappa, per model."""
    sweeps, choice = {}, {}
    for key, net in nets.items():
        d = key.split("_")[0]
        v, n = data[d]["val"], cfg[f"{d}_n_attack"]
        sweeps[key] = kappa_sweep(net, cfg[f"{d}_kappas"], v.x[:n], v.y[:n], ifgsm_step=step_pixels(cfg, d),
                                  ifgsm_steps=cfg[f"{d}_iter"], dataset=DATASET[d], x_clean=v.x, y_clean=v.y,
                                  batch_size=cfg.batch_size)
        choice[key] = choose_kappa(sweeps[key], cfg[f"{d}_budget"])
    return sweeps, choice


def choice_table(choice: dict) -> str:
    from ..report import markdown_table

    return markdown_table(
        [{"model": k, **c, "admissible": ", ".join(f"{a:g}" for a in c["admissible"])} for k, c in choice.items()],
        {"model": "model", "budget": "clean-accuracy budget", "admissible": "admissible κ", "kappa": "chosen κ",
         "clean_drop": "val clean drop", "ifgsm_acc": "val IFGSM acc (white-box)"},
        {"budget": pct, "clean_drop": pct, "ifgsm_acc": pct, "kappa": lambda k: f"{k:g}"})


def protocol_all(nets: dict, data: dict, cfg: RunConfig) -> dict:
    """The paper's protocol on the test set for every model: the kappa sweep with IFGSM and DeepFool."""
    out = {}
    for key, net in nets.items():
        d = key.split("_")[0]
        clean, att = data[d]["test"].first(cfg[f"{d}_n_clean"]), data[d]["test"].first(cfg[f"{d}_n_attack"])
        sweep = kappa_sweep(net, cfg[f"{d}_kappas"], att.x, att.y, ifgsm_step=step_pixels(cfg, d),
                            ifgsm_steps=cfg[f"{d}_iter"], dataset=DATASET[d], deepfool_iter=cfg[f"{d}_iter"],
                            deepfool_classes=cfg.deepfool_classes, n_deepfool=cfg[f"{d}_n_deepfool"],
                            x_clean=clean.x, y_clean=clean.y, batch_size=cfg.batch_size)
        out[key] = {"kappa": sweep, "n_clean": cfg[f"{d}_n_clean"], "n_attack": cfg[f"{d}_n_attack"],
                    "n_deepfool": cfg[f"{d}_n_deepfool"]}
    return out


def deepfool_note(cfg: RunConfig) -> str:
    ds = _datasets(cfg)
    return (f"DeepFool here: the {cfg.deepfool_classes - 1} highest-scoring other classes at the clean image as "
            "candidates (the official code takes all 9 and re-sorts them at every iterate), "
            + ", ".join(f"{cfg[f'{d}_iter']} iterations on {NAME[d]}" for d in ds)
            + " (official: 40 MNIST, 7 CIFAR-10), overshoot 0.02, on the first "
            + " / ".join(f"{cfg[f'{d}_n_deepfool']:,}" for d in ds) + " test images; IFGSM on the first "
            + " / ".join(f"{cfg[f'{d}_n_attack']:,}" for d in ds) + "."
            + (" Fewer candidates usually make DeepFool's perturbations larger (it may miss the nearest "
               "boundary), though for a greedy path this is not guaranteed." if cfg.deepfool_classes < 10 else ""))


def _rho(v) -> str:
    if isinstance(v, str):
        v = float(v)
    if not isinstance(v, float) or v != v:
        return "—"
    return "∞ (not all fooled)" if v == float("inf") else f"{100 * v:.2f}%"


def protocol_table(key: str, model_metrics: dict, choice: dict) -> str:
    from ..report import markdown_table

    rows = [{"kappa": k + (" ←" if float(k) == choice["kappa"] else ""), "clean": r["clean"],
             "w_ifgsm": r["white_box"]["ifgsm_acc"], "g_ifgsm": r["gray_box"]["ifgsm_acc"],
             "w_df2p": r["white_box"]["deepfool_l2_rho_paper"], "w_dfip": r["white_box"]["deepfool_linf_rho_paper"],
             "w_df2": r["white_box"]["deepfool_l2_rho"], "w_dfs": r["white_box"]["deepfool_l2_success"],
             "g_df2": r["gray_box"]["deepfool_l2_acc"], "g_dfi": r["gray_box"]["deepfool_linf_acc"]}
            for k, r in model_metrics["kappa"].items()]
    return f"**{key}** (← = κ chosen on validation)\n\n" + markdown_table(
        rows, {"kappa": "κ", "clean": "clean", "w_ifgsm": "IFGSM acc (white)", "g_ifgsm": "IFGSM acc (gray)",
               "w_df2p": "DF L2 ρ, paper units (white)", "w_dfip": "DF L∞ ρ, paper units (white)",
               "w_df2": "DF L2 ρ, pixels (white)", "w_dfs": "DF L2 success (white)",
               "g_df2": "DF L2 acc (gray)", "g_dfi": "DF L∞ acc (gray)"},
        {"clean": pct, "w_ifgsm": pct, "g_ifgsm": pct, "w_df2p": _rho, "w_dfip": _rho, "w_df2": _rho,
         "w_dfs": pct, "g_df2": pct, "g_dfi": pct})


#: The paper's one public row (CIFAR-10 AlexLike, "JumpReLU (Base)", white-box); ρ in the official units.
PAPER_ROW = {"clean": 0.8752, "ifgsm": 0.1856, "df_linf": 0.098, "df_l2": 0.106, "tr": 0.017}


def paper_comparison(metrics: dict, cfg: RunConfig) -> dict:
    ck = metrics["kappa_choice"]["cifar_baseline"]["kappa"]
    ours = metrics["models"]["cifar_baseline"]["kappa"][f"{ck:g}"]
    return {"paper": PAPER_ROW, "kappa": ck,
            "ours": {"clean": ours["clean"], "ifgsm": ours["white_box"]["ifgsm_acc"],
                     "df_linf": ours["white_box"]["deepfool_linf_rho_paper"],
                     "df_l2": ours["white_box"]["deepfool_l2_rho_paper"], "tr": float("nan")}}


def paper_comparison_table(comparison: dict, cfg: RunConfig) -> str:
    from ..report import markdown_table

    ck = comparison["kappa"]
    return markdown_table(
        [{"source": "paper (Table 2B)", **comparison["paper"]},
         {"source": f"this run, κ = {ck:g} ({cfg.profile} profile: {cfg.cifar_train_size - cfg.cifar_n_val:,} "
                    f"training images × {cfg.cifar_epochs} epochs; clean on {cfg.cifar_n_clean:,}, IFGSM on "
                    f"{cfg.cifar_n_attack:,}, DeepFool on {cfg.cifar_n_deepfool:,} test images)",
          **comparison["ours"]}],
        {"source": "", "clean": "clean", "ifgsm": "IFGSM acc", "df_linf": "DeepFool L∞ ρ (paper units)",
         "df_l2": "DeepFool L2 ρ (paper units)", "tr": "trust region ρ"},
        {"clean": pct, "ifgsm": pct, "df_linf": _rho, "df_l2": _rho,
         "tr": lambda v: "not run" if v != v else _rho(v)})


def _judged_kappas(key: str, choice: dict, cfg: RunConfig) -> list[float]:
    grid = cfg[f"{key.split('_')[0]}_kappas"]
    return grid if cfg.adaptive_all_kappas else sorted({0.0, choice["kappa"], max(grid)})


def adaptive_all(nets: dict, data: dict, choice: dict, cfg: RunConfig) -> dict:
    out = {}
    for key, net in nets.items():
        d = key.split("_")[0]
        sub = data[d]["test"].first(cfg[f"{d}_n_adaptive"])
        out[key] = adaptive_evaluation(net, _judged_kappas(key, choice[key], cfg), sub.x, sub.y,
                                       cfg[f"{d}_pgd_eps"], threat_eps(DATASET[d]), cfg,
                                       ddn_steps=cfg[f"{d}_ddn_steps"])
    return out


def adaptive_table(key: str, per_k: dict, choice: dict) -> str:
    """Per kappa and eps: clean, the worst case with its interval, and how many images each member added."""
    from ..report import markdown_table

    names = [m for m in MEMBERS if any(m in c["added"] for r in per_k.values() for c in r["curve"])]
    rows = []
    for k, r in per_k.items():
        for c in r["curve"]:
            rows.append({"kappa": k + (" ←" if float(k) == choice["kappa"] else ""), "eps": c["eps"],
                         "clean": r["clean"], **{m: c["added"].get(m) for m in names},
                         "worst": {"value": c["robust"], "interval": c["interval"]}})
    n = next(iter(per_k.values()))["n"]
    return (f"**{key}** — {n} test images (← = chosen κ; + n = images that member fooled beyond the earlier ones; "
            "— = not run at this κ)\n\n" + markdown_table(
                rows, {"kappa": "κ", "eps": "ε", "clean": "clean", **{m: f"+ {m}" for m in names},
                       "worst": "**worst case** [95% CI]"},
                {"eps": lambda e: f"{e:.3g}", "clean": _iv, **{m: (lambda v: "—" if v is None else f"+{v}")
                                                               for m in names},
                 "worst": lambda w: f"**{_iv(w)}**"}))


def plot_worst_case(adaptive: dict):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(adaptive), figsize=(3.2 * len(adaptive), 3), squeeze=False)
    for ax, (key, per_k) in zip(axes[0], adaptive.items()):
        for k, r in per_k.items():
            eps = [0.0] + [c["eps"] for c in r["curve"]]
            val = [r["clean"]["value"]] + [c["robust"] for c in r["curve"]]
            lo = [r["clean"]["interval"][0]] + [c["interval"][0] for c in r["curve"]]
            hi = [r["clean"]["interval"][1]] + [c["interval"][1] for c in r["curve"]]
            line, = ax.plot(eps, val, "o-", label=f"κ={k}")
            ax.fill_between(eps, lo, hi, color=line.get_color(), alpha=0.15)
        ax.axhline(0.1, color="gray", ls=":", lw=1, label="chance")
        ax.set(title=f"{key}: worst case", xlabel="L∞ radius ε", ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("accuracy")
    fig.tight_layout()
    return fig


def min_norm_table(adaptive: dict, models: dict) -> str:
    from ..report import markdown_table

    rows = [{"model": key, "kappa": k, **r["min_norm"], "df": models[key]["kappa"][k]["white_box"]["deepfool_l2_rho"]}
            for key, per_k in adaptive.items() for k, r in per_k.items() if "min_norm" in r]
    if not rows:
        return "The min-norm attack is off in this profile (`ddn_steps` = 0)."
    return markdown_table(
        rows, {"model": "model", "kappa": "κ", "rho_median": "DDN-BPDA median ρ (pixels)",
               "rho_median_double": "with 2× steps", "converged": "converged (< 2%)", "success_rate": "DDN success",
               "df": "DeepFool L2 mean ρ (pixels, white)"},
        {"rho_median": _rho, "rho_median_double": _rho, "success_rate": pct, "df": _rho,
         "converged": lambda c: "yes" if c else "**no**"})


def autoattack_all(nets: dict, data: dict, choice: dict, cfg: RunConfig) -> dict:
    """AutoAttack at the threat radius on every model at its judged kappa (where ``n_autoattack`` > 0)."""
    out = {}
    for key, net in nets.items():
        d = key.split("_")[0]
        n = cfg[f"{d}_n_autoattack"]
        if n == 0:
            continue
        sub = data[d]["test"].first(n)
        out[key] = autoattack_at(net, evaluated_kappa(choice[key], cfg[f"{d}_kappas"]), sub.x, sub.y,
                                 threat_eps(DATASET[d]), cfg)
    return out


def autoattack_table(autoattack: dict, adaptive: dict) -> str:
    from ..report import markdown_table

    if not autoattack:
        return "AutoAttack is off in this profile (`n_autoattack` = 0)."
    rows = []
    for key, a in autoattack.items():
        k = f"{a['kappa']:g}"
        ens = adaptive[key][k]["threat"]["seeds"]
        first = next(iter(ens.values()))
        rows.append({"model": key, "kappa": k, "aa": {"value": a["robust"], "n": a["n"], "interval": a["interval"]},
                     "ens": {"value": first["robust"], "n": first["n"],
                                                                "interval": first["interval"]}})
    return markdown_table(
        rows, {"model": "model", "kappa": "κ", "aa": "AutoAttack (standard) [95% CI]",
               "ens": "book's worst case [95% CI]"},
        {"aa": lambda r: f"{_iv(r)} (n = {r['n']:,})", "ens": lambda r: f"{_iv(r)} (n = {r['n']:,})"})


def health_all(nets: dict, data: dict, metrics: dict, cfg: RunConfig) -> dict:
    out = {}
    for key, net in nets.items():
        d = key.split("_")[0]
        sub = data[d]["test"].first(cfg[f"{d}_n_adaptive"])
        judged = evaluated_kappa(metrics["kappa_choice"][key], cfg[f"{d}_kappas"])
        for k in sorted({judged, max(cfg[f"{d}_kappas"])}):
            row = metrics["adaptive"][key].get(f"{k:g}")
            # the gradient-free check reads what Square added after the gradient members
            worst = row["threat"]["seeds"][str(cfg.seeds[0])] if row and "square" in cfg.members else None
            out[f"{key} κ={k:g}"] = health(net, k, sub.x, sub.y, d, cfg, worst=worst)
    return out


def plot_tradeoff(models_metrics: dict, kappa_choice: dict | None = None):
    """Accuracy vs kappa (clean, IFGSM white/gray) and DeepFool rho (paper units) vs kappa, one column per model."""
    import matplotlib.pyplot as plt

    keys = list(models_metrics)
    fig, axes = plt.subplots(2, len(keys), figsize=(3.3 * len(keys), 6), squeeze=False)
    for j, key in enumerate(keys):
        rows = models_metrics[key]["kappa"]
        ks = [float(k) for k in rows]
        ax = axes[0, j]
        ax.plot(ks, [r["clean"] for r in rows.values()], "o-", label="clean")
        for setting, ls in (("white_box", "-"), ("gray_box", "--")):
            ax.plot(ks, [r[setting]["ifgsm_acc"] for r in rows.values()], "s" + ls,
                    label=f"IFGSM {setting.replace('_', '-')}")
        if kappa_choice and key in kappa_choice:
            ax.axvline(kappa_choice[key]["kappa"], color="red", lw=1, ls=":", label="chosen κ")
        ax.set(title=key, xlabel="κ", ylim=(-0.02, 1.02), ylabel="accuracy" if j == 0 else None)
        ax.grid(alpha=0.3)
        ax = axes[1, j]
        for norm, marker in (("l2", "o"), ("linf", "^")):
            vals = [r["white_box"].get(f"deepfool_{norm}_rho_paper") for r in rows.values()]
            ax.plot(ks, [float("nan") if v is None or isinstance(v, str) else 100 * v for v in vals],
                    marker + "-", label=f"DeepFool {'L2' if norm == 'l2' else 'L∞'} (white-box)")
        ax.set(xlabel="κ", ylabel="mean ρ, paper units (%)" if j == 0 else None)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def kappa_examples_for(nets: dict, data: dict, models_metrics: dict, cfg: RunConfig) -> dict:
    """For the first model: one white-box IFGSM example of test image 0 per kappa, with the arguments
    :func:`kappa_strip` and :func:`kappa_slider` take."""
    key = next(iter(nets))
    d = key.split("_")[0]
    first = data[d]["test"].first(1)
    out = {}
    for k in cfg[f"{d}_kappas"]:
        net = retrofit(nets[key], k)
        adv = evaluate.run_attack(attacks.ifgsm, net, first.x, first.y, 1, step=step_pixels(cfg, d),
                                  steps=cfg[f"{d}_iter"])
        out[f"{k:g}"] = {"x_adv": adv[0], "pred_adv": int(evaluate.predict(net, adv)[0])}
    return {"rows": models_metrics[key]["kappa"], "examples": out, "classes": data[d]["info"].classes,
            "label": int(first.y[0]), "title": f"{key}: white-box IFGSM example of test image 0 per κ"}


def kappa_strip(rows: dict, examples: dict, classes, label: int, title: str = ""):
    """Static stand-in for the slider: per kappa, the adversarial example with clean and IFGSM accuracy."""
    import matplotlib.pyplot as plt

    ks = list(rows)
    fig, axes = plt.subplots(1, len(ks), figsize=(1.7 * len(ks), 2.4), squeeze=False)
    for ax, k in zip(axes[0], ks):
        e = examples[k]
        show_image(ax, e["x_adv"])
        ax.set_title(f"κ={k}\nclean {100 * rows[k]['clean']:.0f}% / adv {100 * rows[k]['white_box']['ifgsm_acc']:.0f}%"
                     f"\n{classes[label]}→{classes[e['pred_adv']]}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def kappa_slider(rows: dict, examples: dict, classes, label: int, title: str = ""):
    """An ipywidgets slider over the precomputed kappa grid (works only in a live kernel)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    ks = list(rows)

    def show(i):
        k = ks[i]
        fig, ax = plt.subplots(figsize=(2.4, 2.6))
        show_image(ax, examples[k]["x_adv"])
        ax.set_title(f"κ = {k}: clean {100 * rows[k]['clean']:.1f}%, IFGSM {100 * rows[k]['white_box']['ifgsm_acc']:.1f}%"
                     f"\n{classes[label]} → {classes[examples[k]['pred_adv']]}", fontsize=7)
        plt.show()

    return widgets.interact(show, i=widgets.IntSlider(min=0, max=len(ks) - 1, value=0, description="κ index"))


def _threat_row(adaptive_k: dict, seed: int) -> dict:
    """At the threat radius, for one attack seed: the ensemble's worst case and the paper's gradient alone
    (``pgd_true`` runs first, so what it fooled is exactly what it fools standalone), each with its interval."""
    from ..evaluate.stats import accuracy_record

    n = adaptive_k["n"]
    clean_k = round(adaptive_k["clean"]["value"] * n)
    rec = adaptive_k["threat"]["seeds"][str(seed)]
    return {"worst": {"value": rec["robust"], "n": n, "interval": rec["interval"]},
            "paper_gradient": accuracy_record(clean_k - rec["added"]["pgd_true"], n),
            "added": rec["added"], "eps": adaptive_k["threat"]["eps"]}


def verdict_summary(saved: dict) -> dict:
    """Per model, from a results file as read back: the category of its retrofit's robustness and the numbers
    behind it. Categories: ``broken`` (near-chance clean accuracy, or flagged near-constant by the health
    table), ``no_gain`` (the paper's own gradient under the eps bound shows no gain whose 95% interval clears
    kappa = 0's), ``masked`` (it does, but the adaptive worst case does not), ``survives`` (the worst case's
    interval clears kappa = 0's). Intervals are compared, never point values."""
    P, m = saved["parameters"], saved["metrics"]
    seed = P["seeds"][0]
    out = {}
    for key, choice in m["kappa_choice"].items():
        d = key.split("_")[0]
        k = f"{evaluated_kappa(choice, P[f'{d}_kappas']):g}"
        a0, ak = m["adaptive"][key]["0"], m["adaptive"][key][k]
        t0, tk = _threat_row(a0, seed), _threat_row(ak, seed)
        checks = saved["health"].get(f"{key} κ={k}", [])
        failed = [h["check"] for h in checks if not h["passed"]]
        constant = any("constant" in h["check"] and not h["passed"] for h in checks)
        clean = ak["clean"]
        chance = 1 / 10
        if clean["value"] <= chance + 0.1 or constant:
            category = "broken"
        elif not t0["paper_gradient"]["interval"][1] < tk["paper_gradient"]["interval"][0]:
            category = "no_gain"
        elif not t0["worst"]["interval"][1] < tk["worst"]["interval"][0]:
            category = "masked"
        else:
            category = "survives"
        spread = [ak["threat"]["seeds"][str(s)]["robust"] for s in P["seeds"]]
        out[key] = {"kappa": float(k), "chosen": choice["kappa"] > 0, "category": category, "clean": clean,
                    "clean_0": a0["clean"], "paper_gradient_0": t0["paper_gradient"],
                    "paper_gradient": tk["paper_gradient"], "worst_0": t0["worst"], "worst": tk["worst"],
                    "eps": tk["eps"], "added": tk["added"], "failed_checks": failed,
                    "seed_spread": [min(spread), max(spread)], "n_seeds": len(spread)}
    return out


def _iv(rec: dict) -> str:
    lo, hi = rec["interval"]
    return f"{pct(rec['value'])} [{pct(lo)}, {pct(hi)}]"


_SAY = {
    "broken": "its clean accuracy is near chance (or one class takes most predictions): whatever survives an "
              "attack is the robustness of a useless classifier, not counted.",
    "no_gain": "the paper's own gradient, bounded by the same ε, shows no gain whose interval clears κ = 0's, so "
               "there is no claim left for adaptive attacks to test at this scale.",
    "masked": "the gain the paper's gradient shows does not survive the adaptive ensemble: the worst case's "
              "interval does not clear κ = 0's. The retrofit masks the gradient; it does not move the boundary.",
    "survives": "the adaptive worst case still clears κ = 0's interval: part of the gain is real robustness "
                "(read it with the health table).",
}


def verdict(saved: dict) -> str:
    """The chapter's verdict in markdown, computed by :func:`verdict_summary` from a results file."""
    summary = verdict_summary(saved)
    lines = []
    for key, v in summary.items():
        added = ", ".join(f"{name} {count}" for name, count in v["added"].items() if count)
        lines.append(
            f"- **{key}**, " + (f"chosen κ = {v['kappa']:g}" if v["chosen"] else
                                f"validation chose κ = 0; the largest κ = {v['kappa']:g} stands in")
            + f": clean {_iv(v['clean'])} (κ = 0: {_iv(v['clean_0'])}). At ε = {v['eps']:.3g}, the paper's "
            f"gradient (PGD, true gradient) leaves {_iv(v['paper_gradient'])} (κ = 0: {_iv(v['paper_gradient_0'])}); "
            f"the adaptive worst case leaves {_iv(v['worst'])} (κ = 0: {_iv(v['worst_0'])})"
            + (f", images fooled per member in order: {added}" if added else "")
            + (f"; over {v['n_seeds']} attack seeds the worst case ranges {pct(v['seed_spread'][0])}–"
               f"{pct(v['seed_spread'][1])}" if v["n_seeds"] > 1 else "")
            + f". So {_SAY[v['category']]}"
            + (f" Failed health checks: {'; '.join(v['failed_checks'])}." if v["failed_checks"] else
               " All health checks passed."))
    cats = {v["category"] for v in summary.values()}
    usable = [k for k, v in summary.items() if v["category"] != "broken"]
    if "survives" in cats:
        head = ("**Verdict: the claim holds in part.** On " + ", ".join(k for k, v in summary.items()
                                                                       if v["category"] == "survives")
                + " the retrofit's gain survives adaptive attack.")
    elif "masked" in cats:
        head = ("**Verdict: the claim does not hold.** Where the paper's gradient sees a gain ("
                + ", ".join(k for k, v in summary.items() if v["category"] == "masked")
                + "), the adaptive ensemble removes it: JumpReLU's robustness is masked gradients.")
    elif usable:
        head = "**Verdict: nothing to confirm.** No usable model shows a gain under the paper's own gradient."
    else:
        head = "**Verdict: not measurable.** Every retrofit judged here is a near-constant classifier."
    scale = (f"\n\nScale: profile `{saved['profile']}`" + (" — smoke-scale numbers only exercise the code and mean "
                                                            "nothing." if saved["profile"] == "smoke" else "."))
    return head + "\n\n" + "\n".join(lines) + scale
