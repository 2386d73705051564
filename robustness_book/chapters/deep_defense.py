"""Chapter — Deep Defense, reproduced and stress-tested (chapter id ``deep_defense``).

What lives here, in page order:

- the SPEC (parameters and profiles; the data sets and, per data set, the paper's models are parameters);
- the official recipe (read once from ``robustness_book/anchors/deep_defense.json``) and the training recipes built
  on it: :func:`reference_model`, :func:`finetune_config`, :func:`variant_loss`, :func:`finetune`;
- the protocol as steps on a :class:`Run` (:func:`train_references`, :func:`fine_tune_variants`,
  :func:`evaluate_variants`, :func:`sweep_lambda`, :func:`check_health`, :func:`time_objectives`), each adding
  records (:func:`robustness_book.results.record`, the chapter kit's adapters) to the run; ``run.saved()`` writes them;
- tables and figures, functions of the results (records, health rows, timings, parameters), whether the run is
  live (``run.results()``) or read back (:func:`robustness_book.results.load_results`);
- the verdict (:func:`verdict_summary`, :func:`verdict`), a pure function of the results.

The verdict judges robustness at one radius per data set, ``claim_eps`` (L2, in [0, 1] pixels; MNIST 1.0,
CIFAR-10 0.25 on the book's profiles): the paper states its claim as a larger DeepFool distance ρ_adv, not at a
radius, so the book fixes the L2 radius of its health checks before the run and judges there, paired on the same
images against the plain fine-tuned control; the other radii of ``l2_eps`` are reported beside it. ρ_adv itself
is the paper's metric and is reported as such, never as robustness; the distance claim is judged with its
box-constrained adaptive counterpart, DDN's per-image ρ, paired on the same images against the control's.

The record vocabulary: ``defense`` is the variant (``"none"`` = the reference model, ``"fine_tune"``,
``"adversarial_fine_tune"``, ``"deep_defense"``); ρ records carry ``units`` (``"mean_image"``: the paper's
‖δ‖/‖x − mean image‖; ``"pixel"``: [0, 1] pixels), ``clip``, ``iterations``, ``statistic`` (``"mean"`` over
``"all"`` images as the official ``test()``, or ``"median"`` over the ``"correct"`` ones) and, for the per-epoch
curve, ``epoch``; the λ sweep's records carry ``lam`` and ``sweep=True``. The worst case and DDN are recorded in
the kit's vocabulary (:func:`kit.worst_case_records`: ``images_fooled``; :func:`kit.min_norm_records`:
``converged`` as a metric).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn

from . import kit
from .. import attacks, evaluate
from .. import results as R
from ..config import ChapterSpec, Param, RunConfig, check_counts
from ..data import DATASETS, dataset_info, load_dataset
from ..defenses.adversarial_training import AdversarialLoss
from ..defenses.deep_defense import RHO_REFERENCES, DeepDefenseLoss
from ..evaluate import members as M
from ..evaluate.outcome import Outcome, health_gate, off_floor, removed_by
from ..evaluate.rho import deep_defense_rho, mean_interval, mean_subtraction_factor
from ..evaluate.stats import BOOTSTRAP_RESAMPLES, paired_bootstrap  # the page names the resamples
from ..models import build_model, check_model
from ..report import health_tables as _health_tables, markdown_table, pct, pct_interval, record_table
from ..train import TrainConfig, cached_train, cross_entropy, export_entry, seconds_per_step, trained_model

CHAPTER = "deep_defense"
#: The paper's architectures: the MLP 784-500-150-10 and LeNet on MNIST, the ConvNet on CIFAR-10.
PAPER_MODELS = ("mlp", "lenet", "convnet")
#: The variants, as the ``defense`` field of the records, in page order.
VARIANTS = ("none", "fine_tune", "adversarial_fine_tune", "deep_defense")
LABELS = {"none": "reference", "fine_tune": "plain fine-tuning", "adversarial_fine_tune": "adversarial fine-tuning",
          "deep_defense": "Deep Defense"}
#: The control Deep Defense is compared with: the same number of plain fine-tuning epochs.
CONTROL = "fine_tune"
#: FGSM radii as multiples of ε_ref.
FGSM_FACTORS = (0.2, 0.5, 1.0)
#: Reference training uses the loop's crop-and-flip augmentation on CIFAR-10 only.
AUGMENT_REFERENCE = {"mnist": False, "fashion_mnist": False, "cifar10": True}
#: Whether ρ in our paper units can be compared with the anchors: matconvnet's MNIST input is the image minus the
#: per-pixel training mean (reproduced); its CIFAR-10 input was also contrast-normalized and ZCA-whitened
#: (``cnn_cifar``: ``contrastNormalization = true``, ``whitenData = true``), a space not reproduced here.
ANCHOR_COMPARABLE = {"mnist": True, "fashion_mnist": False, "cifar10": False}

# Record selectors, for the records of the evaluated models (:func:`measured`).
CLEAN = {"metric": "accuracy", "attack": "none"}
PAPER_RHO = {"metric": "rho", "attack": "deepfool", "units": "mean_image", "clip": False, "statistic": "mean"}
WORST = {"metric": "accuracy", "attack": "worst_case"}
#: The weak attack a mechanism word is tested against: the paper's clipped DeepFool, as an accuracy at a radius.
WEAK = {"metric": "accuracy", "attack": "deepfool", "threat_model": "l2"}
#: The smallest gain in worst-case robust accuracy at the claim radius that would matter: 5 points of the same
#: images. Below it a defense that costs 40-55× a plain step buys too little to call "more robust".
MIN_EFFECT = 0.05
#: Fine-tuning far below the paper's budget: fewer than this share of the official images × epochs. Any outcome
#: at such a budget is about a different network than the paper's (science review D1): it is reported as
#: inconclusive (reduced scale), with the fraction and what the paired test read at this budget.
REDUCED_SCALE = 0.25
#: The distance claim (science review D2): the smallest rise of the median per-image DDN ρ over the control's that
#: would matter, as a share of the control's median. The paper claims ρ_adv rises by tens of percent; a rise
#: below a tenth of the control's distance would not be that claim.
MIN_RHO_GAIN = 0.10
#: The setting key of a ρ record holding its per-image ρ (:func:`pack_rho`): 0 for an image the network already
#: misclassifies, ∞ for one the attack did not fool.
RHO_PER_IMAGE = "rho_per_image"


@functools.lru_cache(maxsize=1)
def _anchor_file() -> dict:
    return json.loads((Path(R.__file__).with_name("anchors") / f"{CHAPTER}.json").read_text())


def official_recipe() -> dict:
    """The official code's fine-tuning recipe and Deep Defense defaults (``deepdefense.py``), as stored once in
    ``robustness_book/anchors/deep_defense.json`` next to the paper's published numbers."""
    return dict(_anchor_file()["recipe"])


# --------------------------------------------------------------------------- SPEC


def _check(cfg: RunConfig) -> None:
    if len(cfg.lam_sweep) != len(set(cfg.lam_sweep)):
        raise ValueError(f"parameter lam_sweep={cfg.lam_sweep} must not repeat a value")
    for d in cfg.datasets:
        for m in cfg.models[d]:
            try:
                check_model(m, d)
            except ValueError as err:
                raise ValueError(f"parameter models[{d!r}]={cfg.models[d]}: {err}") from None
        check_counts(cfg, {"ref_size": "train", "ft_size": "train", "n_eval": "test"}, [d])
        for key in ("n_epoch_eval", "n_adaptive", "n_health"):
            if cfg[key] > cfg.n_eval[d]:
                raise ValueError(f"parameter {key}={cfg[key]} must not exceed n_eval[{d!r}]={cfg.n_eval[d]}")
        if cfg.cost_batches * cfg.cost_batch_size > cfg.ref_size[d]:
            raise ValueError(f"parameters cost_batches × cost_batch_size = {cfg.cost_batches * cfg.cost_batch_size} "
                             f"exceed ref_size[{d!r}]={cfg.ref_size[d]} (the timed batches are reference images)")
        grid = cfg.l2_eps[d]
        if len(set(grid)) != len(grid):  # each radius > 0: the kind checks it
            raise ValueError(f"parameter l2_eps[{d!r}]={grid} must hold distinct radii > 0")
        if cfg.claim_eps[d] not in grid:
            raise ValueError(f"parameter claim_eps[{d!r}]={cfg.claim_eps[d]} (the claim's radius) must be one of "
                             f"l2_eps[{d!r}]={grid}")


PARAMS = {
    "datasets": Param("subset", "data sets the chapter runs on", DATASETS),
    "models": Param("subset", "architectures fine-tuned on each data set (mlp and lenet take 28×28 grayscale, "
                              "convnet CIFAR-10)", PAPER_MODELS, per_dataset=True),
    "ref_size": Param("pos_int", "training images of the reference models (the first N)", per_dataset=True),
    "ref_epochs": Param("pos_int", "reference-model training epochs", per_dataset=True),
    "ref_lr": Param("pos_float", "reference-model SGD learning rate"),
    "ft_size": Param("pos_int", "training images used to fine-tune every variant of every model (the first N)",
                     per_dataset=True),
    "ft_epochs": Param("pos_int", "fine-tuning epochs (same for every variant)"),
    "ft_lr": Param("pos_float", "fine-tuning learning rate (the official recipe's in the anchors file)"),
    "flip": Param("bool", "flip each fine-tuning image horizontally with probability 0.5 (the official CIFAR-10 "
                          "loader does)", per_dataset=True),
    "lam": Param("nonneg_float", "Deep Defense λ"),
    "c": Param("nonneg_float", "Deep Defense c (weight of ρ for correct samples)"),
    "d": Param("nonneg_float", "Deep Defense d (weight of ρ for misclassified samples)"),
    "df_iter": Param("pos_int", "DeepFool iterations, in training and in the paper's ρ_adv"),
    "rho_reference": Param("choice", "where ρ (‖Δx‖/‖x‖) is measured in the loss (mean_image: matconvnet's "
                                     "per-pixel-mean-subtracted input, the paper's scale)", RHO_REFERENCES),
    "adv_attack": Param("choice", "examples for adversarial fine-tuning (deepfool: DeepFool-L2 with df_iter "
                                  "iterations, the DeepFool paper's adversarial fine-tuning)", ("fgsm", "deepfool")),
    "adv_eps_factor": Param("pos_float", "FGSM fine-tuning radius as a multiple of ε_ref (adv_attack fgsm only)"),
    "lam_sweep": Param("nonneg_float_list", "λ values for the trade-off sweep (Deep Defense on the first model "
                                               "of the first data set)"),
    "n_eval": Param("pos_int", "test images for ρ_adv, DDN and FGSM (the first N)", per_dataset=True),
    "n_epoch_eval": Param("pos_int", "test images for ρ_adv after each epoch"),
    "ddn_steps": Param("pos_int", "DDN (minimum-norm L2 attack) steps; convergence is checked with twice as many"),
    "l2_eps": Param("pos_float_list", "L2 radii ([0, 1] pixels) of the adaptive worst-case curve",
                    per_dataset=True),
    "claim_eps": Param("pos_float", "the claim's L2 radius (health checks, headline), one of l2_eps",
                       per_dataset=True),
    "pgd_steps": Param("pos_int", "steps of the PGD-L2 members (CE, margin, transfer) and of the cost table"),
    "restarts": Param("pos_int", "random restarts of the PGD members"),
    "square_queries": Param("pos_int", "queries per image of the Square-L2 member"),
    "n_adaptive": Param("pos_int", "test images for the adaptive worst case (the first N)"),
    "autoattack": Param("bool", "confirm a positive with AutoAttack (L2, standard) on the worst case's survivors "
                                "at claim_eps (its Square runs 5,000 queries per survivor: minutes per model on a "
                                "CPU)"),
    "n_health": Param("pos_int", "test images for the evaluation-health checks (the first N)"),
    "health_steps": Param("pos_int", "PGD-L2 steps of the health checks"),
    "cost_batches": Param("pos_int", "training steps timed per objective for the cost table"),
    "cost_batch_size": Param("pos_int", "images per timed step (the fine-tuning batch is the recipe's)"),
    "eps_ref_iter": Param("pos_int", "DeepFool-L∞ iterations for ε_ref, and DeepFool-L2 iterations of the "
                                     "converged ρ compared with the anchors"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed"),
}


_per = kit.per_dataset  # the kit's per-data-set value (Fashion-MNIST takes MNIST's)


_COMMON = {
    "datasets": ["mnist", "cifar10"], "models": _per(["mlp", "lenet"], ["convnet"]), "ref_lr": 0.02,
    "ft_lr": 5e-4, "flip": _per(False, True), "lam": 15.0, "c": 25.0, "d": 5.0, "df_iter": 5,
    # The adversarial variant trains on DeepFool examples (science review D4): the adversarial fine-tuning of the
    # DeepFool paper, whose reference models and ρ_adv Deep Defense adopts, and the very perturbation Deep Defense
    # differentiates; the paired comparison then separates "training on DeepFool examples" from "regularizing
    # DeepFool's distance". FGSM (at adv_eps_factor × ε_ref) stays available.
    "rho_reference": "mean_image", "adv_attack": "deepfool", "adv_eps_factor": 0.5,
    # Fashion-MNIST's L∞ threat radius is a third of MNIST's (data.threat_eps), so its L2 radii are smaller too.
    "claim_eps": _per(1.0, 0.25, 0.5), "batch_size": 250, "seed": 0,
}

PROFILES = {
    # CI: every cell runs, on a few images (≤ 2 min on 2 cores).
    "smoke": {**_COMMON, "ref_size": _per(1000, 500), "ref_epochs": 1, "ft_size": _per(100, 20), "ft_epochs": 1,
              "lam_sweep": [5.0, 15.0], "n_eval": _per(30, 20), "n_epoch_eval": 10, "ddn_steps": 5,
              "l2_eps": _per([0.5, 1.0], [0.25], [0.25, 0.5]), "pgd_steps": 3, "restarts": 1, "square_queries": 10,
              "n_adaptive": 10, "n_health": 10, "health_steps": 2, "cost_batches": 1, "cost_batch_size": 10,
              "eps_ref_iter": 10, "autoattack": False},
    # ≤ 15 min on 2 CPU cores. The official lr throughout: 10× that was measured to cost clean accuracy and, on
    # LeNet, the ρ gain itself. A Deep Defense step costs ~40-55 plain steps on CPU (LeNet ≈ 3 s, the CIFAR
    # ConvNet ≈ 7 s per batch of 100 on one loaded core), so fine-tuning runs on subsets: one size per data set,
    # 3,000 MNIST images for both MNIST models (LeNet's budget; the MLP's λ sweep runs on the same images) and
    # 1,000 CIFAR-10 images (20 Deep Defense batches). References are trained briefly (60k MNIST images × 3
    # epochs, 10k CIFAR-10 images × 6 epochs); DDN and ρ run on the first 500 / 300 test images, the adaptive
    # worst case and the health checks on the first 200.
    # The MLP at the official budget (science review D1) does not fit: a Deep Defense step of the MLP was measured
    # at 0.13 s (batch 100, one thread, on the shared 2-core machine), so its 3,000 official steps take ≈ 6.3 min
    # and the two controls ≈ 1-3 min more, on top of an evaluation that already takes ≈ 11.6 min of the 15
    # (book/performance.md); the verdict reports every claim of a reduced-scale run as inconclusive
    # (REDUCED_SCALE), naming the fraction.
    "laptop": {**_COMMON, "ref_size": _per(60000, 10000), "ref_epochs": _per(3, 6), "ft_size": _per(3000, 1000),
               "ft_epochs": 2, "lam_sweep": [5.0, 15.0, 45.0], "n_eval": _per(500, 300), "n_epoch_eval": 300,
               "ddn_steps": 50, "l2_eps": _per([0.5, 1.0, 1.5, 2.0], [0.1, 0.25, 0.5], [0.25, 0.5, 0.75, 1.0]),
               "pgd_steps": 50, "restarts": 1, "square_queries": 500, "n_adaptive": 200, "n_health": 200,
               "health_steps": 10, "cost_batches": 2, "cost_batch_size": 100, "eps_ref_iter": 50,
               "autoattack": True},
    "paper": {**_COMMON, "ref_size": _per(60000, 50000), "ref_epochs": _per(10, 60), "ft_size": _per(60000, 50000),
              "ft_epochs": 5, "lam_sweep": [5.0, 15.0, 45.0], "n_eval": _per(10000, 1000), "n_epoch_eval": 1000,
              "ddn_steps": 1000,
              "l2_eps": _per([0.5, 1.0, 1.5, 2.0, 2.5], [0.1, 0.25, 0.5, 0.75], [0.25, 0.5, 0.75, 1.0, 1.5]),
              "pgd_steps": 100, "restarts": 2, "square_queries": 5000, "n_adaptive": 1000, "n_health": 1000,
              "health_steps": 100, "cost_batches": 20, "cost_batch_size": 100, "eps_ref_iter": 50,
              "autoattack": True},
}

SPEC = ChapterSpec(
    name=CHAPTER,
    title="Deep Defense: the DeepFool-perturbation regularizer",
    notebook="notebooks/deep_defense.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


def pairs(cfg) -> list[tuple[str, str]]:
    """The run's (data set, model) pairs, in page order."""
    return [(d, m) for d in cfg["datasets"] for m in cfg["models"][d]]


# --------------------------------------------------------------------------- training recipes


def data_for(cfg: RunConfig, dataset: str) -> dict:
    """Reference-training, fine-tuning, evaluation, per-epoch, adaptive and health-check sets of ``dataset``."""
    train_set, test = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    ev = test.first(cfg.n_eval[dataset])
    return {"ref": train_set.first(cfg.ref_size[dataset]), "ft": train_set.first(cfg.ft_size[dataset]), "eval": ev,
            "epoch_eval": ev.first(cfg.n_epoch_eval), "adaptive": ev.first(cfg.n_adaptive),
            "health": ev.first(cfg.n_health)}


def reference_model(cfg: RunConfig, dataset: str, model: str) -> tuple[nn.Module, dict]:
    """The pretrained model every variant starts from (cached): plain cross-entropy, lr × 0.2 at half and three
    quarters of the epochs."""
    epochs = cfg.ref_epochs[dataset]
    config = TrainConfig(epochs=epochs, lr=cfg.ref_lr, batch_size=128, augment=AUGMENT_REFERENCE[dataset],
                         seed=cfg.seed,
                         milestones=tuple(m for m in (round(0.5 * epochs), round(0.75 * epochs)) if 0 < m < epochs))
    return trained_model(model, dataset, config, train_size=cfg.ref_size[dataset])


def official_milestones(epochs: int) -> tuple[int, ...]:
    """The official schedule: lr × ``lr_decay_factor`` before epoch ``epoch_idx`` (0-based) when
    ``epoch_idx == lr_decay_at_fraction · epochs`` (``deepdefense.py``), i.e. only when that is a whole number:
    epoch 4 of 5, never for 1 or 2 epochs."""
    at = official_recipe()["lr_decay_at_fraction"]
    return tuple(i for i in range(1, epochs) if i == at * epochs)


def finetune_config(cfg: RunConfig) -> TrainConfig:
    """The official fine-tuning recipe (batch, momentum, weight decay, schedule, frozen BN from
    :func:`official_recipe`) with this run's epochs and lr. Flips are in the loss (:class:`FlipAugmented`):
    the training loop's own augmentation also crops, which the official loader does not."""
    o = official_recipe()
    return TrainConfig(epochs=cfg.ft_epochs, batch_size=o["batch_size"], lr=cfg.ft_lr, momentum=o["momentum"],
                       weight_decay=o["weight_decay"], milestones=official_milestones(cfg.ft_epochs),
                       gamma=o["lr_decay_factor"], freeze_bn=o["freeze_bn"], augment=False, seed=cfg.seed)


class FlipAugmented:
    """A loss that first flips each image horizontally with probability 0.5 (one draw per image, from a generator
    seeded with ``seed``), then applies ``loss``: the official CIFAR-10 loader's augmentation
    (``CIFAR10Dataset.__getitem__``: ``np.fliplr`` with p = 0.5)."""

    def __init__(self, loss, seed: int = 0):
        self.loss, self.seed = loss, seed
        self._generator: torch.Generator | None = None
        inner = getattr(loss, "spec", None) or {"name": getattr(loss, "__name__", type(loss).__name__)}
        self.spec = {"name": "flip_augmented", "p": 0.5, "seed": seed, "loss": dict(inner)}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._generator is None:
            self._generator = torch.Generator().manual_seed(self.seed)
        flip = (torch.rand(len(x), generator=self._generator) < 0.5).to(x.device)
        return self.loss(model, torch.where(flip[:, None, None, None], x.flip(3), x), y)

    def __repr__(self) -> str:
        return f"FlipAugmented({self.loss!r}, seed={self.seed})"


def variant_loss(cfg: RunConfig, variant: str, eps_ref: float, dataset: str, lam: float | None = None):
    """The training objective of ``variant`` (one of :data:`VARIANTS` but the reference), with flipped inputs
    where ``cfg.flip[dataset]``."""
    if variant == "fine_tune":
        loss = cross_entropy
    elif variant == "adversarial_fine_tune":
        loss = AdversarialLoss(cfg.adv_attack, eps=cfg.adv_eps_factor * eps_ref, mix=0.5, steps=cfg.df_iter)
    elif variant == "deep_defense":
        loss = DeepDefenseLoss(lam=cfg.lam if lam is None else lam, c=cfg.c, d=cfg.d, max_iter=cfg.df_iter,
                               rho_reference=cfg.rho_reference, dataset=dataset)
    else:
        raise ValueError(f"unknown variant {variant!r}; allowed: {', '.join(VARIANTS[1:])}")
    return FlipAugmented(loss, cfg.seed) if cfg.flip[dataset] else loss


class PaperRho:
    """An ``epoch_callback``: the paper's ρ_adv (:func:`robustness_book.evaluate.deep_defense_rho`) on a fixed set."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, dataset: str, max_iter: int = 5):
        self.x, self.y, self.dataset, self.max_iter = x, y, dataset, max_iter
        self.spec = {"name": "paper_rho", "n": len(x), "max_iter": max_iter, "dataset": dataset}

    def __call__(self, epoch: int, model: nn.Module) -> dict:
        r = deep_defense_rho(model, self.x, self.dataset, self.y, max_iter=self.max_iter)
        return {"rho_paper": r["rho"], "deepfool_success": r["success"], "clean": r["clean"]}


def finetune(cfg: RunConfig, dataset: str, model: str, ref: nn.Module, data: dict, loss) -> tuple[nn.Module, dict]:
    """Fine-tune a copy of ``ref`` with ``loss`` through the book's one training loop (cached); the paper's ρ_adv
    is recorded after every epoch."""
    callback = PaperRho(data["epoch_eval"].x, data["epoch_eval"].y, dataset, max_iter=cfg.df_iter)
    recipe = {"model": model, "dataset": dataset, "subset": f"first {len(data['ft'])}", "stage": "finetune"}
    return cached_train(recipe, lambda: build_model(model, dataset), data["ft"], finetune_config(cfg), loss=loss,
                        init=ref, epoch_callback=callback)


# --------------------------------------------------------------------------- measurements


def eps_ref(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 250, max_iter: int = 50) -> float:
    """ε_ref (the book's reading of the paper's FGS protocol, which was not retrieved): the median L∞ norm of the
    reference model's DeepFool-L∞ perturbation (``max_iter`` iterations) over the correctly classified
    evaluation images (an image it does not fool counts as ∞)."""
    x_adv = evaluate.run_attack(attacks.deepfool, model, x, y, batch_size, norm=math.inf, max_iter=max_iter)
    s = evaluate.min_norm_summary(x, x_adv, y, model, p=math.inf)
    if not math.isfinite(s["norm_median"]):
        raise ValueError(f"ε_ref is {s['norm_median']} ({s['n_correct']} of {len(x)} evaluation images correctly "
                         f"classified, DeepFool success {s['success_rate']:.0%}): raise n_eval or train the "
                         "reference model longer")
    return s["norm_median"]


def adaptive_members(cfg: RunConfig, control: nn.Module | None = None) -> list:
    """The L2 worst-case ensemble, in order: PGD-CE, PGD-margin, Square-L2 and (for every model but the control
    itself) PGD-CE examples crafted on the plain fine-tuned control and transferred."""
    out = [M.pgd("ce", cfg.pgd_steps, cfg.restarts), M.pgd("margin", cfg.pgd_steps, cfg.restarts),
           M.square(cfg.square_queries)]
    if control is not None:
        out.append(M.transfer(control, loss="ce", steps=cfg.pgd_steps, restarts=cfg.restarts,
                              name="transfer_from_control"))
    return out


def _median_over_correct(per_image: torch.Tensor, fooled: torch.Tensor, correct: torch.Tensor) -> float:
    """Median over the correctly classified images, an image the attack did not fool counting as ∞ (as DDN's)."""
    if not correct.any():
        return float("nan")
    return float(torch.where(fooled, per_image, torch.full_like(per_image, math.inf))[correct].median())


def per_image_rho(rho: torch.Tensor, fooled: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """Each image's distance to a wrong decision, as the paired distance claim reads it: ρ where the attack fooled
    a correctly classified image, 0 where the network already misclassifies it, ∞ where the attack failed."""
    rho, fooled, correct = rho.detach().cpu().float(), fooled.cpu().bool(), correct.cpu().bool()
    return torch.where(correct, torch.where(fooled, rho, torch.full_like(rho, math.inf)), torch.zeros_like(rho))


def pack_rho(rho: torch.Tensor) -> str:
    """Per-image ρ as a record's setting holds it (numbers only, not lists): space-separated, 4 significant
    digits (ρ itself is measured to a few percent), ``inf`` for a failure."""
    return " ".join(f"{float(v):.4g}" for v in rho)


def unpack_rho(text: str) -> torch.Tensor:
    """The inverse of :func:`pack_rho`."""
    return torch.tensor([float(t) for t in text.split()], dtype=torch.float64)


def rho_of(rec: dict | None) -> torch.Tensor | None:
    """A ρ record's per-image ρ (:data:`RHO_PER_IMAGE`), or ``None`` (a results file written before they were
    recorded)."""
    if rec is None or RHO_PER_IMAGE not in rec.get("setting", {}):
        return None
    return unpack_rho(rec["setting"][RHO_PER_IMAGE])


def ddn_per_image(net: nn.Module, x: torch.Tensor, y: torch.Tensor, correct: torch.Tensor, steps: int,
                  batch_size: int, seed: int) -> torch.Tensor:
    """:func:`per_image_rho` of DDN (pixel ρ, box-constrained) with the generator and steps of
    ``evaluate.min_norm``'s first run, so the values are those its median summarizes (min_norm keeps only the
    summary)."""
    gen = torch.Generator(evaluate.model_device(net)).manual_seed(seed)
    adv = evaluate.run_attack(attacks.ddn, net, x, y, batch_size, desc=f"ddn {steps} steps, per image", steps=steps,
                              generator=gen)
    fooled = evaluate.predict(net, adv, batch_size) != y
    rho = (adv - x).flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    return per_image_rho(rho, fooled, correct)


def _rho_records(rec, r: dict, clip: bool, iterations: int) -> list[dict]:
    """The paper's ρ (mean over all images, paper and pixel units) and DeepFool's success rate, as records."""
    common = {"attack": "deepfool", "threat_model": "l2", "n": r["n"], "clip": clip, "iterations": iterations}
    return [rec(metric="rho", value=r["rho"], interval=r["interval"], units="mean_image", statistic="mean",
                over="all", **common),
            rec(metric="rho", value=r["rho_pixels"], interval=mean_interval(r["per_image_pixels"]), units="pixel",
                statistic="mean", over="all", **common),
            rec(metric="success_rate", value=r["success"], **common)]


def _knobs(cfg: RunConfig, variant: str) -> dict:
    return {"lam": cfg.lam} if variant == "deep_defense" else {}


def evaluate_model(run: Run, dataset: str, model: str, variant: str, members: list, converged: bool = False) -> None:
    """Every number the page reports for one model (``run.nets[dataset, model, variant]``), as records; its
    worst-case curve, with the per-image outcomes, goes to ``run.raw[dataset, model, variant]``.

    - clean accuracy (Wilson interval);
    - the paper's ρ_adv (official ``test()``: unclipped ``df_iter``-step DeepFool from the predicted label on every
      image, ‖δ‖/‖x − mean image‖, failures included; also in pixel units) with DeepFool's success rate,
      unclipped and with every iterate clipped to [0, 1]; with ``converged``, the same with ``eps_ref_iter`` iterations;
    - the box-constrained minimum-norm pair: pixel ρ medians over the correctly classified images (failure = ∞)
      of the clipped DeepFool and of DDN (:func:`kit.min_norm_records`, with its convergence check);
    - FGSM accuracy at :data:`FGSM_FACTORS` × ε_ref;
    - the adaptive L2 worst-case curve (:func:`robustness_book.evaluate.worst_case_curve` with ``members`` over
      ``l2_eps``) on the first ``n_adaptive`` images, with the images each member fooled.
    """
    cfg, net, data, knobs = run.cfg, run.nets[dataset, model, variant], run.data[dataset], _knobs(run.cfg, variant)
    rec = functools.partial(R.record, cfg, dataset=dataset, model=model, defense=variant, **knobs)
    x, y = data["eval"].x, data["eval"].y
    bs = cfg.batch_size
    paper = deep_defense_rho(net, x, dataset, y, max_iter=cfg.df_iter, batch_size=bs)
    clipped = deep_defense_rho(net, x, dataset, y, max_iter=cfg.df_iter, clip=True, batch_size=bs)
    correct = evaluate.predict(net, x) == y
    clean = evaluate.accuracy_record(correct)
    out = [rec(metric="accuracy", value=clean["value"], n=len(y), interval=clean["interval"],
               **{kit.PER_IMAGE: evaluate.pack_mask(correct)})]
    out += _rho_records(rec, paper, False, cfg.df_iter) + _rho_records(rec, clipped, True, cfg.df_iter)
    if converged and cfg.eps_ref_iter != cfg.df_iter:  # the converged ρ the anchors are compared with
        conv = deep_defense_rho(net, x, dataset, y, max_iter=cfg.eps_ref_iter, batch_size=bs)
        out += _rho_records(rec, conv, False, cfg.eps_ref_iter)
    # the paired distance claim reads per-image ρ of the two networks it compares (the clipped DeepFool's, DDN's)
    paired = variant in (CONTROL, "deep_defense")
    df_image = per_image_rho(clipped["per_image_pixels"], clipped["fooled"], correct)
    out.append(rec(attack="deepfool", value=_median_over_correct(clipped["per_image_pixels"], clipped["fooled"],
                                                                 correct), iterations=cfg.df_iter, metric="rho",
                   threat_model="l2", n=len(y), units="pixel", clip=True, statistic="median", over="correct",
                   **({RHO_PER_IMAGE: pack_rho(df_image)} if paired else {})))
    ddn = kit.min_norm_records(cfg, evaluate.min_norm(net, x, y, steps=cfg.ddn_steps, batch_size=bs, seed=cfg.seed),
                               dataset=dataset, model=model, attack="ddn", threat_model="l2", defense=variant,
                               steps=cfg.ddn_steps, clip=True, **knobs)
    median = R.first(ddn, metric="rho", statistic="median")
    median["setting"]["over"] = "correct"  # as the clipped DeepFool's
    if paired:
        median["setting"][RHO_PER_IMAGE] = pack_rho(ddn_per_image(net, x, y, correct, cfg.ddn_steps, bs, cfg.seed))
    out += ddn
    for f in FGSM_FACTORS:
        adv = evaluate.run_attack(attacks.fgsm, net, x, y, bs, eps=f * run.eps_ref[dataset, model])
        out.append(rec(metric="accuracy", attack="fgsm", threat_model="linf", eps=f * run.eps_ref[dataset, model],
                       n=len(y), value=float((evaluate.predict(net, adv) == y).float().mean()), eps_factor=f))
    out += _deepfool_at_radii(rec, clipped, x, correct, sorted(cfg.l2_eps[dataset]), cfg.df_iter)
    xa, ya = data["adaptive"].x, data["adaptive"].y
    curve = evaluate.worst_case_curve(net, xa, ya, sorted(cfg.l2_eps[dataset]), members, norm="l2", batch_size=bs,
                                      seed=cfg.seed)
    budget = {"steps": cfg.pgd_steps, "restarts": cfg.restarts, "queries": cfg.square_queries}  # the ensemble's
    worst = kit.worst_case_records(cfg, curve, dataset=dataset, model=model, run=run, key=(dataset, model, variant),
                                   defense=variant, robust_fields=budget, **knobs)
    run.records += out + worst
    if variant == "deep_defense" and cfg.autoattack:  # AutoAttack (L2, standard) confirms a positive
        point = min(curve, key=lambda p: abs(p["eps"] - cfg.claim_eps[dataset]))
        aa, seconds = kit.autoattack_on_survivors(cfg, net, xa, ya, point, dataset=dataset, model=model,
                                                  batch_size=bs, defense=variant, **knobs)
        run.records.append(aa)
        run.timings.setdefault("autoattack_seconds", {})[f"{dataset}/{model}"] = seconds


def _deepfool_at_radii(rec, clipped: dict, x: torch.Tensor, correct: torch.Tensor, radii, iterations: int) -> list:
    """The weak attack the mechanism test compares with: accuracy under the clipped DeepFool at each L2 radius
    (an image is lost when DeepFool fooled it with ‖δ‖₂ ≤ ε), with the per-image outcome, on the ρ images."""
    norms = clipped["per_image_pixels"] * x.flatten(1).norm(dim=1).cpu()
    out = []
    for eps in radii:
        mask = correct.cpu() & ~(clipped["fooled"] & (norms <= eps))
        r = evaluate.accuracy_record(mask)
        out.append(rec(metric="accuracy", attack="deepfool", threat_model="l2", eps=eps, value=r["value"], n=r["n"],
                       interval=r["interval"], clip=True, iterations=iterations,
                       **{kit.PER_IMAGE: evaluate.pack_mask(mask)}))
    return out


def cost_rows(cfg: RunConfig, dataset: str, model: nn.Module, data, eps_reference: float) -> dict:
    """Seconds per training step of ``cost_batch_size`` images for each objective, timed back to back in this
    run, with the extrapolated seconds per epoch of the full training set and the ratio to the plain step."""
    objectives = {
        "fine_tune": (LABELS["fine_tune"], variant_loss(cfg, "fine_tune", eps_reference, dataset)),
        "adversarial_fine_tune": (f"adversarial fine-tuning ({cfg.adv_attack})",
                                  variant_loss(cfg, "adversarial_fine_tune", eps_reference, dataset)),
        "pgd_training": (f"PGD-{cfg.pgd_steps} L2 adversarial training",
                         AdversarialLoss("pgd_l2", eps=cfg.claim_eps[dataset], mix=1.0, steps=cfg.pgd_steps,
                                         seed=cfg.seed)),
        "deep_defense": (LABELS["deep_defense"], variant_loss(cfg, "deep_defense", eps_reference, dataset)),
    }
    config = replace(finetune_config(cfg), batch_size=cfg.cost_batch_size)
    per_step = {k: seconds_per_step(model, data, config, loss, cfg.cost_batches) for k, (_, loss) in objectives.items()}
    n_full = dataset_info(dataset).n_train
    return {k: {"label": objectives[k][0], "seconds_per_batch": v,
                "seconds_per_epoch_full": v * n_full / cfg.cost_batch_size, "ratio_to_plain": v / per_step["fine_tune"]}
            for k, v in per_step.items()}


# --------------------------------------------------------------------------- the run, step by step


@dataclass
class Run(kit.Run):
    """:class:`kit.Run` with the chapter's own state: ``eps_ref`` per (data set, model). ``nets`` are keyed
    (data set, model, variant), ``data`` by data set (:func:`data_for`), ``raw`` holds each model's worst-case
    curve under its ``nets`` key; ``timings`` hold the training seconds, fine-tuning seconds per epoch and cost."""

    timings: dict = field(default_factory=lambda: {"train_seconds": {}, "finetune_seconds_per_epoch": {},
                                                   "cost": {}})
    eps_ref: dict = field(default_factory=dict)  # (data set, model) -> ε_ref


def train_references(run: Run) -> None:
    """Load the data, train (or load) each reference model, and record ε_ref and the ρ scale factors."""
    cfg = run.cfg
    for d in cfg.datasets:
        run.data[d] = data_for(cfg, d)
        x = run.data[d]["eval"].x
        for reference in ("mean_image", "channel_mean"):
            run.records.append(R.record(cfg, dataset=d, model="none", metric="norm_ratio", n=len(x),
                                        value=mean_subtraction_factor(x, d, reference), reference=reference))
    for d, m in pairs(cfg):
        with run.timer(f"reference {d}/{m}"):
            run.nets[d, m, "none"], meta = reference_model(cfg, d, m)
            ev = run.data[d]["eval"]
            run.eps_ref[d, m] = eps_ref(run.nets[d, m, "none"], ev.x, ev.y, cfg.batch_size, cfg.eps_ref_iter)
        run.timings["train_seconds"][f"{d}/{m}/none"] = meta["train_seconds"]
        run.records.append(R.record(cfg, dataset=d, model=m, metric="eps_ref", value=run.eps_ref[d, m],
                                    attack="deepfool", threat_model="linf", n=len(ev), iterations=cfg.eps_ref_iter,
                                    statistic="median", over="correct"))


def fine_tune_variants(run: Run) -> None:
    """Fine-tune every variant from its reference model; record the paper's ρ after each epoch (epoch 0: the
    reference)."""
    cfg = run.cfg
    for d, m in pairs(cfg):
        ref, data = run.nets[d, m, "none"], run.data[d]
        start = PaperRho(data["epoch_eval"].x, data["epoch_eval"].y, d, cfg.df_iter)(0, ref)
        per_epoch = {"metric": "rho", "attack": "deepfool", "threat_model": "l2", "n": len(data["epoch_eval"]),
                     "units": "mean_image", "clip": False, "iterations": cfg.df_iter, "statistic": "mean",
                     "over": "all"}
        run.records.append(R.record(cfg, dataset=d, model=m, value=start["rho_paper"], epoch=0, **per_epoch))
        secs = run.timings["finetune_seconds_per_epoch"].setdefault(f"{d}/{m}", {})
        for v in VARIANTS[1:]:
            with run.timer(f"fine-tune {d}/{m} {v}"):
                run.nets[d, m, v], meta = finetune(cfg, d, m, ref, data, variant_loss(cfg, v, run.eps_ref[d, m], d))
            if v == "deep_defense":
                run.exports.append(export_entry(meta, "Deep Defense (Deep Defense chapter)", d, m, lam=cfg.lam))
            history = meta["history"]["epochs"]
            run.timings["train_seconds"][f"{d}/{m}/{v}"] = meta["train_seconds"]
            secs[v] = [e["seconds"] for e in history]
            run.records += [R.record(cfg, dataset=d, model=m, defense=v, value=e["rho_paper"], epoch=e["epoch"],
                                     **per_epoch, **_knobs(cfg, v)) for e in history]


def evaluate_variants(run: Run) -> None:
    """:func:`evaluate_model` for every variant of every model (the reference also with the converged ρ for the
    anchors; every model but the control with the transfer member from the control)."""
    for d, m in pairs(run.cfg):
        for v in VARIANTS:
            control = None if v == CONTROL else run.nets[d, m, CONTROL]
            with run.timer(f"evaluate {d}/{m} {v}"):
                evaluate_model(run, d, m, v, adaptive_members(run.cfg, control), converged=v == "none")


def sweep_lambda(run: Run) -> None:
    """Deep Defense with each λ of ``lam_sweep`` (all else fixed) on the first model of the first data set:
    clean accuracy and the paper's ρ, as records with ``lam`` and ``sweep=True``."""
    cfg = run.cfg
    d, m = pairs(cfg)[0]
    data, ref = run.data[d], run.nets[d, m, "none"]
    x, y = data["eval"].x, data["eval"].y
    with run.timer("lambda sweep"):
        for lam in cfg.lam_sweep:
            net, _ = finetune(cfg, d, m, ref, data, variant_loss(cfg, "deep_defense", run.eps_ref[d, m], d, lam=lam))
            r = deep_defense_rho(net, x, d, y, max_iter=cfg.df_iter, batch_size=cfg.batch_size)
            rec = functools.partial(R.record, cfg, dataset=d, model=m, defense="deep_defense", n=r["n"], lam=lam,
                                    sweep=True)
            run.records += [rec(metric="accuracy", value=r["clean"]),
                            rec(metric="rho", attack="deepfool", threat_model="l2", value=r["rho"],
                                interval=r["interval"], units="mean_image", clip=False, iterations=cfg.df_iter,
                                statistic="mean", over="all")]


def check_health(run: Run) -> None:
    """The health table of every Deep Defense model in the claim's threat model (L2 at its data set's
    ``claim_eps``, :func:`kit.health_rows`): with a transfer check from the plain fine-tuned control and the
    gradient-free check on the worst case at that radius."""
    cfg = run.cfg
    with run.timer("health checks"):
        for d, m in pairs(cfg):
            eps, ev = cfg.claim_eps[d], run.data[d]["health"]
            worst = min(run.raw[d, m, "deep_defense"], key=lambda p: abs(p["eps"] - eps))
            run.health += kit.health_rows(
                run.nets[d, m, "deep_defense"], ev.x, ev.y, dataset=d, model=m, eps=eps, steps=cfg.health_steps,
                num_classes=dataset_info(d).num_classes, seed=cfg.seed, batch_size=cfg.batch_size, norm="l2",
                transfer_from=run.nets[d, m, CONTROL], worst=worst, defense="deep_defense", claim_eps=eps)


def time_objectives(run: Run) -> None:
    """The cost table: seconds per training step of each objective, into ``timings`` (never into records)."""
    cfg = run.cfg
    with run.timer("cost"):
        for d, m in pairs(cfg):
            run.timings["cost"][f"{d}/{m}"] = cost_rows(cfg, d, run.nets[d, m, "none"], run.data[d]["ref"],
                                                        run.eps_ref[d, m])


# --------------------------------------------------------------------------- reading records


def measured(records: list[dict]) -> list[dict]:
    """The records of the evaluated models: neither the λ sweep's (``sweep``) nor the per-epoch curve's
    (``epoch``); what :data:`CLEAN`, :data:`PAPER_RHO` and :data:`WORST` select from."""
    return [r for r in records if "sweep" not in r["setting"] and "epoch" not in r["setting"]]


def _pairs_of(records: list[dict]) -> list[tuple[str, str]]:
    """(data set, model) pairs with model records, in the order of the records."""
    return list(dict.fromkeys((r["dataset"], r["model"]) for r in records if r["model"] != "none"))


def _variants_of(records: list[dict], d: str, m: str) -> list[str]:
    present = {r["defense"] for r in records if r["dataset"] == d and r["model"] == m}
    return [v for v in VARIANTS if v in present]


def rho_iv(rec: dict | None) -> str:
    """A ρ record as ``0.2031 [0.1950, 0.2112]``."""
    if rec is None:
        return "–"
    if not rec.get("interval"):
        return f"{rec['value']:.4f}"
    lo, hi = rec["interval"]
    return f"{rec['value']:.4f} [{lo:.4f}, {hi:.4f}]"


def _num(rec: dict | None, fmt: str = ".4f") -> str:
    return "–" if rec is None else format(rec["value"], fmt)


def _heading(d: str, m: str) -> str:
    return f"**{m}** on {d}"


# --------------------------------------------------------------------------- tables and figures


def recipe_table(results: dict) -> str:
    """The official code's recipe next to this run's values (fine-tuning images per data set included)."""
    o, p = official_recipe(), results["parameters"]
    rows = [("λ", o["lam"], p["lam"]), ("c", o["c"], p["c"]), ("d", o["d"], p["d"]),
            ("DeepFool iterations (training and ρ_adv)", o["df_iter"], p["df_iter"]),
            ("DeepFool overshoot", o["overshoot"], DeepDefenseLoss(rho_reference="pixels").overshoot),
            ("fine-tuning epochs", o["ft_epochs"], p["ft_epochs"]), ("learning rate", o["ft_lr"], p["ft_lr"])]
    rows += [(f"fine-tuning images, {d}", o["ft_images"], f"{p['ft_size'][d]:,} of {dataset_info(d).n_train:,}")
             for d in p["datasets"]]
    c = finetune_config(RunConfig(ft_epochs=p["ft_epochs"], ft_lr=p["ft_lr"], seed=p["seed"]))
    rows += [("batch", o["batch_size"], c.batch_size), ("momentum", o["momentum"], c.momentum),
             ("weight decay", o["weight_decay"], c.weight_decay),
             ("lr schedule", f"× {o['lr_decay_factor']:g} at epoch {o['lr_decay_at_fraction']:g}·epochs (0-based)",
              f"× {c.gamma:g} before epoch(s) {list(c.milestones) or 'none'} of {c.epochs}"),
             ("batch-norm statistics", "frozen" if o["freeze_bn"] else "updated",
              "frozen" if c.freeze_bn else "updated")]
    rows += [(f"horizontal flips, {d}", {True: "yes", False: "no"}.get(o["flip"].get(d), "not in the code"),
              "yes" if p["flip"][d] else "no") for d in p["datasets"]]
    return markdown_table([{"what": a, "official": f"{b:g}" if isinstance(b, float) else b,
                            "run": f"{v:g}" if isinstance(v, float) else v} for a, b, v in rows],
                          {"what": "", "official": "official code", "run": "this run"})


def setup_table(results: dict) -> str:
    """Per model: the training and evaluation sizes, ε_ref and the two ρ scale factors."""
    recs, p = results["records"], results["parameters"]
    batch = official_recipe()["batch_size"]
    rows = []
    for d, m in _pairs_of(recs):
        ratio = {r["setting"]["reference"]: r for r in R.select(recs, dataset=d, model="none", metric="norm_ratio")}
        n_eval = ratio["mean_image"]["n"]
        rows.append({"model": m, "data": d, "ref": min(p["ref_size"][d], dataset_info(d).n_train),
                     "ft": p["ft_size"][d], "steps": p["ft_epochs"] * math.ceil(p["ft_size"][d] / batch),
                     "eval": n_eval, "adaptive": min(p["n_adaptive"], n_eval),
                     "eps": _num(R.first(recs, dataset=d, model=m, metric="eps_ref"), ".3f"),
                     "mi": _num(ratio["mean_image"], ".3f"), "cm": _num(ratio["channel_mean"], ".3f")})
    return markdown_table(
        rows, {"model": "model", "data": "data set", "ref": "reference train images", "ft": "fine-tuning images",
               "steps": f"fine-tuning steps (epochs × batches of {batch})", "eval": "test images (ρ, DDN, FGSM)",
               "adaptive": "test images (worst case)", "eps": "ε_ref (L∞)", "mi": "‖x‖ / ‖x − mean image‖",
               "cm": "‖x‖ / ‖x − μ_c‖"})


def scale_sentence(results: dict) -> str:
    """What this run fine-tunes on, against the official recipe, and whether it is a reduced-scale run."""
    p, o = results["parameters"], official_recipe()
    sizes = {d: (p["ft_size"][d], dataset_info(d).n_train) for d in p["datasets"]}
    reduced = p["ft_epochs"] < o["ft_epochs"] or any(n < full for n, full in sizes.values())
    return (f"Profile `{results['profile']}`: every variant is fine-tuned for {p['ft_epochs']} epoch(s) at lr "
            f"{p['ft_lr']:g} on " + ", ".join(f"{n:,} {d} images ({100 * n / full:.2g}% of the training set)"
                                              for d, (n, full) in sizes.items())
            + f"; the official recipe: {o['ft_epochs']} epochs on {o['ft_images']} at lr {o['ft_lr']:g}. ρ_adv, DDN "
            "and FGSM run on the first " + ", ".join(f"{p['n_eval'][d]:,} {d}" for d in p["datasets"])
            + f" test images, the adaptive worst case on the first {p['n_adaptive']:,}, the health checks on the "
            f"first {p['n_health']:,}."
            + (" **This is a reduced-scale run: Deep Defense gets fewer steps than in the paper ("
               + ", ".join(f"{_share_text(_budget_share(results, d))} of the official images × epochs on {d}"
                           for d in p["datasets"])
               + "), and the ρ gains below are those of this budget, not the paper's.**" if reduced else "")
            + (f" Below {100 * REDUCED_SCALE:.0f}% of that budget the verdict reports every claim as inconclusive "
               "(reduced scale), with what the paired test read at this budget."
               if any(_budget_share(results, d) < REDUCED_SCALE for d in p["datasets"]) else ""))


def _cell(fmt, **match):
    """A :func:`robustness_book.report.record_table` column: ``fmt`` of the row's first record matching ``match``."""
    return lambda recs: fmt(R.first(recs, **match))


def _share(rec: dict | None) -> str:
    return "–" if rec is None else pct(rec["value"])


def _ddn_cell(recs: list[dict]) -> str:
    converged = R.first(recs, attack="ddn", metric="converged")
    return (_num(R.first(recs, attack="ddn", metric="rho", statistic="median"))
            + (" (not converged)" if converged and not converged["value"] else ""))


def model_tables(results: dict) -> str:
    """Per model, one row per variant: clean accuracy, the paper's ρ (unclipped and clipped DeepFool) with
    DeepFool's success, the box-constrained min-norm pair and FGSM; accuracies with their Wilson interval."""
    recs, iters = measured(results["records"]), results["parameters"]["df_iter"]
    rho = {**PAPER_RHO, "iterations": iters}
    columns = {"clean acc.": _cell(pct_interval, **CLEAN),
               "ρ_adv, paper units (DeepFool, unclipped)": _cell(rho_iv, **rho),
               "DeepFool success": _cell(_share, metric="success_rate", clip=False, iterations=iters),
               "ρ_adv, paper units (DeepFool clipped to [0, 1])": _cell(rho_iv, **{**rho, "clip": True}),
               "success (clipped)": _cell(_share, metric="success_rate", clip=True, iterations=iters),
               "median ρ px, DeepFool clipped": _cell(_num, attack="deepfool", metric="rho", statistic="median"),
               "median ρ px, DDN": _ddn_cell,
               **{f"FGSM {f:g}·ε_ref": _cell(pct_interval, attack="fgsm", eps_factor=f) for f in FGSM_FACTORS}}
    return "\n\n".join(
        f"{_heading(d, m)} (ε_ref = {_num(R.first(recs, dataset=d, model=m, metric='eps_ref'), '.3f')})\n\n"
        + record_table(recs, {LABELS[v]: {"dataset": d, "model": m, "defense": v} for v in _variants_of(recs, d, m)},
                       columns, corner="variant") for d, m in _pairs_of(recs))


def anchor_table(results: dict) -> str:
    """The reference models' ρ in the paper's units next to DeepFool's Table 1 (the ratio only where the units
    are comparable), and their clean accuracy next to the published one."""
    recs, p = measured(results["records"]), results["parameters"]
    published = R.anchors(CHAPTER)
    rows = []
    for d, m in _pairs_of(recs):
        ref = R.select(recs, dataset=d, model=m, defense="none")
        a_rho = R.first(published, dataset=d, model=m, metric="rho")
        a_acc = R.first(published, dataset=d, model=m, metric="accuracy")
        conv = R.first(ref, iterations=p["eps_ref_iter"], **PAPER_RHO)
        short = R.first(ref, iterations=p["df_iter"], **PAPER_RHO)
        succ = R.first(ref, metric="success_rate", clip=False, iterations=p["eps_ref_iter"])
        ratio = ("no published value" if a_rho is None else "not comparable (whitened inputs)"
                 if not ANCHOR_COMPARABLE[d] else "–" if conv is None else f"{conv['value'] / a_rho['value']:.2f}")
        rows.append({"model": f"{m} ({d})", "anchor": _num(a_rho, ".3f"), "conv": _num(conv),
                     "succ": _share(succ), "short": _num(short), "ratio": ratio, "a_acc": _share(a_acc),
                     "acc": pct_interval(R.first(ref, **CLEAN))})
    return markdown_table(rows, {"model": "model", "anchor": "DeepFool Table 1 ρ_adv",
                                 "conv": f"ours, {p['eps_ref_iter']} it. (paper units)", "succ": "DeepFool success",
                                 "short": f"ours, {p['df_iter']} it. (paper units)", "ratio": "ours / published",
                                 "a_acc": "DeepFool Table 1 clean acc.", "acc": "our reference clean acc."})


def _panels(recs: list[dict], draw, **labels):
    """One panel per (data set, model) of ``recs``: ``draw(ax, d, m)``, then its title, ``labels`` and grid."""
    pairs_ = _pairs_of(recs)
    fig, axes = plt.subplots(1, len(pairs_), figsize=(4 * len(pairs_), 3.3), squeeze=False)
    for ax, (d, m) in zip(axes[0], pairs_):
        draw(ax, d, m)
        ax.set(title=f"{m} ({d})", **labels)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_rho_per_epoch(results: dict):
    """The paper's ρ_adv after each fine-tuning epoch (epoch 0: the reference), one panel per model."""
    recs = [r for r in results["records"] if r["metric"] == "rho" and "epoch" in r["setting"]]

    def draw(ax, d, m):
        start = R.first(recs, dataset=d, model=m, defense="none", epoch=0)
        for v in VARIANTS[1:]:
            curve = sorted(R.select(recs, dataset=d, model=m, defense=v), key=lambda r: r["setting"]["epoch"])
            points = ([start] if start else []) + curve
            ax.plot([r["setting"]["epoch"] for r in points], [r["value"] for r in points], marker="o",
                    label=LABELS[v])
    return _panels(recs, draw, xlabel="fine-tuning epoch (0 = reference)", ylabel="ρ_adv (paper units)")


def worst_case_table(results: dict) -> str:
    """Per model, variant and L2 radius: the worst-case robust accuracy (Wilson) and what each member added."""
    recs = results["records"]
    out = []
    for d, m in _pairs_of(recs):
        rows = []
        for v in _variants_of(recs, d, m):
            for w in sorted(R.select(recs, dataset=d, model=m, defense=v, **WORST), key=lambda r: r["eps"]):
                fooled = R.select(recs, dataset=d, model=m, defense=v, metric="images_fooled", eps=w["eps"])
                added = ", ".join(f"{r['attack']} {r['value']:.0f}" for r in fooled
                                  if r["attack"] != "smaller_eps" and r["value"]) or "—"
                carried = R.first(fooled, attack="smaller_eps")
                rows.append({"variant": LABELS[v], "eps": f"{w['eps']:g}", "robust": pct_interval(w), "added": added,
                             "carried": "–" if carried is None else f"{carried['value']:.0f}"})
        out.append(f"{_heading(d, m)}\n\n" + markdown_table(
            rows, {"variant": "variant", "eps": "L2 ε", "robust": "worst-case robust accuracy",
                   "added": "images fooled per member (this ε)", "carried": "fooled at a smaller ε"}))
    return "\n\n".join(out)


def plot_worst_case(results: dict):
    """Adaptive worst-case robust accuracy vs L2 ε per model, one line per variant, 95% Wilson bands."""
    recs = R.select(results["records"], **WORST)

    def draw(ax, d, m):
        for v in _variants_of(recs, d, m):
            pts = sorted(R.select(recs, dataset=d, model=m, defense=v), key=lambda r: r["eps"])
            e = [r["eps"] for r in pts]
            ax.plot(e, [r["value"] for r in pts], marker="o", label=LABELS[v])
            ax.fill_between(e, [r["interval"][0] for r in pts], [r["interval"][1] for r in pts], alpha=0.15)
    return _panels(recs, draw, xlabel="L2 ε ([0, 1] pixels)", ylabel="worst-case robust accuracy",
                   ylim=(-0.02, 1.02))


def plot_lambda_sweep(results: dict):
    """Clean accuracy against the paper's ρ_adv for each λ of the sweep, with the reference model for scale."""
    recs = results["records"]
    sweep = R.select(recs, defense="deep_defense", sweep=True)
    d, m = sweep[0]["dataset"], sweep[0]["model"]
    lams = sorted({r["setting"]["lam"] for r in sweep})
    rho = [R.first(sweep, metric="rho", lam=lam)["value"] for lam in lams]
    acc = [R.first(sweep, metric="accuracy", lam=lam)["value"] for lam in lams]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(rho, acc, marker="o", label="Deep Defense")
    for lam, r, a in zip(lams, rho, acc):
        ax.annotate(f"λ={lam:g}", (r, a), fontsize=8)
    iters = R.first(sweep, metric="rho", lam=lams[0])["setting"]["iterations"]
    ref_rho = R.first(measured(recs), dataset=d, model=m, defense="none", iterations=iters, **PAPER_RHO)
    ref_acc = R.first(measured(recs), dataset=d, model=m, defense="none", **CLEAN)
    if ref_rho and ref_acc:
        ax.scatter([ref_rho["value"]], [ref_acc["value"]], color="k", marker="x", label="reference")
    ax.set(xlabel="ρ_adv (paper units)", ylabel="clean accuracy", title=f"{m} ({d}): λ trade-off")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def health_tables(results: dict) -> str:
    """The health table of each Deep Defense model, under its data set, network and the claim's L2 radius
    (failed checks marked, never hidden)."""
    return _health_tables(results["health"], by=("dataset", "model", "claim_eps"))


def cost_table(results: dict) -> str:
    """Seconds per training step of each objective, per model, from the timings."""
    return markdown_table(
        [{"model": key.replace("/", ", "), **row} for key, t in results["timings"]["cost"].items()
         for row in t.values()],
        {"model": "data set, model", "label": "objective", "seconds_per_batch": "s / step",
         "seconds_per_epoch_full": "s / epoch (full training set)", "ratio_to_plain": "× plain"},
        {"seconds_per_batch": lambda v: f"{v:.3f}", "seconds_per_epoch_full": lambda v: f"{v:.0f}",
         "ratio_to_plain": lambda v: f"{v:.1f}"})


def finetune_time_table(results: dict) -> str:
    """The fine-tuning runs' own mean seconds per epoch, per variant (ρ measurement after each epoch included)."""
    rows = []
    for key, per in results["timings"]["finetune_seconds_per_epoch"].items():
        mean = {v: sum(s) / len(s) for v, s in per.items() if s}
        rows.append({"model": key.replace("/", ", "), **mean,
                     "ratio": mean["deep_defense"] / mean["fine_tune"] if mean.get("fine_tune") else float("nan")})
    return markdown_table(
        rows, {"model": "data set, model", "fine_tune": "plain s / epoch",
               "adversarial_fine_tune": "adversarial s / epoch",
               "deep_defense": "Deep Defense s / epoch", "ratio": "Deep Defense × plain"},
        {k: (lambda v: f"{v:.1f}") for k in ("fine_tune", "adversarial_fine_tune", "deep_defense", "ratio")})


# --------------------------------------------------------------------------- verdict


def _claim_eps(results: dict, d: str, radii: list[float]) -> float | None:
    """The radius the claim is judged at: the run's ``claim_eps`` of ``d`` (hand-made results without parameters:
    the largest radius measured)."""
    claim = results.get("parameters", {}).get("claim_eps", {}).get(d)
    return claim if claim is not None else (max(radii) if radii else None)


def _budget_share(results: dict, d: str) -> float | None:
    """This run's fine-tuning images × epochs as a share of the official recipe's (the whole training set for
    the official number of epochs); ``None`` without parameters."""
    p = results.get("parameters", {})
    if "ft_size" not in p or "ft_epochs" not in p:
        return None
    return p["ft_size"][d] * p["ft_epochs"] / (dataset_info(d).n_train * official_recipe()["ft_epochs"])


def _paired(a: dict | None, b: dict | None, n: int | None = None) -> dict | None:
    """The paired test of two accuracy records on their first ``n`` common images (None without masks)."""
    ma, mb = kit.per_image(a), kit.per_image(b)
    if ma is None or mb is None:
        return None
    n = min(len(ma), len(mb)) if n is None else n
    return evaluate.paired_test(ma[:n], mb[:n])


def _median_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.median(dim=-1).values - b.median(dim=-1).values


def _gain_removed(df_a, df_b, ddn_a, ddn_b) -> torch.Tensor:
    """How much more median-ρ gain the clipped DeepFool shows than DDN on the same images."""
    return _median_difference(df_a, df_b) - _median_difference(ddn_a, ddn_b)


def judge_distance(defended: torch.Tensor, control: torch.Tensor, *, p_adjusted: float | None = None,
                   converged: bool = True, alpha: float = 0.05) -> tuple[Outcome, dict | None]:
    """The paper's distance claim, judged adaptively (science review D2): does Deep Defense raise the median
    per-image DDN ρ (:func:`per_image_rho`: box-constrained minimum norm, 0 where misclassified, ∞ where DDN
    failed) over the control's, on the same images? Paired bootstrap of the difference of the medians.

    * ``floor``: the control's median is 0 (it misclassifies half the images or more: no distance to compare);
    * ``unhealthy``: the control's median is ∞ (DDN failed on half its images), or DDN did not converge
      (``converged``: twice the steps moved a median by more than 2%; the medians are then upper bounds);
    * ``holds``: the rise is significant (``p_adjusted``: Holm over the models judged);
    * ``does not hold``: the interval lies below :data:`MIN_RHO_GAIN` × the control's median;
    * otherwise ``underpowered``."""
    ctl = float(control.median())
    test = paired_bootstrap([defended, control], _median_difference)
    lo, hi = test["interval"]
    p = test["p"] if p_adjusted is None else p_adjusted
    n = test["n"]
    detail = (f"median DDN ρ {float(defended.median()):.4g} against the control's {ctl:.4g} on the same {n} images "
              f"(pixels; 0 where the network misclassifies, ∞ where DDN failed): rise {test['value']:+.4g} "
              f"[{lo:+.4g}, {hi:+.4g}], paired bootstrap p = {p:.2g}")
    if ctl == 0:
        return Outcome("inconclusive", "floor", detail + "; the control misclassifies half the images or more"), test
    if not math.isfinite(ctl):
        return Outcome("inconclusive", "unhealthy", detail + "; DDN failed on half the control's images"), test
    min_gain = MIN_RHO_GAIN * ctl
    if not converged:
        return Outcome("inconclusive", "unhealthy", detail + "; DDN did not converge (twice the steps moved "
                                                             "a median by more than 2%): the medians are upper "
                                                             "bounds"), test
    if p < alpha and test["value"] > 0:
        return Outcome("holds", None, detail), test
    if hi < min_gain:
        return Outcome("does not hold", None, detail + f"; a rise of {100 * MIN_RHO_GAIN:.0f}% of the control's "
                                                       f"median ({min_gain:.4g}) is excluded"), test
    return Outcome("inconclusive", "underpowered",
                   detail + f"; the interval still admits a rise of {100 * MIN_RHO_GAIN:.0f}% of the control's "
                            f"median ({min_gain:.4g}) and no rise at all"), test


def _at_scale(outcome: Outcome, share: float | None) -> Outcome:
    """:data:`REDUCED_SCALE`: a holds or does-not-hold judged far below the official budget becomes inconclusive
    (reduced scale), saying what the paired test read at this budget (other inconclusive reasons stand)."""
    if share is None or share >= REDUCED_SCALE or outcome.outcome == "inconclusive":
        return outcome
    return Outcome("inconclusive", "reduced_scale",
                   f"at {_share_text(share)} of the official fine-tuning budget the paired test reads "
                   f"*{outcome.outcome}*: {outcome.detail}")


def _share_text(share: float) -> str:
    return f"{100 * share:.2g}%"


#: The per-image ρ records the distance claim reads: DDN's and the clipped DeepFool's medians (pixels).
DDN_MEDIAN = {"metric": "rho", "attack": "ddn", "statistic": "median"}
DEEPFOOL_MEDIAN = {"metric": "rho", "attack": "deepfool", "units": "pixel", "clip": True, "statistic": "median"}


def _distance_claim(dd: list, ctl: list, broken: bool, p_adjusted: float | None,
                    health: list) -> tuple[Outcome, str | None]:
    """The distance claim of one model (:func:`judge_distance`, gated by the health rows) and, only with
    evidence, its mechanism: the clipped DeepFool shows a significant median-ρ gain and DDN, on the same images,
    measurably less of it (paired bootstrap of the DeepFool gain minus the DDN gain, interval above 0)."""
    if broken:
        return Outcome("inconclusive", "broken", "the defended network is near chance (" + kit.BROKEN_RULE + ")"), None
    ddn_dd, ddn_ctl = (rho_of(R.first(r, **DDN_MEDIAN)) for r in (dd, ctl))
    if ddn_dd is None or ddn_ctl is None:
        return Outcome("inconclusive", "not_measured", "this results file has no per-image DDN ρ: rerun the "
                                                       "chapter to get the paired distance test"), None
    converged = all(c is None or c["value"] for c in (R.first(r, attack="ddn", metric="converged") for r in (dd, ctl)))
    outcome, _ = judge_distance(ddn_dd, ddn_ctl, p_adjusted=p_adjusted, converged=converged)
    outcome = health_gate(outcome, health)
    df_dd, df_ctl = (rho_of(R.first(r, **DEEPFOOL_MEDIAN)) for r in (dd, ctl))
    if outcome.outcome == "holds" or df_dd is None or df_ctl is None or len(df_dd) != len(ddn_dd):
        return outcome, None
    deepfool_gain = paired_bootstrap([df_dd, df_ctl], _median_difference)
    removed = paired_bootstrap([df_dd, df_ctl, ddn_dd, ddn_ctl], _gain_removed)
    if not (deepfool_gain["p"] < 0.05 and deepfool_gain["value"] > 0 and removed["interval"][0] > 0):
        return outcome, None
    lo, hi = removed["interval"]
    return outcome, (f"DDN removed part of the clipped DeepFool's gain: DeepFool's median ρ rises "
                     f"{deepfool_gain['value']:+.4g} over the control, DDN's {removed['value']:.4g} [{lo:.4g}, "
                     f"{hi:.4g}] less, on the same {removed['n']} images (paired bootstrap)")


def verdict_summary(results: dict) -> dict:
    """Per (data set, model), from results (live or read back, or hand-made records of the same shape): is Deep
    Defense more robust than the plain fine-tuned control, by the book's rule (:func:`kit.paired_outcome`)?

    The robustness claim is judged once per model, at the claim radius (``claim_eps``, L2: the radius of the
    health checks, fixed before the run), on the worst-case per-image outcomes of Deep Defense and the control on
    the same images, with :data:`MIN_EFFECT` as the smallest gain that matters, Holm-adjusted across the
    (data set, model) pairs judged (those whose control is off the floor there), gated by the health rows of that
    model and confirmed by AutoAttack on the worst case's survivors. The other radii are reported as paired
    numbers, not verdicts. The paper's own claim, a larger distance to the boundary, is judged adaptively as
    ``distance`` (:func:`_distance_claim`: paired bootstrap of the median per-image DDN ρ against the control's,
    Holm-adjusted across the models judged). Either claim judged at a fine-tuning budget below
    :data:`REDUCED_SCALE` of the official one is inconclusive (``reduced_scale``, :func:`_at_scale`). A mechanism
    ("masked") is named only with evidence (:func:`robustness_book.evaluate.outcome.removed_by`): the paper's
    clipped DeepFool (:data:`WEAK`) showed a significant gain over the control, and Deep Defense's worst case is
    significantly below its own accuracy under that DeepFool on the same images (the first ``n_adaptive`` of the DeepFool images); for the distance, DDN measurably removes a
    significant median-ρ gain of the clipped DeepFool.

    The paper's own metric, ρ_adv (a mean distance from DeepFool, not an accuracy), keeps its interval comparison
    (``"rho"``: :func:`robustness_book.evaluate.compare`); it is reported, never read as robustness or as masking.

    Each value: ``outcome``, ``reason``, ``detail``, ``mechanism``, ``category`` (``broken`` or the outcome),
    ``distance`` (the distance claim: ``outcome``, ``reason``, ``detail``, ``mechanism``, ``p_adjusted``,
    ``holm_family``),
    ``claim_eps``, ``p``/``p_adjusted``, the records compared, ``radii`` (paired numbers per radius), ``weak``
    (DeepFool's paired gain over the control at the claim radius), ``clean`` (paired clean-accuracy difference),
    ``rho``, ``autoattack``, ``autoattack_flags``, ``failed_checks``, ``budget_share`` and the point-value remarks
    (DDN over DeepFool, cost).
    """
    recs = measured(results["records"])
    health = results.get("health", [])
    rows, tests, distance_tests = {}, {}, {}
    for d, m in _pairs_of(recs):
        dd, ctl = (R.select(recs, dataset=d, model=m, defense=v) for v in ("deep_defense", CONTROL))
        if not dd or not ctl:
            continue
        radii = sorted(w["eps"] for w in R.select(dd, **WORST) if R.first(ctl, eps=w["eps"], **WORST))
        eps = _claim_eps(results, d, radii)
        w_dd, w_ctl = R.first(dd, eps=eps, **WORST), R.first(ctl, eps=eps, **WORST)
        test = _paired(w_dd, w_ctl)
        clean_dd = R.first(dd, **CLEAN)
        failed = kit.failed_checks(health, dataset=d, model=m)
        broken = kit.is_broken(clean_dd, dataset_info(d).num_classes) or "near_constant" in failed
        rows[d, m] = (dd, ctl, radii, eps, w_dd, w_ctl, clean_dd, failed, broken)
        tests[d, m] = test if test is not None and not broken and off_floor(w_ctl["interval"]) else None
        rho_dd, rho_ctl = (rho_of(R.first(r, **DDN_MEDIAN)) for r in (dd, ctl))
        judged = (rho_dd is not None and rho_ctl is not None and not broken
                  and 0 < float(rho_ctl.median()) < math.inf)
        distance_tests[d, m] = paired_bootstrap([rho_dd, rho_ctl], _median_difference) if judged else None
    adjusted = kit.holm_by(tests)
    distance_adjusted = kit.holm_by(distance_tests)
    out = {}
    for (d, m), (dd, ctl, radii, eps, w_dd, w_ctl, clean_dd, failed, broken) in rows.items():
        mine = [h for h in health if h.get("dataset") == d and h.get("model") == m]
        aa = R.first(dd, attack="autoattack", eps=eps) if eps is not None else None
        nc = dataset_info(d).num_classes
        if w_dd is None or w_ctl is None:
            outcome = Outcome("inconclusive", "underpowered", f"no worst case of both networks at ε = {eps}")
        elif "near_constant" in failed:
            outcome = Outcome("inconclusive", "broken", "the health table finds a near-constant classifier")
        else:
            outcome, _ = kit.paired_outcome(w_dd, w_ctl, min_effect=MIN_EFFECT, health=mine, confirm=aa,
                                            p_adjusted=adjusted.get((d, m)), num_classes=nc, clean=clean_dd)
        share = _budget_share(results, d)
        outcome = _at_scale(outcome, share)
        distance, distance_mechanism = _distance_claim(dd, ctl, broken, distance_adjusted.get((d, m)), mine)
        distance = _at_scale(distance, share)
        weak_dd = R.first(dd, eps=eps, **WEAK) if eps is not None else None
        weak_ctl = R.first(ctl, eps=eps, **WEAK) if eps is not None else None
        n = w_dd["n"] if w_dd else None
        mechanism = None
        weak_mask, weak_ref = kit.per_image(weak_dd), kit.per_image(weak_ctl)
        worst = kit.worst_from_record(w_dd)
        if (outcome.outcome != "holds" and weak_mask is not None and weak_ref is not None and worst is not None
                and min(len(weak_mask), len(weak_ref)) >= n):
            # evidence needs the clipped DeepFool's gain over the control on these images, then its removal
            ev = removed_by(weak_mask[:n], worst, weak_reference=weak_ref[:n])
            if ev:
                t = ev["test"]
                mechanism = (f"the gain was removed by {ev['member']} ({ev['images']} images): on the same {n} "
                             f"images Deep Defense's worst case is {100 * t['difference']:.1f} points "
                             f"[{100 * t['interval'][0]:.1f}, {100 * t['interval'][1]:.1f}] below its accuracy "
                             f"under the clipped DeepFool, McNemar p = {t['p']:.2g}")
        ddn = R.first(dd, attack="ddn", metric="rho", statistic="median")
        converged = R.first(dd, attack="ddn", metric="converged")
        dfc = R.first(dd, attack="deepfool", metric="rho", statistic="median")
        ratio = (ddn["value"] / dfc["value"] if ddn and dfc and math.isfinite(ddn["value"])
                 and math.isfinite(dfc["value"]) and dfc["value"] > 0 else None)
        cost = results.get("timings", {}).get("cost", {}).get(f"{d}/{m}")
        rho_dd, rho_ctl = R.first(dd, **PAPER_RHO), R.first(ctl, **PAPER_RHO)
        out[d, m] = {
            "outcome": outcome.outcome, "reason": outcome.reason, "detail": outcome.detail, "mechanism": mechanism,
            "distance": distance.to_dict() | {"p_adjusted": distance_adjusted.get((d, m)),
                                              "holm_family": len(distance_adjusted),
                                              "mechanism": distance_mechanism},
            "category": "broken" if broken else outcome.outcome, "claim_eps": eps,
            "p_adjusted": adjusted.get((d, m)), "holm_family": len(adjusted), "min_effect": MIN_EFFECT,
            "worst_dd": w_dd, "worst_control": w_ctl, "budget_share": share,
            "radii": [{"eps": e, "deep_defense": R.first(dd, eps=e, **WORST), "control": R.first(ctl, eps=e, **WORST),
                       "test": _paired(R.first(dd, eps=e, **WORST), R.first(ctl, eps=e, **WORST))}
                      for e in radii if e != eps],
            "weak": _paired(weak_dd, weak_ctl, n), "weak_dd": weak_dd,
            "rho": evaluate.compare(rho_dd, rho_ctl), "rho_dd": rho_dd, "rho_control": rho_ctl,
            "clean": _paired(clean_dd, R.first(ctl, **CLEAN)), "clean_dd": clean_dd,
            "clean_control": R.first(ctl, **CLEAN), "autoattack": aa,
            "autoattack_flags": kit.autoattack_flags([aa] if aa else []),
            "health_checked": bool(mine), "failed_checks": failed, "ddn_over_deepfool": ratio,
            "ddn_converged": None if converged is None else bool(converged["value"]),
            "cost_ratio": None if not cost else cost["deep_defense"]["ratio_to_plain"],
            "pgd_cost_ratio": None if not cost or "pgd_training" not in cost
            else cost["pgd_training"]["ratio_to_plain"]}
    return out


def _gain(t: dict | None) -> str:
    """A paired test as ``+4.0 points [−1.2, 9.1], p = 0.2`` (or a dash without per-image outcomes)."""
    if t is None:
        return "no per-image outcomes"
    lo, hi = t["interval"]
    return f"{100 * t['difference']:+.1f} points [{100 * lo:+.1f}, {100 * hi:+.1f}], McNemar p = {t['p']:.2g}"


def _sentences(d: str, m: str, v: dict) -> list[str]:
    eps = v["claim_eps"]
    head = Outcome(v["outcome"], v["reason"], v["detail"]).text()
    family = (f", Holm-adjusted over the {v['holm_family']} (data set, model) pairs judged"
              if v["p_adjusted"] is not None and v["holm_family"] > 1 else "")
    n = v["worst_dd"]["n"] if v["worst_dd"] else "?"
    share = v["budget_share"]
    budget = ("" if share is None else
              f"; fine-tuned at {_share_text(share)} of the official images × epochs"
              + (", far below it" if share < REDUCED_SCALE else ""))
    lines = [f"- **{m}** on {d}, robustness at the claim radius L2 ε = {eps:g} (worst case of Deep Defense vs the "
             f"plain fine-tuned control on the same {n} images; a gain below {100 * v['min_effect']:.0f} points "
             f"would not matter{family}{budget}): {head}."]
    if v["mechanism"]:
        lines.append(f"  Masked: {v['mechanism']}.")
    elif v["outcome"] != "holds":
        lines.append("  No mechanism is named: that needs the clipped DeepFool to show a significant gain over the "
                     "control and the worst case to be significantly below Deep Defense's own clipped-DeepFool "
                     "accuracy, on the same images; one of the two is missing (or was not measured).")
    dist = v["distance"]
    dist_family = (f", Holm-adjusted over the {dist['holm_family']} models judged"
                   if dist["p_adjusted"] is not None and dist["holm_family"] > 1 else "")
    lines.append(f"- **{m}** on {d}, distance to the boundary (the paper's ρ_adv claim, measured by the "
                 f"box-constrained minimum-norm attack DDN: median per-image ρ of Deep Defense vs the control; a rise "
                 f"below {100 * MIN_RHO_GAIN:.0f}% of the control's median would not matter{dist_family}{budget}): "
                 f"{Outcome(dist['outcome'], dist['reason'], dist['detail']).text()}.")
    if dist["mechanism"]:
        lines.append(f"  Masked: {dist['mechanism']}.")
    elif dist["outcome"] != "holds":
        lines.append("  No mechanism is named: DDN does not measurably remove a significant gain of the clipped "
                     "DeepFool on the same images (or that was not measured).")
    if v["weak"] is not None:
        lines.append(f"  Under the clipped DeepFool alone at ε = {eps:g} (the paper's attack, first {n} images): "
                     f"Deep Defense vs control {_gain(v['weak'])} (reported).")
    aa = v["autoattack"]
    if aa is not None:
        lines.append(f"  AutoAttack (L2, standard) on the worst case's survivors at ε = {eps:g}: "
                     f"{pct_interval(aa)}; " + ("; ".join(v["autoattack_flags"]) or "no AutoAttack flag fired")
                     + ".")
    elif v["outcome"] == "holds":
        lines.append("  AutoAttack was not run (`autoattack` is off): this positive is not confirmed by it.")
    if v["radii"]:
        lines.append("  Other radii (paired gains, reported, not judged): " + "; ".join(
            f"ε = {r['eps']:g}: {pct_interval(r['deep_defense'])} vs {pct_interval(r['control'])}, "
            f"{_gain(r['test'])}" for r in v["radii"]) + ".")
    lines.append(f"  The paper's metric, not robustness: ρ_adv (mean DeepFool distance, paper units, every image) "
                 f"{rho_iv(v['rho_dd'])} against {rho_iv(v['rho_control'])} for the control (each with its own "
                 "interval; the paired, adaptive test of the same claim is the distance line above). A larger ρ_adv "
                 "is what the paper claims; on its own it says nothing about robustness, and nothing about "
                 "masking.")
    lines.append(f"  Clean accuracy {pct_interval(v['clean_dd'])} against the control's "
                 f"{pct_interval(v['clean_control'])}: {_gain(v['clean'])} on the same images."
                 + (f" Failed health checks: {', '.join(v['failed_checks'])}." if v["failed_checks"] else
                    " All health checks passed." if v["health_checked"] else ""))
    r = v["ddn_over_deepfool"]
    if r is not None:
        lines.append(f"  Box-constrained minimum norm (medians over correct images, pixels; point values, the "
                     f"paired test is the distance line): DDN's median perturbation is {r:.2f}× the clipped "
                     f"DeepFool's"
                     + (" (DDN not converged: twice the steps moved its median by more than 2%)"
                        if v["ddn_converged"] is False
                        else "; below 1, the paper's DeepFool overstates the distance to the boundary"
                        if r < 1 else "") + ".")
    if v["cost_ratio"] is not None:
        lines.append(f"  Cost: a Deep Defense step takes {v['cost_ratio']:.1f}× a plain step"
                     + (f" (PGD adversarial training: {v['pgd_cost_ratio']:.1f}×)." if v["pgd_cost_ratio"] else "."))
    return lines


def verdict(results: dict) -> str:
    """The chapter's verdict in Markdown, computed by :func:`verdict_summary` from the results, with the λ sweep
    and the anchors (point values) as context, the broken-network rule and the smoke-profile note."""
    lines = []
    summary = verdict_summary(results)
    for (d, m), v in summary.items():
        lines += _sentences(d, m, v)
    if any(kit.per_image(v["worst_dd"]) is None for v in summary.values() if v["worst_dd"]):
        lines.insert(0, f"- Note: {kit.NO_PER_IMAGE_NOTE}.")
    sweep = R.select(results["records"], defense="deep_defense", sweep=True)
    lams = sorted({r["setting"]["lam"] for r in sweep})
    if len(lams) > 1:
        rho = [R.first(sweep, metric="rho", lam=lam)["value"] for lam in lams]
        acc = [R.first(sweep, metric="accuracy", lam=lam)["value"] for lam in lams]
        where = f"{sweep[0]['model']} on {sweep[0]['dataset']}, λ = {', '.join(f'{x:g}' for x in lams)}"
        lines.append(f"- λ sweep ({where}): ρ_adv " + " → ".join(f"{x:.4f}" for x in rho) + ", clean accuracy "
                     + " → ".join(pct(x) for x in acc) + " (point values).")
    if "parameters" in results:
        p, published, parts = results["parameters"], R.anchors(CHAPTER), []
        for d, m in _pairs_of(results["records"]):
            a = R.first(published, dataset=d, model=m, metric="rho")
            ours = R.first(measured(results["records"]), dataset=d, model=m, defense="none",
                           iterations=p["eps_ref_iter"], **PAPER_RHO)
            if a and ours:
                parts.append(f"{m} ({d}) {ours['value'] / a['value']:.2f}×" if ANCHOR_COMPARABLE[d]
                             else f"{m} ({d}) not comparable (whitened inputs)")
        if parts:
            lines.append("- Anchors (reference models, paper units / DeepFool's Table 1): " + ", ".join(parts) + ".")
    lines.append(f"- {kit.BROKEN_RULE}")
    if kit.smoke_note(results.get("profile", "")):
        lines.append(f"- {kit.smoke_note(results['profile'])}")
    return "\n".join(lines)


def glance_rows(results: dict) -> list[dict]:
    """The "Results at a glance" rows (:data:`kit.GLANCE_KEYS`), one per network, from :func:`verdict_summary`: Deep
    Defense at the claim radius (L2), the paper's clipped DeepFool there, and the book's worst case (AutoAttack on
    the worst case's survivors where it ran, else the worst case). The anchors hold the undefended reference
    models' numbers only, so no paper number is shown beside Deep Defense."""
    rows = []
    for (d, m), v in verdict_summary(results).items():
        worst = v["autoattack"] or v["worst_dd"]
        rows.append(kit.glance_row(
            results, CHAPTER, dataset=d, threat_model=(worst or {}).get("threat_model", "l2"), eps=v["claim_eps"],
            defense="deep_defense", network=m, claim_name="Deep Defense is more robust than plain fine-tuning",
            claim=v, clean=v["clean_dd"], paper_attack="DeepFool (clipped)", paper_attack_acc=v["weak_dd"],
            worst_case=worst))
    return rows
