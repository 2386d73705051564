"""Chapter — transferable adversaries and superimposition training (Seiler, Trautmann & Kerschke, IJCNN 2020),
reconstructed and attacked adaptively (id ``transferable_adversaries``).

Everything the page calls, in page order; every step is ``step(run)`` on a :class:`Run`, every table and figure a
function of ``run.results()`` (or of the saved file):

* :data:`SPEC` (parameters, profiles ``smoke``/``laptop``/``paper``; the threat radius ``eps`` per data set) and
  the model pool (:func:`pool_recipes`: the zoo's architecture with several seeds, a second architecture beside it;
  :func:`train_pool`);
* the transfer matrix: :data:`GENERATORS` (FGSM, PGD, MI-FGSM, ensemble PGD, with and without input diversity),
  :func:`craft`, :func:`fooling_counts` and :func:`transfer_matrix` (tested on tiny models), and
  :func:`transfer_all` (records, on held-out training images); the premise sweep (:func:`premise_all`: a pair of
  one architecture and one across architectures, :func:`premise_pairs`; PGD with its scaled and with a fixed step);
* the adversary set (:func:`adversary_sets`: written once with :func:`robustness_book.data.write_adversary_set`, with its
  recipe, and loaded back by name and checksum);
* the defenses (:func:`defense_loss`, :func:`train_defenses`: normal training, FGSM and PGD adversarial training,
  defensive distillation with :class:`DistillationLoss`, superimposition training with ``a`` resampled per batch
  and fixed); their cost (:class:`PassCounter`, :func:`cost_all`); every model scored on the adversary set and by
  the toolkit's white-box worst case (:func:`score_all`, with the other chapters' defenses of the shared model:
  :func:`book_models`, and their own defended networks: :func:`exported_models`; this chapter's defenses over the
  radii of :func:`white_radii`, :func:`white_box_table`) and the health tables of the paper's defense and the two
  established ones (:func:`health_all`, :func:`health_tables`);
* the verdict (:func:`verdict_summary`, :func:`verdict`), a pure function of the results with its thresholds as
  module constants and the book's broken-network rule (:data:`kit.BROKEN_RULE`).

Claim (iii) is judged paired, on the same images (:func:`kit.paired_outcome`: holds / does not hold /
inconclusive with its reason), superimposition training (each variant) against normal training, on the adversary
set at the set's radius (the threat radius: where the paper made the claim, against transferred examples; no
AutoAttack, since a fixed set has nothing to adapt), Holm-adjusted over the variants and data sets. The white box is
a separate finding beyond the paper: the book's worst case on the first ``n_adaptive`` of the same images as a
nested curve over ``white_radii`` (fractions of the threat radius), judged at each radius where normal training is
off the floor (Holm over variants, data sets and radii), a positive confirmed by AutoAttack on the worst case's
survivors at its radius (:func:`confirm_all`); at the threat radius normal training is usually at 0% (MNIST
ε = 0.3), and there the numbers are reported, not judged. "Transfer-only" is printed only with evidence
(:func:`robustness_book.evaluate.outcome.removed_by`): the set gain holds, the white-box gain does not, and the
white-box worst case at the set's radius is significantly below the network's own accuracy on the set, on the same
images, naming the member that removed it. The other chapters' defenses of the shared model use the κ and strength
those chapters chose (:func:`book_settings`, read from their results files), a labelled default where none is.

The record vocabulary: the setting ``group`` is ``"pool"`` (the pool's own clean accuracy), ``"transfer"`` (a cell
of the matrix: ``metric="fooling_rate"``, ``model`` the target, ``attack`` the generator, ``source`` the surrogate
or ``"others"`` for a leave-one-out ensemble), ``"premise"`` (the premise sweep: ``pair`` its kind, ``sweep``,
``box``, ``step`` the step rule of the iterations sweep), ``"set"`` (the adversary set),
``"chapter"`` (this chapter's defenses, ``defense`` one of :data:`DEFENSES` with normal training as ``"none"``),
``"book"`` (the shared reference model and the other chapters' defenses of it) or ``"other"`` (the other chapters'
own networks). A worst case is recorded by :func:`kit.worst_case_records` (``attack="worst_case"`` and, per
member, ``metric="images_fooled"`` with its ``order``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from . import kit
from .. import attacks, evaluate, zoo
from ..config import ChapterSpec, Param, RunConfig, check_counts, images_limit
from ..data import (DATASETS, ArrayDataset, CorruptDataError, DatasetNotFoundError, dataset_info, load_adversary_set,
                    load_dataset, threat_eps, write_adversary_set)
from ..defenses import fragile_neurons as fn
from ..defenses.adversarial_training import AdversarialLoss
from ..defenses.jumprelu import bpda_relu, retrofit
from ..defenses.superimposition import SuperimpositionLoss
from ..evaluate import members as M
from ..evaluate.outcome import Outcome, health_gate, off_floor, removed_by
from ..models import MODELS, build_model, check_model
from ..report import duration, health_tables as _health_tables, markdown_table, pct, pct_interval
from ..results import ResultsFileError, first, load_results, overrides_of, record, run_id, select
from ..train import (CheckpointError, TrainConfig, cross_entropy, load_export, seconds_per_step, state_hash, train,
                     trained_model)

CHAPTER = "transferable_adversaries"


@dataclass(frozen=True)
class Generator:
    """One way to craft transferable examples: ``kind`` ``"fgsm"`` (one step), ``"pgd"`` (random start, ``steps``
    signed-gradient steps, the last iterate) or ``"mi_fgsm"`` (momentum, no random start); ``ensemble``: crafted on
    every pool model but the target (leave-one-out) instead of one source; ``diversity``: input diversity at each
    step."""

    name: str
    kind: str
    ensemble: bool = False
    diversity: bool = False
    label: str = ""


#: The generators of the transfer matrix, in page order (the stand-ins for the paper's unpublished generator).
GENERATORS = {g.name: g for g in (
    Generator("fgsm", "fgsm", label="FGSM"),
    Generator("pgd", "pgd", label="PGD"),
    Generator("pgd_di", "pgd", diversity=True, label="PGD + input diversity"),
    Generator("mi_fgsm", "mi_fgsm", label="MI-FGSM"),
    Generator("mi_fgsm_di", "mi_fgsm", diversity=True, label="MI-FGSM + input diversity (M-DI²-FGSM)"),
    Generator("ensemble_pgd", "pgd", ensemble=True, label="ensemble PGD"),
    Generator("ensemble_pgd_di", "pgd", ensemble=True, diversity=True, label="ensemble PGD + input diversity"),
    Generator("ensemble_mi_fgsm_di", "mi_fgsm", ensemble=True, diversity=True,
              label="ensemble MI-FGSM + input diversity"),
)}
#: The two generators every run needs: the verdict compares multi-step PGD with single-step FGSM.
REQUIRED_GENERATORS = ("fgsm", "pgd")
#: The defenses trained here (``"normal"`` is plain cross-entropy; its records carry ``defense="none"``).
DEFENSES = ("normal", "fgsm_at", "distillation", "superimposition", "superimposition_fixed", "pgd_at")
LABELS = {"normal": "normal training", "fgsm_at": "FGSM adversarial training",
          "distillation": "defensive distillation", "superimposition": "superimposition + KL (a resampled)",
          "superimposition_fixed": "superimposition + KL (fixed a)", "pgd_at": "PGD adversarial training",
          "none": "shared reference model (undefended)", "jumprelu": "JumpReLU retrofit (JumpReLU chapter)",
          "compress_amplify": "compress/amplify rescaling (fragile-neurons chapter)"}
#: Short names for figure axes.
SHORT = {"normal": "normal", "fgsm_at": "FGSM training", "distillation": "distillation",
         "superimposition": "superimposition\n(a ~ Beta)", "superimposition_fixed": "superimposition\n(fixed a)",
         "pgd_at": "PGD training", "none": "reference", "jumprelu": "JumpReLU", "compress_amplify": "compress/amplify",
         "deep_defense": "Deep Defense", "entropic": "entropic"}
#: The chapters that train defended networks of their own and name them in their results file (``extra["models"]``,
#: :func:`robustness_book.train.export_entry`), with the defense each one scores as here: loaded from their
#: checkpoints, never retrained.
EXPORTING_CHAPTERS = {"deep_defense": "deep_defense", "entropic_retraining": "entropic"}
#: The established defenses of the third-party comparison set, against which "comparable" is judged.
ESTABLISHED = ("fgsm_at", "distillation")
#: FGSM adversarial training: Goodfellow et al.'s 50/50 objective (the third-party baseline weighs both halves 0.5).
FGSM_AT_MIX = 0.5

#: Claim (i)'s thresholds: fooling rates (not recorded per image) are compared by their 95% Wilson intervals
#: (robustness_book.evaluate.clearly_greater), never as points. Multi-step attacks "transfer worse" when FGSM clearly
#: beats PGD on more than this share of the (source, target) pairs.
MAJORITY = 0.5
#: Claim (iii) is judged on the same images, paired (robustness_book.evaluate.outcome): the smallest gain over normal
#: training that would matter, on the adversary set (the paper's claim, at the set's radius: the threat radius) and
#: in the white box (the book's check, at the same radius): 5 points, the book's choice (the paper's tables could
#: not be read); and the margin within which superimposition counts as "comparable" to another defense.
ALPHA = 0.05  # the level of every paired test (robustness_book.evaluate.outcome.judge_gain's)
MIN_EFFECT_SET = 0.05
MIN_EFFECT_WHITE = 0.05
COMPARABLE_MARGIN = 0.05
#: The two superimposition variants: each is one comparison of claim (iii), Holm-adjusted together (over data sets
#: too).
VARIANTS = ("superimposition", "superimposition_fixed")
#: The chapter's defenses whose white-box gain could be judged positive: AutoAttack (standard) runs on the images
#: their worst case left standing, at the same radius, and must confirm it.
CONFIRMED = (*VARIANTS, "pgd_at")


def model_name(arch: str, seed: int) -> str:
    """A pool model's name: architecture and training seed (``lenet_like-seed1``)."""
    return f"{arch}-seed{seed}"


def reference_name(cfg: Mapping[str, Any], d: str) -> str:
    """The reference model of data set ``d``: the zoo's architecture with the first seed (the shared model with the
    zoo's own seed). It is a target of the matrix, the model the other chapters' defenses modify, and never a
    surrogate of the adversary set."""
    return model_name(zoo.ARCH[d], cfg["seeds"][d][0])


def _training_size(cfg: Mapping[str, Any], d: str) -> int:
    return zoo.for_dataset(d, cfg["profile"]).train_size


def _check(cfg: RunConfig) -> None:
    for name in REQUIRED_GENERATORS:
        if name not in cfg.generators:
            raise ValueError(f"parameter generators={cfg.generators} must contain {name!r} (the verdict compares "
                             f"{' and '.join(REQUIRED_GENERATORS)})")
    if cfg.set_generator != "best" and cfg.set_generator not in cfg.generators:
        raise ValueError(f"parameter set_generator={cfg.set_generator!r} must be 'best' or one of generators="
                         f"{cfg.generators}")
    for name in ("normal", "superimposition"):
        if name not in cfg.defenses:
            raise ValueError(f"parameter defenses={cfg.defenses} must contain {name!r} (the claim compares "
                             "superimposition training with normal training)")
    if 1.0 not in cfg.white_radii or max(cfg.white_radii) > 1:
        raise ValueError(f"parameter white_radii={cfg.white_radii} must contain 1 (the threat radius) and no fraction "
                         "above 1 (allowed: numbers in (0, 1], 1 among them)")
    for d in cfg.datasets:
        if max(cfg.premise_radii) * cfg.eps[d] > 1:
            raise ValueError(f"parameter premise_radii={cfg.premise_radii}: {max(cfg.premise_radii)} × the {d} "
                             f"threat radius eps['{d}']={cfg.eps[d]:.4g} exceeds 1, the whole image range")
        check_model(cfg.second_arch[d], d)
        if cfg.second_arch[d] == zoo.ARCH[d]:
            raise ValueError(f"parameter second_arch['{d}']={cfg.second_arch[d]!r} is the zoo architecture; "
                             f"choose another one (the pool needs two architectures)")
        for key in ("seeds", "second_seeds"):
            if len(set(cfg[key][d])) != len(cfg[key][d]):
                raise ValueError(f"parameter {key}['{d}']={cfg[key][d]} repeats a seed")
        if len(cfg.seeds[d]) + len(cfg.second_seeds[d]) < 3:
            raise ValueError(f"parameters seeds['{d}'] and second_seeds['{d}'] give "
                             f"{len(cfg.seeds[d]) + len(cfg.second_seeds[d])} models; the pool needs at least 3 "
                             "(a target and a leave-one-out ensemble of two)")
        # the pool's training images (the zoo recipe's, not a parameter) come first, then n_transfer
        (have, text), need = images_limit(d, "train"), _training_size(cfg, d) + cfg.n_transfer[d]
        if need > have:
            raise ValueError(f"parameter n_transfer['{d}']={cfg.n_transfer[d]}: with the {_training_size(cfg, d):,} "
                             f"training images of the pool it needs {need:,} of {text}")
        check_counts(cfg, {"n_set": "test", "n_set_train": "train"}, [d])
        if cfg.n_adaptive[d] > cfg.n_set[d]:
            raise ValueError(f"parameter n_adaptive['{d}']={cfg.n_adaptive[d]} must not exceed n_set['{d}']="
                             f"{cfg.n_set[d]} (the health check compares with the adversary set of those images)")
        if cfg.train_defenses[d]:  # defense_train_size is unused otherwise
            check_counts(cfg, {"defense_train_size": "train"}, [d])


PARAMS = {
    "datasets": Param("subset", "data sets the chapter runs on", DATASETS),
    "eps": Param("eps_linf", "L∞ threat radius on [0, 1] pixels: of the transfer matrix, the adversary set, the "
                 "adversarial training and every score", per_dataset=True),
    "seeds": Param("nonneg_int_list", "training seeds of the zoo architecture in the model pool (the first gives "
                   "the reference model, never a surrogate of the adversary set)", per_dataset=True),
    "second_arch": Param("choice", "second architecture of the model pool (robustness_book.models)", tuple(MODELS),
                         per_dataset=True),
    "second_seeds": Param("nonneg_int_list", "training seeds of the second architecture", per_dataset=True),
    "second_lr": Param("pos_float", "learning rate of the second architecture (the rest of the recipe is the zoo "
                       "one)", per_dataset=True),
    "n_transfer": Param("pos_int", "held-out training images (after the pool training images) for the transfer "
                        "matrix and the fragility scores", per_dataset=True),
    "generators": Param("subset", "generators of the transfer matrix", tuple(GENERATORS)),
    "steps": Param("pos_int", "iterations of the multi-step generators"),
    "momentum": Param("nonneg_float", "decay factor of MI-FGSM"),
    "diversity": Param("fraction", "probability of input diversity at each step of the diversity generators"),
    "premise_radii": Param("pos_float_list", "fractions of the threat radius of the premise sweep (one source, "
                           "one target; FGSM, PGD and MI-FGSM)"),
    "premise_steps": Param("pos_int_list", "iterations of PGD and MI-FGSM in the premise sweep, at the threat "
                           "radius"),
    "set_generator": Param("choice", "generator of the adversary set: best (highest held-out fooling rate) or one "
                           "of the generators", ("best", *GENERATORS)),
    "n_set": Param("pos_int", "test images turned into the adversary set (the first N)", per_dataset=True),
    "n_set_train": Param("nonneg_int", "training images turned into a training adversary set (the first N; 0 for "
                         "none), for readers who train on transferred examples", per_dataset=True),
    "train_defenses": Param("bool", "train and score the defenses on this data set", per_dataset=True),
    "defenses": Param("subset", "defenses trained (normal and superimposition are required)", DEFENSES),
    "defense_train_size": Param("pos_int", "training images of the defended models (the first N)",
                                per_dataset=True),
    "defense_epochs": Param("pos_int", "training epochs of every defended model", per_dataset=True),
    "lam": Param("nonneg_float", "weight of the KL term of superimposition training"),
    "fixed_a": Param("fraction", "superimposition weight a of the fixed-a variant"),
    "temperature": Param("pos_float", "temperature of defensive distillation"),
    "at_steps": Param("pos_int", "PGD steps of PGD adversarial training", per_dataset=True),
    "at_mix": Param("pos_fraction", "share of PGD examples in the PGD adversarial training loss (1 is Madry et al.)"),
    "cost_batches": Param("pos_int", "training steps timed and counted per defense for the cost table"),
    "jumprelu_kappa": Param("nonneg_float", "JumpReLU threshold of the retrofitted reference model when the JumpReLU "
                            "chapter's results of this profile hold no choice (a labelled default; set by hand, it "
                            "replaces that chapter's choice)", per_dataset=True),
    "rescale_strength": Param("nonneg_float", "compress/amplify strength of the rescaled reference model when the "
                              "fragile-neurons chapter's results of this profile hold no choice (a labelled default; "
                              "set by hand, it replaces that chapter's choice)"),
    "n_adaptive": Param("pos_int", "test images for the white-box worst case and the health checks (the first N)",
                        per_dataset=True),
    "white_radii": Param("pos_float_list", "fractions of the threat radius at which this chapter's defenses face "
                         "the white-box worst case (a nested curve; must contain 1, the threat radius)"),
    "premise_fixed_step": Param("pos_fraction", "step of the fixed-step PGD variant of the premise sweep, as a "
                                "fraction of the threat radius (the scaled variant steps 2.5·eps/iterations)"),
    "pgd_steps": Param("pos_int", "steps of the PGD members of the worst case"),
    "restarts": Param("pos_int", "random restarts of the PGD members"),
    "square_queries": Param("pos_int", "queries per image of the Square member"),
    "health_steps": Param("pos_int", "PGD steps of the health checks"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed of the attacks and of the superimposition draws"),
}


_per = kit.per_dataset  # the kit's per-data-set value (Fashion-MNIST takes MNIST's)


_COMMON = {
    "datasets": ["mnist", "cifar10"], "eps": {d: threat_eps(d) for d in DATASETS},
    "second_arch": _per("mlp", "convnet"), "second_lr": 0.02,
    "generators": list(GENERATORS), "momentum": 1.0, "diversity": 0.5, "set_generator": "best",
    "defenses": list(DEFENSES), "lam": 10.0, "fixed_a": 1 / 6, "temperature": 100.0, "at_mix": 0.5,
    # labelled defaults, used only when the JumpReLU / fragile-neurons results of the profile hold no choice
    # (book_settings): the middle of the JumpReLU chapter's kappa grids, and the fragile-neurons grid's strength 1
    "jumprelu_kappa": _per(1.0, 0.2), "rescale_strength": 1.0, "premise_fixed_step": 0.1, "batch_size": 250,
    "seed": 0,
}

PROFILES = {
    # CI: every cell runs on a few hundred images; the defenses train one epoch on 5,000 MNIST images.
    "smoke": {**_COMMON, "seeds": _per([0, 1], [0]), "second_seeds": _per([0], [0, 1]), "n_transfer": _per(200, 50),
              "steps": 5, "premise_radii": [0.5, 1.0], "premise_steps": [1, 5], "white_radii": [0.5, 1.0],
              "n_set": _per(200, 50),
              "n_set_train": _per(100, 20),
              "train_defenses": _per(True, False),
              "defense_train_size": 5000, "defense_epochs": 1, "at_steps": 2, "cost_batches": 2,
              "n_adaptive": _per(40, 10), "pgd_steps": 5, "restarts": 1, "square_queries": 50, "health_steps": 3},
    # 2 CPU cores. Pool: the zoo's models (LeNetLike 6 epochs on 55,000 MNIST images, AlexLike 8 epochs on 49,000
    # CIFAR-10 images, both cached by the other chapters), two more LeNetLike seeds and one MLP (~3 min to train),
    # two ConvNets (~2 min each: a quarter of AlexLike's work per image). Defenses on MNIST only, 3 epochs each on
    # 55,000 images (~11 min in all: PGD-5 training at half PGD, half clean costs ~7 plain epochs per epoch).
    # Measured with the pool, the defenses and the adversary sets cached: 9.3 min (transfer matrix 4.3, premise
    # sweep 2.2, scores of 17 networks 1.9; writing the two training adversary sets once: 34 s more).
    "laptop": {**_COMMON, "seeds": _per([0, 1, 2], [0]), "second_seeds": _per([0], [0, 1]),
               "n_transfer": _per(1000, 500), "steps": 10, "premise_radii": [0.1, 0.25, 0.5, 1.0],
               "premise_steps": [1, 4, 16, 64], "white_radii": [0.25, 0.5, 1.0], "n_set": _per(10000, 1000),
               "n_set_train": _per(10000, 1000),
               "train_defenses": _per(True, False), "defense_train_size": _per(55000, 49000), "defense_epochs": 3,
               "at_steps": 5, "cost_batches": 5, "n_adaptive": _per(500, 100), "pgd_steps": 50, "restarts": 1,
               "square_queries": 1000, "health_steps": 50},
    # For a GPU (CIFAR-10: the 1,000 test images of the offline mirror): the zoo's official 90-epoch recipes (so normal training is the shared model), a pool of five models
    # per data set, defenses on both data sets, Madry et al.'s 40 (MNIST) and 7 (CIFAR-10) PGD training steps.
    "paper": {**_COMMON, "seeds": _per([0, 1, 2], [0, 1, 2]), "second_arch": _per("lenet", "convnet"),
              "second_seeds": [0, 1], "n_transfer": 5000, "steps": 10, "premise_radii": [0.1, 0.25, 0.5, 1.0],
              "premise_steps": [1, 4, 16, 64, 256], "white_radii": [0.1, 0.25, 0.5, 0.75, 1.0],
              "n_set": _per(10000, 1000), "n_set_train": _per(10000, 5000),
              "train_defenses": True, "defense_train_size": _per(55000, 45000), "defense_epochs": 90,
              "at_steps": _per(40, 7), "cost_batches": 20, "n_adaptive": 1000, "pgd_steps": 100, "restarts": 3,
              "square_queries": 5000, "health_steps": 100},
}

SPEC = ChapterSpec(
    name=CHAPTER,
    title="Transferable adversaries and superimposition training",
    notebook="notebooks/transferable_adversaries.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


# --------------------------------------------------------------------------- the model pool


def pool_recipes(cfg: Mapping[str, Any], d: str) -> dict[str, dict]:
    """``{name: trained_model keyword arguments}`` of data set ``d``'s pool, reference first: the zoo recipe of the
    profile with each seed of ``seeds`` (the first seed 0 is the zoo's own model, shared with the other chapters),
    and the second architecture with each of ``second_seeds`` and its learning rate ``second_lr``."""
    base = zoo.for_dataset(d, cfg["profile"])
    out = {model_name(base.model, s): zoo.variant(base, seed=s) for s in cfg["seeds"][d]}
    arch = cfg["second_arch"][d]
    out.update({model_name(arch, s): zoo.variant(base, model=arch, seed=s, lr=cfg["second_lr"][d])
                for s in cfg["second_seeds"][d]})
    return out


@dataclass
class Run(kit.Run):
    """The kit's run plus this chapter's live state: the model pool (``pool[d]``: ``{name: model}``, reference
    first), the adversary sets (``sets[d]``: the test set) and distillation's teachers (``teachers[d]``).
    ``nets[d]`` holds this chapter's defended networks (``{defense: model}``), ``data[d]`` the held-out and test
    images, ``raw`` the worst cases keyed ``(data set, group, defense, model)``."""

    pool: dict = field(default_factory=dict)
    sets: dict = field(default_factory=dict)
    teachers: dict = field(default_factory=dict)


def _cfg(results: Mapping[str, Any]) -> dict:
    """The parameters of ``results`` with its chapter and profile: what the recipes read."""
    return {**results["parameters"], "chapter": results["chapter"], "profile": results["profile"]}


def _trained(*metas: Mapping[str, Any]) -> dict:
    """A network's timing entry from the metadata of its training stages: seconds (summed), whether every stage
    came from the cache, the zoo name of the last."""
    seconds = [m.get("train_seconds") for m in metas]
    return {"seconds": None if None in seconds else sum(seconds), "cached": all(m["cached"] for m in metas),
            "zoo": metas[-1].get("zoo")}


def train_pool(run: Run) -> None:
    """Per data set: the pool (``run.pool[d]``) and the data (``run.data[d]``: ``val``, the ``n_transfer`` training
    images after the pool's training images, :func:`kit.holdout_split`: no pool model saw them, the matrix and every
    choice are made on them; ``test``, the first ``n_set`` test images, the adversary set's). Records: each pool
    model's clean accuracy on those test images. Timings: training seconds and whether each model came from the
    cache (or the zoo)."""
    cfg = run.cfg
    with run.timer("pool"):
        for d in cfg.datasets:
            start = _training_size(cfg, d)
            run.data[d] = {"val": kit.holdout_split(d, start, start + cfg.n_transfer[d]),
                           "test": load_dataset(d, "test").first(cfg.n_set[d])}
            run.pool[d] = {}
            for name, kwargs in pool_recipes(cfg, d).items():
                run.pool[d][name], meta = zoo.model_for(**kwargs)
                run.timings[f"{d}/{name}"] = _trained(meta)
                run.records.append(kit.accuracy_record(
                    cfg, run.pool[d][name], run.data[d]["test"], dataset=d, model=name, batch_size=cfg.batch_size,
                    split="test", seed=kwargs["config"].seed, group="pool",
                    role="reference" if name == reference_name(cfg, d) else "surrogate", arch=kwargs["model"]))


def pool_table(results: Mapping[str, Any]) -> str:
    """Per data set and pool model: its role, its recipe in words, clean test accuracy, training time."""
    rows = []
    for r in select(results["records"], group="pool"):
        t = results["timings"].get(f"{r['dataset']}/{r['model']}", {})
        kw = pool_recipes(_cfg(results), r["dataset"])[r["model"]]
        rows.append({"data": r["dataset"], "model": r["model"], "role": r["setting"]["role"]
                     + (f" (zoo `{t['zoo']}`)" if t.get("zoo") else ""),
                     "training": f"{kw['train_size']:,} images, {kw['config'].describe()}", "clean": pct_interval(r),
                     "time": duration(t.get("seconds"), cached=t.get("cached", False))})
    return markdown_table(rows, {"data": "data set", "model": "model", "role": "role", "training": "training",
                                 "clean": "clean test accuracy [95% CI]", "time": "training time"})


# --------------------------------------------------------------------------- crafting and the transfer matrix


def craft(generator: str, models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, *, eps: float,
          steps: int, momentum: float = 1.0, diversity: float = 0.5, batch_size: int = 250,
          seed: int = 0, step_size: float | None = None) -> torch.Tensor:
    """Examples of :data:`GENERATORS` ``[generator]`` for ``x`` (``(N, C, H, W)`` in [0, 1], CPU), crafted on
    ``models`` (one source, or the surrogates of an ensemble; their logits are averaged, as Dong et al. do), within
    the L∞ ball of radius ``eps``. Multi-step generators return their last iterate (``steps`` steps; PGD's step is
    2.5·eps/steps from a random start, or ``step_size`` when given: the fixed-step variant; MI-FGSM's eps/steps
    from ``x``); the random start and the diversity draws come from one generator seeded with ``seed``. Returns a
    CPU tensor shaped like ``x``."""
    g = GENERATORS[generator]
    models = list(models)
    if not g.ensemble and len(models) != 1:
        raise ValueError(f"generator {generator!r} crafts on one source model, got {len(models)}")
    dev = evaluate.model_device(models[0])
    rng = torch.Generator(dev).manual_seed(seed)
    p = diversity if g.diversity else 0.0
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        if g.kind == "fgsm":
            adv = attacks.fgsm(models[0], xb, yb, eps=eps)
        elif g.kind == "pgd":
            adv = attacks.ensemble_pgd(models, xb, yb, eps=eps, steps=steps, step_size=step_size, diversity=p,
                                       generator=rng)
        else:
            adv = attacks.mi_fgsm(models, xb, yb, eps=eps, steps=steps, momentum=momentum, diversity=p,
                                  generator=rng)
        out.append(adv.cpu())
    return torch.cat(out) if out else x.clone()


def fooling_counts(target: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                   batch_size: int = 250) -> tuple[int, int]:
    """``(k, n)``: of the ``n`` images ``target`` classifies correctly, the ``k`` whose example it misclassifies.
    The fooling rate ``k/n`` leaves out images the target gets wrong anyway: they say nothing about transfer."""
    correct = evaluate.predict(target, x, batch_size) == y
    fooled = correct & (evaluate.predict(target, x_adv, batch_size) != y)
    return int(fooled.sum()), int(correct.sum())


def transfer_matrix(pool: Mapping[str, nn.Module], x: torch.Tensor, y: torch.Tensor, generators: Sequence[str], *,
                    eps: float, steps: int, momentum: float = 1.0, diversity: float = 0.5, batch_size: int = 250,
                    seed: int = 0) -> list[dict]:
    """The transfer matrix of ``pool`` (``{name: model}``) on ``(x, y)``: one row per cell, ``{"generator",
    "source", "sources", "target", "k", "n"}``, with :func:`fooling_counts` of the target.

    A single-source generator crafts once per source and is judged on every *other* model (a source attacked by
    itself is white-box, not transfer, and is left out); an ensemble generator crafts once per target on all the
    other models (``source="others"``), so the target is never among its surrogates (``sources``)."""
    names = list(pool)
    if len(names) < 2:
        raise ValueError(f"a transfer matrix needs at least two models, got {len(names)}")
    kw = dict(eps=eps, steps=steps, momentum=momentum, diversity=diversity, batch_size=batch_size, seed=seed)
    rows = []
    for gen in generators:
        if GENERATORS[gen].ensemble:
            for target in names:
                sources = tuple(n for n in names if n != target)
                adv = craft(gen, [pool[n] for n in sources], x, y, **kw)
                k, n = fooling_counts(pool[target], x, adv, y, batch_size)
                rows.append({"generator": gen, "source": "others", "sources": sources, "target": target, "k": k,
                             "n": n})
            continue
        for source in names:
            adv = craft(gen, [pool[source]], x, y, **kw)
            for target in names:
                if target == source:
                    continue
                k, n = fooling_counts(pool[target], x, adv, y, batch_size)
                rows.append({"generator": gen, "source": source, "sources": (source,), "target": target, "k": k,
                             "n": n})
    return rows


def _generator_knobs(cfg: Mapping[str, Any], gen: str) -> dict:
    g = GENERATORS[gen]
    out = {} if g.kind == "fgsm" else {"steps": cfg["steps"]}
    if g.kind == "mi_fgsm":
        out["momentum"] = cfg["momentum"]
    if g.diversity:
        out["diversity"] = cfg["diversity"]
    return out


def transfer_all(run: Run) -> None:
    """Per data set, :func:`transfer_matrix` of the pool on the held-out images at the threat radius ``eps``, as
    records (``metric="fooling_rate"``, ``model`` the target, ``attack`` the generator, ``n`` the images the target
    classifies correctly, with the 95% Wilson interval)."""
    cfg = run.cfg
    with run.timer("transfer matrix"):
        for d in cfg.datasets:
            val, eps = run.data[d]["val"], cfg.eps[d]
            for row in transfer_matrix(run.pool[d], val.x, val.y, cfg.generators, eps=eps, steps=cfg.steps,
                                       momentum=cfg.momentum, diversity=cfg.diversity, batch_size=cfg.batch_size,
                                       seed=cfg.seed):
                run.records.append(record(
                    cfg, dataset=d, model=row["target"], attack=row["generator"], threat_model="linf", eps=eps,
                    metric="fooling_rate", value=row["k"] / row["n"] if row["n"] else math.nan, n=row["n"],
                    interval=evaluate.wilson_interval(row["k"], row["n"]), group="transfer", source=row["source"],
                    split="val", **_generator_knobs(cfg, row["generator"])))


#: The generators of the premise sweep: the single-step one, and the two multi-step ones of one source.
PREMISE_GENERATORS = ("fgsm", "pgd", "mi_fgsm")
#: The premise sweep's (source, target) pairs, in page order: two networks of one architecture (the easiest case
#: for transfer), and a network of the second architecture onto the reference.
PAIR_KINDS = {"same_arch": "same architecture", "cross_arch": "across architectures"}
#: The step-size rules of the premise's iterations sweep: PGD's step 2.5·eps/iterations (more iterations, smaller
#: steps: the two are confounded) and a fixed step (``premise_fixed_step`` × eps, as Kurakin et al.'s basic
#: iterative method: more iterations only travel further).
STEP_RULES = {"scaled": "step 2.5·ε/iterations", "fixed": "fixed step"}


def premise_pairs(cfg: Mapping[str, Any], pool: Mapping[str, nn.Module], d: str) -> dict[str, tuple[str, str]]:
    """The (source, target) pairs of the premise sweep, by :data:`PAIR_KINDS`: the reference model as target, and
    as source the first other network of its architecture (``same_arch``, when the pool has one) and the first
    network of the second architecture (``cross_arch``)."""
    ref, arch = reference_name(cfg, d), cfg["second_arch"][d]
    same = [n for n in surrogate_names(cfg, pool, d) if n.startswith(f"{zoo.ARCH[d]}-")]
    cross = [n for n in surrogate_names(cfg, pool, d) if n.startswith(f"{arch}-")]
    return {kind: (names[0], ref) for kind, names in (("same_arch", same), ("cross_arch", cross)) if names}


def premise_all(run: Run) -> None:
    """Where the paper's premise holds: on each pair of :func:`premise_pairs` and the held-out images, the fooling
    rate of the examples on the target (transfer) and on the source itself (white box), for FGSM, PGD and MI-FGSM
    at each fraction ``premise_radii`` of the threat radius ``eps`` (``steps`` iterations; ``sweep="radius"``), and
    for PGD (both :data:`STEP_RULES`) and MI-FGSM after each number of iterations in ``premise_steps`` at the
    threat radius (``sweep="steps"``, ``step`` the rule). Records: ``group="premise"``, ``pair`` its kind,
    ``model`` the network the rate is measured on, ``box`` white or transfer."""
    cfg = run.cfg
    with run.timer("premise sweep"):
        for d in cfg.datasets:
            val, eps0, pool = run.data[d]["val"], cfg.eps[d], run.pool[d]
            fixed = cfg.premise_fixed_step * eps0
            cells = [("radius", gen, f * eps0, cfg.steps, None) for f in cfg.premise_radii
                     for gen in PREMISE_GENERATORS]
            cells += [("steps", gen, eps0, n, None) for n in cfg.premise_steps for gen in PREMISE_GENERATORS[1:]]
            cells += [("steps", "pgd", eps0, n, fixed) for n in cfg.premise_steps]
            for kind, (source, target) in premise_pairs(cfg, pool, d).items():
                for sweep, gen, eps, steps, step_size in cells:
                    adv = craft(gen, [pool[source]], val.x, val.y, eps=eps, steps=steps, momentum=cfg.momentum,
                                batch_size=cfg.batch_size, seed=cfg.seed, step_size=step_size)
                    knobs = {} if gen == "fgsm" else {"steps": steps}
                    if sweep == "steps":
                        knobs.update(step="scaled" if step_size is None else "fixed",
                                     **({} if step_size is None else {"step_size": step_size}))
                    for box, name in (("transfer", target), ("white", source)):
                        k, n = fooling_counts(pool[name], val.x, adv, val.y, cfg.batch_size)
                        run.records.append(record(
                            cfg, dataset=d, model=name, attack=gen, threat_model="linf", eps=eps,
                            metric="fooling_rate", value=k / n if n else math.nan, n=n,
                            interval=evaluate.wilson_interval(k, n), group="premise", pair=kind, sweep=sweep,
                            box=box, source=source, split="val", **knobs))


def _premise_pair_summary(records: Sequence[dict], d: str, kind: str) -> dict:
    def at(sweep, gen, box, **match):
        return select(records, dataset=d, group="premise", pair=kind, sweep=sweep, attack=gen, box=box, **match)

    fgsm = {r["eps"]: r for r in at("radius", "fgsm", "transfer")}
    worse, better, alike = [], [], []
    for r in sorted(at("radius", "pgd", "transfer"), key=lambda r: r["eps"]):
        c = evaluate.compare(r, fgsm.get(r["eps"]))
        (worse if c == "lower" else better if c == "higher" else alike).append(r["eps"])
    pair = first(records, dataset=d, group="premise", pair=kind, box="transfer")
    steps, more_steps_worse = {}, {}
    for rule in STEP_RULES:
        by_steps = {r["setting"]["steps"]: r for r in at("steps", "pgd", "transfer", step=rule)}
        if not by_steps:
            continue
        white = {r["setting"]["steps"]: r for r in at("steps", "pgd", "white", step=rule)}
        best = max(by_steps.values(), key=lambda r: r["value"])
        steps[rule] = {n: {"transfer": by_steps[n], "white": white.get(n)} for n in sorted(by_steps)}
        more_steps_worse[rule] = evaluate.compare(by_steps[max(by_steps)], best) == "lower"
    return {"pair": (pair["setting"]["source"], pair["model"]), "pgd_worse_at": worse, "pgd_better_at": better,
            "pgd_alike_at": alike, "steps": steps, "more_steps_worse": more_steps_worse}


def premise_summary(records: Sequence[dict], d: str) -> dict:
    """From the premise sweep of ``d``, per pair kind (:data:`PAIR_KINDS`, those swept): its (source, target)
    ``pair``; the radii at which PGD transfers clearly worse than FGSM (``pgd_worse_at``), clearly better
    (``pgd_better_at``) or neither (``pgd_alike_at``), by 95% intervals; per step rule (:data:`STEP_RULES`), PGD's
    transfer and white-box rates at each iteration count (``steps[rule]``: ``{n: {"transfer": rec, "white": rec}}``,
    ascending) and whether the most iterations transfer clearly below the best count (``more_steps_worse[rule]``)."""
    kinds = dict.fromkeys(r["setting"].get("pair") for r in select(records, dataset=d, group="premise"))
    return {kind: _premise_pair_summary(records, d, kind) for kind in PAIR_KINDS if kind in kinds}


def premise_figure(results: Mapping[str, Any]):
    """Per data set and pair (:data:`PAIR_KINDS`), two panels: the fooling rate against the radius (FGSM, PGD,
    MI-FGSM) and against the number of iterations at the threat radius (PGD with both step rules, MI-FGSM; FGSM's
    rate there as a line), on the target (solid: transfer) and on the source itself (dashed: white box), with 95%
    intervals."""
    records = results["records"]
    rows = list(dict.fromkeys((r["dataset"], r["setting"].get("pair"))
                              for r in select(records, group="premise")))
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.4 * len(rows)), squeeze=False)
    lines = [(gen, None, color) for gen, color in zip(PREMISE_GENERATORS, ("C0", "C1", "C2"))]
    lines.append(("pgd", "fixed", "C3"))
    for (left, right), (d, kind) in zip(axes, rows):
        for gen, rule, color in lines:  # one colour per generator (and step rule) in both panels
            for box, style in (("transfer", "-"), ("white", "--")):
                for ax, sweep, x_of in ((left, "radius", lambda r: r["eps"]),
                                        (right, "steps", lambda r: r["setting"]["steps"])):
                    if sweep == "radius" and rule is not None:
                        continue
                    match = {} if sweep == "radius" or gen != "pgd" else {"step": rule or "scaled"}
                    recs = sorted(select(records, dataset=d, group="premise", pair=kind, sweep=sweep, attack=gen,
                                         box=box, **match), key=x_of)
                    if not recs:
                        continue
                    xs, ys = [x_of(r) for r in recs], [100 * r["value"] for r in recs]
                    lo, hi = [100 * r["interval"][0] for r in recs], [100 * r["interval"][1] for r in recs]
                    name = GENERATORS[gen].label + (" (fixed step)" if rule == "fixed" else "")
                    ax.plot(xs, ys, style, color=color, marker="o", ms=3,
                            label=f"{name} ({'on the source' if box == 'white' else 'transfer'})")
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.15)
        eps0 = max((r["eps"] for r in select(records, dataset=d, group="premise", pair=kind, sweep="steps")),
                   default=None)
        f = [r for r in select(records, dataset=d, group="premise", pair=kind, sweep="radius", attack="fgsm",
                               box="transfer") if r["eps"] == eps0]
        if f:
            right.axhline(100 * f[0]["value"], color="gray", lw=1, ls=":", label="FGSM transfer at this radius")
        pair = select(records, dataset=d, group="premise", pair=kind, box="transfer")[0]
        left.set(xlabel="L∞ radius", ylabel="fooling rate (%)", ylim=(0, 102),
                 title=f"{d}, {PAIR_KINDS.get(kind, kind)}: {pair['setting']['source']} → {pair['model']}")
        right.set(xlabel="iterations (at the threat radius)", xscale="log", ylim=(0, 102), title=f"{d}: iterations")
        left.legend(fontsize=7)
        right.legend(fontsize=6)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- reading the matrix


def _cells(records: Sequence[dict], d: str, gen: str) -> list[dict]:
    return select(records, dataset=d, group="transfer", attack=gen, metric="fooling_rate")


def _targets(records: Sequence[dict], d: str) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in select(records, dataset=d, group="transfer")))


def _generators(records: Sequence[dict], d: str) -> list[str]:
    present = {r["attack"] for r in select(records, dataset=d, group="transfer")}
    return [g for g in GENERATORS if g in present]


def _matrix(records: Sequence[dict], d: str) -> tuple[list[str], list[tuple[str, str, dict]]]:
    """The targets of ``d``'s matrix and its rows in page order: ``(generator, source, {target: cell})``."""
    rows = [(gen, source, {r["model"]: r for r in _cells(records, d, gen) if r["setting"]["source"] == source})
            for gen in _generators(records, d)
            for source in dict.fromkeys(r["setting"]["source"] for r in _cells(records, d, gen))]
    return _targets(records, d), rows


def pooled_rate(records: Sequence[dict], d: str, gen: str) -> float:
    """A generator's fooling rate over all its cells of data set ``d``: the fooled images over the correctly
    classified ones, summed over (source, target) pairs (a summary: the pairs share images, so no interval)."""
    cells = _cells(records, d, gen)
    n = sum(r["n"] for r in cells)
    return sum(round(r["value"] * r["n"]) for r in cells) / n if n else math.nan


def best_generator(records: Sequence[dict], d: str) -> str:
    """The generator with the highest :func:`pooled_rate` on the held-out images (ties: the earlier in
    :data:`GENERATORS`, the simpler)."""
    gens = _generators(records, d)
    return max(gens, key=lambda g: (pooled_rate(records, d, g), -gens.index(g)))


def strongest_on(records: Sequence[dict], d: str, gen: str, target: str) -> dict | None:
    """The generator's cell on ``target`` with the highest fooling rate: its best source (the one cell of an
    ensemble generator)."""
    cells = [r for r in _cells(records, d, gen) if r["model"] == target]
    return max(cells, key=lambda r: r["value"]) if cells else None


def compare_with_fgsm(records: Sequence[dict], d: str, gen: str) -> dict:
    """Per target, ``gen``'s strongest cell against FGSM's strongest (each from its best source): ``above`` and
    ``below`` list the targets where the intervals are disjoint."""
    above, below = [], []
    for t in _targets(records, d):
        a, f = strongest_on(records, d, gen, t), strongest_on(records, d, "fgsm", t)
        if a is None or f is None:
            continue
        if evaluate.clearly_greater(a, f):
            above.append(t)
        elif evaluate.clearly_greater(f, a):
            below.append(t)
    return {"above": above, "below": below, "targets": len(_targets(records, d))}


def fgsm_beats(records: Sequence[dict], d: str, gen: str) -> tuple[int, int]:
    """``(pairs where FGSM's interval lies above gen's, pairs)`` over the (source, target) pairs of a single-source
    generator: where multi-step examples transfer worse than single-step ones."""
    fgsm = {(r["setting"]["source"], r["model"]): r for r in _cells(records, d, "fgsm")}
    pairs = [(fgsm.get((r["setting"]["source"], r["model"])), r) for r in _cells(records, d, gen)]
    pairs = [(f, r) for f, r in pairs if f is not None]
    return sum(evaluate.clearly_greater(f, r) for f, r in pairs), len(pairs)


def transfer_table(results: Mapping[str, Any]) -> str:
    """Per data set, the matrix: one row per generator and source, one column per target, the fooling rate (%) of
    the cell ("·" where the source is the target: white-box, left out)."""
    records, parts = results["records"], []
    for d in dict.fromkeys(r["dataset"] for r in select(records, group="transfer")):
        targets, matrix = _matrix(records, d)
        rows = [{"gen": GENERATORS[gen].label, "source": "all other models" if source == "others" else source,
                 **{t: pct(cells[t]["value"]) if t in cells else "·" for t in targets}} for gen, source, cells in matrix]
        eps, n = first(records, dataset=d, group="transfer")["eps"], results["parameters"]["n_transfer"][d]
        parts.append(f"**{d}** (L∞ ε = {eps:.4g}, the first {n:,} held-out images; a cell counts only the images its "
                     "target classifies correctly)\n\n"
                     + markdown_table(rows, {"gen": "generator", "source": "crafted on",
                                             **{t: f"→ {t}" for t in targets}}))
    return "\n\n".join(parts)


def generator_table(results: Mapping[str, Any]) -> str:
    """Per data set and generator: the pooled fooling rate, the weakest and strongest cell, on how many targets its
    strongest source clearly beats (or trails) FGSM's strongest, and, for single-source generators, on how many
    (source, target) pairs FGSM clearly beats it."""
    records, rows = results["records"], []
    for d in dict.fromkeys(r["dataset"] for r in select(records, group="transfer")):
        for gen in _generators(records, d):
            cells = _cells(records, d, gen)
            c = compare_with_fgsm(records, d, gen)
            worse, pairs = fgsm_beats(records, d, gen) if not GENERATORS[gen].ensemble else (None, None)
            rows.append({"data": d, "gen": GENERATORS[gen].label, "pooled": pct(pooled_rate(records, d, gen)),
                         "range": f"{pct(min(r['value'] for r in cells))} – {pct(max(r['value'] for r in cells))}",
                         "vs": "–" if gen == "fgsm" else f"{len(c['above'])} / {len(c['below'])} of {c['targets']}",
                         "pairs": "–" if pairs is None or gen == "fgsm" else f"{worse} of {pairs}"})
    return markdown_table(rows, {"data": "data set", "gen": "generator", "pooled": "pooled fooling rate",
                                 "range": "weakest – strongest cell",
                                 "vs": "targets above / below FGSM (best sources)",
                                 "pairs": "pairs where FGSM clearly transfers better"})


def transfer_figure(results: Mapping[str, Any]):
    """Per data set, the matrix as a heat map (fooling rate, %): rows generator and source, columns targets; the
    left-out white-box cells are blank."""
    records = results["records"]
    ds = list(dict.fromkeys(r["dataset"] for r in select(records, group="transfer")))
    heights, mats = [], []
    for d in ds:
        targets, matrix = _matrix(records, d)
        rows = [[100 * cells[t]["value"] if t in cells else math.nan for t in targets] for _, _, cells in matrix]
        mats.append((d, targets, [f"{GENERATORS[g].label} ← {s}" for g, s, _ in matrix],
                     torch.tensor(rows, dtype=torch.float64)))
        heights.append(0.32 * len(rows) + 1.2)
    fig, axes = plt.subplots(len(ds), 1, figsize=(9, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (d, targets, labels, mat) in zip(axes[:, 0], mats):
        im = ax.imshow(mat.numpy(), cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                v = float(mat[i, j])
                if not math.isnan(v):
                    ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 60 else "black")
        ax.set_xticks(range(len(targets)), [f"→ {t}" for t in targets], fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set_title(f"{d}: fooling rate (%) among the images each target classifies correctly")
        fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the adversary set


def set_generator(cfg: Mapping[str, Any], records: Sequence[dict], d: str) -> str:
    """The adversary set's generator: ``set_generator``, or with ``"best"`` the :func:`best_generator` of the
    held-out matrix (the choice never looks at a test image)."""
    return best_generator(records, d) if cfg["set_generator"] == "best" else cfg["set_generator"]


def set_name(cfg: Mapping[str, Any], d: str, split: str = "test") -> str:
    """The adversary set's name: ``transferable-<data set>-<profile>`` (``-train`` added for the training set),
    plus ``--<hash>`` of the values set by hand (as the results file), so a reader's variant never replaces the
    profile's set."""
    rid = run_id(overrides_of(cfg))
    return (f"transferable-{d}-{cfg['profile']}" + ("-train" if split == "train" else "")
            + (f"--{rid}" if rid else ""))


def surrogate_names(cfg: Mapping[str, Any], pool: Mapping[str, nn.Module], d: str) -> list[str]:
    """The adversary set's surrogates: every pool model but the reference. A single-source generator uses the
    first of them."""
    return [n for n in pool if n != reference_name(cfg, d)]


def set_recipe(cfg: Mapping[str, Any], pool: Mapping[str, nn.Module], d: str, gen: str,
               split: str = "test") -> dict:
    """Everything that makes the adversary set of ``d`` from its ``split``: generator, radius, knobs, surrogates by
    name and weights hash, the images and the seed. A stored set is used only if its recipe equals this one."""
    n = cfg["n_set"][d] if split == "test" else cfg["n_set_train"][d]
    names = surrogate_names(cfg, pool, d)
    names = names if GENERATORS[gen].ensemble else names[:1]
    return {"chapter": CHAPTER, "dataset": d, "generator": gen, "eps": cfg["eps"][d],
            **_generator_knobs(cfg, gen), "surrogates": {n: state_hash(pool[n]) for n in names},
            "images": f"the first {n} {d} {split} images", "seed": cfg["seed"]}


def adversary_sets(run: Run) -> None:
    """Per data set, the adversary set of the first ``n_set`` test images and, when ``n_set_train`` > 0, a training
    adversary set of the first ``n_set_train`` training images (the pool's own training images; for readers who
    train on transferred examples): each loaded when a set of :func:`set_name` with the same :func:`set_recipe`
    exists, else crafted with :func:`set_generator` on the surrogates and written with
    :func:`robustness_book.data.write_adversary_set`; in both cases then loaded back by name through
    ``load_dataset("adversary:<name>", split)``, which verifies its checksum. Keeps the test sets (``run.sets[d]``);
    records one record per set (``metric="set_images"``, ``split``) and, in ``run.timings["adversary_sets"]`` per
    set name, its data set, split, generator, surrogates, source and what happened (``status``: loaded, written,
    or rebuilt and why; machine facts)."""
    cfg, info = run.cfg, run.timings.setdefault("adversary_sets", {})
    with run.timer("adversary set"):
        for d in cfg.datasets:
            gen = set_generator(cfg, run.records, d)
            parts = [("test", run.data[d]["test"])]
            if cfg.n_set_train[d]:
                parts.append(("train", load_dataset(d, "train").first(cfg.n_set_train[d])))
            for split, clean in parts:
                recipe, name = set_recipe(cfg, run.pool[d], d, gen, split), set_name(cfg, d, split)
                try:
                    load_adversary_set(name, recipe=recipe, split=split)
                    status = "loaded"
                except (DatasetNotFoundError, CorruptDataError, ValueError) as err:  # stale recipe, wrong split too
                    surrogates = [run.pool[d][n] for n in recipe["surrogates"]]
                    x_adv = craft(gen, surrogates, clean.x, clean.y, eps=recipe["eps"], steps=cfg.steps,
                                  momentum=cfg.momentum, diversity=cfg.diversity, batch_size=cfg.batch_size,
                                  seed=cfg.seed)
                    write_adversary_set(name, x_adv, clean.y, recipe, split=split)
                    status = "written" if isinstance(err, DatasetNotFoundError) else f"rebuilt ({type(err).__name__})"
                loaded = load_dataset(f"adversary:{name}", split)
                if not torch.equal(loaded.y, clean.y):
                    raise CorruptDataError(f"adversary set {name!r} does not hold the labels of its {split} images")
                if split == "test":
                    run.sets[d] = loaded
                info[name] = {"dataset": d, "split": split, "generator": gen, "surrogates": list(recipe["surrogates"]),
                              "status": status, "source": loaded.source}
                run.records.append(record(
                    cfg, dataset=d, model="+".join(recipe["surrogates"]), attack=gen, threat_model="linf",
                    eps=recipe["eps"], metric="set_images", value=len(loaded), group="set", set=name, split=split))


def set_table(results: Mapping[str, Any]) -> str:
    """Per adversary set: how to load it, its generator, surrogates, size and split, and how this run got it."""
    info = results["timings"].get("adversary_sets", {})
    rows = [{"data": r["dataset"], "name": f"`load_dataset(\"adversary:{r['setting']['set']}\", "
                                           f"\"{r['setting'].get('split', 'test')}\")`",
             "gen": GENERATORS[r["attack"]].label, "surrogates": r["model"].replace("+", ", "),
             "n": f"{int(r['value']):,} {r['setting'].get('split', 'test')}",
             "status": info.get(r["setting"]["set"], {}).get("status", "–")}
            for r in select(results["records"], group="set")]
    return markdown_table(rows, {"data": "data set", "name": "load it with", "gen": "generator",
                                 "surrogates": "crafted on", "n": "images", "status": "this run"})


# --------------------------------------------------------------------------- the defenses


class DistillationLoss:
    """Defensive distillation's objective (Papernot et al., "Distillation as a Defense to Adversarial Perturbations
    against Deep Neural Networks", S&P 2016) as a loss ``loss(model, x, y)`` for :func:`robustness_book.train.train`.

    ``CE(target, softmax(f(x)/T))`` with the hard labels as target (``teacher=None``: the teacher trained at
    temperature T) or the teacher's ``softmax(g(x)/T)`` (the student), the teacher in eval mode and without
    gradient. The distilled network is deployed at T = 1: its logits unchanged. No T² factor, as in Papernot et
    al., Carlini's reimplementation and the third-party baseline, so the logits grow about T-fold during training,
    which is what flattens the softmax's gradient at T = 1.

    Args:
        temperature: T > 0 (Papernot et al. and the third-party baseline: 100).
        teacher: the trained teacher, or ``None``. The spec names it by its weights' hash (the cache tells
            students of different teachers apart).
    """

    def __init__(self, temperature: float = 100.0, teacher: nn.Module | None = None):
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r} must be > 0")
        self.temperature, self.teacher = float(temperature), teacher
        self.spec = {"name": "distillation", "temperature": self.temperature,
                     "teacher": None if teacher is None else state_hash(teacher)}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(model(x) / self.temperature, 1)
        if self.teacher is None:
            return F.nll_loss(log_p, y)
        with torch.no_grad(), attacks.eval_mode(self.teacher):
            target = F.softmax(self.teacher(x) / self.temperature, 1)
        return -(target * log_p).sum(1).mean()

    def __repr__(self) -> str:
        return f"DistillationLoss(temperature={self.temperature:g}, teacher={self.spec['teacher']})"


def defense_recipe(cfg: Mapping[str, Any], d: str, epochs: int | None = None) -> dict:
    """The :func:`robustness_book.train.trained_model` arguments every defended model of ``d`` shares: the zoo's
    architecture and recipe, ``defense_train_size`` images, ``defense_epochs`` (or ``epochs``), the reference
    model's seed. With the zoo's size and epochs, normal training is the shared reference model."""
    return zoo.variant(zoo.for_dataset(d, cfg["profile"]), train_size=cfg["defense_train_size"][d],
                       epochs=cfg["defense_epochs"][d] if epochs is None else epochs, seed=cfg["seeds"][d][0])


def defense_loss(cfg: Mapping[str, Any], d: str, defense: str, teacher: nn.Module | None = None):
    """The training objective of ``defense`` (one of :data:`DEFENSES`); distillation's student needs its
    ``teacher`` (without one, the teacher's own objective)."""
    eps = cfg["eps"][d]
    if defense == "normal":
        return cross_entropy
    if defense == "fgsm_at":
        return AdversarialLoss("fgsm", eps=eps, mix=FGSM_AT_MIX)
    if defense == "pgd_at":
        return AdversarialLoss("pgd_linf", eps=eps, steps=cfg["at_steps"][d], mix=cfg["at_mix"], seed=cfg["seed"])
    if defense == "distillation":
        return DistillationLoss(cfg["temperature"], teacher)
    if defense == "superimposition":
        return SuperimpositionLoss(lam=cfg["lam"], seed=cfg["seed"])
    if defense == "superimposition_fixed":
        return SuperimpositionLoss(lam=cfg["lam"], a=cfg["fixed_a"], seed=cfg["seed"])
    raise ValueError(f"unknown defense {defense!r}; allowed: {', '.join(DEFENSES)}")


def _knobs(cfg: Mapping[str, Any], d: str, defense: str) -> dict:
    return {"fgsm_at": {"mix": FGSM_AT_MIX}, "pgd_at": {"steps": cfg["at_steps"][d], "mix": cfg["at_mix"]},
            "distillation": {"temperature": cfg["temperature"]}, "superimposition": {"lam": cfg["lam"], "a": "beta"},
            "superimposition_fixed": {"lam": cfg["lam"], "a": cfg["fixed_a"]}}.get(defense, {})


def _field(defense: str) -> str:
    """The record's ``defense`` of a defense label: normal training is no defense."""
    return "none" if defense == "normal" else defense


def train_defenses(run: Run) -> None:
    """Per data set with ``train_defenses``, every defense of ``defenses`` trained with :func:`defense_recipe` (or
    loaded from the cache) into ``run.nets[d][defense]``. Distillation, as in Carlini's reimplementation and the
    third-party code (Papernot et al. describe no common start): one epoch of normal training as the common start,
    the teacher at temperature T from there (``run.teachers[d]``), then the student at T on the teacher's soft labels
    from the same start. Records: clean accuracy on the adversary set's test images; timings: seconds, cached."""
    cfg = run.cfg
    with run.timer("defenses"):
        for d in (d for d in cfg.datasets if cfg.train_defenses[d]):
            run.nets[d] = {}
            test = load_dataset(d, "test").first(cfg.n_set[d])
            for defense in cfg.defenses:
                kw, metas = defense_recipe(cfg, d), []
                if defense == "distillation":
                    init, meta = zoo.model_for(**defense_recipe(cfg, d, epochs=1))
                    run.teachers[d], teacher_meta = trained_model(**{**kw, "loss": defense_loss(cfg, d, defense)},
                                                                  init=init)
                    metas = [meta, teacher_meta]
                    net, meta = trained_model(**{**kw, "loss": defense_loss(cfg, d, defense, run.teachers[d])},
                                              init=init)
                else:
                    net, meta = zoo.model_for(**{**kw, "loss": defense_loss(cfg, d, defense)})
                run.nets[d][defense] = net
                run.timings[f"{d}/{defense}"] = _trained(*metas, meta)
                run.records.append(kit.accuracy_record(cfg, net, test, dataset=d, model=kw["model"],
                                                       batch_size=cfg.batch_size, split="test", group="chapter",
                                                       defense=_field(defense), **_knobs(cfg, d, defense)))


def training_table(results: Mapping[str, Any]) -> str:
    """Per defended model: the objective, the shared recipe in words, clean test accuracy and training time."""
    records, cfg, rows = results["records"], _cfg(results), []
    for d in dict.fromkeys(r["dataset"] for r in select(records, group="chapter")):
        kw = defense_recipe(cfg, d)
        for defense in cfg["defenses"]:
            r = first(records, dataset=d, group="chapter", defense=_field(defense), metric="accuracy", attack="none")
            t = results["timings"].get(f"{d}/{defense}", {})
            rows.append({"data": d, "defense": LABELS[defense] + (f" (zoo `{t['zoo']}`)" if t.get("zoo") else ""),
                         "clean": pct_interval(r), "time": duration(t.get("seconds"), cached=t.get("cached", False))})
        rows.append({"data": d, "defense": f"*every model: {kw['model']}, {kw['train_size']:,} images, "
                     f"{kw['config'].describe()}*", "clean": "", "time": ""})
    return markdown_table(rows, {"data": "data set", "defense": "defense", "clean": "clean test accuracy [95% CI]",
                                 "time": "training time"})


# --------------------------------------------------------------------------- cost: passes and seconds per step


PassCounter = kit.PassCounter  # the book's pass counter (one place for it: the kit)


def training_cost(loss, arch: str, d: str, data: ArrayDataset, config: TrainConfig, batches: int,
                  seed: int = 0) -> dict:
    """One defense's training cost on a fresh ``arch`` network with the book's training loop: the forward and
    backward images per training image, counted with :class:`PassCounter` (the network and a distillation teacher)
    over one step (exact: every step does the same work), and the wall-clock seconds per step of
    ``config.batch_size`` images (:func:`robustness_book.train.seconds_per_step` over ``batches`` steps)."""
    torch.manual_seed(seed)
    net = build_model(arch, d)
    one_step = replace(config, epochs=1, schedule="step", milestones=())
    images = data.first(one_step.batch_size)
    teacher = getattr(loss, "teacher", None)
    counted = copy.deepcopy(net)
    with PassCounter(counted, *([teacher] if teacher is not None else [])) as counter:
        train(counted, images, one_step, loss=loss, desc="count")
    return {"forward": counter.forward / len(images), "backward": counter.backward / len(images),
            "seconds_per_step": seconds_per_step(net, data, config, loss, batches)}


def cost_all(run: Run) -> None:
    """Per data set with defenses: :func:`training_cost` of every defense back to back in this run. Records: the
    forward and backward images per training image (``metric`` ``forward_passes``/``backward_passes``; exact, so
    two runs agree); ``run.timings["cost"][d]``: seconds per step and their ratio to normal training."""
    cfg, timings = run.cfg, run.timings.setdefault("cost", {})
    with run.timer("cost"):
        for d in (d for d in cfg.datasets if cfg.train_defenses[d]):
            kw = defense_recipe(cfg, d)
            data = load_dataset(d, "train").first(cfg.cost_batches * kw["config"].batch_size)
            costs = {}
            for defense in cfg.defenses:
                loss = defense_loss(cfg, d, defense, run.teachers.get(d) if defense == "distillation" else None)
                costs[defense] = training_cost(loss, kw["model"], d, data, kw["config"], cfg.cost_batches, cfg.seed)
                run.records += [record(cfg, dataset=d, model=kw["model"], metric=f"{metric}_passes",
                                       value=costs[defense][metric], n=len(data), group="chapter",
                                       defense=_field(defense), **_knobs(cfg, d, defense))
                                for metric in ("forward", "backward")]
            base = costs["normal"]["seconds_per_step"]
            timings[d] = {k: {"seconds_per_step": v["seconds_per_step"],
                              "ratio_to_normal": v["seconds_per_step"] / base} for k, v in costs.items()}


# --------------------------------------------------------------------------- scoring: adversary set and white box


#: The other chapters whose choices for the shared reference model this chapter applies: the chapter id, the
#: record that holds the choice (its ``metric``, and the ``model`` it was made for), the parameter that is the
#: labelled default, and the setting key it goes to.
BORROWED = {
    "jumprelu": {"chapter": "jumprelu", "metric": "chosen_kappa", "model": lambda d: f"{zoo.ARCH[d]}-baseline",
                 "param": "jumprelu_kappa", "what": "κ"},
    "compress_amplify": {"chapter": "fragile_neurons", "metric": "chosen_strength", "model": lambda d: zoo.ARCH[d],
                         "param": "rescale_strength", "what": "strength"},
}


def book_settings(cfg: RunConfig, d: str) -> dict[str, dict]:
    """Per defense of :data:`BORROWED`: ``{"value", "source", "note"}`` — the value its chapter chose on its
    validation images for the shared model of ``d``, read from that chapter's results of this profile
    (:func:`robustness_book.chapters.kit.borrowed`), the parameter when a reader set it by hand, else the
    parameter's profile value as a labelled default, with a note naming the command that makes the missing
    choice."""
    out = {}
    for defense, b in BORROWED.items():
        got = kit.borrowed(cfg, b["chapter"], what=f"the {LABELS[defense]} ({b['what']})", param=b["param"],
                           dataset=d, metric=b["metric"], model=b["model"](d))
        out[defense] = {k: got[k] for k in ("value", "source", "note")}
    return out


def book_models(run: Run, d: str) -> dict[str, tuple[nn.Module, dict]]:
    """The shared reference model of ``d`` and the other chapters' defenses of it that cost nothing to build, each
    with its setting: JumpReLU's retrofit at the κ and the fragile-neurons chapter's compress/amplify rescaling at
    the strength of :func:`book_settings` (the source named in the setting, a missing choice's note in
    ``run.timings["not_scored"]``), the rescaling driven by each first-layer channel's clean fragility (nodal
    dropout, the thesis's definition) measured here on the held-out images."""
    cfg, ref, val = run.cfg, run.pool[d][reference_name(run.cfg, d)], run.data[d]["val"]
    chosen = book_settings(cfg, d)
    run.timings.setdefault("not_scored", []).extend(c["note"] for c in chosen.values() if c["note"])
    run.extra.setdefault("book_settings", {})[d] = chosen
    scores = fn.fragility(ref, val.x, val.y, eps=0.0, batch_size=cfg.batch_size, fgsm_too=False)["clean_drop"]
    kappa, strength = chosen["jumprelu"]["value"], chosen["compress_amplify"]["value"]
    return {"none": (ref, {}),
            "jumprelu": (retrofit(ref, kappa), {"kappa": kappa, "chosen_by": chosen["jumprelu"]["source"]}),
            "compress_amplify": (fn.compress_amplify(ref, scores, strength),
                                 {"strength": strength, "chosen_by": chosen["compress_amplify"]["source"]})}


def worst_case_members(cfg: Mapping[str, Any], defense: str, net: nn.Module) -> list:
    """The white-box ensemble (:func:`robustness_book.evaluate.default_members`: APGD-CE, APGD-T, Square); for the
    JumpReLU retrofit also PGD through its BPDA copy (plain ReLU's gradient, the jump's exact forward), on both
    losses."""
    out = M.default_members(cfg["pgd_steps"], cfg["restarts"], cfg["square_queries"])
    if defense == "jumprelu":
        copy = bpda_relu(net)
        out += [M.bpda(copy, "ce", cfg["pgd_steps"], cfg["restarts"]),
                M.bpda(copy, "margin", cfg["pgd_steps"], cfg["restarts"])]
    return out


def _score(run: Run, d: str, net: nn.Module, model: str, group: str, defense: str, radii: Sequence[float],
           **setting) -> list[dict]:
    """Clean accuracy on the set's test images, accuracy on the adversary set, and the worst case on the first
    ``n_adaptive`` of them at each of ``radii`` (a nested curve when there are several)."""
    cfg, test, eps = run.cfg, run.data[d]["test"], run.cfg.eps[d]
    fields = {"defense": _field(defense), "group": group, **_knobs(cfg, d, defense), **setting}
    out = [kit.accuracy_record(cfg, net, test, dataset=d, model=model, batch_size=cfg.batch_size, split="test",
                               **fields),
           kit.accuracy_record(cfg, net, run.sets[d], dataset=d, model=model, batch_size=cfg.batch_size,
                               attack="adversary_set", threat_model="linf", eps=eps, set=run.sets[d].name, **fields)]
    sub, members = test.first(cfg.n_adaptive[d]), worst_case_members(cfg, defense, net)
    worst = (evaluate.worst_case(net, sub.x, sub.y, eps=radii[0], members=members, batch_size=cfg.batch_size,
                                 seed=cfg.seed) if len(radii) == 1 else
             evaluate.worst_case_curve(net, sub.x, sub.y, radii, members=members, batch_size=cfg.batch_size,
                                       seed=cfg.seed))
    out += kit.worst_case_records(cfg, worst, dataset=d, model=model, run=run, key=(d, group, defense, model),
                                  **fields)
    return out


def white_radii(cfg: Mapping[str, Any], d: str) -> list[float]:
    """The radii of the white-box curve of this chapter's defenses: ``white_radii`` × the threat radius, ascending
    (the threat radius last)."""
    return sorted(f * cfg["eps"][d] for f in cfg["white_radii"])


def _at_threat(worst: dict | Sequence[dict]) -> dict:
    """The threat-radius point of a worst case or of a curve (its largest radius)."""
    return worst if isinstance(worst, dict) else worst[-1]


def confirm_all(run: Run, d: str) -> None:
    """AutoAttack (standard) on the worst case's survivors (:func:`kit.autoattack_on_survivors`), for each of
    :data:`CONFIRMED` at each radius of its curve where its gain over normal training on the same images is
    significant before any multiplicity correction (exact McNemar, :data:`ALPHA`): the only radii where the verdict
    could call a white-box gain positive, so the only ones a positive must survive AutoAttack at."""
    cfg, model, seconds = run.cfg, zoo.ARCH[d], run.timings.setdefault("autoattack", {})
    sub = run.data[d]["test"].first(cfg.n_adaptive[d])
    normal = run.raw.get((d, "chapter", "normal", model))
    for defense in (k for k in CONFIRMED if k in run.nets.get(d, {}) and normal is not None):
        curve, base = run.raw[d, "chapter", defense, model], normal
        points = ([curve] if isinstance(curve, dict) else curve, [base] if isinstance(base, dict) else base)
        for point, ref in zip(*points):
            test = evaluate.paired_test(point["robust_mask"], ref["robust_mask"])
            if not (test["p"] < ALPHA and test["difference"] > 0):
                continue
            rec, sec = kit.autoattack_on_survivors(cfg, run.nets[d][defense], sub.x, sub.y, point, dataset=d,
                                                   model=model, batch_size=cfg.batch_size, defense=_field(defense),
                                                   group="chapter", **_knobs(cfg, d, defense))
            seconds[f"{d}/{defense}/{point['eps']:.4g}"] = sec
            run.records.append(rec)


def exported_models(cfg: RunConfig) -> tuple[list[tuple[str, dict, nn.Module]], list[str]]:
    """The defended networks the :data:`EXPORTING_CHAPTERS` trained with this profile, as ``(defense, entry,
    model)``: read from their canonical results files, built from the registry and loaded from the checkpoints the
    entries name (sha256-checked, weights only). And one note per chapter that has nothing to give (no results
    file, results written before chapters exported their networks, a missing or altered checkpoint), naming the
    command that fixes it: a full build runs those chapters first, a single chapter run may not have."""
    found, notes = [], []
    for chapter_id, defense in EXPORTING_CHAPTERS.items():
        rerun = f"`python -m robustness_book run {chapter_id} --profile {cfg.profile}`"
        try:
            entries = load_results(chapter_id, cfg.profile).get("extra", {}).get("models")
        except FileNotFoundError:
            notes.append(f"`{chapter_id}`: no {cfg.profile} results yet; run {rerun}, then this chapter again.")
            continue
        except ResultsFileError as err:  # a damaged file: a note naming it, as for a missing one
            notes.append(f"`{chapter_id}`: {err}; then run this chapter again.")
            continue
        if entries is None:
            notes.append(f"`{chapter_id}`: its {cfg.profile} results name no networks (written by an older "
                         f"version); run {rerun} again.")
            continue
        for e in (e for e in entries if e["dataset"] in cfg.datasets):
            try:
                found.append((defense, e, load_export(e)))
            except CheckpointError as err:
                notes.append(f"`{chapter_id}` ({e['dataset']}, {e['model']}): {err}; run {rerun} again.")
    return found, notes


def score_all(run: Run) -> None:
    """Every model of every data set against the adversary set and the white box: the :func:`book_models` (group
    ``"book"``), the other chapters' own defended networks (group ``"other"``, :func:`exported_models`) and, where
    trained, this chapter's defenses (group ``"chapter"``). Per model: clean accuracy on the set's test images,
    accuracy on the adversary set, and the worst case of :func:`worst_case_members` on the first ``n_adaptive`` of
    them (:func:`kit.worst_case_records`: the images each member fooled; the result with its per-image outcome in
    ``run.raw[d, group, defense, model]``): at the threat radius, and for this chapter's defenses as a curve over
    :func:`white_radii`, then AutoAttack where a positive needs it (:func:`confirm_all`). The notes of
    :func:`exported_models` and :func:`book_settings` go to ``run.timings["not_scored"]``."""
    cfg = run.cfg
    with run.timer("scores"):
        others, run.timings["not_scored"] = exported_models(cfg)
        for d in cfg.datasets:
            threat = [cfg.eps[d]]
            models = [("book", k, reference_name(cfg, d), v, setting, threat)
                      for k, (v, setting) in book_models(run, d).items()]
            models += [("other", k, e["model"], v, {**e["setting"], "label": e["label"]}, threat)  # its chapter's name
                       for k, e, v in others if e["dataset"] == d]
            models += [("chapter", k, zoo.ARCH[d], v, {}, white_radii(cfg, d)) for k, v in run.nets.get(d, {}).items()]
            for group, defense, model, net, setting, radii in models:
                run.records += _score(run, d, net, model, group, defense, radii, **setting)
            confirm_all(run, d)


#: The networks with a health table: the paper's defense (``a`` resampled) and the two established defenses it is
#: compared with, the textbook masked-gradient cases (distillation at T = 100, Carlini & Wagner 2017; single-step
#: adversarial training, Tramèr et al. 2018).
HEALTH_CHECKED = ("superimposition", "superimposition_fixed", "distillation", "fgsm_at")


def health_all(run: Run) -> None:
    """The health table of each of :data:`HEALTH_CHECKED` trained on a data set, at the threat radius on the first
    ``n_adaptive`` test images (:func:`kit.health_rows`, rows tagged with ``defense``), with the gradient-free check
    (its worst case at the threat radius) and the transfer check (the adversary set's examples of the same
    images)."""
    cfg = run.cfg
    with run.timer("health checks"):
        for d, nets in run.nets.items():
            n, model = cfg.n_adaptive[d], zoo.ARCH[d]
            test = run.data[d]["test"].first(n)
            for defense in (k for k in HEALTH_CHECKED if k in nets):
                run.health += kit.health_rows(
                    nets[defense], test.x, test.y, dataset=d, model=model, eps=cfg.eps[d],
                    steps=cfg.health_steps, num_classes=dataset_info(d).num_classes, seed=cfg.seed,
                    batch_size=cfg.batch_size, transfer_x_adv=run.sets[d].first(n).x,
                    worst=_at_threat(run.raw[d, "chapter", defense, model]), defense=defense)


def health_tables(results: Mapping[str, Any]) -> str:
    """The health rows, one table per data set and network (:func:`robustness_book.report.health_tables`)."""
    return _health_tables(results["health"], by=("dataset", "model", "defense"))


# --------------------------------------------------------------------------- tables and figures of the scores


def _scored(records: Sequence[dict], d: str, group: str) -> list[tuple[str, str]]:
    """The (defense, model) pairs scored on ``d``'s adversary set in ``group``, in record order (normal training as
    ``normal``)."""
    found = [(r["defense"], r["model"]) for r in select(records, dataset=d, group=group, attack="adversary_set")]
    return [("normal" if group == "chapter" and f == "none" else f, m) for f, m in found]


def _scores(records: Sequence[dict], d: str, group: str, defense: str, model: str | None = None) -> dict:
    """A scored network's records: ``clean``, ``set`` (the adversary set), ``worst`` (the worst case at the set's
    radius, the threat radius) and ``curve`` (its worst case at every radius measured, ascending)."""
    kw = dict(dataset=d, group=group, defense=_field(defense) if group == "chapter" else defense,
              **({} if model is None else {"model": model}))
    on_set = first(records, attack="adversary_set", metric="accuracy", **kw)
    curve = sorted(select(records, attack="worst_case", metric="accuracy", **kw), key=lambda r: r["eps"])
    worst = None if on_set is None else first(curve, eps=on_set["eps"])
    return {"clean": first(records, attack="none", metric="accuracy", **kw), "set": on_set,
            "worst": worst if worst is not None or not curve else curve[-1], "curve": curve}


def cost_table(results: Mapping[str, Any]) -> str:
    """Per data set with defenses: forward and backward passes per training image (counted) and seconds per step
    (measured in this run) as a multiple of normal training."""
    records, rows = results["records"], []
    for r in select(records, group="chapter", metric="forward_passes"):
        d, defense = r["dataset"], "normal" if r["defense"] == "none" else r["defense"]
        back = first(records, dataset=d, group="chapter", defense=r["defense"], metric="backward_passes")
        c = results["timings"].get("cost", {}).get(d, {}).get(defense, {})
        rows.append({"data": d, "defense": LABELS[defense], "forward": f"{r['value']:g}",
                     "backward": "–" if back is None else f"{back['value']:g}",
                     "seconds": f"{c['seconds_per_step']:.3f}" if c else "–",
                     "ratio": f"{c['ratio_to_normal']:.1f}×" if c else "–"})
    return markdown_table(rows, {"data": "data set", "defense": "defense", "forward": "forward passes per image",
                                 "backward": "backward passes per image", "seconds": "seconds per step",
                                 "ratio": "× normal training"})


#: The groups of scored networks, in page order: the shared model and its cheap defenses, the other chapters' own
#: defended networks, this chapter's defenses.
GROUPS = ("book", "other", "chapter")


def _defense_words(rec: dict) -> str:
    """A scored network's name for its table row: this chapter's label (for the other chapters' defenses of the
    shared model with their κ or strength and its source, :func:`book_settings`), or for another chapter's network
    the label that chapter exported, with its λ."""
    setting = rec["setting"]
    if setting.get("group") == "book" and "chosen_by" in setting:  # the value and where it came from
        knob = "κ" if "kappa" in setting else "strength"
        return (f"{LABELS[rec['defense']]}, {knob} = {setting.get('kappa', setting.get('strength')):g} "
                f"({setting['chosen_by']})")
    if setting.get("group") != "other":
        return LABELS["normal" if setting.get("group") == "chapter" and rec["defense"] == "none" else rec["defense"]]
    label = setting.get("label", rec["defense"])  # results written before exports carried labels
    return label + ("" if setting.get("lam") is None else f", λ = {setting['lam']:g}")


def score_table(results: Mapping[str, Any]) -> str:
    """Every model scored on an adversary set, one row each, in the order of :data:`GROUPS` (the shared reference
    model and the other chapters' defenses of it, the other chapters' own defended networks, this chapter's
    defenses): the book's one transfer number per defense, beside its clean accuracy and white-box worst case."""
    records, rows = results["records"], []
    for d in dict.fromkeys(r["dataset"] for r in select(records, attack="adversary_set")):
        for group in GROUPS:
            for defense, model in _scored(records, d, group):
                s = _scores(records, d, group, defense, model)
                rows.append({"data": d, "model": model, "defense": _defense_words(s["set"]),
                             "clean": pct_interval(s["clean"]), "set": pct_interval(s["set"]),
                             "worst": pct_interval(s["worst"])})
    return markdown_table(rows, {"data": "data set", "model": "model", "defense": "defense",
                                 "clean": "clean [95% CI]", "set": "adversary set [95% CI]",
                                 "worst": "white-box worst case [95% CI]"})


def white_box_table(results: Mapping[str, Any]) -> str:
    """Per data set with defenses: this chapter's defenses (rows) against the radii of their white-box curve
    (columns), the worst-case accuracy on the same first ``n_adaptive`` images [95% CI] and, where AutoAttack ran on
    its survivors, what is left after it (the number a positive verdict is confirmed on); the row of normal training
    says where a gain can show (a radius where it is at 0% or 100% is the floor)."""
    records, parts = results["records"], []
    for d in dict.fromkeys(r["dataset"] for r in select(records, group="chapter", attack="adversary_set")):
        curves = {k: _scores(records, d, "chapter", k)["curve"] for k, _ in _scored(records, d, "chapter")}
        radii = sorted({r["eps"] for c in curves.values() for r in c})

        def cell(k: str, e: float, curve: Sequence[dict], d: str = d) -> str:
            worst = first(curve, eps=e)
            if worst is None:
                return "–"
            aa = first(records, dataset=d, group="chapter", defense=_field(k), attack="autoattack", eps=e)
            return pct_interval(worst) + ("" if aa is None else f"; {pct(aa['value'])} after AutoAttack")

        rows = [{"defense": LABELS[k], **{f"{e:.4g}": cell(k, e, c) for e in radii}} for k, c in curves.items()]
        n = next((c[0]["n"] for c in curves.values() if c), 0)
        parts.append(f"**{d}** (the first {n:,} test images; L∞ radius in the columns; \"after AutoAttack\": "
                     "robust under the worst case and AutoAttack (standard) on its survivors, where it ran)\n\n"
                     + markdown_table(rows, {"defense": "defense", **{f"{e:.4g}": f"ε = {e:.4g}" for e in radii}}))
    return "\n\n".join(parts)


def notes_markdown(results: Mapping[str, Any]) -> str:
    """The networks that could not be scored and why (:func:`exported_models`), as a note; empty when none."""
    notes = results["timings"].get("not_scored")
    if not notes:
        return ""
    return ("```{note}\nNot scored, or scored with a default, in this run:\n\n" + "\n".join(f"- {n}" for n in notes)
            + "\n```")


def score_figure(results: Mapping[str, Any]):
    """Per data set, every scored model: clean accuracy, accuracy on the adversary set and the white-box worst case
    at the same radius, with 95% intervals: the gap between the last two is what transfer alone does not see."""
    records = results["records"]
    ds = list(dict.fromkeys(r["dataset"] for r in select(records, attack="adversary_set")))
    fig, axes = plt.subplots(len(ds), 1, figsize=(11, 4.2 * len(ds)), squeeze=False)
    for ax, d in zip(axes[:, 0], ds):
        entries = [(g, k, m) for g in GROUPS for k, m in _scored(records, d, g)]
        pos = torch.arange(len(entries)).numpy()
        for offset, key, label in ((-0.27, "clean", "clean"), (0.0, "set", "adversary set"),
                                   (0.27, "worst", "white-box worst case")):
            recs = [_scores(records, d, g, k, m)[key] for g, k, m in entries]
            vals = [100 * r["value"] for r in recs]
            err = [[100 * (r["value"] - r["interval"][0]) for r in recs],
                   [100 * (r["interval"][1] - r["value"]) for r in recs]]
            ax.bar(pos + offset, vals, width=0.27, yerr=err, capsize=2, label=label)
        ax.set_xticks(pos, [SHORT[k].replace("\n", " ") + (f" ({m})" if g == "other" else "") for g, k, m in entries],
                      fontsize=8, rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        ax.set_title(f"{d}: L∞ ε = {first(records, dataset=d, attack='adversary_set')['eps']:.4g}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- verdict


def transfer_summary(records: Sequence[dict], d: str) -> dict:
    """Claim (i) on data set ``d``: whether multi-step PGD transfers clearly worse than FGSM on most pairs
    (``multi_step_worse``, more than :data:`MAJORITY` of them), and how the adversary set's generator compares with
    FGSM target by target (``category``: ``beats_fgsm`` when clearly above on every target, ``matches_fgsm`` when
    clearly below on none, else ``below_fgsm``; ``fgsm`` when FGSM itself made the set)."""
    worse, pairs = fgsm_beats(records, d, "pgd")
    rec = first(records, dataset=d, group="set")
    gen = rec["attack"] if rec else best_generator(records, d)
    cmp = compare_with_fgsm(records, d, gen)
    if gen == "fgsm":
        category = "fgsm"
    elif len(cmp["above"]) == cmp["targets"]:
        category = "beats_fgsm"
    elif not cmp["below"]:
        category = "matches_fgsm"
    else:
        category = "below_fgsm"
    return {"pgd_worse_pairs": worse, "pairs": pairs, "multi_step_worse": pairs > 0 and worse > MAJORITY * pairs,
            "generator": gen, "pooled": {g: pooled_rate(records, d, g) for g in _generators(records, d)},
            "above": cmp["above"], "below": cmp["below"], "targets": cmp["targets"], "category": category}


def _claim(outcome: Outcome, test: Mapping[str, Any] | None = None, mechanism: str | None = None) -> dict:
    return {**outcome.to_dict(), "mechanism": mechanism, "test": test}


def _comparable(si: dict | None, other: dict | None, *, health: Sequence[Mapping[str, Any]], clean: dict | None,
                num_classes: int) -> dict:
    """Is superimposition training *comparable* to ``other`` on the same images (per-image records)? A
    non-inferiority question: holds when the paired interval of the difference lies above −
    :data:`COMPARABLE_MARGIN`, does not hold when it lies below it, inconclusive otherwise (too few images), at the
    floor (``other`` at 0% or 100%), broken or, for a positive, with a failed gating health check."""
    if kit.is_broken(clean, num_classes):
        return _claim(Outcome("inconclusive", "broken", "the defended network is near chance"))
    a, b = kit.per_image(si), kit.per_image(other)
    if a is None or b is None:
        return _claim(Outcome("inconclusive", "not_measured", kit.NO_PER_IMAGE_NOTE))
    test = evaluate.paired_test(a, b)
    lo, hi = test["interval"]
    detail = (f"difference {100 * test['difference']:.1f} points [{100 * lo:.1f}, {100 * hi:.1f}] on the same "
              f"{test['n']} images, margin {100 * COMPARABLE_MARGIN:.0f} points")
    if not off_floor(evaluate.wilson_interval(int(b.sum()), len(b))):
        return _claim(Outcome("inconclusive", "floor", detail), test)
    if lo > -COMPARABLE_MARGIN:
        return _claim(health_gate(Outcome("holds", None, detail), health), test)
    if hi < -COMPARABLE_MARGIN:
        return _claim(Outcome("does not hold", None, detail), test)
    return _claim(Outcome("inconclusive", "underpowered", detail + f"; {test['n']} images cannot tell"), test)


def _families(records: Sequence[dict]) -> dict[str, list[tuple]]:
    """Claim (iii)'s comparisons, one Holm family per kind: ``set`` — ``(data set, variant)`` for every data set
    with defenses and every superimposition variant scored there; ``white_box`` — ``(data set, variant, eps)`` for
    every radius of the variant's white-box curve."""
    ds = dict.fromkeys(r["dataset"] for r in select(records, group="chapter", attack="adversary_set"))
    on_set = [(d, v) for d in ds for v in VARIANTS
              if first(records, dataset=d, group="chapter", defense=v, attack="adversary_set")]
    white = [(d, v, r["eps"]) for d, v in on_set for r in _scores(records, d, "chapter", v)["curve"]]
    return {"set": on_set, "white_box": white}


def _gate_rows(health: Sequence[Mapping[str, Any]], d: str, v: str) -> list[Mapping[str, Any]]:
    """The health rows of variant ``v`` on ``d`` (rows without a ``defense`` tag: results written before the tag
    belonged to the resampled variant)."""
    return [h for h in health if h.get("dataset") == d and h.get("defense", "superimposition") == v]


def _judge_set(records: Sequence[dict], health: Sequence[Mapping[str, Any]], d: str, v: str,
               p_adjusted: float | None = None) -> tuple[Outcome, dict | None]:
    """Claim (iii) itself: variant ``v`` against normal training on ``d``'s adversary set, paired on the same images
    (:func:`kit.paired_outcome`; a fixed set has nothing to adapt, so no AutoAttack)."""
    sc, nm = _scores(records, d, "chapter", v), _scores(records, d, "chapter", "normal")
    return kit.paired_outcome(sc["set"], nm["set"], min_effect=MIN_EFFECT_SET, health=_gate_rows(health, d, v),
                              p_adjusted=p_adjusted, num_classes=dataset_info(d).num_classes, clean=sc["clean"])


def _judge_white(records: Sequence[dict], health: Sequence[Mapping[str, Any]], d: str, v: str, eps: float,
                 p_adjusted: float | None = None) -> tuple[Outcome, dict | None]:
    """The white box at radius ``eps``: variant ``v``'s worst case against normal training's on the same images
    (:func:`kit.paired_outcome`), a positive confirmed by AutoAttack on the survivors at that radius."""
    mine, normal = (first(_scores(records, d, "chapter", k)["curve"], eps=eps) for k in (v, "normal"))
    confirm = first(records, dataset=d, group="chapter", defense=v, attack="autoattack", eps=eps)
    return kit.paired_outcome(mine, normal, min_effect=MIN_EFFECT_WHITE, health=_gate_rows(health, d, v),
                              confirm=confirm, p_adjusted=p_adjusted, num_classes=dataset_info(d).num_classes,
                              clean=_scores(records, d, "chapter", v)["clean"])


def _white_box(records: Sequence[dict], health: Sequence[Mapping[str, Any]], d: str, v: str,
               adjusted: Mapping[tuple, float]) -> dict:
    """The white-box comparison of variant ``v`` over its curve: per radius (``radii``: ``{"eps", "outcome",
    "reason", "detail", "test", "p_adjusted"}``, Holm-adjusted over the family of :func:`_families`) and one
    outcome by :func:`kit.combine_radii` (a radius where ``v`` is significantly below normal training refutes "more
    robust" even where another radius holds); a broken or unmeasured network is inconclusive for that reason."""
    per = []
    for r in _scores(records, d, "chapter", v)["curve"]:
        p_adjusted = adjusted.get((d, v, r["eps"]))
        outcome, test = _judge_white(records, health, d, v, r["eps"], p_adjusted)
        per.append({"eps": r["eps"], **_claim(outcome, test), "p_adjusted": p_adjusted})
    blocked = [c for c in per if c["reason"] in ("broken", "not_measured")]
    if blocked:
        outcome = Outcome("inconclusive", blocked[0]["reason"], blocked[0]["detail"])
    else:
        outcome = kit.combine_radii(per, reference="normal training")
    return {**_claim(outcome), "radii": per}


def _mechanism(records: Sequence[dict], d: str, v: str) -> str | None:
    """"transfer-only", with its evidence: on the first ``n_adaptive`` images (the worst case's, the first of the
    adversary set's), the white-box worst case at the set's radius is significantly below the network's own accuracy
    on the adversary set (:func:`robustness_book.evaluate.outcome.removed_by`), naming the member that fooled most of the
    images the set left standing; ``None`` without that evidence, which includes the set's gain over normal
    training not showing on these images."""
    sc, ref = _scores(records, d, "chapter", v), _scores(records, d, "chapter", "normal")
    weak, worst = kit.per_image(sc["set"]), kit.worst_from_record(sc["worst"])
    weak_ref = kit.per_image(ref["set"])
    if weak is None or worst is None or weak_ref is None:
        return None
    n = len(worst["robust_mask"])
    if min(len(weak), len(weak_ref)) < n:
        return None
    ev = removed_by(weak[:n], worst, weak_reference=weak_ref[:n])
    if ev is None:
        return None
    t = ev["test"]
    lo, hi = t["interval"]
    return (f"transfer-only: on the same first {n} images the white-box worst case at ε = {sc['worst']['eps']:.3g} is "
            f"{100 * t['difference']:.1f} points [{100 * lo:.1f}, {100 * hi:.1f}] below its accuracy on the adversary "
            f"set (McNemar p = {t['p']:.2g}); the gain was removed by {ev['member']} ({ev['images']} of the "
            f"{t['a_only']} images)")


def defense_summary(records: Sequence[dict], d: str, health: Sequence[Mapping[str, Any]] = (),
                    adjusted: Mapping[tuple, float] | None = None) -> dict:
    """Claim (iii) on data set ``d``, paired on the same images (:func:`kit.paired_outcome`). ``claims``: per
    comparison ``{"outcome", "reason", "detail", "mechanism", "test"}``: ``set`` (superimposition, ``a`` resampled,
    against normal training on the adversary set: the paper's claim in its threat model) and ``white_box`` (the
    book's check beyond the paper, over the curve of radii, :func:`_white_box`, with its ``radii``), ``fixed_set``
    and ``fixed_white_box`` (the fixed-a variant), with the Holm-adjusted p-values ``adjusted[("set", d, v)]`` and
    ``adjusted[("white_box", d, v, eps)]``; ``comparable`` (against the established defense of highest set accuracy,
    :data:`ESTABLISHED`) and ``versus_pgd_at`` (against PGD adversarial training in the white box at the threat
    radius): :func:`_comparable`. A mechanism ("transfer-only", :func:`_mechanism`) is named only where the set gain
    holds, the white-box gain does not (and holds at no radius), and removed_by found the evidence. Also ``scores``, ``best_established``,
    ``extra_forward`` (forward passes per image over normal training's; the paper: one), ``autoattack_flags``,
    ``failed`` (the failed health checks per checked defense) and ``category``: the set claim's outcome, or
    ``broken`` (:func:`kit.is_broken`)."""
    adjusted = adjusted or {}
    scores = {k: _scores(records, d, "chapter", k) for k, _ in _scored(records, d, "chapter")}
    si, num_classes = scores["superimposition"], dataset_info(d).num_classes
    rows = _gate_rows(health, d, "superimposition")
    established = [k for k in ESTABLISHED if k in scores]
    best = max(established, key=lambda k: scores[k]["set"]["value"]) if established else None
    passes = {k: first(records, dataset=d, group="chapter", defense=_field(k), metric="forward_passes")
              for k in ("normal", "superimposition")}
    claims = {}
    for v in (v for v in VARIANTS if v in scores):
        prefix = "" if v == "superimposition" else "fixed_"
        claims[prefix + "set"] = _claim(*_judge_set(records, health, d, v, adjusted.get(("set", d, v))))
        claims[prefix + "white_box"] = _white_box(
            records, health, d, v, {key[1:]: p for key, p in adjusted.items() if key[0] == "white_box"})
        white = claims[prefix + "white_box"]
        # "transfer-only" needs the white-box gain gone at every radius: a gain that held at one is not transfer-only
        if (claims[prefix + "set"]["outcome"] == "holds" and white["outcome"] == "does not hold"
                and not any(r["outcome"] == "holds" for r in white["radii"])):
            white["mechanism"] = _mechanism(records, d, v)
    if best is not None:
        claims["comparable"] = _comparable(si["set"], scores[best]["set"], health=rows, clean=si["clean"],
                                           num_classes=num_classes)
    if "pgd_at" in scores:
        claims["versus_pgd_at"] = _comparable(si["worst"], scores["pgd_at"]["worst"], health=rows, clean=si["clean"],
                                              num_classes=num_classes)
    aa = select(records, dataset=d, group="chapter", attack="autoattack")
    failed = {}  # per checked defense (rows without the tag: the resampled variant, as older files wrote them)
    for h in (h for h in health if h.get("dataset") == d):
        failed.setdefault(h.get("defense", "superimposition"), [])
        if not h["passed"]:
            failed[h.get("defense", "superimposition")].append(h["id"])
    return {"scores": scores, "claims": claims, "best_established": best,
            "extra_forward": None if None in passes.values()
            else passes["superimposition"]["value"] - passes["normal"]["value"],
            "autoattack": aa, "autoattack_flags": kit.autoattack_flags(aa),
            "failed": failed,
            "category": "broken" if kit.is_broken(si["clean"], num_classes) else claims["set"]["outcome"]}


def verdict_summary(results: Mapping[str, Any]) -> dict:
    """Per data set, from the results (live, read back, or hand-made records of the same shape): ``transfer``
    (:func:`transfer_summary`), ``premise`` (:func:`premise_summary`, where the sweep ran), ``defenses``
    (:func:`defense_summary`, where defenses were trained; claim (iii)'s comparisons Holm-adjusted per kind: on the
    set over variants and data sets, in the white box over variants, data sets and radii), the failed health checks
    (their ids); where defenses were trained, the headline claim (superimposition against normal training on the
    adversary set) as ``outcome``, ``reason``, ``detail``, ``mechanism`` (``None`` elsewhere), and ``category``: the
    set claim's outcome (or ``broken``) where defenses were trained, else claim (i)'s."""
    recs, health, out = results["records"], results.get("health", []), {}
    families = _families(recs)
    adjusted = {("set", *k): p for k, p in
                kit.holm_by({k: _judge_set(recs, health, *k)[1] for k in families["set"]}).items()}
    adjusted.update({("white_box", *k): p for k, p in
                     kit.holm_by({k: _judge_white(recs, health, *k)[1] for k in families["white_box"]}).items()})
    for d in dict.fromkeys(r["dataset"] for r in select(recs, group="transfer")):
        t = transfer_summary(recs, d)
        s = (defense_summary(recs, d, health, adjusted)
             if select(recs, dataset=d, group="chapter", attack="adversary_set") else None)
        head = s["claims"]["set"] if s else {}
        out[d] = {"transfer": t, "defenses": s, "category": (s or t)["category"],
                  "outcome": head.get("outcome"), "reason": head.get("reason"), "detail": head.get("detail"),
                  "mechanism": head.get("mechanism"),
                  "premise": premise_summary(recs, d) if select(recs, dataset=d, group="premise") else None,
                  "failed_checks": kit.failed_checks(health, dataset=d)}
    return out


_TRANSFER_WORDS = {
    "beats_fgsm": "the multi-step generator transfers clearly more often than FGSM on every target: claim (i) holds "
                  "for this stand-in.",
    "matches_fgsm": "the multi-step generator closes the gap to FGSM (never clearly below it) but does not beat it on "
                    "every target: claim (i) holds only in part.",
    "below_fgsm": "even the best multi-step generator transfers clearly less often than FGSM on some target: claim "
                  "(i) does not hold for these stand-ins.",
    "fgsm": "FGSM transferred best, so no multi-step generator made the set: claim (i) does not hold for these "
            "stand-ins.",
}
#: The sentence heads of claim (iii)'s comparisons, in page order.
_CLAIM_WORDS = {
    "set": "Claim (iii) on the adversary set (the paper's threat model, at its radius), superimposition (a "
           "resampled) against normal training",
    "fixed_set": "The fixed-a variant against normal training on the adversary set",
    "white_box": "White box (beyond the paper: the book's worst case at each radius of the curve, judged where normal "
                 "training is off the floor), superimposition against normal training",
    "fixed_white_box": "White box, the fixed-a variant against normal training",
    "comparable": "Comparable to the best established defense on the set",
    "versus_pgd_at": "Comparable to PGD adversarial training in the white box at the threat radius",
}


def _claim_sentence(key: str, c: Mapping[str, Any], extra: str = "") -> str:
    text = Outcome(c["outcome"], c["reason"], c["detail"]).text()
    return f"{_CLAIM_WORDS[key]}{extra}: {text}." + (f" Mechanism: {c['mechanism']}." if c.get("mechanism") else "")


def _radii(values: Sequence[float]) -> str:
    return "ε = " + ", ".join(f"{e:.3g}" for e in values) if values else "no radius"


def _premise_sentence(kind: str, p: Mapping[str, Any]) -> str:
    """One pair of the premise sweep in words (:func:`premise_summary`)."""
    words = (f"Premise sweep, {PAIR_KINDS[kind]} ({p['pair'][0]} → {p['pair'][1]}): PGD transfers clearly worse "
             f"than FGSM at {_radii(p['pgd_worse_at'])}, clearly better at {_radii(p['pgd_better_at'])} and neither "
             f"at {_radii(p['pgd_alike_at'])}.")
    for rule, by_steps in p["steps"].items():
        (n0, a), (n1, b) = next(iter(by_steps.items())), list(by_steps.items())[-1]
        white = "" if a["white"] is None or b["white"] is None else \
            f" (on the source itself: {pct(a['white']['value'])} → {pct(b['white']['value'])})"
        words += (f" With PGD's {STEP_RULES[rule]}, from {n0} to {n1} iterations at the threat radius its transfer "
                  f"rate goes {pct(a['transfer']['value'])} → {pct(b['transfer']['value'])}{white}: more iterations "
                  f"{'clearly lower' if p['more_steps_worse'][rule] else 'do not clearly lower'} transfer.")
    return words


def _failed_words(failed: Mapping[str, Sequence[str]]) -> str:
    return "; ".join(f"{', '.join(ids)} ({LABELS.get(k, k)})" for k, ids in failed.items() if ids)


def verdict(results: Mapping[str, Any]) -> str:
    """The verdict in Markdown, sentence by sentence from :func:`verdict_summary`; where defenses were judged, it
    states :data:`kit.BROKEN_RULE`."""
    lines, summary = [], verdict_summary(results)
    for d, v in summary.items():
        t = v["transfer"]
        lines.append(f"**{d}.** Multi-step PGD transfers clearly worse than FGSM on {t['pgd_worse_pairs']} of "
                     f"{t['pairs']} (source, target) pairs, so the paper's premise (multi-step adversaries usually "
                     f"transfer worse) {'holds' if t['multi_step_worse'] else 'does not hold'} here. The adversary "
                     f"set's generator, {GENERATORS[t['generator']].label} (pooled held-out fooling rate "
                     f"{pct(t['pooled'][t['generator']])} against FGSM's {pct(t['pooled']['fgsm'])}), is clearly "
                     f"above FGSM's best source on {len(t['above'])} and below on {len(t['below'])} of "
                     f"{t['targets']} targets: {_TRANSFER_WORDS[t['category']]}")
        for kind, p in (v["premise"] or {}).items():
            lines.append(_premise_sentence(kind, p))
        s = v["defenses"]
        if s is None:
            lines.append(f"No defenses were trained on {d} in this run (parameter train_defenses): claim (iii) is not "
                         "tested here.")
        else:
            sc = s["scores"]
            si, nm = sc["superimposition"], sc["normal"]
            lines.append(f"Adversary set: superimposition (a resampled) {pct_interval(si['set'])} against normal "
                         f"training {pct_interval(nm['set'])}; white-box worst case {pct_interval(si['worst'])} "
                         f"against {pct_interval(nm['worst'])} (the first {si['worst']['n']} of the same images, at "
                         f"the threat radius ε = {si['worst']['eps']:.4g}; the curve over "
                         f"{_radii([r['eps'] for r in si['curve']])} is in the white-box table); clean "
                         f"{pct_interval(si['clean'])} against {pct_interval(nm['clean'])}. Each comparison is paired "
                         "on the same images (exact McNemar, Newcombe interval; Holm-adjusted over the "
                         "superimposition variants and data sets, and in the white box over the radii too); the "
                         "smallest gain that would matter is "
                         f"{100 * MIN_EFFECT_SET:.0f} points on the set and {100 * MIN_EFFECT_WHITE:.0f} in the white "
                         f"box. A radius where normal training is at the floor is reported, not judged.")
            for key in _CLAIM_WORDS:
                if key in s["claims"]:
                    extra = f" ({LABELS[s['best_established']]})" if key == "comparable" else ""
                    lines.append(_claim_sentence(key, s["claims"][key], extra))
            if s["autoattack"]:
                ran = ", ".join(f"{SHORT[r['defense']].split(chr(10))[0]}"
                                f"{' (fixed a)' if r['defense'] == 'superimposition_fixed' else ''} at "
                                f"ε = {r['eps']:.3g}" for r in s["autoattack"])
                lines.append(f"AutoAttack (standard) ran on the worst case's survivors where a white-box gain was "
                             f"significant before correction ({ran}): " + ("; ".join(s["autoattack_flags"])
                                                                           if s["autoattack_flags"] else
                                                                           "no AutoAttack flag fired") + ".")
            else:
                lines.append("AutoAttack did not run: no white-box gain over normal training was significant at any "
                             "radius, so there was no positive to confirm.")
            if s["extra_forward"] is not None:
                lines.append(f"Cost: {s['extra_forward']:g} extra forward pass per training image (the paper: one), "
                             "and as many extra backward passes, since no branch is detached.")
            if s["failed"]:
                words = _failed_words(s["failed"])
                lines.append(f"Health checks failed: {words}." if words else
                             f"Every health check passed ({', '.join(LABELS.get(k, k) for k in s['failed'])}).")
        if v["failed_checks"] and (s is None or not s["failed"]):
            lines.append(f"Health checks failed: {', '.join(v['failed_checks'])}.")
        lines.append("")
    if any(v["defenses"] is not None for v in summary.values()):
        if any(c["detail"] == kit.NO_PER_IMAGE_NOTE for v in summary.values() if v["defenses"]
               for c in v["defenses"]["claims"].values()):
            lines.append(kit.NO_PER_IMAGE_NOTE[0].upper() + kit.NO_PER_IMAGE_NOTE[1:] + ".")
        lines.append(kit.BROKEN_RULE)
    lines.append(kit.smoke_note(results.get("profile", "")))
    return "\n".join(lines).strip()


def glance_rows(results: Mapping[str, Any]) -> list[dict]:
    """The "Results at a glance" rows (:data:`kit.GLANCE_KEYS`), one per data set where defenses were trained,
    from :func:`verdict_summary`: superimposition training on the adversary set (the paper's threat model), and
    the book's white-box worst case at the set's radius (AutoAttack on its survivors where it ran)."""
    rows = []
    for d, v in verdict_summary(results).items():
        s = v["defenses"]
        if s is None:
            continue
        scores = s["scores"]["superimposition"]
        on_set, worst = scores["set"], scores["worst"]
        aa = first(s["autoattack"], defense=_field("superimposition"), eps=worst["eps"]) if worst else None
        rows.append(kit.glance_row(
            results, CHAPTER, dataset=d, threat_model=(on_set or worst or {}).get("threat_model", "linf"),
            eps=(on_set or worst or {}).get("eps"), defense="superimposition",
            network=(scores["clean"] or {}).get("model", "?"),
            claim_name="superimposition is more robust than normal training on the adversary set",
            claim=s["claims"]["set"], clean=scores["clean"], paper_attack="adversary set (transfer)",
            paper_attack_acc=on_set, worst_case=aa or worst))
    return rows
