"""Chapter — the five defenses side by side: one network, one threat model, one evaluation, their cost
(id ``defenses_compared``).

Each other chapter tests one paper on the networks that paper used. This one applies every defense of the book to
one network per data set — the model zoo's LeNetLike on MNIST and AlexLike on CIFAR-10 (:data:`robustness_book.zoo.ARCH`),
its undefended copy the baseline — and evaluates them all the same way, on the same test images. Everything the
page calls, in page order; every step is ``step(run)`` on a :class:`Run`, every table and figure a function of
``run.results()`` (or of the saved file):

* :data:`SPEC` (parameters, profiles ``smoke``/``laptop``/``paper``);
* the hyperparameters (:func:`settings`): each defense's, read from its own chapter's results file of this
  profile (:func:`kit.borrowed`: κ and strength chosen on held-out data, Deep Defense's λ, entropic retraining's
  tested λ of each reading with its direction, superimposition's λ), a labelled default and the command that makes
  the missing file otherwise; :func:`settings_table`;
* the networks (:func:`build_defenses`): :data:`DEFENSES` — two retrofits (JumpReLU, compress/amplify), three
  fine-tunings of the baseline (Deep Defense, entropic retraining reading A and B), three trainings from scratch
  with the zoo's recipe (superimposition, and the two references from outside the papers: PGD adversarial training,
  Madry et al., and FGSM with a random start, Wong et al. 2020); :func:`training_table`;
* the cost (:func:`cost_all`): forward and backward passes per training image of one step of each recipe, counted
  (:func:`kit.passes_per_image`), the whole recipe's passes relative to normal training of the baseline, and
  measured seconds per step beside it; :func:`cost_table`;
* one evaluation (:func:`evaluate_all`): clean accuracy; the toolkit's worst case (APGD-CE, APGD-T, Square; BPDA
  members for the JumpReLU retrofit) as a nested curve over L∞ radii and at the L2 radius; the first member alone
  (what a single-attack evaluation reports); DDN's minimum-norm ρ; the transferable-adversaries chapter's adversary
  set; every health row; AutoAttack (standard) on the worst case's survivors (:func:`confirm_all`);
* the page: :func:`robustbench_table`, :func:`curve_figure`, :func:`cost_figure` (each defense a point, the Pareto
  front drawn), :func:`health_tables`; the verdict (:func:`verdict_summary`, :func:`verdict`, :func:`glance_rows`).

The verdict: per data set and defense, "more robust than the baseline" on the same images (exact McNemar, Holm over
the defenses and data sets), judged at the *judged radius*: the largest radius of the curve where the baseline's
worst case is off the floor (its 95% interval excludes 0% and 100%; chosen from the baseline alone), a positive
gated by the defense's health rows and confirmed by AutoAttack on the survivors; and "more robust than PGD
adversarial training" the same way, at the largest radius where adversarial training is off the floor. On the smoke
profile every outcome is inconclusive (reduced scale).

Records: ``defense`` is one of :data:`DEFENSES` or ``"none"`` (the baseline), ``model`` the zoo architecture.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from . import kit
from .. import evaluate, zoo
from ..config import ChapterSpec, Param, RunConfig, check_counts
from ..data import DatasetNotFoundError, CorruptDataError, dataset_info, load_dataset, threat_eps
from ..defenses import fragile_neurons as fn
from ..defenses.adversarial_training import AdversarialLoss
from ..defenses.deep_defense import DeepDefenseLoss
from ..defenses.entropic import EntropicLoss, layer_entropies
from ..defenses.jumprelu import bpda_relu, retrofit
from ..defenses.superimposition import SuperimpositionLoss
from ..evaluate import members as M
from ..evaluate.outcome import Outcome, off_floor
from ..report import health_tables as _health_tables, markdown_table, pct, pct_interval
from ..results import first, record, select
from ..train import TrainConfig, cross_entropy, seconds_per_step, state_hash, trained_model

CHAPTER = "defenses_compared"

#: The defenses, in page order: retrofits, fine-tunings of the baseline, trainings from scratch.
DEFENSES = ("jumprelu", "compress_amplify", "deep_defense", "entropic", "entropic_free", "superimposition",
            "pgd_at", "fgsm_rs")
LABELS = {"none": "baseline (undefended)", "jumprelu": "JumpReLU retrofit", "compress_amplify": "compress/amplify",
          "deep_defense": "Deep Defense fine-tuning", "entropic": "entropic retraining, reading A (AT targets)",
          "entropic_free": "entropic retraining, reading B (AT-free)", "superimposition": "superimposition training",
          "pgd_at": "PGD adversarial training (Madry et al.)", "fgsm_rs": "FGSM with random start (Wong et al.)"}
SHORT = {"none": "baseline", "jumprelu": "JumpReLU", "compress_amplify": "compress/amplify",
         "deep_defense": "Deep Defense", "entropic": "entropic A", "entropic_free": "entropic B",
         "superimposition": "superimposition", "pgd_at": "PGD AT", "fgsm_rs": "FGSM-RS"}
#: How each defense is applied to the baseline network.
KIND = {"jumprelu": "retrofit", "compress_amplify": "retrofit", "deep_defense": "fine-tune", "entropic": "fine-tune",
        "entropic_free": "fine-tune", "superimposition": "scratch", "pgd_at": "scratch", "fgsm_rs": "scratch"}
#: The chapter each defense comes from, and the network that chapter applies it to when it is not this one.
SOURCE = {"jumprelu": ("jumprelu", None), "compress_amplify": ("fragile_neurons", None),
          "deep_defense": ("deep_defense", "the paper's MLP, LeNet and ConvNet"),
          "entropic": ("entropic_retraining", "the authors' ten-layer CNN (entropic_cnn)"),
          "entropic_free": ("entropic_retraining", "the authors' ten-layer CNN (entropic_cnn)"),
          "superimposition": ("transferable_adversaries", None), "pgd_at": (None, None), "fgsm_rs": (None, None)}
#: The reference every defense is compared with beside the baseline.
REFERENCE = "pgd_at"
#: The smallest gain in robust accuracy (a fraction of the images) that would matter.
MIN_EFFECT = 0.05
ALPHA = 0.05  # the level of every paired test


def _check(cfg: RunConfig) -> None:
    for d in cfg.datasets:
        if d not in zoo.ARCH:
            raise ValueError(f"parameter datasets={cfg.datasets}: {d!r} has no zoo network")
        check_counts(cfg, {"n_test": "test"}, [d])
        if cfg.n_adaptive[d] > cfg.n_test[d]:
            raise ValueError(f"parameter n_adaptive['{d}']={cfg.n_adaptive[d]} must not exceed n_test['{d}']="
                             f"{cfg.n_test[d]}")
        check_counts(cfg, {"defense_train_size": "train"}, [d])
    if 1.0 not in cfg.linf_radii or max(cfg.linf_radii) > 1:
        raise ValueError(f"parameter linf_radii={cfg.linf_radii} must contain 1 (the threat radius) and no fraction "
                         "above 1")
    if REFERENCE not in cfg.defenses:
        raise ValueError(f"parameter defenses={cfg.defenses} must contain {REFERENCE!r} (every defense is compared "
                         "with it)")


PARAMS = {
    "datasets": Param("subset", "data sets the chapter runs on (each with its zoo network)", tuple(zoo.ARCH)),
    "defenses": Param("subset", "defenses applied to the zoo network (pgd_at is required)", DEFENSES),
    "eps": Param("eps_linf", "L∞ threat radius on [0, 1] pixels", per_dataset=True),
    "linf_radii": Param("pos_float_list", "fractions of the threat radius of the L∞ worst-case curve (must contain "
                        "1)"),
    "l2_eps": Param("pos_float", "L2 radius of the L2 worst case, on [0, 1] pixels", per_dataset=True),
    "defense_train_size": Param("pos_int", "training images of the defenses trained from scratch (the first N)",
                                per_dataset=True),
    "defense_epochs": Param("pos_int", "epochs of the defenses trained from scratch", per_dataset=True),
    "at_steps": Param("pos_int", "PGD steps of PGD adversarial training", per_dataset=True),
    "at_mix": Param("pos_fraction", "share of PGD examples in adversarial training's loss (1 is Madry et al.)"),
    "ft_size": Param("pos_int", "training images of the fine-tunings (the first N)", per_dataset=True),
    "ft_epochs": Param("pos_int", "epochs of the fine-tunings", per_dataset=True),
    "ft_lr": Param("pos_float", "learning rate of the fine-tunings"),
    "n_val": Param("pos_int", "held-out training images (after the baseline's) for compress/amplify's fragility "
                   "scores and entropic reading A's targets", per_dataset=True),
    "jumprelu_kappa": Param("nonneg_float", "JumpReLU κ when the JumpReLU chapter's results hold no choice (a "
                            "labelled default; set by hand, it replaces that choice)", per_dataset=True),
    "rescale_strength": Param("nonneg_float", "compress/amplify strength when the fragile-neurons chapter's results "
                              "hold no choice (labelled default; set by hand, it replaces it)", per_dataset=True),
    "dd_lam": Param("nonneg_float", "Deep Defense λ when the deep_defense chapter's results hold none (labelled "
                    "default; set by hand, it replaces it)", per_dataset=True),
    "entropic_lam": Param("nonneg_float", "entropic λ (both readings) when the entropic chapter's results hold none "
                          "(labelled default; set by hand, it replaces it)", per_dataset=True),
    "superimposition_lam": Param("nonneg_float", "superimposition λ when the transferable-adversaries chapter's "
                                 "results hold none (labelled default; set by hand, it replaces it)",
                                 per_dataset=True),
    "n_test": Param("pos_int", "test images for clean accuracy and the adversary set (the first N)",
                    per_dataset=True),
    "n_adaptive": Param("pos_int", "test images of the worst cases, DDN and the health checks (the first N)",
                        per_dataset=True),
    "pgd_steps": Param("pos_int", "steps of the worst case's gradient members"),
    "restarts": Param("pos_int", "restarts of the worst case's gradient members"),
    "square_queries": Param("pos_int", "queries per image of the Square member"),
    "ddn_steps": Param("pos_int", "DDN steps of the minimum-norm attack"),
    "health_steps": Param("pos_int", "PGD steps of the health checks"),
    "autoattack": Param("bool", "run AutoAttack (standard) on the worst case's survivors"),
    "cost_batches": Param("pos_int", "training steps timed per recipe for the seconds column"),
    "cost_batch_size": Param("pos_int", "batch size of the counted and timed training steps"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed of the attacks and of the adversarial training"),
}


_per = kit.per_dataset


_COMMON = {
    "datasets": ["mnist", "cifar10"], "defenses": list(DEFENSES), "eps": {d: threat_eps(d) for d in zoo.ARCH},
    # L2: RobustBench's CIFAR-10 radius, and the radius MNIST L2 evaluations commonly use (Fashion-MNIST: MNIST's)
    "l2_eps": _per(2.0, 0.5), "at_mix": 1.0, "ft_lr": 0.005,
    # labelled defaults, used only when the defense's chapter has no results of this profile: the transferable
    # chapter's own defaults for κ and strength, the papers' λ (Deep Defense 15, superimposition 10), entropic 1
    "jumprelu_kappa": _per(1.0, 0.2), "rescale_strength": 1.0, "dd_lam": 15.0, "entropic_lam": 1.0,
    "superimposition_lam": 10.0, "batch_size": 250, "seed": 0,
}

PROFILES = {
    # CI: every cell runs on a few dozen images; on MNIST the from-scratch defenses are the transferable chapter's
    # smoke recipe (5,000 images, one epoch), so its cached superimposition network is reused. Measured with an
    # empty checkpoint cache: 22 s on MNIST alone (one thread of the 2-core machine, another job beside it).
    "smoke": {**_COMMON, "linf_radii": [0.5, 1.0], "defense_train_size": _per(5000, 1000),
              "defense_epochs": 1, "at_steps": 2, "ft_size": _per(500, 50), "ft_epochs": 1, "n_val": _per(200, 100),
              "n_test": _per(100, 50), "n_adaptive": _per(20, 10), "pgd_steps": 5, "restarts": 1,
              "square_queries": 20, "ddn_steps": 10, "health_steps": 3, "autoattack": True, "cost_batches": 1,
              "cost_batch_size": 16},
    # 2 CPU cores (not yet timed end to end). From-scratch defenses: the transferable chapter's laptop recipe on
    # MNIST (55,000 images, 3 epochs), a 10,000-image subset on CIFAR-10 (an AlexLike PGD-5 epoch costs six plain
    # ones); fine-tunings on 5,000 / 2,000 images.
    "laptop": {**_COMMON, "linf_radii": [0.25, 0.5, 0.75, 1.0], "defense_train_size": _per(55000, 10000),
               "defense_epochs": _per(3, 4), "at_steps": _per(5, 3), "ft_size": _per(5000, 2000), "ft_epochs": 1,
               "n_val": _per(2000, 1000), "n_test": _per(2000, 1000), "n_adaptive": _per(200, 100), "pgd_steps": 50,
               "restarts": 1, "square_queries": 500, "ddn_steps": 50, "health_steps": 20, "autoattack": True,
               "cost_batches": 3, "cost_batch_size": 64},
    # For a GPU: Madry et al.'s 40 (MNIST) and 7 (CIFAR-10) PGD training steps, the full training sets.
    "paper": {**_COMMON, "linf_radii": [0.1, 0.25, 0.5, 0.75, 1.0], "defense_train_size": _per(55000, 49000),
              "defense_epochs": _per(30, 60), "at_steps": _per(40, 7), "ft_size": _per(55000, 49000),
              "ft_epochs": _per(2, 6), "n_val": _per(5000, 1000), "n_test": _per(10000, 1000), "n_adaptive": 1000,
              "pgd_steps": 100, "restarts": 3, "square_queries": 5000, "ddn_steps": 1000, "health_steps": 100,
              "autoattack": True, "cost_batches": 20, "cost_batch_size": 128},
}

SPEC = ChapterSpec(
    name=CHAPTER,
    title="The defenses side by side: one network, one evaluation, their cost",
    notebook="notebooks/defenses_compared.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


@dataclass
class Run(kit.Run):
    """The kit's run plus the hyperparameters read from the other chapters (``chosen[d][defense]``) and the
    recipes (``recipes[d][defense]``: how each network was made, for the cost step)."""

    chosen: dict = field(default_factory=dict)
    recipes: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- the hyperparameters


def settings(cfg: Mapping[str, Any], d: str) -> dict[str, dict]:
    """Per defense with a hyperparameter, :func:`kit.borrowed` from its chapter's results file of this profile:
    JumpReLU's κ chosen for the zoo network (``<arch>-baseline``), compress/amplify's strength, Deep Defense's λ
    (its parameter: that chapter sweeps λ but chooses none), entropic retraining's tested λ of each reading (the λ
    its validation rule sends to the test images; reading B with its direction), superimposition's λ."""
    arch = zoo.ARCH[d]
    return {
        "jumprelu": kit.borrowed(cfg, "jumprelu", param="jumprelu_kappa", what="the JumpReLU retrofit", dataset=d,
                                 metric="chosen_kappa", model=f"{arch}-baseline"),
        "compress_amplify": kit.borrowed(cfg, "fragile_neurons", param="rescale_strength", what="compress/amplify",
                                         dataset=d, metric="chosen_strength", model=arch),
        "deep_defense": kit.borrowed(cfg, "deep_defense", param="dd_lam", what="Deep Defense", dataset=d,
                                     parameter="lam"),
        "entropic": kit.borrowed(cfg, "entropic_retraining", param="entropic_lam", what="entropic reading A",
                                 dataset=d, metric="tested_lambda", defense="entropic"),
        "entropic_free": kit.borrowed(cfg, "entropic_retraining", param="entropic_lam", what="entropic reading B",
                                      dataset=d, metric="tested_lambda", defense="entropic_at_free"),
        "superimposition": kit.borrowed(cfg, "transferable_adversaries", param="superimposition_lam",
                                        what="superimposition training", dataset=d, parameter="lam"),
    }


def _knobs(cfg: Mapping[str, Any], chapter: str, d: str, defaults: Mapping[str, Any]) -> dict:
    """The other knobs of a chapter's loss, read from its results' parameters (:func:`kit.borrowed`), else the
    defaults given here (that chapter's own profile values)."""
    return {key: kit.borrowed(cfg, chapter, what=key, default=value, dataset=d, parameter=key)["value"]
            for key, value in defaults.items()}


#: The entropic chapter's estimator, bins, layer kind and layer count, and Deep Defense's c, d, DeepFool iterations
#: and ρ reference, where their results files hold none: those chapters' own profile values.
ENTROPIC_KNOBS = {"estimator": "histogram", "bins": 16, "layer_candidates": "dense", "n_layers": 3}
DEEP_DEFENSE_KNOBS = {"c": 25.0, "d": 5.0, "df_iter": 5, "rho_reference": "mean_image"}


def setting_records(run: Run) -> None:
    """Per data set, the hyperparameters of :func:`settings` (``run.chosen[d]``) as records (``metric="setting"``,
    ``name``, ``source``), and their notes in ``run.timings["notes"]``."""
    cfg = run.cfg
    for d in cfg.datasets:
        run.chosen[d] = settings(cfg, d)
        for k, c in run.chosen[d].items():
            if k not in cfg.defenses:
                continue
            extra = {"direction": c["setting"]["direction"]} if c["setting"].get("direction") else {}
            run.records.append(record(cfg, dataset=d, model=zoo.ARCH[d], defense=k, metric="setting",
                                      value=float(c["value"]), source=c["source"], **extra))
            if c["note"]:
                run.timings.setdefault("notes", []).append(c["note"])


def settings_table(results: Mapping[str, Any]) -> str:
    """Per data set and defense: the hyperparameter, its value and where it was read."""
    rows = [{"data": r["dataset"], "defense": LABELS[r["defense"]], "value": f"{r['value']:g}"
             + (f" ({r['setting']['direction']})" if r["setting"].get("direction") else ""),
             "source": r["setting"]["source"],
             "network": SOURCE[r["defense"]][1] or "the same zoo network"}
            for r in select(results["records"], metric="setting")]
    return markdown_table(rows, {"data": "data set", "defense": "defense", "value": "κ / strength / λ",
                                 "source": "read from", "network": "its own chapter applies it to"})


# --------------------------------------------------------------------------- the networks


def base_recipe(cfg: Mapping[str, Any], d: str) -> dict:
    """The baseline: the zoo network of ``d`` at this profile (shared with the other chapters)."""
    return zoo.variant(zoo.for_dataset(d, cfg["profile"]))


def scratch_recipe(cfg: Mapping[str, Any], d: str) -> dict:
    """The from-scratch defenses' recipe: the zoo's, with ``defense_train_size`` images and ``defense_epochs``
    (the transferable chapter's ``defense_recipe`` with the same values: its networks are reused from the cache)."""
    return zoo.variant(zoo.for_dataset(d, cfg["profile"]), train_size=cfg["defense_train_size"][d],
                       epochs=cfg["defense_epochs"][d], seed=0)


def finetune_config(cfg: Mapping[str, Any], d: str) -> TrainConfig:
    """Every fine-tuning of the baseline: SGD with momentum at ``ft_lr``, ``ft_epochs``, no augmentation, frozen
    batch-norm statistics (Deep Defense's official recipe keeps them fixed)."""
    return TrainConfig(epochs=cfg["ft_epochs"][d], batch_size=128, lr=cfg["ft_lr"], freeze_bn=True, seed=0)


def scratch_loss(cfg: Mapping[str, Any], d: str, defense: str, lam: float | None = None):
    """The objective of a from-scratch defense (``lam``: superimposition's)."""
    eps = cfg["eps"][d]
    if defense == "pgd_at":
        return AdversarialLoss("pgd_linf", eps=eps, steps=cfg["at_steps"][d], mix=cfg["at_mix"], seed=cfg["seed"])
    if defense == "fgsm_rs":
        return AdversarialLoss("fgsm_rs", eps=eps, mix=1.0, seed=cfg["seed"])
    if defense == "superimposition":
        return SuperimpositionLoss(lam=lam, seed=cfg["seed"])
    raise ValueError(f"{defense!r} is not trained from scratch")


def entropic_layers(cfg: Mapping[str, Any], d: str, base: nn.Module, at_net: nn.Module | None, val,
                    batch_size: int) -> dict:
    """The entropic loss's layers on this network (the entropic chapter's layer kind, :func:`kit.candidate_layers`)
    and, for reading A, the targets: the ``n_layers`` candidates whose mean unit entropy on the held-out images
    adversarial training changed most, with the adversarially trained network's entropy as target."""
    knobs = _knobs(cfg, "entropic_retraining", d, ENTROPIC_KNOBS)
    layers = kit.candidate_layers(base, knobs["layer_candidates"]) or kit.candidate_layers(base, "all")
    out = {"layers": layers, "targets": None, **knobs}
    if at_net is not None:
        x = val.x[:batch_size]
        h_base = layer_entropies(base, x, layers, estimator=knobs["estimator"], bins=knobs["bins"])
        h_at = layer_entropies(at_net, x, layers, estimator=knobs["estimator"], bins=knobs["bins"])
        order = sorted(layers, key=lambda name: -abs(float(h_at[name]) - float(h_base[name])))
        keep = [name for name in layers if name in order[:knobs["n_layers"]]]
        out["targets"] = {name: round(float(h_at[name]), 4) for name in keep}
    return out


def _apply(run: Run, d: str, k: str, base: nn.Module, val) -> tuple[nn.Module, dict]:
    """One defense applied to the baseline: ``(network, recipe)`` (recipe: kind, loss, images, epochs, timing)."""
    cfg, value = run.cfg, run.chosen[d].get(k, {}).get("value")
    if k == "jumprelu":
        return retrofit(base, value), {"kind": "retrofit", "kappa": value}
    if k == "compress_amplify":
        scores = fn.fragility(base, val.x, val.y, eps=0.0, batch_size=cfg.batch_size, fgsm_too=False)["clean_drop"]
        return fn.compress_amplify(base, scores, value), {"kind": "retrofit", "strength": value,
                                                          "score_images": len(val)}
    if KIND[k] == "scratch":
        kw = scratch_recipe(cfg, d)
        loss = scratch_loss(cfg, d, k, value)
        net, meta = zoo.model_for(**{**kw, "loss": loss})
        return net, {"kind": "scratch", "loss": loss, "images": kw["train_size"], "epochs": kw["config"].epochs,
                     "meta": meta}
    if k == "deep_defense":
        dd = _knobs(cfg, "deep_defense", d, DEEP_DEFENSE_KNOBS)
        loss = DeepDefenseLoss(lam=value, c=dd["c"], d=dd["d"], max_iter=dd["df_iter"],
                               rho_reference=dd["rho_reference"], dataset=d)
    else:
        ent = entropic_layers(cfg, d, base, run.nets[d].get(REFERENCE), val, cfg.batch_size)
        if k == "entropic" and ent["targets"] is None:
            raise ValueError("entropic reading A needs PGD adversarial training among the defenses")
        if k == "entropic":
            loss = EntropicLoss(lam=value, targets=ent["targets"], estimator=ent["estimator"], bins=ent["bins"])
        else:
            sign = -1 if run.chosen[d][k]["setting"].get("direction", "lower") == "lower" else 1
            loss = EntropicLoss(lam=value, direction=dict.fromkeys(ent["layers"], sign), estimator=ent["estimator"],
                                bins=ent["bins"])
    config = finetune_config(cfg, d)
    net, meta = trained_model(zoo.ARCH[d], d, config, train_size=cfg.ft_size[d], loss=loss, init=base)
    return net, {"kind": "fine-tune", "loss": loss, "images": cfg.ft_size[d], "epochs": config.epochs, "meta": meta}


def build_defenses(run: Run) -> None:
    """Per data set: the baseline (the zoo network, ``run.nets[d]["none"]``) and each of ``defenses`` applied to it
    (:func:`_apply`; PGD adversarial training first, since entropic reading A takes its targets from it), trained or
    loaded from the checkpoint cache. The held-out images (``run.data[d]["val"]``: ``n_val`` training images after
    the baseline's) serve compress/amplify's fragility scores and reading A's targets; ``run.data[d]["test"]`` is
    the first ``n_test`` test images. Records: each network's clean accuracy on them, with its weights' hash."""
    cfg = run.cfg
    setting_records(run)
    with run.timer("networks"):
        for d in cfg.datasets:
            kw = base_recipe(cfg, d)
            start = kw["train_size"] or dataset_info(d).n_train
            if start + cfg.n_val[d] > dataset_info(d).n_train:
                raise ValueError(f"the zoo network of {d} trains on {start:,} images: no {cfg.n_val[d]:,} held out")
            run.data[d] = {"val": kit.holdout_split(d, start, start + cfg.n_val[d]),
                           "test": load_dataset(d, "test").first(cfg.n_test[d])}
            base, meta = zoo.model_for(**kw)
            run.nets[d] = {"none": base}
            run.recipes[d] = {"none": {"kind": "normal", "loss": cross_entropy, "images": start,
                                       "epochs": kw["config"].epochs, "meta": meta}}
            order = sorted(cfg.defenses, key=lambda k: k != REFERENCE)
            for k in order:
                t0 = time.perf_counter()
                run.nets[d][k], run.recipes[d][k] = _apply(run, d, k, base, run.data[d]["val"])
                m = run.recipes[d][k].get("meta") or {}
                run.timings[f"{d}/{k}"] = {"seconds": m.get("train_seconds", time.perf_counter() - t0),
                                           "cached": m.get("cached", False)}
            for k in ["none", *cfg.defenses]:
                r = run.recipes[d][k]
                run.records.append(kit.accuracy_record(
                    cfg, run.nets[d][k], run.data[d]["test"], dataset=d, model=zoo.ARCH[d], batch_size=cfg.batch_size,
                    split="test", defense=k, kind=r["kind"], weights=state_hash(run.nets[d][k])))


def training_table(results: Mapping[str, Any]) -> str:
    """Per data set and network: how it was made, its clean accuracy and its training time."""
    rows = []
    for r in select(results["records"], metric="accuracy", attack="none", split="test"):
        t = results["timings"].get(f"{r['dataset']}/{r['defense']}", {})
        secs = t.get("seconds")
        rows.append({"data": r["dataset"], "defense": LABELS[r["defense"]], "kind": r["setting"]["kind"],
                     "clean": pct_interval(r),
                     "time": "zoo" if r["defense"] == "none" else
                     ("cached" if t.get("cached") else "–" if secs is None else f"{secs:.0f} s")})
    return markdown_table(rows, {"data": "data set", "defense": "network", "kind": "made by",
                                 "clean": "clean accuracy [95% CI]", "time": "training time"})


# --------------------------------------------------------------------------- cost


def recipe_cost(passes: Mapping[str, float], recipe: Mapping[str, Any], base: Mapping[str, Any]) -> float:
    """The whole recipe's forward and backward passes relative to normal training of the baseline (1): a retrofit
    adds nothing to the baseline's training (1); a fine-tuning adds its passes over its images and epochs; a
    from-scratch recipe counts its own. ``passes``: per training image of one step (:func:`kit.passes_per_image`)."""
    normal = 2.0 * base["images"] * base["epochs"]
    own = (passes["forward"] + passes["backward"]) * recipe.get("images", 0) * recipe.get("epochs", 0)
    if recipe["kind"] in ("normal", "scratch"):
        return own / normal
    return 1.0 + own / normal


def cost_all(run: Run) -> None:
    """Per data set and recipe: the passes per training image of one step (:func:`kit.passes_per_image` on a
    batch of the training images; a retrofit: 0 and 0), the recipe's passes relative to normal training of the
    baseline (:func:`recipe_cost`) as records (``metric`` ``forward_passes``, ``backward_passes``,
    ``relative_cost``), and the measured seconds per step (:func:`robustness_book.train.seconds_per_step` over
    ``cost_batches`` steps) in ``run.timings["cost"]``."""
    cfg, seconds = run.cfg, run.timings.setdefault("cost", {})
    with run.timer("cost"):
        for d in cfg.datasets:
            size = cfg.cost_batch_size
            data = load_dataset(d, "train").first(size * cfg.cost_batches)
            x, y = data.x[:size], data.y[:size]
            base = run.recipes[d]["none"]
            for k in ["none", *cfg.defenses]:
                r = run.recipes[d][k]
                if r["kind"] == "retrofit":
                    passes, sec = {"forward": 0.0, "backward": 0.0}, 0.0
                else:
                    start = run.nets[d]["none"] if r["kind"] == "fine-tune" else run.nets[d][k]
                    passes = kit.passes_per_image(start, r["loss"], x, y)
                    config = replace(finetune_config(cfg, d) if r["kind"] == "fine-tune" else
                                     scratch_recipe(cfg, d)["config"], batch_size=size)
                    sec = seconds_per_step(start, data, config, r["loss"], cfg.cost_batches)
                at = dict(dataset=d, model=zoo.ARCH[d], defense=k, kind=r["kind"], n=len(x))
                run.records += [record(cfg, metric="forward_passes", value=passes["forward"], **at),
                                record(cfg, metric="backward_passes", value=passes["backward"], **at),
                                record(cfg, metric="relative_cost", value=recipe_cost(passes, r, base),
                                       images=r.get("images", 0), epochs=r.get("epochs", 0), **at)]
                seconds[f"{d}/{k}"] = sec


def cost_table(results: Mapping[str, Any]) -> str:
    """Per data set and recipe: passes per training image per step, the whole recipe's passes relative to normal
    training (machine-independent), and measured seconds per step beside them."""
    rows, recs = [], results["records"]
    for r in select(recs, metric="relative_cost"):
        d, k = r["dataset"], r["defense"]
        f = first(recs, dataset=d, defense=k, metric="forward_passes")
        b = first(recs, dataset=d, defense=k, metric="backward_passes")
        sec = results["timings"].get("cost", {}).get(f"{d}/{k}")
        rows.append({"data": d, "defense": LABELS[k], "passes": f"{f['value']:g} + {b['value']:g}",
                     "run": "–" if r["setting"]["kind"] == "retrofit"
                     else f"{r['setting']['images']:,} × {r['setting']['epochs']}",
                     "relative": f"{r['value']:.2f}×", "seconds": "–" if not sec else f"{sec:.3f}"})
    return markdown_table(rows, {"data": "data set", "defense": "recipe",
                                 "passes": "forward + backward per image per step", "run": "images × epochs",
                                 "relative": "passes vs normal training", "seconds": "seconds per step (measured)"})


# --------------------------------------------------------------------------- one evaluation


def members_for(cfg: Mapping[str, Any], defense: str, net: nn.Module) -> list:
    """The worst case's members: the book's ensemble; for the JumpReLU retrofit also PGD through its BPDA copy."""
    out = M.default_members(cfg["pgd_steps"], cfg["restarts"], cfg["square_queries"])
    if defense == "jumprelu":
        out += [M.bpda(bpda_relu(net), "ce", cfg["pgd_steps"], cfg["restarts"])]
    return out


def radii(cfg: Mapping[str, Any], d: str) -> list[float]:
    """The L∞ curve's radii: ``linf_radii`` × the threat radius, ascending (the threat radius last)."""
    return sorted(f * cfg["eps"][d] for f in cfg["linf_radii"])


def adversary_set(cfg: Mapping[str, Any], d: str):
    """The transferable-adversaries chapter's adversary set of this profile (``transferable-<d>-<profile>``), or
    ``(None, note)`` when it is missing."""
    name = f"transferable-{d}-{cfg['profile']}"
    try:
        return load_dataset(f"adversary:{name}", "test"), None
    except (DatasetNotFoundError, CorruptDataError, ValueError) as err:
        return None, (f"adversary set `{name}`: {type(err).__name__}; run `python -m robustness_book run "
                      f"transferable_adversaries --profile {cfg['profile']}`, then this chapter again.")


def evaluate_all(run: Run) -> None:
    """Every network of every data set, on the same images: clean accuracy (in :func:`build_defenses`); the worst
    case over the L∞ radii (:func:`radii`, nested) with the first member alone, and at the L2 radius; DDN's
    minimum-norm ρ (median over the correctly classified images, a failure counted as ∞; through the BPDA copy for
    JumpReLU); accuracy on the adversary set (its first ``n_test`` images are the same test images); the health
    rows at the threat radius (tagged ``defense``). Worst cases go to ``run.raw[d, defense, norm]``."""
    cfg = run.cfg
    with run.timer("evaluation"):
        for d in cfg.datasets:
            test, model = run.data[d]["test"], zoo.ARCH[d]
            sub = test.first(cfg.n_adaptive[d])
            adv, note = adversary_set(cfg, d)
            if note:
                run.timings.setdefault("notes", []).append(note)
            for k, net in run.nets[d].items():
                mem = members_for(cfg, k, net)
                curve = evaluate.worst_case_curve(net, sub.x, sub.y, radii(cfg, d), members=mem,
                                                  batch_size=cfg.batch_size, seed=cfg.seed)
                run.records += kit.worst_case_records(cfg, curve, dataset=d, model=model, run=run, key=(d, k, "linf"),
                                                      first_alone=True, defense=k)
                l2 = evaluate.worst_case(net, sub.x, sub.y, cfg.l2_eps[d], members=M.default_members(
                    cfg.pgd_steps, cfg.restarts, cfg.square_queries), norm="l2", batch_size=cfg.batch_size,
                    seed=cfg.seed)
                run.records += kit.worst_case_records(cfg, l2, dataset=d, model=model, run=run, key=(d, k, "l2"),
                                                      defense=k)
                ddn = evaluate.min_norm(net, sub.x, sub.y, attack_model=bpda_relu(net) if k == "jumprelu" else None,
                                        steps=cfg.ddn_steps, batch_size=cfg.batch_size, seed=cfg.seed)
                run.records += kit.min_norm_records(cfg, ddn, dataset=d, model=model, attack="ddn",
                                                    threat_model="l2", defense=k)
                if adv is not None:
                    n = min(len(adv), len(test))
                    run.records.append(kit.accuracy_record(
                        cfg, net, adv.first(n), dataset=d, model=model, batch_size=cfg.batch_size, defense=k,
                        attack="adversary_set", threat_model="linf", eps=cfg.eps[d], set=adv.name))
                run.health += kit.health_rows(
                    net, sub.x, sub.y, dataset=d, model=model, eps=cfg.eps[d], steps=cfg.health_steps,
                    num_classes=dataset_info(d).num_classes, seed=cfg.seed, batch_size=cfg.batch_size,
                    worst=curve[-1], defense=k,
                    **({"transfer_x_adv": adv.first(len(sub)).x} if adv is not None and len(adv) >= len(sub)
                       else {"transfer_from": run.nets[d]["none"]} if k != "none" else {}))


def judged_radius(curve: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest radius of a worst-case curve (records) where it is off the floor, or ``None``."""
    ok = [r["eps"] for r in curve if r.get("interval") and off_floor(r["interval"])]
    return max(ok) if ok else None


def confirm_all(run: Run) -> None:
    """With ``autoattack``: AutoAttack (standard) on the worst case's survivors (:func:`kit.autoattack_on_survivors`)
    of every network at the threat radius (the table's column), and at the judged radius of each comparison
    (:func:`judged_radius` of the baseline, and of PGD adversarial training) where the defense's gain is
    significant before correction: the only places a positive must survive it."""
    cfg = run.cfg
    if not cfg.autoattack:
        return
    seconds = run.timings.setdefault("autoattack", {})
    with run.timer("autoattack"):
        for d in cfg.datasets:
            sub = run.data[d]["test"].first(cfg.n_adaptive[d])
            curves = {k: run.raw[d, k, "linf"] for k in run.nets[d]}
            at = {}
            for ref in ("none", REFERENCE):
                e = judged_radius([{"eps": p["eps"], "interval": p["interval"]} for p in curves[ref]])
                for k in run.nets[d]:
                    if e is None or k == ref:
                        continue
                    p, q = (next(c for c in curves[x] if c["eps"] == e) for x in (k, ref))
                    t = evaluate.paired_test(p["robust_mask"], q["robust_mask"])
                    if t["p"] < ALPHA and t["difference"] > 0:
                        at.setdefault(k, set()).add(e)
            for k in run.nets[d]:
                for e in sorted(at.get(k, set()) | {curves[k][-1]["eps"]}):
                    point = next(c for c in curves[k] if c["eps"] == e)
                    rec, sec = kit.autoattack_on_survivors(cfg, run.nets[d][k], sub.x, sub.y, point, dataset=d,
                                                           model=zoo.ARCH[d], batch_size=cfg.batch_size, defense=k)
                    run.records.append(rec)
                    seconds[f"{d}/{k}/{e:.4g}"] = sec


def health_tables(results: Mapping[str, Any]) -> str:
    """The health rows, one table per data set and network."""
    return _health_tables(results["health"], by=("dataset", "model", "defense"))


# --------------------------------------------------------------------------- the numbers of one network


def scores(records: Sequence[dict], d: str, k: str) -> dict:
    """One network's records: ``clean``, ``curve`` (the L∞ worst case per radius, ascending), ``threat`` (at the
    threat radius), ``alone`` (the first member alone, per radius), ``autoattack`` (per radius), ``l2``,
    ``ddn`` (median ρ), ``set`` (the adversary set), ``cost`` (relative passes)."""
    kw = dict(dataset=d, defense=k)
    curve = sorted(select(records, attack="worst_case", metric="accuracy", threat_model="linf", **kw),
                   key=lambda r: r["eps"])
    return {"clean": first(records, metric="accuracy", attack="none", split="test", **kw), "curve": curve,
            "threat": curve[-1] if curve else None,
            "alone": {r["eps"]: r for r in select(records, metric="accuracy", alone=True, threat_model="linf", **kw)},
            "autoattack": {r["eps"]: r for r in select(records, attack="autoattack", **kw)},
            "l2": first(records, attack="worst_case", metric="accuracy", threat_model="l2", **kw),
            "ddn": first(records, attack="ddn", metric="rho", statistic="median", **kw),
            "set": first(records, attack="adversary_set", metric="accuracy", **kw),
            "cost": first(records, metric="relative_cost", **kw)}


def _at(curve: Sequence[dict], eps: float | None) -> dict | None:
    return None if eps is None else next((r for r in curve if math.isclose(r["eps"], eps)), None)


def _networks(records: Sequence[dict], d: str) -> list[str]:
    return list(dict.fromkeys(r["defense"] for r in select(records, dataset=d, attack="worst_case",
                                                           threat_model="linf")))


def robustbench_table(results: Mapping[str, Any]) -> str:
    """RobustBench's table, one row per data set and network: clean accuracy, a single attack alone (APGD-CE, the
    worst case's first member), AutoAttack on the survivors and the book's worst case, all at the threat radius,
    the L2 worst case, DDN's median ρ, the adversary set, AutoAttack's flags, the relative cost and the verdict's
    outcome against the baseline (:func:`verdict_summary`)."""
    recs, rows, summary = results["records"], [], verdict_summary(results)
    for d, v in summary.items():
        for k in _networks(recs, d):
            s = scores(recs, d, k)
            e = s["threat"]["eps"] if s["threat"] else None
            aa = s["autoattack"].get(e)
            c = v["defenses"].get(k)
            rows.append({"data": d, "defense": LABELS[k], "clean": pct_interval(s["clean"]),
                         "alone": pct_interval(s["alone"].get(e)), "aa": pct_interval(aa) if aa else "–",
                         "worst": pct_interval(s["threat"]), "l2": pct_interval(s["l2"]),
                         "ddn": "–" if s["ddn"] is None else f"{s['ddn']['value']:.3g}",
                         "set": pct_interval(s["set"]) if s["set"] else "–",
                         "flags": ", ".join(kit.flag_names([aa])) or "–",
                         "cost": "–" if s["cost"] is None else f"{s['cost']['value']:.2f}×",
                         "outcome": "reference" if c is None else c["vs_baseline"]["outcome"]
                         + (f" ({c['vs_baseline']['reason']})" if c["vs_baseline"]["reason"] else "")})
    return markdown_table(rows, {"data": "data set", "defense": "network", "clean": "clean",
                                 "alone": "APGD-CE alone", "aa": "AutoAttack (survivors)", "worst": "best known (worst case)",
                                 "l2": "L2 worst case", "ddn": "DDN median ρ", "set": "adversary set",
                                 "flags": "unreliable flags", "cost": "cost", "outcome": "vs baseline"})


def curve_figure(results: Mapping[str, Any]):
    """Robust accuracy (the worst case, with its 95% intervals) against the L∞ radius, every network on one plot
    per data set; the judged radius dashed."""
    recs = results["records"]
    ds = list(dict.fromkeys(r["dataset"] for r in select(recs, attack="worst_case")))
    fig, axes = plt.subplots(1, len(ds), figsize=(6 * len(ds), 4), squeeze=False)
    for ax, d in zip(axes[0], ds):
        for k in _networks(recs, d):
            curve = scores(recs, d, k)["curve"]
            e = [0.0] + [r["eps"] for r in curve]
            clean = scores(recs, d, k)["clean"]
            v = [clean["value"] if clean else float("nan")] + [r["value"] for r in curve]
            ax.plot(e, v, marker="o", label=SHORT[k], lw=2 if k in ("none", REFERENCE) else 1)
        judged = judged_radius(scores(recs, d, "none")["curve"])
        if judged is not None:
            ax.axvline(judged, color="gray", ls="--", lw=1)
        ax.set(title=f"{d}: worst case (L∞)", xlabel="ε", ylabel="robust accuracy", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def pareto(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """The networks no other network beats on both axes (lower cost, higher robust accuracy), by cost."""
    front = [k for k, (c, a) in points.items()
             if not any((c2 <= c and a2 >= a) and (c2, a2) != (c, a) for c2, a2 in points.values())]
    return sorted(front, key=lambda k: points[k])


def _cost_points(records: Sequence[dict], d: str, eps: float | None) -> dict[str, tuple[float, float]]:
    out = {}
    for k in _networks(records, d):
        s = scores(records, d, k)
        at = _at(s["curve"], eps) or s["threat"]
        if s["cost"] is not None and at is not None:
            out[k] = (s["cost"]["value"], at["value"])
    return out


def cost_figure(results: Mapping[str, Any]):
    """Robust accuracy at the judged radius (the threat radius where the baseline is at the floor everywhere)
    against the relative cost, each network a point, the Pareto front drawn."""
    summary, recs = verdict_summary(results), results["records"]
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 4), squeeze=False)
    for ax, (d, v) in zip(axes[0], summary.items()):
        pts = _cost_points(recs, d, v["judged_eps"])
        for k, (c, a) in pts.items():
            ax.scatter(c, a)
            ax.annotate(SHORT[k], (c, a), fontsize=7)
        front = v["pareto"]
        ax.plot([pts[k][0] for k in front], [pts[k][1] for k in front], "k--", lw=1, marker="o", mfc="none", ms=12,
                label="Pareto front")
        ax.set(title=f"{d}: robustness against cost", xlabel="training passes relative to normal training",
               ylabel=f"robust accuracy at ε = {v['eps_shown']:.3g}", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- the verdict


def _claim(outcome: Outcome, test: Mapping[str, Any] | None, eps: float | None) -> dict:
    return {**outcome.to_dict(), "eps": eps, "difference": None if test is None else test["difference"],
            "interval": None if test is None else test["interval"]}


def _compare(records, health, d, k, ref, p_adjusted=None) -> tuple[Outcome, dict | None, float | None]:
    """``k`` against ``ref`` at ``ref``'s judged radius: :func:`kit.paired_outcome` with ``k``'s health rows and
    AutoAttack on the survivors as the confirmation."""
    s, r = scores(records, d, k), scores(records, d, ref)
    e = judged_radius(r["curve"])
    if e is None:
        e_top = r["threat"]["eps"] if r["threat"] else None
        return Outcome("inconclusive", "floor", f"{LABELS[ref]} is at the floor at every radius of the curve"), \
            None, e_top
    rows = [h for h in health if h.get("dataset") == d and h.get("defense") == k]
    outcome, test = kit.paired_outcome(_at(s["curve"], e), _at(r["curve"], e), min_effect=MIN_EFFECT, health=rows,
                                       confirm=s["autoattack"].get(e), p_adjusted=p_adjusted,
                                       num_classes=dataset_info(d).num_classes, clean=s["clean"])
    return outcome, test, e


def verdict_summary(results: Mapping[str, Any]) -> dict:
    """Per data set: ``judged_eps`` (the baseline's judged radius, :func:`judged_radius`), ``eps_shown`` (it, or
    the threat radius), ``defenses``: per defense ``vs_baseline`` and ``vs_at`` (outcome, reason, detail, radius,
    difference and its interval; Holm over defenses and data sets within each family; on the smoke profile every
    outcome is inconclusive, reduced scale), ``failed`` (its failed health checks), ``cost``, ``robust`` (at the
    shown radius); ``pareto`` (the networks on the cost/robustness front); ``flags`` (AutoAttack's)."""
    recs, health = results["records"], results.get("health", [])
    ds = list(dict.fromkeys(r["dataset"] for r in select(recs, attack="worst_case")))
    nets = {d: [k for k in _networks(recs, d) if k != "none"] for d in ds}
    tests = {"none": {}, REFERENCE: {}}
    for ref in tests:
        for d in ds:
            for k in nets[d]:
                if k != ref and ref in _networks(recs, d):
                    tests[ref][d, k] = _compare(recs, health, d, k, ref)[1]
    adjusted = {ref: kit.holm_by(t) for ref, t in tests.items()}
    smoke = results.get("profile") == "smoke"
    out = {}
    for d in ds:
        judged = judged_radius(scores(recs, d, "none")["curve"])
        base = scores(recs, d, "none")
        shown = judged if judged is not None else (base["threat"] or {}).get("eps")
        defenses = {}
        for k in nets[d]:
            claims = {}
            for key, ref in (("vs_baseline", "none"), ("vs_at", REFERENCE)):
                if k == ref or ref not in _networks(recs, d):
                    continue
                outcome, test, e = _compare(recs, health, d, k, ref, adjusted[ref].get((d, k)))
                if smoke:
                    outcome = Outcome("inconclusive", "reduced_scale", outcome.detail)
                claims[key] = _claim(outcome, test, e)
            s = scores(recs, d, k)
            defenses[k] = {**claims, "failed": kit.failed_checks(health, dataset=d, defense=k),
                           "cost": (s["cost"] or {}).get("value"), "robust": _at(s["curve"], shown),
                           "clean": s["clean"]}
        aa = select(recs, dataset=d, attack="autoattack")
        out[d] = {"judged_eps": judged, "eps_shown": shown, "defenses": defenses,
                  "pareto": pareto(_cost_points(recs, d, shown)), "flags": kit.autoattack_flags(aa),
                  "base": {"clean": base["clean"], "robust": _at(base["curve"], shown)}}
    return out


def _where(claim: Mapping[str, Any]) -> str:
    return "" if claim.get("eps") is None else f" (at ε = {claim['eps']:.3g})"


def _tally(defenses: Mapping[str, Mapping[str, Any]], key: str, head: str) -> str:
    """One sentence grouping the defenses by the outcome of one comparison (inconclusive ones with their reason)."""
    groups: dict[str, list[str]] = {}
    for k, c in defenses.items():
        if key in c:
            o = c[key]
            name = SHORT[k] + (f" ({o['reason'].replace('_', ' ')})" if o["reason"] else "")
            groups.setdefault(o["outcome"], []).append(name)
    parts = [f"{outcome}: {', '.join(names)}" for outcome, names in groups.items()]
    return f"{head} — " + ("; ".join(parts) if parts else "nothing judged") + "."


def verdict(results: Mapping[str, Any]) -> str:
    """The verdict in Markdown, sentence by sentence from :func:`verdict_summary`."""
    lines = []
    for d, v in verdict_summary(results).items():
        b = v["base"]
        where = (f"the judged radius ε = {v['judged_eps']:.3g} (the largest radius where the baseline's worst case "
                 f"is off the floor: {pct_interval(b['robust'])})" if v["judged_eps"] is not None else
                 "no radius: the baseline's worst case is at the floor at every radius of the curve, so no gain "
                 "over it can be judged")
        lines.append(f"**{d}.** Every network is judged at {where}. Each comparison is paired on the same images "
                     f"(exact McNemar, Holm over the defenses and data sets); the smallest gain that would matter is "
                     f"{100 * MIN_EFFECT:.0f} points.")
        for k, c in v["defenses"].items():
            text = f"{LABELS[k]} (robust {pct_interval(c['robust'])}, cost {c['cost']:.2f}× normal training)" \
                if c["cost"] is not None and c["robust"] else LABELS[k]
            parts = []
            if "vs_baseline" in c:
                parts.append(f"more robust than the baseline{_where(c['vs_baseline'])}: "
                             + Outcome(c["vs_baseline"]["outcome"], c["vs_baseline"]["reason"],
                                       c["vs_baseline"]["detail"]).text())
            if "vs_at" in c:
                parts.append(f"more robust than {LABELS[REFERENCE]}{_where(c['vs_at'])}: "
                             + Outcome(c["vs_at"]["outcome"], c["vs_at"]["reason"], c["vs_at"]["detail"]).text())
            if c["failed"]:
                parts.append(f"health checks failed: {', '.join(c['failed'])}")
            lines.append(f"- {text}: " + "; ".join(parts) + ".")
        lines.append(_tally(v["defenses"], "vs_baseline", "Robustness above the baseline that survives the adaptive "
                                                          "evaluation off the floor"))
        lines.append(_tally(v["defenses"], "vs_at", f"More robust than {LABELS[REFERENCE]}"))
        lines.append(f"On the cost/robustness front: {', '.join(LABELS[k] for k in v['pareto']) or 'none'}.")
        lines.append("; ".join(v["flags"]) + "." if v["flags"] else "No AutoAttack flag fired.")
        lines.append("")
    lines.append(kit.BROKEN_RULE)
    lines.append(kit.smoke_note(results.get("profile", "")))
    return "\n".join(lines).strip()


def notes_markdown(results: Mapping[str, Any]) -> str:
    """The missing results files and adversary sets, each with the command that makes it."""
    notes = results["timings"].get("notes", [])
    return "\n".join(f"- {n}" for n in notes) if notes else "Every hyperparameter was read from its chapter's results."


def glance_rows(results: Mapping[str, Any]) -> list[dict]:
    """The "Results at a glance" rows: one per data set and defense, the claim "more robust than the baseline" at
    the judged radius (:func:`verdict_summary`), with APGD-CE alone as the single attack, AutoAttack on the
    survivors and the book's worst case there."""
    rows = []
    for d, v in verdict_summary(results).items():
        for k, c in v["defenses"].items():
            if "vs_baseline" not in c:
                continue
            s, e = scores(results["records"], d, k), c["vs_baseline"]["eps"]
            worst = _at(s["curve"], e)
            rows.append(kit.glance_row(
                results, CHAPTER, dataset=d, threat_model="linf", eps=e, defense=k, network=zoo.ARCH[d],
                claim_name=f"{LABELS[k]} is more robust than the undefended network", claim=c["vs_baseline"],
                clean=s["clean"], paper_attack="APGD-CE alone", paper_attack_acc=s["alone"].get(e),
                autoattack=s["autoattack"].get(e), worst_case=worst))
    return rows
