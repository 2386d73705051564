"""Chapter — entropic retraining (Sperl & Böttinger, arXiv 2008.03072), the book's two readings tested (id
``entropic_retraining``).

The method section of the paper could not be read and no code was published; what is the paper's and what is the
book's reading is listed in :mod:`robustness_book.defenses.entropic` and on the page. Two readings are tested side by
side (:data:`READINGS`): reading A pulls chosen layers' entropy toward an adversarially trained network's
(:func:`entropic_loss`), reading B, free of adversarial training as the paper's defining claim requires, moves
every candidate layer's entropy in one direction chosen on held-out images (:func:`free_loss`). Everything the
page calls, in page order:

* :data:`SPEC` (parameters, profiles ``smoke``/``laptop``/``paper``) and the training recipes: the anchor CNN
  (:func:`robustness_book.models.entropic_cnn`) with Keras' default initialization (:func:`keras_initialized`),
  :func:`train_config`, :func:`finetune_config`, :func:`adversarial_loss`, :func:`entropic_loss`,
  :func:`free_loss`;
* the steps, each ``step(run)`` on a :class:`Run` (the kit's): :func:`train_references` (the normal and the
  adversarially trained model), :func:`profiles_all` (per-layer entropy profiles on held-out images, and reading A's
  layers, chosen on them), :func:`sweep_all` (entropic fine-tuning for every λ of both readings, λ and reading B's
  direction chosen on held-out images by :func:`choose_lambda` and :func:`free_to_test`), :func:`evaluate_all`
  (clean, PGD-CE alone and the worst case: PGD-CE, the book's default ensemble and transfer, and the float32 logit
  saturation of :func:`logit_saturation`), :func:`autoattack_all` (AutoAttack on the worst case's survivors, on the
  same images for each entropic model and the yardstick, :func:`robustness_book.chapters.kit.autoattack_on_survivors`),
  :func:`health_all` and :func:`cost_all` (seconds per training step, into ``timings``; :func:`training_costs`
  turns them into each recipe's cost as a ratio to normal training);
* tables and figures as functions of the results (``run.results()`` or a saved file); the verdict
  (:func:`verdict_summary`, :func:`verdict`), a pure function of the results dict.

The verdict (:mod:`robustness_book.evaluate.outcome`): per data set and reading, "entropic retraining at the tested λ
is more robust than the normal network" and, as the yardstick, the same for adversarial training, each judged on
the same test images (the worst case's per-image outcomes, exact McNemar, Holm across the readings and data sets;
:data:`MIN_EFFECT`) with :func:`robustness_book.chapters.kit.paired_outcome`: holds, does not hold, or inconclusive
with its reason. Where the yardstick holds, each reading is graded by the fraction of adversarial training's gain
it recovers (:func:`grade`, Fieller's interval), and its AutoAttack accuracy is set beside the authors' number
read from ``robustness_book/anchors/entropic_retraining.json``; where it does not, the page says "no yardstick". The
radius judged is the threat radius ``eps``: it is the radius of the paper's claim (its AutoAttack number on
CIFAR-10), and the chapter measures no smaller one, so where the normal network is at 0% there the outcome is
*inconclusive (floor)*, said plainly. A positive must survive AutoAttack on the worst case's survivors and the
gating health checks; "masked gradients" is printed only with evidence (the worst case clearly below PGD-CE alone
on the same images, :func:`robustness_book.evaluate.outcome.removed_by`, naming the member that removed the gain).

Record vocabulary: ``defense`` is the model's role (:data:`NORMAL` = ``"none"``, :data:`CONTROL` =
``"fine_tune"``, :data:`ENTROPIC` = ``"entropic"`` (reading A), :data:`ENTROPIC_FREE` = ``"entropic_at_free"``
(reading B), :data:`ADVERSARIAL` = ``"adversarial_training"``); the sweeps' records are the reading's role with
``lam`` (λ = 0, the control, is reading A's record, shared) and ``split="val"``, reading B's with ``direction``;
``chosen_lambda``/``tested_lambda`` records per reading (reading B's with ``direction`` and ``layers``); entropy
records carry ``layer``, ``kind`` (conv/dense), ``std`` (over the held-out batches) and ``batches``. The worst
case is in the kit's vocabulary (:func:`robustness_book.chapters.kit.worst_case_records`): ``images_fooled`` per member
with ``order``, and the first member, PGD-CE, alone (``alone=True``). The threat radius is the parameter ``eps``
(per data set).
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from .. import attacks, evaluate
from ..config import ChapterSpec, Param, RunConfig, check_counts
from ..data import DATASETS, ArrayDataset, dataset_info, load_dataset, threat_eps
from ..defenses.adversarial_training import AdversarialLoss
from ..defenses.entropic import ESTIMATORS, EntropicLoss, layer_entropies
from ..evaluate import members as M
from ..evaluate.outcome import REASONS, Outcome, removed_by
from ..evaluate.stats import paired_test
from ..models import MODELS, build_model, check_model
from ..report import duration, health_tables as _health_tables, markdown_table, pct, pct_interval, record_table
from ..results import anchors, first, one, record, select
from ..train import TrainConfig, cross_entropy, export_entry, seconds_per_step, trained_model
from . import kit

CHAPTER = "entropic_retraining"
#: The models' roles, as the ``defense`` field of the records, in page order.
NORMAL, CONTROL, ENTROPIC, ENTROPIC_FREE, ADVERSARIAL = ("none", "fine_tune", "entropic", "entropic_at_free",
                                                         "adversarial_training")
ROLES = (NORMAL, CONTROL, ENTROPIC, ENTROPIC_FREE, ADVERSARIAL)
#: The two readings of the unpublished loss, each an entropic role. Reading A (:data:`ENTROPIC`) pulls the loss
#: layers' entropy toward an adversarially trained network's, so it needs one; reading B (:data:`ENTROPIC_FREE`)
#: moves it in a fixed direction per layer, with no adversarial example anywhere, as the paper's defining claim
#: requires. Every verdict sentence on the claim names its reading.
READINGS = {ENTROPIC: "reading A (targets from an adversarially trained network)",
            ENTROPIC_FREE: "reading B (AT-free: a fixed direction, no adversarial example)"}
LABELS = {NORMAL: "normal training", CONTROL: "plain fine-tuning (λ = 0)",
          ENTROPIC: "entropic retraining, reading A (AT targets)",
          ENTROPIC_FREE: "entropic retraining, reading B (AT-free)", ADVERSARIAL: "adversarial training"}
#: Reading B's directions: the sign ``d`` of its term ``−Σ_l d·H_l`` (:class:`robustness_book.defenses.entropic.
#: EntropicLoss`), the same for every loss layer.
DIRECTIONS = {"lower": -1, "raise": 1}
GERUNDS = {"lower": "lowering", "raise": "raising"}
LAYER_CANDIDATES = ("dense", "conv", "all")
AT_FROM = ("normal", "scratch")
#: Crop-and-flip augmentation in normal training (and adversarial training from scratch); fine-tuning never
#: augments, so the entropy the loss sees is measured on images like the held-out ones its targets come from.
AUGMENT = {"mnist": False, "fashion_mnist": False, "cifar10": True}
#: Targets are rounded to this many decimals (nats) before they enter the loss: the loss's spec keys the checkpoint
#: cache, and a last-bit difference in a profile (another thread count) must not retrain the sweep.
TARGET_DECIMALS = 4
#: The analysis calls a layer changed by adversarial training when |H_adversarial − H_normal| exceeds this many
#: times the larger of the two profiles' standard deviations over the held-out batches.
CHANGE_SPREADS = 2.0


# --------------------------------------------------------------------------- SPEC


layer_kinds = kit.layer_kinds  # each entropy layer (every nn.ReLU) with its kind, "conv" or "dense"


def candidate_layers(kinds: Mapping[str, str | None], which: str) -> list[str]:
    """The layers of ``kinds`` (:func:`layer_kinds`) the loss may act on: ``"dense"``, ``"conv"`` or ``"all"``."""
    if which not in LAYER_CANDIDATES:
        raise ValueError(f"layer_candidates={which!r} is invalid: expected one of {', '.join(LAYER_CANDIDATES)}")
    return [name for name, kind in kinds.items() if which == "all" or kind == which]


def _check(cfg: RunConfig) -> None:
    if 0.0 not in cfg.lams or len(set(cfg.lams)) != len(cfg.lams):
        raise ValueError(f"parameter lams={cfg.lams} must contain 0 (plain fine-tuning, the control) and must not "
                         f"repeat a value")
    if cfg.estimator == "histogram" and cfg.bins < 2:
        raise ValueError(f"parameter bins={cfg.bins} must be at least 2")
    for d in cfg.datasets:
        if not cfg.eps[d] > 0:
            raise ValueError(f"parameter eps[{d!r}]={cfg.eps[d]} must be positive (the threat radius)")
        try:
            check_model(cfg.model[d], d)
        except ValueError as err:
            raise ValueError(f"parameter model[{d!r}]={cfg.model[d]!r}: {err}") from None
        check_counts(cfg, {("train_size", "n_val"): "train"}, [d])  # n_val: the images after train_size
        if cfg.entropy_batches * cfg.batch_size > cfg.n_val[d]:
            raise ValueError(f"parameters entropy_batches × batch_size = {cfg.entropy_batches * cfg.batch_size:,} "
                             f"exceed n_val[{d!r}]={cfg.n_val[d]:,} (profiles are measured on held-out images)")
        # (name, its bound's name, why): every such count must not exceed its bound
        for name, bound, why in (("ft_size", "train_size", "fine-tuning sees the normal model's training images"),
                                 ("n_select", "n_val", "lambda is chosen on held-out images"),
                                 ("n_adaptive", "n_test", "the first test images"),
                                 ("n_autoattack", "n_adaptive", "AutoAttack runs on the worst case's first images")):
            if cfg[name][d] > cfg[bound][d]:
                raise ValueError(f"parameter {name}[{d!r}]={cfg[name][d]:,} must not exceed {bound}[{d!r}]="
                                 f"{cfg[bound][d]:,} ({why})")
        check_counts(cfg, {"n_test": "test"}, [d])
        have = candidate_layers(layer_kinds(build_model(cfg.model[d], d)), cfg.layer_candidates)
        if cfg.n_layers > len(have):
            raise ValueError(f"parameter n_layers={cfg.n_layers} exceeds the {len(have)} {cfg.layer_candidates} "
                             f"activation layers of {cfg.model[d]} ({', '.join(have) or 'none'})")


PARAMS = {
    "datasets": Param("subset", "data sets the chapter runs on", DATASETS),
    "model": Param("choice", "architecture (robustness_book.models) per data set", tuple(MODELS), per_dataset=True),
    "eps": Param("eps_linf", "L∞ threat radius (adversarial training, lambda selection, worst case, AutoAttack, "
                 "health checks)", per_dataset=True),
    "train_size": Param("pos_int", "training images of the normal model (the first N)", per_dataset=True),
    "epochs": Param("pos_int", "epochs of normal training (and of adversarial training from scratch)",
                    per_dataset=True),
    "lr": Param("pos_float", "peak one-cycle learning rate of normal training (and of adversarial training from "
                "scratch)", per_dataset=True),
    "n_val": Param("pos_int", "held-out training images after the first train_size (layers and lambda are chosen "
                   "on them)", per_dataset=True),
    "ft_size": Param("pos_int", "training images of every fine-tuning (the first N)", per_dataset=True),
    "ft_epochs": Param("pos_int", "epochs of every fine-tuning (plain, entropic, adversarial)", per_dataset=True),
    "ft_lr": Param("pos_float", "peak one-cycle learning rate of every fine-tuning", per_dataset=True),
    "at_from": Param("choice", "adversarial training: fine-tune the normal model (normal) or train from new "
                     "weights (scratch)", AT_FROM),
    "at_steps": Param("pos_int", "PGD steps of adversarial training (at the threat radius)", per_dataset=True),
    "at_mix": Param("fraction", "weight of the PGD examples in adversarial training, at most 1 (0.5 is half clean "
                    "and half adversarial cross-entropy, 1 adversarial only)"),
    "estimator": Param("choice", "entropy estimator of the profiles and of the loss", ESTIMATORS),
    "bins": Param("pos_int", "histogram bins of the entropy estimator (at least 2)"),
    "entropy_batches": Param("pos_int", "held-out batches of batch_size images each profile is averaged over"),
    "layer_candidates": Param("choice", "activation layers the entropic loss may act on", LAYER_CANDIDATES),
    "n_layers": Param("pos_int", "candidate layers reading A's loss acts on: those whose held-out entropy "
                      "adversarial training moved most"),
    "free_directions": Param("subset", "directions reading B (AT-free) may move the entropy of every candidate "
                             "layer in; chosen with lambda on held-out images", tuple(DIRECTIONS)),
    "lams": Param("nonneg_float_list", "lambda values of the sweep of each reading (0 is plain fine-tuning, the "
                  "control)"),
    "clean_budget": Param("nonneg_float", "largest held-out clean-accuracy loss the chosen lambda may cost",
                          per_dataset=True),
    "n_select": Param("pos_int", "held-out images lambda is chosen on (clean and PGD accuracy)", per_dataset=True),
    "select_steps": Param("pos_int", "PGD steps when choosing lambda"),
    "n_test": Param("pos_int", "test images for clean accuracy (the first N)", per_dataset=True),
    "n_adaptive": Param("pos_int", "test images for PGD, the worst case, saturation and the health checks (the "
                        "first N)", per_dataset=True),
    "n_autoattack": Param("nonneg_int", "AutoAttack on the worst case's survivors among its first N images, for the "
                          "entropic models and adversarial training (0: not run)", per_dataset=True),
    "pgd_steps": Param("pos_int", "steps of the gradient members of the worst case (PGD-CE first, then the book's "
                       "ensemble)"),
    "restarts": Param("pos_int", "random restarts of the gradient members"),
    "square_queries": Param("pos_int", "queries per image of the Square member"),
    "health_steps": Param("pos_int", "PGD steps of the health checks"),
    "cost_steps": Param("pos_int", "training steps timed per objective for the cost table"),
    "batch_size": Param("pos_int", "training batch (the loss and the profiles estimate entropies on batches of "
                        "this size)"),
    "eval_batch_size": Param("pos_int", "attack and evaluation batch size"),
    "seed": Param("nonneg_int", "random seed"),
}


_per = kit.per_dataset  # the kit's per-data-set value (Fashion-MNIST takes MNIST's)


_COMMON = {
    "datasets": ["mnist", "cifar10"], "model": "entropic_cnn", "lr": 0.05, "ft_lr": 0.02, "estimator": "histogram",
    "bins": 16, "layer_candidates": "dense", "clean_budget": _per(0.01, 0.03), "batch_size": 128,
    "eval_batch_size": 250, "seed": 0, "eps": {d: threat_eps(d) for d in DATASETS},  # the standard radii
}

PROFILES = {
    # CI: every cell runs on a few hundred images (numbers not meaningful).
    "smoke": {**_COMMON, "train_size": _per(4000, 1000), "epochs": 1, "n_val": _per(500, 300), "ft_size": 256,
              "ft_epochs": 1, "at_from": "normal", "at_steps": 2, "at_mix": 0.5, "entropy_batches": 2, "n_layers": 2,
              "free_directions": ["lower"], "lams": [0.0, 1.0],
              # any λ within the budget, so that both readings' test-image paths run at this scale
              "clean_budget": 1.0, "n_select": 100, "select_steps": 3, "n_test": _per(200, 100),
              "n_adaptive": _per(20, 10), "n_autoattack": 5, "pgd_steps": 5, "restarts": 1,
              "square_queries": 50, "health_steps": 3, "cost_steps": 1},
    # 2 CPU cores. Speeds measured on one core of this (loaded) machine: the CIFAR-10 network trains at 1,000-1,100
    # images/s in bfloat16 and attacks at ~580 gradient steps/s, the MNIST one at 900-1,650 and ~920; two cores add
    # about 1.4×. Training, once, ~13 min (~18 at the single-core rates): the normal models (MNIST 55,000 × 2 epochs
    # ≈ 1-1.5 min; CIFAR-10 49,000 × 6 ≈ 3.5-5 min), then per data set five fine-tunings of the normal model, 2
    # epochs on 20,000 images: the four of reading A's λ sweep (an entropic step on three dense layers costs
    # 1.0-1.15× a plain one; ≈ 1.5-2 and 2-2.7 min) and adversarial fine-tuning, half clean, half PGD (a PGD-k step
    # costs k + 2 plain ones: PGD-5 on MNIST ≈ 2.5-3.5 min, PGD-3 on CIFAR-10 ≈ 2.5-3.3 min). Reading B adds one
    # fine-tuning per λ > 0 and direction: both directions, since adversarial training lowers some dense layers'
    # entropy and raises others' (the profile table), six per data set (each 8-11 s on MNIST in the reference run). Evaluation with the models cached: robust images are what costs (PGD-CE, then
    # the book's ensemble and AutoAttack spend their whole budget on each), so the adversarially trained models
    # dominate; were the entropic models as robust, that would be the headline.
    "laptop": {**_COMMON, "train_size": _per(55000, 49000), "epochs": _per(2, 6), "n_val": _per(5000, 1000),
               "ft_size": 20000, "ft_epochs": 2, "at_from": "normal", "at_steps": _per(5, 3), "at_mix": 0.5,
               "entropy_batches": 7, "n_layers": 3, "free_directions": ["lower", "raise"],
               "lams": [0.0, 0.1, 1.0, 10.0],
               "n_select": _per(1000, 500),
               "select_steps": 10, "n_test": _per(10000, 1000), "n_adaptive": _per(200, 250),
               "n_autoattack": _per(200, 250), "pgd_steps": 50, "restarts": 1, "square_queries": 1000,
               "health_steps": 50, "cost_steps": 5},
    # The anchor's scale, for a GPU: the whole training set but the held-out images, adversarial training from
    # scratch with PGD-40 (MNIST) / PGD-7 (CIFAR-10), the entropic fine-tuning as long as a tenth of it.
    "paper": {**_COMMON, "train_size": _per(55000, 49000), "epochs": _per(20, 60), "n_val": _per(5000, 1000),
              "ft_size": _per(55000, 49000), "ft_epochs": _per(2, 6), "at_from": "scratch", "at_steps": _per(40, 7),
              "at_mix": 1.0, "entropy_batches": 7, "n_layers": 3, "free_directions": ["lower", "raise"],
              "lams": [0.0, 0.1, 0.3, 1.0, 3.0, 10.0],
              "n_select": 1000, "select_steps": 20, "n_test": _per(10000, 1000), "n_adaptive": 1000,
              "n_autoattack": 1000, "pgd_steps": 100, "restarts": 3, "square_queries": 5000, "health_steps": 100,
              "cost_steps": 20},
}

SPEC = ChapterSpec(
    name=CHAPTER,
    title="Entropic retraining: mimicking adversarial training without adversarial examples",
    notebook="notebooks/entropic_retraining.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


# --------------------------------------------------------------------------- training recipes


def keras_initialized(model: str, dataset: str, seed: int) -> nn.Module:
    """``model`` for ``dataset`` with Keras' default initialization: Glorot-uniform weights and zero biases in
    every ``nn.Conv2d`` and ``nn.Linear`` (seeded). The authors' network was a Keras model (the book's inference);
    with PyTorch's default initialization its ten stacked layers start with a vanishing signal and plain SGD does
    not leave chance level within the laptop budget."""
    torch.manual_seed(seed)
    net = build_model(model, dataset)
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return net


def train_config(cfg: Mapping[str, Any], d: str) -> TrainConfig:
    """Normal training (and adversarial training from scratch): one-cycle Nesterov SGD (momentum 0.9, weight decay
    5e-4), the book's fast CPU settings (bfloat16 autocast, channels-last), crops and flips on CIFAR-10."""
    return TrainConfig(epochs=cfg["epochs"][d], batch_size=cfg["batch_size"], lr=cfg["lr"][d], nesterov=True,
                       schedule="onecycle", precision="bf16", channels_last=True, augment=AUGMENT[d],
                       seed=cfg["seed"])


def finetune_config(cfg: Mapping[str, Any], d: str) -> TrainConfig:
    """Every fine-tuning (plain, entropic, adversarial): :func:`train_config` with ``ft_epochs``, ``ft_lr`` and no
    augmentation."""
    return replace(train_config(cfg, d), epochs=cfg["ft_epochs"][d], lr=cfg["ft_lr"][d], augment=False)


def adversarial_loss(cfg: Mapping[str, Any], d: str) -> AdversarialLoss:
    """PGD adversarial training at the threat radius ``eps`` (``at_steps`` steps of 2.5·ε/steps, random start):
    ``(1 − at_mix)·CE(clean) + at_mix·CE(PGD)``; ``at_mix = 1`` is Madry et al.'s objective. The laptop profile
    uses 0.5 (half clean), the book's choice for a short fine-tuning; whether the network it gives is a yardstick at
    all is measured, not assumed: the verdict prints "no yardstick" unless it is clearly more robust than the normal
    network on the same test images."""
    return AdversarialLoss("pgd_linf", eps=cfg["eps"][d], steps=cfg["at_steps"][d], mix=cfg["at_mix"],
                           seed=cfg["seed"])


def entropic_loss(cfg: Mapping[str, Any], targets: Mapping[str, float], lam: float) -> EntropicLoss:
    """Reading A: cross-entropy plus λ·Σ_l (H_l − target_l)² over the layers of ``targets``, with the run's
    estimator."""
    return EntropicLoss(lam=lam, targets=dict(targets), estimator=cfg["estimator"], bins=cfg["bins"])


def free_loss(cfg: Mapping[str, Any], layers: Sequence[str], direction: str, lam: float) -> EntropicLoss:
    """Reading B (AT-free): cross-entropy plus λ·(−Σ_l d·H_l) over ``layers``, with ``d`` the sign of ``direction``
    (:data:`DIRECTIONS`: ``"lower"`` −1, ``"raise"`` +1) for every layer, with the run's estimator. No adversarial
    example and no adversarially trained network enters it."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction={direction!r} is invalid: expected one of {', '.join(DIRECTIONS)}")
    return EntropicLoss(lam=lam, direction=dict.fromkeys(layers, DIRECTIONS[direction]), estimator=cfg["estimator"],
                        bins=cfg["bins"])


def splits(cfg: Mapping[str, Any], d: str) -> dict:
    """``train``: the first ``train_size`` training images; ``val``: the ``n_val`` after them (never trained on,
    :func:`robustness_book.chapters.kit.holdout_split`); ``test``: the first ``n_test`` test images."""
    a = cfg["train_size"][d]
    return {"train": load_dataset(d, "train").first(a), "val": kit.holdout_split(d, a, a + cfg["n_val"][d]),
            "test": load_dataset(d, "test").first(cfg["n_test"][d])}


def _fine_tune(cfg: Mapping[str, Any], d: str, start: nn.Module, loss) -> tuple[nn.Module, dict]:
    return trained_model(cfg["model"][d], d, finetune_config(cfg, d), train_size=cfg["ft_size"][d], loss=loss,
                         init=start)


def _timing(meta: dict) -> dict:
    return {"seconds": meta.get("train_seconds"), "cached": meta["cached"]}


def _accuracy(cfg, d: str, net: nn.Module, ds: ArrayDataset, role: str, **setting) -> dict:
    return kit.accuracy_record(cfg, net, ds, dataset=d, model=cfg["model"][d], batch_size=cfg["eval_batch_size"],
                               defense=role, split=ds.split, **setting)


#: One run of the chapter (:class:`robustness_book.chapters.kit.Run`): ``nets[d, role]`` (and ``nets[d, "sweep", λ]``),
#: ``data[d]`` (:func:`splits`), ``raw[d, role]`` (the worst cases, per image), ``exports`` (the tested models).
Run = kit.Run


def train_references(run: Run) -> None:
    """Per data set the normal model (``run.nets[d, "none"]``) and the adversarially trained one
    (``run.nets[d, "adversarial_training"]``: the normal model fine-tuned with PGD, or trained with PGD from new
    weights), their data (``run.data[d]``, :func:`splits`) and their clean test accuracy as records. Timings:
    training seconds and whether each model came from the cache."""
    cfg, nets = run.cfg, run.nets
    with run.timer("train"):
        for d in cfg.datasets:
            run.data[d] = splits(cfg, d)
            fresh = keras_initialized(cfg.model[d], d, cfg.seed)
            nets[d, NORMAL], meta = trained_model(cfg.model[d], d, train_config(cfg, d), train_size=cfg.train_size[d],
                                                  init=fresh)
            run.timings[f"{d}/{NORMAL}"] = _timing(meta)
            if cfg.at_from == "normal":
                nets[d, ADVERSARIAL], meta = _fine_tune(cfg, d, nets[d, NORMAL], adversarial_loss(cfg, d))
            else:
                nets[d, ADVERSARIAL], meta = trained_model(cfg.model[d], d, train_config(cfg, d),
                                                           train_size=cfg.train_size[d],
                                                           loss=adversarial_loss(cfg, d), init=fresh)
            run.timings[f"{d}/{ADVERSARIAL}"] = _timing(meta)
            run.records += [_accuracy(cfg, d, nets[d, role], run.data[d]["test"], role)
                            for role in (NORMAL, ADVERSARIAL)]


# --------------------------------------------------------------------------- the analysis: entropy profiles


def entropy_profile(model: nn.Module, x: torch.Tensor, layers: Sequence[str], batch_size: int,
                    **estimator) -> dict[str, tuple[float, float]]:
    """Per layer, the mean and the standard deviation over consecutive batches of ``batch_size`` images of ``x``
    (a last, smaller batch is dropped) of the entropy :func:`robustness_book.defenses.entropic.layer_entropies`
    measures on each batch (``estimator``: its keyword arguments). The loss estimates entropies on training
    batches of the same size, and the histogram's estimate depends on the batch size."""
    if len(x) < batch_size:
        raise ValueError(f"need at least one batch of {batch_size} images, got {len(x)}")
    dev = evaluate.model_device(model)
    per = [layer_entropies(model, x[i:i + batch_size].to(dev), list(layers), **estimator)
           for i in range(0, len(x) - batch_size + 1, batch_size)]
    table = torch.tensor([[p[name] for name in layers] for p in per], dtype=torch.float64)
    std = table.std(0) if len(per) > 1 else torch.zeros(len(layers), dtype=torch.float64)
    return {name: (float(table[:, i].mean()), float(std[i])) for i, name in enumerate(layers)}


def _profile_records(cfg, d: str, net: nn.Module, val: ArrayDataset, role: str, **setting) -> list[dict]:
    kinds = layer_kinds(net)
    x = val.x[:cfg["entropy_batches"] * cfg["batch_size"]]
    prof = entropy_profile(net, x, list(kinds), cfg["batch_size"], estimator=cfg["estimator"], bins=cfg["bins"])
    return [record(cfg, dataset=d, model=cfg["model"][d], defense=role, metric="entropy", value=mean,
                   n=cfg["entropy_batches"], split="val", layer=name, kind=kinds[name], std=std,
                   batch_size=cfg["batch_size"], estimator=cfg["estimator"], **setting)
            for name, (mean, std) in prof.items()]


def profiles_all(run: Run) -> None:
    """Per data set, the entropy profile (every activation layer, :func:`entropy_profile`) of the normal and the
    adversarially trained model on the first ``entropy_batches`` × ``batch_size`` held-out images, as records
    (``n``: the number of batches); then :func:`choose_layers` among the ``layer_candidates`` layers, as
    ``loss_layer`` records (value: the target entropy; ``change``: what adversarial training did to the layer)."""
    cfg = run.cfg
    with run.timer("profiles"):
        for d in cfg.datasets:
            for role in (NORMAL, ADVERSARIAL):
                run.records += _profile_records(cfg, d, run.nets[d, role], run.data[d]["val"], role)
            kinds = layer_kinds(run.nets[d, NORMAL])
            chosen = choose_layers(run.records, d, candidate_layers(kinds, cfg.layer_candidates), cfg.n_layers)
            run.records += [record(cfg, dataset=d, model=cfg.model[d], defense=ENTROPIC, metric="loss_layer",
                                   value=c["target"], split="val", layer=c["layer"], kind=kinds[c["layer"]],
                                   change=c["change"], order=rank) for rank, c in enumerate(chosen)]


def profile_of(records: Sequence[dict], d: str, role: str, lam: float | None = None) -> dict[str, dict]:
    """``{layer: entropy record}`` of one model's profile, in forward order (``lam``: a sweep model's)."""
    rows = select(records, dataset=d, metric="entropy", defense=role)
    rows = [r for r in rows if r["setting"].get("lam") == lam]
    return {r["setting"]["layer"]: r for r in rows}


def changed_layers(records: Sequence[dict], d: str) -> dict[str, list[str]]:
    """The layers adversarial training clearly moved (:data:`CHANGE_SPREADS`), as ``{"lowered": [...],
    "raised": [...]}`` in forward order, and ``"all"``: every profiled layer."""
    normal, adv = profile_of(records, d, NORMAL), profile_of(records, d, ADVERSARIAL)
    out = {"lowered": [], "raised": [], "all": [name for name in normal if name in adv]}
    for name in out["all"]:
        change = adv[name]["value"] - normal[name]["value"]
        if abs(change) > CHANGE_SPREADS * max(normal[name]["setting"]["std"], adv[name]["setting"]["std"]):
            out["lowered" if change < 0 else "raised"].append(name)
    return out


def choose_layers(records: Sequence[dict], d: str, candidates: Sequence[str], n_layers: int) -> list[dict]:
    """The rule, on held-out profiles: the ``n_layers`` layers of ``candidates`` whose entropy adversarial training
    moved most (largest |H_adversarial − H_normal|; ties go to the earlier layer), in forward order, each
    ``{"layer", "target" (H_adversarial, rounded to TARGET_DECIMALS), "change"}``."""
    normal, adv = profile_of(records, d, NORMAL), profile_of(records, d, ADVERSARIAL)
    change = {name: adv[name]["value"] - normal[name]["value"] for name in candidates}
    ranked = sorted(candidates, key=lambda name: (-abs(change[name]), list(candidates).index(name)))
    keep = set(ranked[:n_layers])
    return [{"layer": name, "target": round(adv[name]["value"], TARGET_DECIMALS), "change": change[name]}
            for name in candidates if name in keep]


def loss_targets(records: Sequence[dict], d: str) -> dict[str, float]:
    """``{layer: target entropy}`` of data set ``d``'s entropic loss, from its ``loss_layer`` records."""
    rows = sorted(select(records, dataset=d, metric="loss_layer"), key=lambda r: r["setting"]["order"])
    return {r["setting"]["layer"]: r["value"] for r in rows}


# --------------------------------------------------------------------------- entropic retraining: the λ sweep


def _pgd_accuracy(cfg, d: str, net: nn.Module, ds: ArrayDataset, steps: int, role: str, **setting) -> dict:
    gen = torch.Generator(evaluate.model_device(net)).manual_seed(cfg["seed"])
    x_adv = evaluate.run_attack(attacks.pgd_linf, net, ds.x, ds.y, cfg["eval_batch_size"], eps=cfg["eps"][d],
                                steps=steps, generator=gen)
    r = evaluate.accuracy_record(evaluate.predict(net, x_adv, cfg["eval_batch_size"]) == ds.y)
    return record(cfg, dataset=d, model=cfg["model"][d], defense=role, attack="pgd_ce", threat_model="linf",
                  eps=cfg["eps"][d], metric="accuracy", value=r["value"], n=r["n"], interval=r["interval"],
                  split=ds.split, steps=steps, **setting)


def _sweep_model(run: Run, d: str, role: str, lam: float, loss, **setting) -> tuple[nn.Module, dict, list[dict]]:
    """One model of a sweep: the normal model fine-tuned with ``loss`` (cached), and on held-out images its clean
    and PGD-CE accuracy (first ``n_select``, ``select_steps`` steps) and its entropy profile, as records."""
    cfg = run.cfg
    net, meta = _fine_tune(cfg, d, run.nets[d, NORMAL], loss)
    val = run.data[d]["val"]
    sel = val.first(cfg.n_select[d])
    out = [_accuracy(cfg, d, net, sel, role, lam=lam, **setting),
           _pgd_accuracy(cfg, d, net, sel, cfg.select_steps, role, lam=lam, **setting)]
    return net, meta, out + _profile_records(cfg, d, net, val, role, lam=lam, **setting)


def sweep_all(run: Run) -> None:
    """Per data set, both readings' sweeps on held-out images (:func:`_sweep_model`), each λ model fine-tuned from
    the normal one on clean images; λ = 0 is plain cross-entropy, the control, shared by both readings.

    Reading A: every λ of ``lams`` with :func:`entropic_loss`. Reading B (AT-free): every λ > 0 and direction of
    ``free_directions`` with :func:`free_loss` on all ``layer_candidates`` layers (no adversarially trained network
    chooses them). Then per reading the chosen λ and the λ the test images will measure (:func:`lambda_to_test`;
    reading B also its direction, :func:`free_to_test`) as records. Adds the models to ``run.nets`` (``(d, "sweep",
    λ)`` and ``(d, "sweep", direction, λ)``, the control as ``(d, "fine_tune")``, the tested ones as ``(d,
    "entropic")`` and ``(d, "entropic_at_free")``), the training timings to ``run.timings``, and reading A's tested
    model of each data set to ``run.exports`` for other chapters (:func:`robustness_book.train.export_entry`)."""
    cfg, nets = run.cfg, run.nets
    with run.timer("lambda sweep"):
        for d in cfg.datasets:
            targets, metas, out = loss_targets(run.records, d), {}, []
            for lam in sorted(cfg.lams):
                loss = entropic_loss(cfg, targets, lam) if lam > 0 else cross_entropy
                nets[d, "sweep", lam], metas[lam], got = _sweep_model(run, d, ENTROPIC, lam, loss)
                run.timings[f"{d}/{ENTROPIC}/lam={lam:g}"] = _timing(metas[lam])
                out += got
            layers = candidate_layers(layer_kinds(nets[d, NORMAL]), cfg.layer_candidates)
            for direction in cfg.free_directions:
                for lam in sorted(lam for lam in cfg.lams if lam > 0):
                    nets[d, "sweep", direction, lam], meta, got = _sweep_model(
                        run, d, ENTROPIC_FREE, lam, free_loss(cfg, layers, direction, lam), direction=direction)
                    run.timings[f"{d}/{ENTROPIC_FREE}/{direction}/lam={lam:g}"] = _timing(meta)
                    out += got
            budget = cfg.clean_budget[d]
            chosen, (tested, rule) = choose_lambda(out, d, budget), lambda_to_test(out, d, budget)
            free_chosen, free_tested = free_to_test(out, d, budget, chosen_only=True), free_to_test(out, d, budget)
            at = dict(dataset=d, model=cfg.model[d], budget=budget)
            run.records += out + [
                record(cfg, metric="chosen_lambda", value=chosen, defense=ENTROPIC, **at),
                record(cfg, metric="tested_lambda", value=tested, rule=rule, defense=ENTROPIC, **at),
                record(cfg, metric="chosen_lambda", value=free_chosen[1], direction=free_chosen[0],
                       defense=ENTROPIC_FREE, **at),
                record(cfg, metric="tested_lambda", value=free_tested[1], direction=free_tested[0],
                       rule=free_tested[2], defense=ENTROPIC_FREE, layers=",".join(layers), **at)]
            nets[d, CONTROL], nets[d, ENTROPIC] = nets[d, "sweep", 0.0], nets[d, "sweep", tested]
            if free_tested[1] > 0:
                nets[d, ENTROPIC_FREE] = nets[d, "sweep", free_tested[0], free_tested[1]]
            label = "entropic retraining (entropic-retraining chapter)" if tested > 0 else \
                "plain fine-tuning (entropic-retraining chapter; validation kept λ = 0)"
            run.exports.append(export_entry(metas[tested], label, d, cfg.model[d], lam=tested))


def _held_out(records: Sequence[dict], d: str, attack: str, role: str = ENTROPIC,
              direction: str | None = None) -> dict[float, float]:
    """``{λ: held-out accuracy under attack}`` of one reading's sweep (``role``; reading B: one ``direction``),
    with λ = 0, the control, which both readings share."""
    rows = select(records, dataset=d, split="val", metric="accuracy", attack=attack)
    return {r["setting"]["lam"]: r["value"] for r in rows
            if (r["defense"] == ENTROPIC and r["setting"]["lam"] == 0)
            or (r["defense"] == role and r["setting"].get("direction") == direction)}


def within_budget(records: Sequence[dict], d: str, budget: float, role: str = ENTROPIC,
                  direction: str | None = None) -> list[float]:
    """The λ of a reading's sweep whose held-out clean accuracy is at most ``budget`` below that of λ = 0,
    ascending."""
    clean = _held_out(records, d, "none", role, direction)
    return sorted(lam for lam, acc in clean.items() if acc >= clean[0.0] - budget - 1e-12)


def choose_lambda(records: Sequence[dict], d: str, budget: float, role: str = ENTROPIC,
                  direction: str | None = None) -> float:
    """The validation rule, fixed before any test image is seen: among the λ :func:`within_budget`, the one with
    the highest held-out PGD-CE accuracy; ties go to the smaller λ, so 0 (plain fine-tuning) wins unless the
    entropic term helps."""
    pgd = _held_out(records, d, "pgd_ce", role, direction)
    return max(within_budget(records, d, budget, role, direction), key=lambda lam: (pgd[lam], -lam))


def lambda_to_test(records: Sequence[dict], d: str, budget: float, role: str = ENTROPIC,
                   direction: str | None = None) -> tuple[float, str]:
    """The λ whose model faces the test images, and why: the chosen one (``"chosen"``); when validation chose 0,
    the largest λ :func:`within_budget` (``"largest_within_budget"``: the strongest term the clean budget allows,
    so the page still measures entropic retraining); ``(0, "none")`` when no λ > 0 is within the budget."""
    chosen = choose_lambda(records, d, budget, role, direction)
    if chosen > 0:
        return chosen, "chosen"
    largest = max(within_budget(records, d, budget, role, direction))
    return (largest, "largest_within_budget") if largest > 0 else (0.0, "none")


def free_to_test(records: Sequence[dict], d: str, budget: float, chosen_only: bool = False) -> tuple:
    """Reading B's direction and λ, by the same rule on held-out images: per direction of its sweep, the λ
    :func:`lambda_to_test` (or :func:`choose_lambda` with ``chosen_only``) gives; then the direction whose λ has
    the highest held-out PGD-CE accuracy (ties: the first direction swept). Returns ``(direction, λ, rule)``
    (``(None, 0.0, "none")`` when no λ > 0 of any direction is within the budget; ``rule`` ``"chosen"`` or
    ``"none"`` with ``chosen_only``)."""
    directions = list(dict.fromkeys(r["setting"]["direction"] for r in select(
        records, dataset=d, defense=ENTROPIC_FREE, split="val", metric="accuracy")))
    best = (None, 0.0, "none")
    for direction in directions:
        if chosen_only:
            lam = choose_lambda(records, d, budget, ENTROPIC_FREE, direction)
            pick = (direction, lam, "chosen" if lam > 0 else "none")
        else:
            pick = (direction, *lambda_to_test(records, d, budget, ENTROPIC_FREE, direction))
        if pick[1] == 0:
            continue
        pgd = _held_out(records, d, "pgd_ce", ENTROPIC_FREE, direction)
        if best[1] == 0 or pgd[pick[1]] > _held_out(records, d, "pgd_ce", ENTROPIC_FREE, best[0])[best[1]]:
            best = pick
    return best


def _sweep_choice(records: Sequence[dict], d: str, metric: str, role: str) -> dict | None:
    return first(records, dataset=d, metric=metric, defense=role)


def chosen_lambda(records: Sequence[dict], d: str, role: str = ENTROPIC) -> float:
    return _sweep_choice(records, d, "chosen_lambda", role)["value"]


def tested_lambda(records: Sequence[dict], d: str, role: str = ENTROPIC) -> float:
    """The λ a reading's model faces the test images with; 0 when none (a results file without reading B: 0)."""
    rec = _sweep_choice(records, d, "tested_lambda", role)
    return 0.0 if rec is None else rec["value"]


def free_direction(records: Sequence[dict], d: str) -> str | None:
    """Reading B's tested direction (``None`` when no reading-B model is tested)."""
    rec = _sweep_choice(records, d, "tested_lambda", ENTROPIC_FREE)
    return None if rec is None else rec["setting"].get("direction")


def evaluated_role(records: Sequence[dict], d: str) -> str:
    """Reading A's model on the test images: :data:`ENTROPIC`, or :data:`CONTROL` when no λ > 0 is tested
    (:func:`lambda_to_test`)."""
    return ENTROPIC if tested_lambda(records, d) > 0 else CONTROL


def entropic_roles(records: Sequence[dict], d: str) -> list[str]:
    """The entropic models the test images measure: reading A's evaluated role (:func:`evaluated_role`), then
    reading B's when it tests a λ > 0."""
    return [evaluated_role(records, d)] + ([ENTROPIC_FREE] if tested_lambda(records, d, ENTROPIC_FREE) > 0 else [])


def _roles(records: Sequence[dict], d: str) -> list[str]:
    tested = entropic_roles(records, d)
    return [r for r in ROLES if r not in (ENTROPIC, ENTROPIC_FREE) or r in tested]


def _role_setting(records: Sequence[dict], d: str, role: str) -> dict:
    if role == ENTROPIC:
        return {"lam": tested_lambda(records, d)}
    if role == ENTROPIC_FREE:
        return {"lam": tested_lambda(records, d, role), "direction": free_direction(records, d)}
    return {}


# --------------------------------------------------------------------------- evaluation and the masking audit


def logit_saturation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250) -> dict:
    """How far the softmax saturates in float32, the precision attacks compute in. Counts of images whose largest
    softmax probability rounds to exactly 1 (``saturated``: the cross-entropy is 0 there and its gradient only the
    other, tiny probabilities), and whose cross-entropy input gradient is exactly 0 (``ce_gradient_zero``: every
    other probability underflowed, so PGD on the cross-entropy has nothing to follow); and the median gap between
    the two largest logits. The margin loss never saturates this way."""
    dev = evaluate.model_device(model)
    with attacks.eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x[i:i + batch_size].to(dev)).float().cpu() for i in range(0, len(x), batch_size)])
    top2 = logits.topk(2, dim=1).values
    saturated = torch.softmax(logits, 1).amax(1) == 1.0
    zero = evaluate.gradient_norms(model, x, y, loss="ce", batch_size=batch_size) == 0
    return {"n": len(x), "saturated": int(saturated.sum()), "ce_gradient_zero": int(zero.sum()),
            "median_gap": float((top2[:, 0] - top2[:, 1]).median())}


def _members(cfg, normal: nn.Module | None) -> list:
    """PGD-CE first (the paper's weak attack, measured alone as the first member), then the book's ensemble
    (``evaluate.default_members``), then, for every network but the normal one, PGD transferred from it."""
    out = [M.pgd("ce", cfg["pgd_steps"], cfg["restarts"])]
    out += M.default_members(cfg["pgd_steps"], cfg["restarts"], cfg["square_queries"])
    if normal is not None:
        out.append(M.transfer(normal, steps=cfg["pgd_steps"], restarts=cfg["restarts"], name="transfer_from_normal"))
    return out


def evaluate_all(run: Run) -> None:
    """Per data set and model (normal, plain fine-tuning, each reading's entropic model at its tested λ when there
    is one, adversarial training), on the test images: clean accuracy (first ``n_test``); on the first
    ``n_adaptive`` the toolkit's worst case at the threat radius ``eps`` (:func:`_members`: PGD-CE, the book's
    ensemble, and for every model but the normal one PGD transferred from the normal model) with the images each
    member fooled, PGD-CE alone (the first member: the number the paper's attack would report), and the float32
    saturation (:func:`logit_saturation`). The worst cases, with their per-image outcomes, go to ``run.raw[d,
    role]`` (for AutoAttack and the health table)."""
    cfg = run.cfg
    with run.timer("evaluation"):
        for d in cfg.datasets:
            test, sub = run.data[d]["test"], run.data[d]["test"].first(cfg.n_adaptive[d])
            for role in _roles(run.records, d):
                net, setting = run.nets[d, role], _role_setting(run.records, d, role)
                at = {"defense": role, "split": "test", **setting}
                if first(run.records, dataset=d, metric="accuracy", attack="none", **at) is None:  # references have it
                    run.records.append(_accuracy(cfg, d, net, test, role, **setting))
                members = _members(cfg, None if role == NORMAL else run.nets[d, NORMAL])
                res = evaluate.worst_case(net, sub.x, sub.y, cfg.eps[d], members, batch_size=cfg.eval_batch_size,
                                          seed=cfg.seed)
                run.records += kit.worst_case_records(cfg, res, dataset=d, model=cfg.model[d], run=run, key=(d, role),
                                                      first_alone=True, steps=cfg.pgd_steps, restarts=cfg.restarts,
                                                      queries=cfg.square_queries, **at)
                s = logit_saturation(net, sub.x, sub.y, cfg.eval_batch_size)
                common = {"dataset": d, "model": cfg.model[d], "n": s["n"], **at}
                run.records += [record(cfg, metric=f"{key}_share", value=s[key] / s["n"],
                                       interval=evaluate.wilson_interval(s[key], s["n"]), **common)
                                for key in ("saturated", "ce_gradient_zero")]
                run.records.append(record(cfg, metric="median_logit_gap", value=s["median_gap"], **common))


def autoattack_all(run: Run) -> None:
    """AutoAttack (standard, L∞ at the threat radius ``eps``) on the images the worst case left standing
    (:func:`robustness_book.chapters.kit.autoattack_on_survivors`), among the first ``n_autoattack`` of the worst case's
    images (the same images for every network), for the networks the verdict could call more robust than the
    normal one: each reading's entropic model (:func:`entropic_roles`) and adversarial training, the yardstick
    it is graded against. An image counts as robust only if both left it
    standing; AutoAttack's reliability flags are in the record. Seconds go to ``run.timings["autoattack_seconds"]``
    (per data set and network)."""
    cfg, seconds = run.cfg, run.timings.setdefault("autoattack_seconds", {})
    with run.timer("autoattack"):
        for d in [d for d in cfg.datasets if cfg.n_autoattack[d] > 0]:
            n, sub = cfg.n_autoattack[d], run.data[d]["test"].first(cfg.n_autoattack[d])
            for role in entropic_roles(run.records, d) + [ADVERSARIAL]:
                worst = run.raw[d, role]
                head = {**worst, "robust_mask": worst["robust_mask"][:n]}
                rec, seconds[f"{d}/{role}"] = kit.autoattack_on_survivors(
                    cfg, run.nets[d, role], sub.x, sub.y, head, dataset=d, model=cfg.model[d],
                    batch_size=cfg.eval_batch_size, defense=role, split="test", **_role_setting(run.records, d, role))
                run.records.append(rec)


def health_all(run: Run) -> None:
    """The health table of each reading's entropic model (:func:`entropic_roles`; reading A's is the control when
    no λ > 0 is tested) at the threat radius ``eps``, on the worst case's images, with the gradient-free check and
    transfer from the normal model."""
    cfg = run.cfg
    with run.timer("health checks"):
        for d in cfg.datasets:
            sub = run.data[d]["test"].first(cfg.n_adaptive[d])
            for role in entropic_roles(run.records, d):
                run.health += kit.health_rows(run.nets[d, role], sub.x, sub.y, dataset=d, model=cfg.model[d],
                                              eps=cfg.eps[d], steps=cfg.health_steps, seed=cfg.seed,
                                              num_classes=dataset_info(d).num_classes,
                                              batch_size=cfg.eval_batch_size, transfer_from=run.nets[d, NORMAL],
                                              worst=run.raw[d, role], defense=role)


# --------------------------------------------------------------------------- cost


def training_costs(per_step: Mapping[str, float], steps: Mapping[str, int], at_from: str) -> dict:
    """Each recipe's training cost as a ratio to normal training, from seconds per step (``per_step``: ``plain``,
    ``entropic``, ``adversarial``, and reading B's ``entropic_free`` when timed) and step counts (``steps``: ``train``, the steps of normal training, and
    ``fine_tune``, those of one fine-tuning). Entropic retraining and plain fine-tuning are normal training plus a
    fine-tuning; adversarial training is that too (``at_from="normal"``) or ``train`` adversarial steps
    (``"scratch"``). ``step``: each objective's seconds per step over the plain one."""
    if at_from not in AT_FROM:
        raise ValueError(f"at_from={at_from!r} is invalid: expected one of {', '.join(AT_FROM)}")
    normal = steps["train"] * per_step["plain"]
    adversarial = (normal + steps["fine_tune"] * per_step["adversarial"] if at_from == "normal"
                   else steps["train"] * per_step["adversarial"])
    recipe = {NORMAL: normal, CONTROL: normal + steps["fine_tune"] * per_step["plain"],
              ENTROPIC: normal + steps["fine_tune"] * per_step["entropic"], ADVERSARIAL: adversarial}
    if "entropic_free" in per_step:
        recipe[ENTROPIC_FREE] = normal + steps["fine_tune"] * per_step["entropic_free"]
    return {"recipe": {k: v / normal for k, v in recipe.items()},
            "step": {k: v / per_step["plain"] for k, v in per_step.items()}}


def cost_all(run: Run) -> None:
    """Per data set: seconds per training step of each objective (plain cross-entropy, reading A's entropic loss at
    the tested λ, or at the largest λ of the sweep when none is tested, reading B's at its tested λ and direction
    when it tests one, and PGD adversarial training), timed back to back
    on the first training images with the fine-tuning recipe (:func:`robustness_book.train.seconds_per_step`); the
    step counts of the run's recipes; and :func:`training_costs`. Wall-clock numbers: they go to
    ``run.timings["cost"]``, never to records."""
    cfg, out = run.cfg, run.timings.setdefault("cost", {})
    with run.timer("cost"):
        for d in cfg.datasets:
            lam = tested_lambda(run.records, d) or max(cfg.lams)
            objectives = {"plain": cross_entropy, "entropic": entropic_loss(cfg, loss_targets(run.records, d), lam),
                          "adversarial": adversarial_loss(cfg, d)}
            if tested_lambda(run.records, d, ENTROPIC_FREE) > 0:
                layers = _sweep_choice(run.records, d, "tested_lambda", ENTROPIC_FREE)["setting"]["layers"].split(",")
                objectives["entropic_free"] = free_loss(cfg, layers, free_direction(run.records, d),
                                                        tested_lambda(run.records, d, ENTROPIC_FREE))
            per_step = {k: seconds_per_step(run.nets[d, NORMAL], run.data[d]["train"], finetune_config(cfg, d), loss,
                                            cfg.cost_steps) for k, loss in objectives.items()}
            steps = {"train": cfg.epochs[d] * math.ceil(cfg.train_size[d] / cfg.batch_size),
                     "fine_tune": cfg.ft_epochs[d] * math.ceil(cfg.ft_size[d] / cfg.batch_size)}
            out[d] = {"seconds_per_step": per_step, "steps": steps, "at_from": cfg.at_from, "lam": lam,
                      "free": {"lam": tested_lambda(run.records, d, ENTROPIC_FREE),
                               "direction": free_direction(run.records, d)},
                      **training_costs(per_step, steps, cfg.at_from)}


# --------------------------------------------------------------------------- tables


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _adversarial_words(p: Mapping[str, Any], d: str) -> str:
    mix = p["at_mix"]
    weights = "PGD examples only" if mix == 1 else f"weight {mix:g} on PGD examples, {1 - mix:g} on clean ones"
    return f"PGD-{p['at_steps'][d]} at ε = {p['eps'][d]:.3g} ({weights})"


def _layer_text(name: str, kind: str | None) -> str:
    return f"{name} ({kind})" if kind else name


def training_table(results: Mapping[str, Any]) -> str:
    """Per data set: the normal and the adversarially trained model, their recipe in words, clean test accuracy
    and training time."""
    p, recs, rows = results["parameters"], results["records"], []
    for d in p["datasets"]:
        for role in (NORMAL, ADVERSARIAL):
            t = results["timings"].get(f"{d}/{role}", {})
            if role == NORMAL:
                what = f"{p['train_size'][d]:,} images, {train_config(p, d).describe()}"
            elif p["at_from"] == "normal":
                what = (f"the normal model fine-tuned on {p['ft_size'][d]:,} images with "
                        f"{_adversarial_words(p, d)}, {finetune_config(p, d).describe()}")
            else:
                what = (f"{p['train_size'][d]:,} images from new weights with {_adversarial_words(p, d)}, "
                        f"{train_config(p, d).describe()}")
            clean = first(recs, dataset=d, defense=role, split="test", metric="accuracy", attack="none")
            rows.append({"data": d, "model": LABELS[role], "training": what, "clean": pct_interval(clean),
                         "time": duration(t.get("seconds"), t.get("cached", False))})
    return markdown_table(rows, {"data": "data set", "model": "model", "training": "training",
                                 "clean": "clean test accuracy [95% CI]", "time": "training time"})


def profile_table(results: Mapping[str, Any]) -> str:
    """Per data set and activation layer: the held-out entropy of the normal and the adversarially trained model
    (mean ± standard deviation over the batches), the change, and whether the loss acts on the layer."""
    recs, parts = results["records"], []
    for d in results["parameters"]["datasets"]:
        normal, adv = profile_of(recs, d, NORMAL), profile_of(recs, d, ADVERSARIAL)
        chosen = loss_targets(recs, d)
        rows = [{"layer": _layer_text(name, r["setting"]["kind"]),
                 "normal": f"{r['value']:.3f} ± {r['setting']['std']:.3f}",
                 "adv": f"{adv[name]['value']:.3f} ± {adv[name]['setting']['std']:.3f}",
                 "change": f"{adv[name]['value'] - r['value']:+.3f}",
                 "loss": "target" if name in chosen else ""} for name, r in normal.items()]
        parts.append(f"**{d}**\n\n" + markdown_table(rows, {
            "layer": "layer (kind)", "normal": "normal, nats", "adv": "adversarially trained, nats",
            "change": "change", "loss": "entropic loss"}))
    return "\n\n".join(parts)


def target_distance(records: Sequence[dict], d: str, role: str, lam: float | None = None) -> float:
    """Root-mean-square distance (nats) of a model's held-out entropy from the targets, over the loss's layers."""
    targets, prof = loss_targets(records, d), profile_of(records, d, role, lam)
    return math.sqrt(sum((prof[k]["value"] - t) ** 2 for k, t in targets.items()) / len(targets))


def entropy_shift(records: Sequence[dict], d: str, role: str, lam: float, direction: str | None,
                  layers: Sequence[str]) -> float:
    """Mean change (nats) over ``layers`` of a sweep model's held-out entropy from the normal model's: what reading
    B's term moved (negative: lowered)."""
    normal = profile_of(records, d, NORMAL)
    mine = {r["setting"]["layer"]: r for r in select(records, dataset=d, metric="entropy", defense=role, lam=lam)
            if r["setting"].get("direction") == direction}
    return sum(mine[k]["value"] - normal[k]["value"] for k in layers) / len(layers)


def sweep_table(results: Mapping[str, Any]) -> str:
    """Per data set, reading and λ: held-out clean and PGD-CE accuracy; for reading A the distance to the targets
    (the normal model's distance for scale), for reading B the mean entropy shift of its layers
    (:func:`entropy_shift`); each reading's chosen and tested λ are marked."""
    recs, parts = results["records"], []
    for d in results["parameters"]["datasets"]:
        val = [r for r in select(recs, dataset=d, split="val", metric="accuracy")
               if r["defense"] in (ENTROPIC, ENTROPIC_FREE)]
        rows = {}
        for role in (ENTROPIC, ENTROPIC_FREE):
            choice = _sweep_choice(recs, d, "chosen_lambda", role)
            if choice is None:  # a results file without reading B
                continue
            tested, direction = tested_lambda(recs, d, role), _sweep_choice(recs, d, "tested_lambda", role)
            direction = direction["setting"].get("direction")
            chosen = (choice["setting"].get("direction"), choice["value"])
            for r in val:
                if r["defense"] != role and not (role == ENTROPIC and r["setting"]["lam"] == 0):
                    continue
                key = (r["setting"].get("direction"), r["setting"]["lam"])
                if role == ENTROPIC_FREE and key[1] == 0:
                    continue
                mark = (" (chosen)" if key == chosen else  # chosen wins a tie
                        " (tested: largest within the budget)" if key == (direction, tested) and tested > 0 else "")
                label = ("A" if role == ENTROPIC else f"B, {key[0]}") + f": λ = {key[1]:g}{mark}"
                rows[label] = {"defense": r["defense"], "lam": key[1],
                               **({"direction": key[0]} if key[0] is not None else {})}
        steps = one(val, attack="pgd_ce", lam=0.0)["setting"]["steps"]
        free = _sweep_choice(recs, d, "tested_lambda", ENTROPIC_FREE)
        free_layers = free["setting"]["layers"].split(",") if free and free["setting"].get("layers") else []

        def distance(mine, d=d):
            r = mine[0]
            if r["defense"] == ENTROPIC:
                return f"{target_distance(recs, d, ENTROPIC, r['setting']['lam']):.3f}"
            return "–"

        def shift(mine, d=d):
            r = mine[0]
            if r["defense"] == ENTROPIC_FREE and free_layers:
                value = entropy_shift(recs, d, ENTROPIC_FREE, r["setting"]["lam"], r["setting"]["direction"],
                                      free_layers)
                # a collapsed network (constant activations) has no finite entropy to compare
                return f"{value:+.3f}" if math.isfinite(value) else "– (not finite: the network collapsed)"
            return "–"

        head = (f"**{d}** (reading A's layers {', '.join(loss_targets(recs, d))}; the normal model is "
                f"{target_distance(recs, d, NORMAL):.3f} nats from their targets"
                + (f"; reading B's layers {', '.join(free_layers)}" if free_layers else "") + ")")
        parts.append(head + "\n\n" + record_table(
            val, rows, {"held-out clean [95% CI]": {"attack": "none"},
                        f"held-out PGD-CE ({steps} steps) [95% CI]": {"attack": "pgd_ce"},
                        "A: RMS distance to targets (nats)": distance,
                        "B: mean entropy shift of its layers (nats)": shift}, corner="reading: λ"))
    return "\n\n".join(parts)


def model_label(records: Sequence[dict], d: str, role: str) -> str:
    """A model's name on the page: its role's label, with an entropic model's tested λ (and reading B's
    direction)."""
    setting = _role_setting(records, d, role)
    if not setting:
        return LABELS[role]
    return LABELS[role] + f", λ = {setting['lam']:g}" + (f", {setting['direction']}" if "direction" in setting else "")


def worst_case_table(results: Mapping[str, Any]) -> str:
    """Per data set and model, on the test images: clean accuracy, PGD-CE, the worst case with the images each
    member fooled, AutoAttack where it ran, and the float32 saturation."""
    recs = results["records"]
    rows = {f"{d}: {model_label(recs, d, role)}": {"dataset": d, "defense": role, "split": "test"}
            for d in results["parameters"]["datasets"] for role in _roles(recs, d)}

    def share(metric):
        return lambda mine: pct(first(mine, metric=metric)["value"])

    return record_table(recs, rows, {
        "clean [95% CI]": {"metric": "accuracy", "attack": "none"},
        "PGD-CE [95% CI]": {"metric": "accuracy", "attack": "pgd_ce"},
        "worst case [95% CI]": {"attack": "worst_case"},
        "images each member fooled": lambda mine: ", ".join(f"{r['attack']} {int(r['value'])}" for r in mine
                                                            if r["metric"] == "images_fooled"),
        "AutoAttack [95% CI]": {"attack": "autoattack"}, "softmax saturated (float32)": share("saturated_share"),
        "CE gradient exactly 0": share("ce_gradient_zero_share")}, corner="data set: model")


def anchor_summary() -> str:
    """The authors' self-reported numbers in one sentence, read from ``robustness_book/anchors/entropic_retraining.json``
    (the page's prose quotes no number itself)."""
    published = anchors(CHAPTER)
    clean = one(published, attack="none")
    linf, l2 = (one(published, attack="autoattack", threat_model=t) for t in ("linf", "l2"))
    return (f"The submission reports {100 * clean['value']:.2f}% clean accuracy, **{100 * linf['value']:.2f}% under "
            f"AutoAttack L∞ at ε = {_eps_words(linf['eps'])}** and {100 * l2['value']:.2f}% under AutoAttack L2 at "
            f"ε = {l2['eps']:g} (self-reported; the book's anchors file, "
            f"`robustness_book/anchors/{CHAPTER}.json`).")


def anchor_table(results: Mapping[str, Any]) -> str:
    """The authors' AutoAttack submission beside this run's entropic CIFAR-10 model, with our scale."""
    published, recs, p = anchors(CHAPTER), results["records"], results["parameters"]

    def paper(**match):
        return pct(one(published, **match)["value"])

    rows = [{"who": "Sperl & Böttinger (self-reported AutoAttack submission)",
             "scale": "CIFAR-10 training set; recipe, loss and λ unpublished",
             "clean": paper(attack="none"), "linf": paper(attack="autoattack", threat_model="linf"),
             "l2": paper(attack="autoattack", threat_model="l2")}]
    for role in entropic_roles(recs, "cifar10") + [ADVERSARIAL] if "cifar10" in p["datasets"] else []:
        mine = select(recs, dataset="cifar10", defense=role, split="test")
        aa = first(mine, attack="autoattack")
        scratch = role == ADVERSARIAL and p["at_from"] == "scratch"
        rows.append({"who": f"this run ({results['profile']} profile, {model_label(recs, 'cifar10', role)})",
                     "scale": f"{p['train_size']['cifar10']:,} images × {_epochs(p['epochs']['cifar10'])} from new "
                              f"weights with {_adversarial_words(p, 'cifar10')}" if scratch else
                              f"normal training on {p['train_size']['cifar10']:,} images × "
                              f"{_epochs(p['epochs']['cifar10'])}, fine-tuned for {_epochs(p['ft_epochs']['cifar10'])} "
                              f"on {p['ft_size']['cifar10']:,}",
                     "clean": pct_interval(first(mine, metric="accuracy", attack="none")),
                     "linf": "not run" if aa is None else f"{pct_interval(aa)} (n = {aa['n']:,})",
                     "l2": "not measured"})
    return markdown_table(rows, {"who": "model", "scale": "scale", "clean": "clean",
                                 "linf": "AutoAttack L∞ 8/255", "l2": "AutoAttack L2 0.5"})


def cost_table(results: Mapping[str, Any]) -> str:
    """Per data set, from the ``timings["cost"]`` of :func:`cost_all`: seconds per training step of each objective
    and its ratio to a plain step; each recipe's training cost as a ratio to normal training."""
    rows = []
    for d, c in results["timings"]["cost"].items():
        free = c.get("free") or {}
        words = {"plain": "plain cross-entropy", "entropic": f"entropic loss, reading A (λ = {c['lam']:g})",
                 "entropic_free": f"entropic loss, reading B (λ = {free.get('lam', 0):g}, {free.get('direction')})",
                 "adversarial": f"adversarial, {_adversarial_words(results['parameters'], d)}"}
        rows += [{"data": d, "what": f"one step: {words[k]}", "seconds": f"{s:.3f} s",
                  "ratio": f"{c['step'][k]:.2f}×"} for k, s in c["seconds_per_step"].items()]
        rows += [{"data": d, "what": f"recipe: {LABELS[k]}", "seconds": "", "ratio": f"{v:.2f}×"}
                 for k, v in c["recipe"].items()]
    return markdown_table(rows, {"data": "data set", "what": "objective or recipe", "seconds": "seconds",
                                 "ratio": "× plain step / × normal training"})


def health_tables(results: Mapping[str, Any]) -> str:
    """The health table of each data set's evaluated model (:func:`health_all`), under its data set, network and
    role; failed checks are marked, never hidden."""
    return _health_tables(results["health"], by=("dataset", "model", "defense"))


# --------------------------------------------------------------------------- figures


def _draw_profile(ax, prof: Mapping[str, dict], label: str, **style) -> None:
    pos = range(len(prof))
    ax.errorbar(pos, [r["value"] for r in prof.values()], yerr=[r["setting"]["std"] for r in prof.values()],
                marker="o", capsize=3, label=label, **style)


def profile_figure(results: Mapping[str, Any]):
    """Per data set: the held-out entropy of each activation layer for the normal and the adversarially trained
    model (bars: the standard deviation over the batches); the layers the loss acts on are shaded."""
    records, ds = results["records"], results["parameters"]["datasets"]
    fig, axes = plt.subplots(1, len(ds), figsize=(5.5 * len(ds), 3.8), squeeze=False)
    for ax, d in zip(axes[0], ds):
        normal = profile_of(records, d, NORMAL)
        _draw_profile(ax, normal, LABELS[NORMAL])
        _draw_profile(ax, profile_of(records, d, ADVERSARIAL), LABELS[ADVERSARIAL])
        for i, name in enumerate(normal):
            if name in loss_targets(records, d):
                ax.axvspan(i - 0.4, i + 0.4, color="gold", alpha=0.25, lw=0)
        ax.set_xticks(range(len(normal)), [_layer_text(n, r["setting"]["kind"]) for n, r in normal.items()],
                      rotation=45, fontsize=8)
        ax.set(title=f"{d}: entropy per activation layer", ylabel="mean unit entropy (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def sweep_figure(results: Mapping[str, Any]):
    """Per data set: the profile of every reading-A λ model beside the normal and the adversarially trained one;
    the distance to the targets against λ; held-out clean and PGD-CE accuracy against λ of both readings (reading
    A's chosen λ dashed, its tested one dotted when they differ)."""
    records, ds = results["records"], results["parameters"]["datasets"]
    fig, axes = plt.subplots(len(ds), 3, figsize=(15, 3.8 * len(ds)), squeeze=False)
    for (left, mid, right), d in zip(axes, ds):
        val = select(records, dataset=d, defense=ENTROPIC, split="val", metric="accuracy")
        lams = sorted({r["setting"]["lam"] for r in val})
        normal = profile_of(records, d, NORMAL)
        _draw_profile(left, normal, LABELS[NORMAL], color="black")
        _draw_profile(left, profile_of(records, d, ADVERSARIAL), LABELS[ADVERSARIAL], color="red")
        for lam in lams:
            _draw_profile(left, profile_of(records, d, ENTROPIC, lam), f"λ = {lam:g}", ls="--", alpha=0.7)
        left.set_xticks(range(len(normal)), list(normal), fontsize=8)
        left.set(title=f"{d}: profiles", xlabel="activation layer", ylabel="entropy (nats)")
        left.legend(fontsize=7)
        positive = [lam for lam in lams if lam > 0]
        for ax in (mid, right):
            ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
            ax.set_xticks(lams, [f"{lam:g}" for lam in lams])
            ax.axvline(chosen_lambda(records, d), color="gray", ls="--", lw=1)
            if tested_lambda(records, d) != chosen_lambda(records, d):
                ax.axvline(tested_lambda(records, d), color="gray", ls=":", lw=1)
            ax.set_xlabel("λ")
            ax.grid(alpha=0.3)
        mid.plot(lams, [target_distance(records, d, ENTROPIC, lam) for lam in lams], marker="o")
        mid.axhline(target_distance(records, d, NORMAL), color="black", ls=":", label="normal model")
        mid.set(title="distance to the targets", ylabel="RMS over the loss's layers (nats)")
        mid.legend(fontsize=8)
        for attack, label in (("none", "clean"), ("pgd_ce", "PGD-CE")):
            right.plot(lams, [one(val, attack=attack, lam=lam)["value"] for lam in lams], marker="o",
                       label=f"A: {label}")
            for direction in dict.fromkeys(r["setting"]["direction"] for r in select(
                    records, dataset=d, defense=ENTROPIC_FREE, split="val", metric="accuracy")):
                acc = _held_out(records, d, attack, ENTROPIC_FREE, direction)
                right.plot(sorted(acc), [acc[lam] for lam in sorted(acc)], marker="s", ls="--",
                           label=f"B ({direction}): {label}")
        right.set(title="held-out accuracy", ylabel="accuracy", ylim=(-0.02, 1.02))
        right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def evaluation_figure(results: Mapping[str, Any]):
    """Per data set: clean, PGD-CE and worst-case test accuracy (and AutoAttack where run) of each model, with
    95% Wilson intervals."""
    records, ds = results["records"], results["parameters"]["datasets"]
    fig, axes = plt.subplots(1, len(ds), figsize=(6 * len(ds), 3.6), squeeze=False)
    measures = (("none", "clean"), ("pgd_ce", "PGD-CE"), ("worst_case", "worst case"), ("autoattack", "AutoAttack"))
    for ax, d in zip(axes[0], ds):
        roles = _roles(records, d)
        width = 0.8 / len(measures)
        for j, (attack, label) in enumerate(measures):
            recs = [first(records, dataset=d, defense=role, split="test", metric="accuracy", attack=attack)
                    for role in roles]
            pos = [i + (j - 1.5) * width for i, r in enumerate(recs) if r is not None]
            got = [r for r in recs if r is not None]
            if not got:
                continue
            err = [[r["value"] - r["interval"][0] for r in got], [r["interval"][1] - r["value"] for r in got]]
            ax.bar(pos, [r["value"] for r in got], width=width, yerr=err, capsize=2, label=label)
        ax.set_xticks(range(len(roles)), [LABELS[r] for r in roles], rotation=15, fontsize=8)
        ax.set(title=f"{d}: test accuracy (L∞ ε = {results['parameters']['eps'][d]:.3g})", ylabel="accuracy",
               ylim=(0, 1.05))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- verdict


#: The smallest gain in robust accuracy over the normal network that would matter for the claim: 5 points (a small
#: fraction of the AutoAttack accuracy the authors report on CIFAR-10, in the anchors); a smaller gain would not
#: support "mimics adversarial training", and the same bar applies to the adversarially trained yardstick.
MIN_EFFECT = 0.05
#: The normal quantile of the grade's 95% interval (:func:`gain_recovered`).
Z95 = 1.96


def _test_record(recs: Sequence[dict], d: str, role: str, **match) -> dict | None:
    return first(recs, dataset=d, defense=role, split="test", metric="accuracy", **match)


def _head(rec: Mapping[str, Any] | None, n: int) -> dict | None:
    """``rec`` restricted to its first ``n`` images (its per-image outcome sliced; value and interval recomputed),
    so that evaluations run on different image counts are compared on the images they share."""
    mask = kit.per_image(rec)
    if mask is None or rec["n"] == n:
        return None if mask is None else dict(rec)
    r = evaluate.accuracy_record(mask[:n])
    return {**rec, "n": n, "value": r["value"], "interval": r["interval"],
            "setting": {**rec["setting"], kit.PER_IMAGE: evaluate.pack_mask(mask[:n])}}


def _mechanism(recs: Sequence[dict], d: str, role: str, worst: Mapping[str, Any] | None) -> dict | None:
    """Evidence that the weak attack overstated ``role``'s robustness (:func:`robustness_book.evaluate.outcome.
    removed_by`): the first member alone (PGD-CE, the paper's attack) showed a significant gain over the normal
    network, and ``role``'s worst case is clearly below that member alone on the same images; the member that
    removed most."""
    weak_rec = _test_record(recs, d, role, alone=True)
    weak, strong = kit.per_image(weak_rec), kit.worst_from_record(worst)
    ref = kit.per_image(_test_record(recs, d, NORMAL, alone=True))
    if weak is None or strong is None or ref is None or not len(weak) == len(ref) == len(strong["robust_mask"]):
        return None
    evidence = removed_by(weak, strong, weak_reference=ref)
    if evidence is None:
        return None
    return {**evidence, "weak": weak_rec,
            "text": f"the gain was removed by {evidence['member']} ({evidence['images']} images)"}


def _common(recs: Sequence[dict], d: str, role: str) -> dict:
    """The records a claim compares, on the first images they all cover (the worst case of ``role`` and of the
    normal network, and AutoAttack on ``role``'s survivors): ``worst``, ``reference``, ``confirm`` (or ``None``
    each where there is no per-image outcome) and ``n``, the images compared."""
    worst, ref = _test_record(recs, d, role, attack="worst_case"), _test_record(recs, d, NORMAL, attack="worst_case")
    confirm = _test_record(recs, d, role, attack="autoattack")
    sizes = [r["n"] for r in (worst, ref, confirm) if kit.per_image(r) is not None]
    n = min(sizes) if sizes else None
    return {"worst": _head(worst, n), "reference": _head(ref, n), "confirm": _head(confirm, n), "n": n}


def _paired(recs: Sequence[dict], d: str, role: str) -> dict | None:
    """The paired test of ``role``'s worst case against the normal network's, on the images they share (with
    AutoAttack's check: :func:`_common`); ``None`` without per-image outcomes (left out of the Holm family)."""
    c = _common(recs, d, role)
    a, b = kit.per_image(c["worst"]), kit.per_image(c["reference"])
    return None if a is None or b is None else paired_test(a, b)


def _claims(results: Mapping[str, Any], d: str, role: str, p: Mapping[Any, float], key: Any = None) -> dict:
    """One claim "``role`` is more robust than the normal network" on data set ``d``: its worst case against the
    normal network's on the same images (:func:`robustness_book.chapters.kit.paired_outcome`, with ``p[key]``,
    Holm-adjusted across the claim's family; ``key`` defaults to ``d``), gated by ``role``'s health rows and
    confirmed by AutoAttack on its survivors (the kit's confirmation, under the same Holm factor). Evaluations on
    different image counts are compared on the first images they share."""
    recs, health = results["records"], results.get("health", [])
    c, worst = _common(recs, d, role), _test_record(recs, d, role, attack="worst_case")
    rows = [h for h in health if h.get("dataset") == d and h.get("defense") == role]
    outcome, test = kit.paired_outcome(c["worst"] or worst, c["reference"], min_effect=MIN_EFFECT, health=rows,
                                       confirm=c["confirm"], p_adjusted=p.get(d if key is None else key),
                                       num_classes=dataset_info(d).num_classes,
                                       clean=_test_record(recs, d, role, attack="none"))
    mechanism = None
    if outcome.outcome != "holds" and outcome.reason != "broken":
        mechanism = _mechanism(recs, d, role, worst)
    return {**outcome.to_dict(), "mechanism": None if mechanism is None else mechanism["text"],
            "evidence": mechanism, "test": test, "worst": worst, "autoattack": c["confirm"],
            "compared_on": c["n"] if c["n"] is not None and worst is not None and c["n"] < worst["n"] else None,
            "eps": None if worst is None else worst["eps"]}


def _paired_vs(recs: Sequence[dict], d: str, a: str, b: str, attack: str) -> dict | None:
    """A reported number, not a verdict: ``a`` against ``b`` under ``attack`` on the same images (paired)."""
    ma, mb = (kit.per_image(_test_record(recs, d, r, attack=attack)) for r in (a, b))
    if ma is None or mb is None:
        return None
    n = min(len(ma), len(mb))
    return paired_test(ma[:n], mb[:n])


def gain_recovered(defended: torch.Tensor, reference: torch.Tensor, yardstick: torch.Tensor,
                   z: float = Z95) -> dict:
    """The fraction of the yardstick's gain the defended network recovers, on the same images (per-image robust
    masks of equal length): θ = (mean D − mean R) / (mean Y − mean R), with Fieller's interval for the ratio of
    two paired means (the per-image differences D − R and Y − R, their variances and covariance). Returns
    ``{"value", "interval", "n", "gain", "yardstick_gain"}``; ``interval`` is ``None`` when it is unbounded (the
    yardstick's gain is not clearly away from 0 at this ``n``), and ``value`` is NaN when the yardstick gains
    nothing."""
    ref = reference.double()
    a, b = defended.double() - ref, yardstick.double() - ref
    n = len(a)
    ma, mb = float(a.mean()), float(b.mean())
    out = {"value": ma / mb if mb != 0 else math.nan, "interval": None, "n": n, "gain": ma, "yardstick_gain": mb}
    if n < 2:
        return out
    q = z * z / n
    saa, sbb = float(a.var()), float(b.var())
    sab = float(((a - ma) * (b - mb)).sum()) / (n - 1)
    # (ma − θ·mb)² ≤ z²·Var(mean(a − θ·b)): a quadratic A·θ² − 2B·θ + C ≤ 0, bounded when A > 0
    qa, qb, qc = mb * mb - q * sbb, ma * mb - q * sab, ma * ma - q * saa
    if qa <= 0:
        return out
    root = math.sqrt(max(qb * qb - qa * qc, 0.0))
    out["interval"] = ((qb - root) / qa, (qb + root) / qa)
    return out


def _robust_mask(recs: Sequence[dict], d: str, role: str) -> torch.Tensor | None:
    """Per image, robust under everything that ran on ``role``: AutoAttack's record on the worst case's survivors
    where it ran (robust only if both left the image standing), else the worst case."""
    confirmed = _test_record(recs, d, role, attack="autoattack")
    return kit.per_image(confirmed if confirmed is not None else _test_record(recs, d, role, attack="worst_case"))


def grade(recs: Sequence[dict], d: str, role: str) -> dict | None:
    """:func:`gain_recovered` of ``role`` against adversarial training over the normal network, on the first
    images all three share, each network robust under everything that ran on it (:func:`_robust_mask`: the worst
    case, and AutoAttack on its survivors for the entropic and the adversarially trained network); ``None``
    without per-image outcomes."""
    masks = [_robust_mask(recs, d, r) for r in (role, NORMAL, ADVERSARIAL)]
    if any(m is None for m in masks):
        return None
    n = min(len(m) for m in masks)
    return gain_recovered(*(m[:n] for m in masks))


def _no_model(role: str) -> dict:
    return {"outcome": "does not hold", "reason": None, "mechanism": None, "evidence": None, "test": None,
            "detail": "every λ > 0 cost more held-out clean accuracy than the budget allows, so no entropic model "
                      "of this reading was tested", "compared_on": None, "eps": None, "worst": None,
            "autoattack": None}


def _reading(results: Mapping[str, Any], d: str, role: str, p: Mapping[Any, float], yardstick: bool) -> dict:
    """One reading's claim on data set ``d`` (:func:`_claims` under the readings' Holm family) with what is reported
    beside it: its λ, the paired comparisons with plain fine-tuning (worst case, clean accuracy), saturation, and
    the grade against the yardstick (:func:`grade`, only when ``yardstick`` holds)."""
    recs = results["records"]
    lam = tested_lambda(recs, d, role)
    evaluated = role if lam > 0 else CONTROL
    claim = _claims(results, d, role, p, (d, role)) if lam > 0 else _no_model(role)
    choice = _sweep_choice(recs, d, "chosen_lambda", role)
    ent = {k: _test_record(recs, d, evaluated, attack=a) for k, a in (("clean", "none"), ("worst", "worst_case"))}
    ent["pgd"] = _test_record(recs, d, evaluated, alone=True)
    clean_test = _paired_vs(recs, d, CONTROL, evaluated, "none") if lam > 0 else None
    control_clean = _test_record(recs, d, CONTROL, attack="none")
    clean_cost = lam > 0 and (clean_test["p"] < 0.05 and clean_test["difference"] > 0 if clean_test
                              else evaluate.compare(control_clean, ent["clean"]) == "higher")
    saturated = first(recs, dataset=d, defense=evaluated, split="test", metric="saturated_share")
    return {**claim, "reading": READINGS[role], "role": role, "model": evaluated, "lam": lam,
            "chosen": choice["value"], "direction": free_direction(recs, d) if role == ENTROPIC_FREE else None,
            "category": "broken" if claim["reason"] == "broken" else claim["outcome"],
            "broken": claim["reason"] == "broken", "entropic": ent, "control_clean": control_clean,
            "vs_control": _paired_vs(recs, d, evaluated, CONTROL, "worst_case") if lam > 0 else None,
            "clean_cost": bool(clean_cost), "saturated": saturated,
            "saturates": lam > 0 and evaluate.compare(saturated, first(
                recs, dataset=d, defense=CONTROL, split="test", metric="saturated_share")) == "higher",
            "grade": grade(recs, d, role) if yardstick and lam > 0 else None,
            "failed_checks": kit.failed_checks(results.get("health", []), dataset=d, defense=evaluated)}


def verdict_summary(results: Mapping[str, Any]) -> dict:
    """Per data set, from the results (live, read back, or hand-made records of the same shape):

    - ``readings``: per reading swept (:data:`READINGS`: ``"entropic"`` is reading A, ``"entropic_at_free"``
      reading B), the claim "entropic retraining in this reading (at its tested λ) is more robust than the normal
      network", judged on the worst case at the threat radius ``eps`` on the same test images (:func:`_claims`,
      :data:`MIN_EFFECT`, Holm across every (data set, reading) claim): ``outcome`` / ``reason`` / ``detail`` /
      ``mechanism`` (only with :func:`robustness_book.evaluate.outcome.removed_by`'s evidence), ``category`` (the
      outcome, ``broken`` for a network near chance, :data:`robustness_book.chapters.kit.BROKEN_RULE`), ``lam``
      (0 when none is tested), ``chosen``, ``direction`` (reading B), ``model`` (the role evaluated),
      ``vs_control`` (paired worst case against plain fine-tuning, reported, not judged), ``clean_cost``,
      ``saturates``, ``grade`` (:func:`grade`: the fraction of adversarial training's gain recovered, with its
      interval; ``None`` without a yardstick), ``failed_checks``;
    - the same keys at the top level for reading A (the reading the chapter tested first);
    - ``yardstick``: the same claim for adversarial training (Holm across the data sets) and ``has_yardstick``:
      whether it holds; without it no reading is graded and the page prints "no yardstick";
    - ``changed``: the layers adversarial training clearly moved (:func:`changed_layers`); ``layers``: reading
      A's loss layers; ``autoattack``: reading A's AutoAttack record, ``flags``: AutoAttack's reliability
      warnings; ``cost``: the ``timings["cost"]`` entry (:func:`training_costs`) or ``None``; ``per_image``:
      whether the file has per-image outcomes.
    """
    recs, out = results["records"], {}
    datasets = [r["dataset"] for r in select(recs, metric="tested_lambda", defense=ENTROPIC)]
    swept = {d: [role for role in (ENTROPIC, ENTROPIC_FREE) if _sweep_choice(recs, d, "tested_lambda", role)]
             for d in datasets}
    p_entropic = kit.holm_by({(d, role): _paired(recs, d, role) for d in datasets for role in swept[d]
                              if tested_lambda(recs, d, role) > 0})
    p_yardstick = kit.holm_by({d: _paired(recs, d, ADVERSARIAL) for d in datasets})
    for d in datasets:
        yard = _claims(results, d, ADVERSARIAL, p_yardstick)
        readings = {role: _reading(results, d, role, p_entropic, yard["outcome"] == "holds") for role in swept[d]}
        a = readings[ENTROPIC]
        out[d] = {**a, "readings": readings, "yardstick": yard, "has_yardstick": yard["outcome"] == "holds",
                  "layers": list(loss_targets(recs, d)), "changed": changed_layers(recs, d),
                  "normal_worst": _test_record(recs, d, NORMAL, attack="worst_case"),
                  "adversarial_worst": _test_record(recs, d, ADVERSARIAL, attack="worst_case"),
                  "vs_adversarial": _paired_vs(recs, d, a["model"], ADVERSARIAL, "worst_case"),
                  "autoattack": _test_record(recs, d, a["model"], attack="autoattack"),
                  "flags": kit.autoattack_flags(select(recs, dataset=d, attack="autoattack")),
                  "per_image": kit.per_image(a["entropic"]["worst"]) is not None,
                  "cost": results.get("timings", {}).get("cost", {}).get(d),
                  "failed_checks": kit.failed_checks(results.get("health", []), dataset=d)}
    return out


def _reading_name(v: Mapping[str, Any]) -> str:
    """The reading's name with its tested λ (and direction), for the head of each of its sentences."""
    name = v["reading"][0].upper() + v["reading"][1:]
    if v["lam"] > 0:
        name += f", λ = {v['lam']:g}" + (f", {GERUNDS[v['direction']]} the entropy" if v.get("direction") else "")
    return name


def _selection_sentence(v: Mapping[str, Any], layers: Sequence[str]) -> str:
    where = f"layers {', '.join(layers)}" if layers else "its layers"
    head = v["reading"][0].upper() + v["reading"][1:]
    if v["chosen"] > 0:
        return f"{head}: validation chose λ = {v['chosen']:g}" + (f" ({v['direction']})" if v["direction"] else "") \
            + f" ({where})."
    kept = (f"{head}: on held-out images no λ > 0 beat plain fine-tuning under PGD within the clean budget, so "
            "validation kept λ = 0: the entropic term did not help there.")
    if v["lam"] > 0:
        return kept + (f" The test images still measure this reading, at the largest λ the clean budget allows, "
                       f"λ = {v['lam']:g}" + (f" ({v['direction']})" if v["direction"] else "") + f" ({where}).")
    return kept + " Every λ > 0 cost more clean accuracy than the budget allows, so no model of this reading is tested."


def _claim_sentence(who: str, c: Mapping[str, Any]) -> str:
    """One judged claim: the outcome word, its reason in words, the numbers; a mechanism only with evidence."""
    if c["reason"] == "broken":
        return (f"{who} more robust than the normal network: **inconclusive** ({REASONS['broken']}: its robustness "
                "numbers are not interpreted).")
    if c["detail"] == kit.NO_PER_IMAGE_NOTE:
        return f"{who} more robust than the normal network: **inconclusive**, not judged (no per-image outcomes)."
    text = f"{who} more robust than the normal network: " + Outcome(c["outcome"], c["reason"], c["detail"]).text()
    if c.get("compared_on"):
        text += f" (compared on the first {c['compared_on']:,} images, those AutoAttack's check covers)"
    text += "."
    if c.get("evidence"):
        e = c["evidence"]
        text += (f" {e['weak']['attack']} alone (the paper's attack) overstated its robustness "
                 f"({pct_interval(e['weak'])}): on the same images the worst case is clearly below it (McNemar p = "
                 f"{e['test']['p']:.2g}), the signature of masked gradients; {c['mechanism']}.")
    return text


def _paired_words(t: Mapping[str, Any] | None) -> str:
    if t is None:
        return "not compared (no per-image outcomes)"
    lo, hi = t["interval"]
    return (f"{100 * t['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}] on the same {t['n']:,} images "
            f"(McNemar p = {t['p']:.2g})")


def _eps_words(eps: float) -> str:
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 else f"{eps:.3g}"


def _grade_sentence(name: str, g: Mapping[str, Any] | None) -> str:
    if g is None:
        return f"{name}: not graded (no per-image outcomes)."
    if g["interval"] is None:
        return (f"{name} recovers {100 * g['value']:.0f}% of adversarial training's gain on the same {g['n']:,} "
                f"images (gain {100 * g['gain']:+.1f} against {100 * g['yardstick_gain']:+.1f} points); its 95% "
                "interval is unbounded: adversarial training's gain is not clearly away from 0 on these images.")
    lo, hi = g["interval"]
    return (f"{name} recovers {100 * g['value']:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%] of adversarial training's "
            f"gain over the normal network on the same {g['n']:,} images (gain {100 * g['gain']:+.1f} against "
            f"{100 * g['yardstick_gain']:+.1f} points; robust = left standing by the worst case and, where it ran, by "
            "AutoAttack; Fieller's 95% interval).")


def _anchor_sentence(name: str, d: str, v: Mapping[str, Any], yardstick: Mapping[str, Any],
                     published: Mapping[str, Any] | None) -> str:
    """AutoAttack on one reading's model and on adversarial training, on the same images; on CIFAR-10 beside the
    authors' self-reported number (the anchors file)."""
    aa = v.get("autoattack")
    if aa is None:
        return ""
    at = yardstick.get("autoattack")
    text = (f"{name}: AutoAttack on the worst case's survivors (first {aa['n']:,} test images, robust only if both "
            f"left an image standing) {pct_interval(aa)}"
            + (f", adversarial training {pct_interval(at)} on the same images" if at is not None else ""))
    if d == "cifar10" and published is not None:
        text += (f"; the authors report {100 * published['value']:.2f}% under AutoAttack L∞ at ε = "
                 f"{_eps_words(published['eps'])} (self-reported, read from the book's anchors file)"
                 + ("" if v.get("eps") is None or math.isclose(v["eps"], published["eps"]) else
                    f", a radius other than this run's ε = {_eps_words(v['eps'])}"))
    return text + "."


def verdict(results: Mapping[str, Any]) -> str:
    """The verdict in Markdown, sentence by sentence from :func:`verdict_summary`; every sentence on the claim names
    its reading."""
    lines, summary = [], verdict_summary(results)
    published = next((r for r in anchors(CHAPTER) if r["attack"] == "autoattack" and r["threat_model"] == "linf"),
                     None)
    for d, v in summary.items():
        ch, yard = v["changed"], v["yardstick"]
        lines.append(f"**{d}.**")
        if ch["all"]:
            lines.append(f"The analysis behind reading A: adversarial training lowered the entropy of "
                         f"{len(ch['lowered'])} and raised that of {len(ch['raised'])} of the {len(ch['all'])} "
                         f"activation layers by more than {CHANGE_SPREADS:g} batch spreads (lowered: "
                         f"{', '.join(ch['lowered']) or 'none'}; raised: {', '.join(ch['raised']) or 'none'}).")
        for role, r in v["readings"].items():
            layers = v["layers"] if role == ENTROPIC else _free_layers(results["records"], d)
            lines.append(_selection_sentence(r, layers))
        if not v["per_image"]:
            lines.append(f"Note: {kit.NO_PER_IMAGE_NOTE}.")
        eps = yard["eps"]
        radius = f" at the threat radius ε = {eps:.3g}" if eps is not None else ""
        if v["normal_worst"] is not None:
            lines.append(f"Worst case{radius} (the radius of the paper's claim; the chapter measures no smaller one): "
                         f"normal network {pct_interval(v['normal_worst'])}.")
        lines.append("Yardstick: " + _claim_sentence("adversarial training is", yard))
        if not v["has_yardstick"]:
            lines.append("**No yardstick**: adversarial training is not clearly more robust than the normal network "
                         "on these images, so neither reading is graded against it and \"mimics adversarial "
                         "training\" cannot be judged here.")
        for role, r in v["readings"].items():
            name = _reading_name(r)
            lines.append(f"Verdict, {name[0].lower() + name[1:]}: "
                         + _claim_sentence("entropic retraining is", r))
            if r["lam"] <= 0:
                continue
            if v["has_yardstick"]:
                lines.append(_grade_sentence(name, r["grade"]))
            lines.append(f"{name}, reported beside it, not judged: worst case against plain fine-tuning (the same "
                         f"fine-tuning without the entropic term) {_paired_words(r['vs_control'])}; clean accuracy "
                         f"{pct_interval(r['entropic']['clean'])} against plain fine-tuning's "
                         f"{pct_interval(r['control_clean'])}"
                         + (", significantly lower on the same images." if r["clean_cost"] else
                            ", not significantly lower.")
                         + (f" Its softmax saturates in float32 on {pct(r['saturated']['value'])} of the images, "
                            "clearly more than the control's." if r["saturates"] else ""))
            anchor = _anchor_sentence(name, d, r, yard, published)
            if anchor:
                lines.append(anchor)
            if r["failed_checks"]:
                lines.append(f"{name}: health checks failed: {', '.join(r['failed_checks'])}.")
        lines.append(" ".join(v["flags"]) + "." if v["flags"] else "No AutoAttack flag fired.")
        if v["cost"] is not None:
            c = v["cost"]["recipe"]
            lines.append(f"Cost: reading A {c[ENTROPIC]:.2f}× normal training (one entropic step "
                         f"{v['cost']['step']['entropic']:.2f}× a plain one), adversarial training "
                         f"{c[ADVERSARIAL]:.2f}×; reading A's targets come from an adversarially trained model, whose "
                         "cost its figure leaves out"
                         + (f"; reading B {c[ENTROPIC_FREE]:.2f}×, all it costs." if ENTROPIC_FREE in c else "."))
        lines.append("")
    if summary:
        claims = sum(1 for v in summary.values() for r in v["readings"].values() if r["lam"] > 0)
        lines.append("Each claim is judged on the same images with an exact McNemar test"
                     + (f" (Holm-adjusted across the {claims} claims of the readings and data sets"
                        + (", and across the data sets for the yardstick)" if len(summary) > 1 else ")")
                        if claims > 1 else "")
                     + f"; the smallest gain that would matter is {100 * MIN_EFFECT:.0f} points "
                     f"of robust accuracy; a significant gain counts wherever it shows (a floor hides gains, it cannot "
                     f"fake one), a missing gain is inconclusive (floor) unless the normal network's 95% interval "
                     f"excludes 0% and 100%, and a positive must survive AutoAttack on the survivors and the gating "
                     f"health checks. A reading is graded by the fraction of adversarial training's gain it recovers only "
                     f"where adversarial training's own claim holds.")
    lines += [kit.BROKEN_RULE, kit.smoke_note(results.get("profile", ""))]
    return "\n".join(lines).strip()


def _free_layers(records: Sequence[dict], d: str) -> list[str]:
    rec = _sweep_choice(records, d, "tested_lambda", ENTROPIC_FREE)
    return rec["setting"]["layers"].split(",") if rec and rec["setting"].get("layers") else []


def glance_rows(results: Mapping[str, Any]) -> list[dict]:
    """The "Results at a glance" rows (:data:`kit.GLANCE_KEYS`), one per data set and reading, from
    :func:`verdict_summary`: the network the reading evaluated, PGD alone (the paper's attack), the book's worst
    case (AutoAttack on its survivors where it ran), and the authors' self-reported AutoAttack number beside."""
    rows, recs = [], results["records"]
    for d, v in verdict_summary(results).items():
        for role, r in v["readings"].items():
            measured = r["entropic"]
            aa = _test_record(recs, d, r["model"], attack="autoattack")
            worst = aa or measured["worst"]
            threat = (worst or {}).get("threat_model", "linf")
            eps = (worst or {}).get("eps")
            rows.append(kit.glance_row(
                results, CHAPTER, dataset=d, threat_model=threat, eps=eps, defense=role,
                network=(measured["clean"] or {}).get("model", r["model"]),
                claim_name=f"{r['reading']} is more robust than the normal network", claim=r,
                clean=measured["clean"], paper_attack="PGD (the authors')", paper_attack_acc=measured["pgd"],
                worst_case=worst, paper_reported=kit.paper_number(CHAPTER, dataset=d, defense=role, attack="autoattack",
                                                                  threat_model=threat, eps=eps)
                if eps is not None else None, section="verdict"))
    return rows
