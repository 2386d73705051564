"""Chapter — Deep Defense, reproduced and stress-tested (chapter id ``deep_defense``).

The spec (parameters and profiles) plus the chapter's steps as functions, so the notebook stays a
sequence of short calls: reference models, fine-tuning variants, evaluation, cost.
"""
from __future__ import annotations

import math
import time

import torch
from torch import nn

from .. import attacks, evaluate
from ..config import ChapterSpec, Param, RunConfig
from ..data import ArrayDataset, load_dataset
from ..defenses.adversarial_training import AdversarialLoss
from ..defenses.deep_defense import RHO_REFERENCES, DeepDefenseLoss, DeepFoolRho, deepfool_rho
from ..models import build_model
from ..train import TrainConfig, cached_train, cross_entropy, trained_model

#: (model, dataset) pairs of the paper's code, in the order the page shows them.
MODELS = (("mlp", "mnist"), ("lenet", "mnist"), ("convnet", "cifar10"))
VARIANTS = ("reference", "fine-tune", "adversarial", "deep_defense")
#: DeepFool's Table 1 ρ_adv (L2) for the same architectures (NOTES.md §5).
ANCHORS = {"mlp": 0.11, "lenet": 0.20, "convnet": 0.030}


def _check(cfg: RunConfig) -> None:
    if len(cfg.lambda_sweep) != len(set(cfg.lambda_sweep)):
        raise ValueError(f"parameter lambda_sweep={cfg.lambda_sweep} must not repeat a value")
    if cfg.n_epoch_eval > cfg.n_eval:
        raise ValueError(f"parameter n_epoch_eval={cfg.n_epoch_eval} must not exceed n_eval={cfg.n_eval}")
    if cfg.n_health > min(cfg.n_eval, cfg.n_eval_cifar):
        raise ValueError(f"parameter n_health={cfg.n_health} must not exceed n_eval={cfg.n_eval} "
                         f"or n_eval_cifar={cfg.n_eval_cifar}")
    if cfg.cost_batch_size > min(cfg.ref_size_mnist, cfg.ref_size_cifar):
        raise ValueError(f"parameter cost_batch_size={cfg.cost_batch_size} exceeds the reference training sets")
    if cfg.n_eval_cifar > 1000:
        raise ValueError(f"parameter n_eval_cifar={cfg.n_eval_cifar} must be ≤ 1000 (the offline CIFAR-10 test set)")


PARAMS = {
    "ref_size_mnist": Param("pos_int", "MNIST training images for the reference models (the first N)"),
    "ref_size_cifar": Param("pos_int", "CIFAR-10 training images for the reference ConvNet (the first N)"),
    "ref_epochs_mnist": Param("pos_int", "reference-model training epochs, MNIST"),
    "ref_epochs_cifar": Param("pos_int", "reference-model training epochs, CIFAR-10"),
    "ref_lr": Param("pos_float", "reference-model SGD learning rate"),
    "ft_size_mlp": Param("pos_int", "MNIST images used to fine-tune the MLP (the first N)"),
    "ft_size_lenet": Param("pos_int", "MNIST images used to fine-tune LeNet (the first N)"),
    "ft_size_cifar": Param("pos_int", "CIFAR-10 images used for fine-tuning (the first N)"),
    "ft_epochs": Param("pos_int", "fine-tuning epochs (same for every variant)"),
    "ft_lr": Param("pos_float", "fine-tuning learning rate (official 5e-4)"),
    "lam": Param("nonneg_float", "Deep Defense λ"),
    "c": Param("nonneg_float", "Deep Defense c (weight of ρ for correct samples)"),
    "d": Param("nonneg_float", "Deep Defense d (weight of ρ for misclassified samples)"),
    "df_iter": Param("pos_int", "DeepFool iterations, in training and in the paper's ρ_adv"),
    "rho_reference": Param("choice", "where ρ = ‖Δx‖/‖x‖ is measured in the loss", RHO_REFERENCES),
    "adv_attack": Param("choice", "examples for adversarial fine-tuning", ("fgsm", "deepfool")),
    "adv_eps_factor": Param("pos_float", "FGSM fine-tuning radius as a multiple of ε_ref"),
    "lambda_sweep": Param("nonneg_float_list", "λ values for the trade-off sweep (on the MLP)"),
    "n_eval": Param("pos_int", "MNIST test images for ρ_adv and attacks (the first N)"),
    "n_eval_cifar": Param("pos_int", "CIFAR-10 test images for ρ_adv and attacks (the first N, ≤ 1000)"),
    "n_epoch_eval": Param("pos_int", "test images for ρ_adv after each epoch"),
    "ddn_steps": Param("pos_int", "DDN (minimum-norm L2 attack) steps"),
    "pgd_steps": Param("pos_int", "PGD-L2 steps (evaluation and the cost table)"),
    "n_health": Param("pos_int", "test images for the evaluation-health checks (the first N)"),
    "health_steps": Param("pos_int", "PGD-L∞ steps of the health checks"),
    "pgd_eps_mnist": Param("pos_float", "PGD-L2 radius on MNIST ([0, 1] pixels)"),
    "pgd_eps_cifar": Param("pos_float", "PGD-L2 radius on CIFAR-10 ([0, 1] pixels)"),
    "cost_batches": Param("pos_int", "training batches timed per loss for the cost table"),
    "cost_batch_size": Param("pos_int", "images per timed batch (the training batch is 100)"),
    "eps_ref_iter": Param("pos_int", "DeepFool-L∞ iterations for ε_ref"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed"),
}

_COMMON = {"ref_lr": 0.02, "ft_lr": 5e-4, "lam": 15.0, "c": 25.0, "d": 5.0, "df_iter": 5,
           "rho_reference": "normalized", "adv_attack": "fgsm", "adv_eps_factor": 0.5, "pgd_eps_mnist": 1.0,
           "pgd_eps_cifar": 0.25, "batch_size": 250, "seed": 0}

PROFILES = {
    # CI: every cell runs, on a few images (≤ 90 s on 2 cores).
    "smoke": {**_COMMON, "ref_size_mnist": 1000, "ref_size_cifar": 500, "ref_epochs_mnist": 1,
              "ref_epochs_cifar": 1, "ft_size_mlp": 100, "ft_size_lenet": 100, "ft_size_cifar": 20, "ft_epochs": 1,
              "lambda_sweep": [5.0, 15.0], "n_eval": 30, "n_eval_cifar": 20, "n_epoch_eval": 10,
              "ddn_steps": 5, "pgd_steps": 3, "n_health": 10, "health_steps": 2, "cost_batches": 1,
              "cost_batch_size": 10, "eps_ref_iter": 10},
    # ≤ 15 min on 2 CPU cores. The official lr (5e-4) throughout: 10× that was measured to cost clean accuracy
    # and, on LeNet, the ρ gain itself. A Deep Defense step costs ~40-55 plain steps on CPU (LeNet ≈ 3 s, the
    # CIFAR ConvNet ≈ 7 s per batch of 100 on one loaded core), so fine-tuning runs on subsets: most batches go
    # to the MLP (cheap, and where the λ sweep runs) and LeNet; the ConvNet gets 20 Deep Defense batches.
    # References are trained briefly (10k MNIST images × 2 epochs, 10k CIFAR-10 images × 6 epochs); DDN,
    # PGD and health checks run on the first 500 / 300 test images.
    "laptop": {**_COMMON, "ref_size_mnist": 60000, "ref_size_cifar": 10000, "ref_epochs_mnist": 3,
               "ref_epochs_cifar": 6, "ft_size_mlp": 6000, "ft_size_lenet": 3000, "ft_size_cifar": 1000,
               "ft_epochs": 2, "lambda_sweep": [5.0, 15.0, 45.0], "n_eval": 500, "n_eval_cifar": 300,
               "n_epoch_eval": 300, "ddn_steps": 50, "pgd_steps": 20, "n_health": 200, "health_steps": 10,
               "cost_batches": 2, "cost_batch_size": 100, "eps_ref_iter": 50},
    "paper": {**_COMMON, "ref_size_mnist": 60000, "ref_size_cifar": 50000, "ref_epochs_mnist": 10,
              "ref_epochs_cifar": 60, "ft_size_mlp": 60000, "ft_size_lenet": 60000, "ft_size_cifar": 50000,
              "ft_epochs": 5, "lambda_sweep": [5.0, 15.0, 45.0], "n_eval": 10000, "n_eval_cifar": 1000,
              "n_epoch_eval": 1000, "ddn_steps": 1000, "pgd_steps": 100, "n_health": 1000, "health_steps": 100,
              "cost_batches": 20, "cost_batch_size": 100, "eps_ref_iter": 50},
}

SPEC = ChapterSpec(
    name="deep_defense",
    title="Deep Defense: the DeepFool-perturbation regularizer",
    notebook="notebooks/deep_defense.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


# --------------------------------------------------------------------------- steps


def ft_size(cfg: RunConfig, name: str) -> int:
    """Fine-tuning images for model ``name`` (the first N of its training set)."""
    return {"mlp": cfg.ft_size_mlp, "lenet": cfg.ft_size_lenet, "convnet": cfg.ft_size_cifar}[name]


def data_for(cfg: RunConfig, name: str, dataset: str) -> dict:
    """Reference-training, fine-tuning, evaluation and health-check sets for model ``name`` on ``dataset``."""
    train, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    cifar = dataset == "cifar10"
    n_eval = cfg.n_eval_cifar if cifar else cfg.n_eval
    return {"ref": train.first(cfg.ref_size_cifar if cifar else cfg.ref_size_mnist),
            "ft": train.first(ft_size(cfg, name)),
            "eval": test.first(n_eval), "epoch_eval": test.first(min(cfg.n_epoch_eval, n_eval)),
            "health": test.first(min(cfg.n_health, n_eval)), "test_source": test.source}


def mean_subtraction_factor(model: nn.Module, x: torch.Tensor) -> float:
    """Mean over images of ‖x‖ / ‖x − μ‖, μ the per-channel mean of the model's ``Normalize`` layer: how much
    larger ρ is when measured on mean-subtracted inputs (as in the paper and DeepFool's anchors) than on
    [0, 1] pixels, for the same perturbation (exactly so on one-channel MNIST)."""
    from ..defenses.deep_defense import _normalize_layer

    norm = _normalize_layer(model)
    mu = norm.mean.to(x.device) if norm is not None else 0.0
    return float((x.flatten(1).norm(dim=1) / (x - mu).flatten(1).norm(dim=1).clamp_min(1e-12)).mean())


def reference_model(cfg: RunConfig, name: str, dataset: str) -> tuple[nn.Module, dict]:
    """The pretrained model every variant starts from (cached)."""
    cifar = dataset == "cifar10"
    epochs = cfg.ref_epochs_cifar if cifar else cfg.ref_epochs_mnist
    config = TrainConfig(epochs=epochs, lr=cfg.ref_lr, batch_size=128, augment=cifar, seed=cfg.seed,
                         milestones=tuple(m for m in (round(0.5 * epochs), round(0.75 * epochs)) if 0 < m < epochs))
    return trained_model(name, dataset, config, train_size=cfg.ref_size_cifar if cifar else cfg.ref_size_mnist)


def finetune_config(cfg: RunConfig, dataset: str) -> TrainConfig:
    """The official fine-tuning recipe: SGD momentum 0.9, wd 5e-4, batch 100, lr × 0.5 at 80% of the epochs,
    BN frozen (flip augmentation on CIFAR-10 as in the official data loader)."""
    m = int(0.8 * cfg.ft_epochs)
    return TrainConfig(epochs=cfg.ft_epochs, batch_size=100, lr=cfg.ft_lr, momentum=0.9, weight_decay=5e-4,
                       milestones=(m,) if 0 < m < cfg.ft_epochs else (), gamma=0.5, freeze_bn=True,
                       augment=False, seed=cfg.seed)


def variant_loss(cfg: RunConfig, variant: str, eps_ref: float, lam: float | None = None):
    if variant == "fine-tune":
        return cross_entropy
    if variant == "adversarial":
        return AdversarialLoss(cfg.adv_attack, eps=cfg.adv_eps_factor * eps_ref, mix=0.5, steps=cfg.df_iter)
    if variant == "deep_defense":
        return DeepDefenseLoss(lam=cfg.lam if lam is None else lam, c=cfg.c, d=cfg.d, max_iter=cfg.df_iter,
                               rho_reference=cfg.rho_reference)
    raise ValueError(f"unknown variant {variant!r}")


def finetune(cfg: RunConfig, name: str, dataset: str, ref: nn.Module, data: dict, loss) -> tuple[nn.Module, dict]:
    """Fine-tune a copy of ``ref`` with ``loss`` (cached); ρ_adv is recorded after every epoch."""
    callback = DeepFoolRho(data["epoch_eval"].x, data["epoch_eval"].y, max_iter=cfg.df_iter, tag=dataset)
    recipe = {"model": name, "dataset": dataset, "subset": f"first {len(data['ft'])}", "stage": "finetune"}
    return cached_train(recipe, lambda: build_model(name, dataset), data["ft"], finetune_config(cfg, dataset),
                        loss=loss, init=ref, epoch_callback=callback)


def eps_ref(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250, max_iter: int = 50) -> float:
    """ε_ref: the median L∞ norm of the reference model's DeepFool-L∞ perturbation (``max_iter`` iterations)
    over the correctly classified evaluation images (an image it does not fool counts as ∞)."""
    x_adv = evaluate.run_attack(attacks.deepfool, model, x, y, batch_size, norm=math.inf, max_iter=max_iter)
    s = evaluate.min_norm_summary(x, x_adv, y, model, p=math.inf)
    if not math.isfinite(s["norm_median"]):
        raise ValueError(f"ε_ref is {s['norm_median']} ({s['n_correct']} of {len(x)} evaluation images correctly "
                         f"classified, DeepFool success {s['success_rate']:.0%}): raise n_eval / n_eval_cifar or "
                         "train the reference model longer")
    return s["norm_median"]


def evaluate_model(cfg: RunConfig, model: nn.Module, data: dict, eps_reference: float, pgd_eps: float) -> dict:
    """Clean accuracy; ρ_adv by the paper's DeepFool (``df_iter`` steps) and by DDN; PGD-L2 accuracy at
    ``pgd_eps``; FGSM accuracy at 0.2, 0.5, 1.0 × ε_ref."""
    x, y = data["eval"].x, data["eval"].y
    out = deepfool_rho(model, x, y, max_iter=cfg.df_iter)
    adv = evaluate.run_attack(attacks.ddn, model, x, y, cfg.batch_size, steps=cfg.ddn_steps)
    s = evaluate.min_norm_summary(x, adv, y, model, p=2)
    out.update(rho_ddn_median=s["rho_median"], rho_ddn_mean=s["rho_mean"], ddn_success=s["success_rate"])
    gen = torch.Generator(evaluate.model_device(model)).manual_seed(cfg.seed)
    out["pgd_l2_acc"] = evaluate.accuracy(model, evaluate.run_attack(
        attacks.pgd_l2, model, x, y, cfg.batch_size, eps=pgd_eps, steps=cfg.pgd_steps, generator=gen), y)
    out["fgsm_acc"] = {f"{f:g}": evaluate.accuracy(model, evaluate.run_attack(
        attacks.fgsm, model, x, y, cfg.batch_size, eps=f * eps_reference), y) for f in (0.2, 0.5, 1.0)}
    return out


def seconds_per_batch(model: nn.Module, loss, x: torch.Tensor, y: torch.Tensor, batches: int) -> float:
    """Median wall-clock seconds of one training step (loss, backward, SGD step) over ``batches`` steps,
    after one warm-up step, on a throw-away copy of ``model``."""
    import copy

    net = copy.deepcopy(model).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-6)  # the weights barely move: every step costs the same
    times = []
    for i in range(batches + 1):
        start = time.perf_counter()
        value = loss(net, x, y)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def cost_table(cfg: RunConfig, model: nn.Module, data: ArrayDataset, eps_reference: float, pgd_eps: float) -> dict:
    """Seconds per batch of ``cost_batch_size`` images for each training objective, timed back to back in
    this run, and the extrapolated seconds per epoch of the full 50-60k training set."""
    x, y = data.x[:cfg.cost_batch_size], data.y[:cfg.cost_batch_size]
    losses = {"plain fine-tuning": cross_entropy,
              f"adversarial ({cfg.adv_attack})": variant_loss(cfg, "adversarial", eps_reference),
              f"PGD-{cfg.pgd_steps} L2 adversarial training": AdversarialLoss("pgd_l2", eps=pgd_eps, mix=1.0,
                                                                          steps=cfg.pgd_steps, seed=cfg.seed),
              "Deep Defense": variant_loss(cfg, "deep_defense", eps_reference)}
    per_batch = {k: seconds_per_batch(model, fn, x, y, cfg.cost_batches) for k, fn in losses.items()}
    n_full = 50000 if data.name == "cifar10" else 60000
    base = per_batch["plain fine-tuning"]
    return {k: {"seconds_per_batch": v, "seconds_per_epoch_full": v * n_full / len(x), "ratio_to_plain": v / base}
            for k, v in per_batch.items()}
