"""Chapter — fragile neurons (Pravin et al., ICANN 2021), reconstructed and attacked adaptively (id ``fragile_neurons``).

Everything the page calls, in page order:

* :data:`SPEC` (parameters, profiles ``smoke``/``laptop``/``paper``) and the training recipes (:func:`train_recipe`:
  the shared zoo's models in the smaller profiles, the authors' ResNet-18/Adam recipe in ``paper``);
* the measurements, each a step ``step(run)`` on a :class:`Run` appending records: :func:`train_all` (models, clean
  test accuracy, and the second-seed copies whose fragility is measured after every ``evolution_every`` epochs),
  :func:`fragility_all` (nodal dropout on validation images), :func:`targeting_all` (where FGSM lands, with rank
  correlations), :func:`strength_all` (compress/amplify over a strength grid: the strength chosen on validation,
  FGSM curves on test), :func:`adaptive_all` (the toolkit's worst case on the unmodified and the rescaled model)
  and :func:`health_all`;
* tables and figures as functions of the results (``run.results()`` or a file read back); the verdict
  (:func:`verdict_summary`, :func:`verdict`), a pure function of the results with its thresholds as module constants.

**How the neurons and the targeting are judged.** A channel is *fragile* when an exact McNemar test of the network
with and without it on the same held-out images, Holm-adjusted over the layer's channels, finds a loss; *robust*
when the 95% paired interval of the loss lies inside ± :data:`ROBUST_MARGIN` (an equivalence test); otherwise
*undetermined* (:func:`fragility_summary`, :func:`neurons_outcome`). Targeting is judged on FGSM's *excess*
activation change over a random-sign perturbation of the same radius, which does not grow with the filter's norm
as the raw change does (:func:`targeting_outcome`).

**Where the defense is judged** (the book's verdict rules, :mod:`robustness_book.evaluate.outcome`). Both claims compare
the network at the chosen strength with strength 0 *on the same images* (``kit.paired_outcome``: exact McNemar,
Newcombe interval, Holm over the data sets, the floor rule, the health gate, AutoAttack's confirmation):

* ``fgsm_gain`` — the paper's claim, at the paper's radius with the paper's attack: the authors' FGSM
  (``authors_eps``, normalized units, unclipped) on the ``n_test`` test images; the same comparison at the other
  multiples ``authors_factors`` of that radius is reported beside it (their radii were set for ResNet-18; the
  smaller profiles reuse them for LeNetLike and AlexLike, the book's choice);
* ``adaptive_gain`` — does that gain survive the adaptive worst case? Judged at the authors' radius in pixels
  (:func:`authors_eps_pixels`, now clipped to [0, 1]): of the radii the chapter measures the worst case at
  (:func:`adaptive_radii`) it is the one nearest theirs (:func:`judged_radius`). At the threat radius ``eps`` the
  unmodified LeNetLike/AlexLike is expected at the floor, where no gain could show; its worst cases are reported
  beside the verdict as numbers, not judged. Where the unmodified network is at the floor at the authors' radius
  too, the claim is inconclusive (floor). AutoAttack (standard) runs on the images the rescaled network's worst
  case left standing at the judged radius and confirms a positive.

"An FGSM artefact" is printed only with evidence (:func:`robustness_book.evaluate.outcome.removed_by`): the gain does
not hold under the worst case *and*, on the same first ``n_adaptive`` test images, the clipped FGSM showed a
significant gain over the unmodified network and the rescaled network's worst case is significantly below its own
FGSM accuracy at the same radius in the same box (the book's clipped FGSM:
:func:`clipped_fgsm_radii` contains the authors' radius for that reason); the member of the worst case that fooled
most of the images FGSM left standing is named.

The method itself (dropout views, fragility, targeting, compress/amplify) is :mod:`robustness_book.defenses.fragile_neurons`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from .. import attacks, evaluate, zoo
from ..config import ChapterSpec, Param, RunConfig, check_counts
from ..data import DATASETS, dataset_info, load_dataset, threat_eps
from ..defenses import fragile_neurons as fn
from ..evaluate import members as M
from ..evaluate.outcome import Outcome, removed_by, smallest_detectable
from ..evaluate.stats import spearman_interval
from ..models import MODELS, check_model
from ..report import duration, health_tables as grouped_health_tables, markdown_table, pct, pct_interval, record_table
from ..results import first, one, record, select
from ..train import TrainConfig, trained_model
from . import kit

CHAPTER = "fragile_neurons"
RECIPES = ("zoo", "authors")
SCORES = ("clean", "fgsm")

#: The authors' later code (InferLink) normalizes MNIST with std 0.3081 and CIFAR-10 with std 0.5 and runs FGSM in
#: that normalized space, unclipped; its radii are in those units. A radius of ``e`` there is ``e · std`` pixels.
AUTHORS_STD = {"mnist": 0.3081, "fashion_mnist": 0.3081, "cifar10": 0.5}
#: Their ResNet-18 radii (normalized units): MNIST 0.38, CIFAR-10 0.015 (Fashion-MNIST: MNIST's, the book's choice).
AUTHORS_EPS = {"mnist": 0.38, "fashion_mnist": 0.38, "cifar10": 0.015}

#: Verdict thresholds. A rank correlation counts when its permutation p-value is below ALPHA; a gain of the defense
#: is judged on the same images by a paired test (kit.paired_outcome), never as points or by two marginal intervals.
ALPHA = 0.05
#: A channel is *robust* when the 95% paired interval of the accuracy lost without it lies inside ± this margin
#: (an equivalence test: half a point of clean accuracy, the review's margin); *fragile* when the exact McNemar
#: test, Holm-adjusted over the layer's channels, finds a loss; otherwise *undetermined*.
ROBUST_MARGIN = 0.005
#: The smallest rank correlation of the targeting excess with fragility that would support "FGSM concentrates on
#: fragile neurons" (a moderate correlation): the claim does not hold when the 95% interval of ρ lies below it.
MIN_RHO = 0.3
#: The multiples of the authors' radius of the unclipped-FGSM sweep (their radii were set for ResNet-18).
AUTHORS_FACTORS = (0.5, 1.0, 2.0)
#: The smallest gain (a fraction of the images) that would matter, for both compress/amplify claims: 5 points of
#: accuracy under attack. The strength rule already lets the defense cost up to 1 (MNIST) or 3 (CIFAR-10) points
#: of clean accuracy; a gain of the same order would not pay for it, and the paper's FGSM gains are larger.
MIN_EFFECT = 0.05


def authors_eps_pixels(cfg: Mapping[str, Any], d: str) -> float:
    """The authors' FGSM radius of data set ``d`` (``authors_eps``, normalized units) in [0, 1] pixels."""
    return float(cfg["authors_eps"][d]) * AUTHORS_STD[d]


def _check(cfg: RunConfig) -> None:
    for d in cfg.datasets:
        check_model(cfg.model[d], d)
        if cfg.recipe[d] == "zoo" and cfg.model[d] != zoo.ARCH[d]:
            raise ValueError(f"parameter recipe['{d}']='zoo' trains the zoo's {zoo.ARCH[d]}, not model['{d}']="
                             f"{cfg.model[d]!r}: set recipe['{d}']='authors' for another architecture")
        # n_val: the held-out images after train_size
        check_counts(cfg, {("train_size", "n_val"): "train", "n_test": "test"}, [d])
        if cfg.n_fragility[d] > cfg.n_val[d]:
            raise ValueError(f"parameter n_fragility['{d}']={cfg.n_fragility[d]} must not exceed n_val['{d}']="
                             f"{cfg.n_val[d]} (fragility is measured on held-out training images)")
        if cfg.n_adaptive[d] > cfg.n_test[d]:
            raise ValueError(f"parameter n_adaptive['{d}']={cfg.n_adaptive[d]} must not exceed n_test['{d}']="
                             f"{cfg.n_test[d]}")
        if cfg.eps[d] <= 0:
            raise ValueError(f"parameter eps['{d}']={cfg.eps[d]} must be > 0 (the threat radius)")
    if 0.0 not in cfg.strengths:
        raise ValueError(f"parameter strengths={cfg.strengths} must contain 0 (the unmodified model)")
    if 1.0 not in cfg.authors_factors:
        raise ValueError(f"parameter authors_factors={cfg.authors_factors} must contain 1 (the authors' own radius, "
                         f"where the paper's claim is judged); allowed: a list of numbers > 0 containing 1")


PARAMS = {
    "datasets": Param("subset", "data sets the chapter runs on", DATASETS),
    "model": Param("choice", "architecture (robustness_book.models) per data set", tuple(MODELS), per_dataset=True),
    "recipe": Param("choice", "training recipe: zoo (the book's shared models) or authors (Adam lr 1e-3, batch "
                    "100, the authors' later code)", RECIPES, per_dataset=True),
    "train_size": Param("pos_int", "training images (the first N)", per_dataset=True),
    "epochs": Param("pos_int", "training epochs", per_dataset=True),
    "n_val": Param("pos_int", "held-out training images after the first train_size (scores and the strength "
                   "are chosen on them)", per_dataset=True),
    "n_fragility": Param("pos_int", "held-out images for fragility and targeting (the first N of n_val)",
                         per_dataset=True),
    "n_test": Param("pos_int", "test images for accuracy and the FGSM curves (the first N)", per_dataset=True),
    "authors_eps": Param("pos_float", "FGSM radius of the authors, in their normalized units (times their std gives pixels)",
                         per_dataset=True),
    "authors_factors": Param("pos_float_list", "multiples of authors_eps of the unclipped authors'-FGSM sweep "
                             "(must contain 1)"),
    "eps_grid": Param("eps_linf_list", "L∞ radii on [0, 1] pixels of the book's clipped FGSM curves (the authors' "
                      "radius in pixels is added)", per_dataset=True),
    "strengths": Param("nonneg_float_list", "compress/amplify strengths tried (0 leaves the model unchanged)"),
    "score": Param("choice", "fragility score that drives compress/amplify: clean (the definition of the thesis) or fgsm",
                   SCORES),
    "clean_budget": Param("nonneg_float", "largest validation clean-accuracy loss a chosen strength may cost",
                          per_dataset=True),
    "evolution": Param("bool", "measure the second copy's (seed + 1) fragility during its training (it is trained "
                       "either way: the transfer check's source)",
                       per_dataset=True),
    "evolution_every": Param("pos_int", "epochs between two fragility measurements of the second copy",
                             per_dataset=True),
    "n_adaptive": Param("pos_int", "test images for the adaptive worst case (the first N)", per_dataset=True),
    "eps": Param("eps_linf", "threat radius (L∞, [0, 1] pixels) of the adaptive worst case, the health checks and "
                 "the verdict", per_dataset=True),
    "pgd_steps": Param("pos_int", "steps of the PGD members of the worst case"),
    "restarts": Param("pos_int", "random restarts of the PGD members"),
    "square_queries": Param("pos_int", "queries per image of the Square member"),
    "health_steps": Param("pos_int", "PGD steps of the health checks"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed (the second copy uses seed + 1)"),
}


def _zoo_training(profile: str) -> dict:
    """train_size and epochs of each data set's zoo recipe at ``profile`` (shared with the other chapters)."""
    recipes = {d: zoo.for_dataset(d, profile) for d in DATASETS}
    return {"train_size": {d: r.train_size for d, r in recipes.items()},
            "epochs": {d: r.config.epochs for d, r in recipes.items()}}


_per = kit.per_dataset  # the kit's per-data-set value (Fashion-MNIST takes MNIST's)


_COMMON = {
    "datasets": ["mnist", "cifar10"], "model": dict(zoo.ARCH), "recipe": "zoo", "authors_eps": dict(AUTHORS_EPS),
    "authors_factors": list(AUTHORS_FACTORS),
    "eps_grid": _per([0.05, 0.1, 0.2, 0.3], [1 / 255, 2 / 255, 4 / 255, 8 / 255]),
    "strengths": [0.0, 0.25, 0.5, 1.0, 2.0], "score": "clean", "clean_budget": _per(0.01, 0.03),
    "eps": {d: float(threat_eps(d)) for d in DATASETS}, "batch_size": 250, "seed": 0,
}

PROFILES = {
    "smoke": {**_COMMON, **_zoo_training("smoke"), "n_val": _per(300, 200), "n_fragility": _per(300, 100),
              "n_test": _per(300, 100), "strengths": [0.0, 1.0], "eps_grid": _per([0.1, 0.3], [8 / 255]),
              "evolution": _per(True, False), "evolution_every": 1, "n_adaptive": _per(40, 16), "pgd_steps": 10,
              "restarts": 1, "square_queries": 100, "health_steps": 5},
    # 2 CPU cores: the zoo's shared models (MNIST LeNetLike on 55,000 images, CIFAR-10 AlexLike on 49,000 with the
    # book's fast recipe); the images after them are the held-out ones. The second copy (seed + 1, the transfer
    # check's source) trains on both; its fragility is followed through training on MNIST only (`evolution`), so
    # the seed-stability correlation is MNIST's.
    "laptop": {**_COMMON, **_zoo_training("laptop"), "n_val": _per(5000, 1000), "n_fragility": _per(5000, 1000),
               "n_test": _per(10000, 1000), "evolution": _per(True, False), "evolution_every": 1,
               "n_adaptive": _per(500, 200), "pgd_steps": 50, "restarts": 1, "square_queries": 1000,
               "health_steps": 50},
    # The authors' later code: torchvision ResNet-18 from scratch, Adam lr 1e-3, batch 100, checkpoints every 10
    # epochs up to 100; 5,000 training images are held out (they trained on all). Meant for a GPU.
    "paper": {**_COMMON, "model": "resnet18", "recipe": "authors", "train_size": _per(55000, 45000),
              "epochs": 100, "n_val": 5000, "n_fragility": _per(5000, 5000), "n_test": _per(10000, 1000),
              "evolution": True, "evolution_every": 10, "n_adaptive": 1000, "pgd_steps": 100, "restarts": 3,
              "square_queries": 5000, "health_steps": 100},
}

SPEC = ChapterSpec(
    name=CHAPTER,
    title="Fragile neurons: nodal dropout, adversarial targeting, compress/amplify",
    notebook="notebooks/fragile_neurons.py",
    params=PARAMS,
    profiles=PROFILES,
    check=_check,
)


# --------------------------------------------------------------------------- models and data


def train_recipe(cfg: Mapping[str, Any], d: str, seed: int | None = None) -> dict:
    """The :func:`robustness_book.train.trained_model` keyword arguments of data set ``d``'s model.

    ``zoo``: the zoo recipe of the profile (:func:`robustness_book.zoo.variant`), so an unchanged run shares the model
    with the other chapters; ``authors``: Adam (lr 1e-3, no weight decay), batch 100, no augmentation, as the
    authors' later code. ``seed`` (default ``cfg["seed"]``) seeds initialization and batch order."""
    seed = cfg["seed"] if seed is None else seed
    if cfg["recipe"][d] == "zoo":
        return zoo.variant(zoo.for_dataset(d, cfg["profile"]), model=cfg["model"][d], train_size=cfg["train_size"][d],
                           epochs=cfg["epochs"][d], seed=seed)
    config = TrainConfig(epochs=cfg["epochs"][d], batch_size=100, lr=1e-3, weight_decay=0.0, optimizer="adam",
                         seed=seed)
    return {"model": cfg["model"][d], "dataset": d, "config": config, "train_size": cfg["train_size"][d]}


class FragilityByEpoch:
    """An ``epoch_callback`` for the training loop: every ``every`` epochs (and at the last), the clean accuracy of
    the model and of each one-channel dropout on fixed held-out images, as counts (the history keeps them, so a
    cached model brings its evolution along)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, every: int, epochs: int, batch_size: int, images: str):
        self.x, self.y, self.every, self.epochs, self.batch_size = x, y, every, epochs, batch_size
        # ``images`` names the images without a path (:func:`held_out_images`): the checkpoint's cache key must
        # not change when the data folder moves
        self.spec = {"name": "fragility_by_epoch", "every": every, "n": len(y), "images": images}

    def __call__(self, epoch: int, model: nn.Module) -> dict:
        if epoch % self.every and epoch != self.epochs:
            return {}
        r = fn.fragility(model, self.x, self.y, eps=0.0, batch_size=self.batch_size, fgsm_too=False)
        return {"clean_k": round(r["clean_base"] * r["n"]), "dropped_k": r["clean_k"].tolist(), "n": r["n"]}


def held_out_images(d: str, start: int, n: int) -> str:
    """Which images :class:`FragilityByEpoch` scores on, in words and without a path (data set, split, range)."""
    return f"{d} training images {start + 1}-{start + n}"


class Run(kit.Run):
    """The chapter's run (:class:`robustness_book.chapters.kit.Run`): ``nets[d]`` is data set ``d``'s model and
    ``nets[d, "copy"]`` its second copy; ``data[d]`` holds its ``val`` and ``test`` images; ``raw[d, defense]`` the
    worst case per radius (with its per-image outcomes) of the unmodified (``"none"``) or rescaled model."""


def train_all(run: Run) -> None:
    """Per data set: the data (``val``: the ``n_val`` training images after the first ``train_size``, never trained
    on; ``test``: the first ``n_test`` test images), the model, and the second copy (seed + 1): with ``evolution``
    trained with :class:`FragilityByEpoch`, otherwise the same recipe at seed + 1 (the transfer check's source).
    Records: clean test accuracy of both; the copy's per-epoch fragility
    (``epoch`` in the setting). Timings: training seconds and whether each model came from the cache."""
    cfg = run.cfg
    with run.timer("train"):
        for d in cfg.datasets:
            a = cfg.train_size[d]
            test = load_dataset(d, "test").first(cfg.n_test[d])
            run.data[d] = {"val": kit.holdout_split(d, a, a + cfg.n_val[d]), "test": test}
            run.nets[d], meta = zoo.model_for(**train_recipe(cfg, d))
            run.timings[f"{d}/{cfg.model[d]}"] = {"seconds": meta.get("train_seconds"), "cached": meta["cached"],
                                                  "zoo": meta.get("zoo")}
            run.records.append(kit.accuracy_record(cfg, run.nets[d], test, dataset=d, model=cfg.model[d],
                                                   batch_size=cfg.batch_size, seed=cfg.seed, split="test"))
            kw = train_recipe(cfg, d, seed=cfg.seed + 1)
            if cfg.evolution[d]:
                val = run.data[d]["val"].first(cfg.n_fragility[d])
                cb = FragilityByEpoch(val.x, val.y, cfg.evolution_every[d], kw["config"].epochs, cfg.batch_size,
                                      held_out_images(d, a, cfg.n_fragility[d]))
                run.nets[d, "copy"], meta = trained_model(**kw, epoch_callback=cb)
            else:  # another seed of the same recipe, the transfer health check's source
                run.nets[d, "copy"], meta = zoo.model_for(**kw)
            run.timings[f"{d}/{cfg.model[d]}-seed{cfg.seed + 1}"] = {"seconds": meta.get("train_seconds"),
                                                                     "cached": meta["cached"], "zoo": meta.get("zoo")}
            run.records.append(kit.accuracy_record(cfg, run.nets[d, "copy"], test, dataset=d, model=cfg.model[d],
                                                   batch_size=cfg.batch_size, seed=cfg.seed + 1, split="test"))
            if cfg.evolution[d]:
                run.records += _evolution_records(cfg, d, meta["history"]["epochs"])


def _evolution_records(cfg, d: str, epochs: Sequence[dict]) -> list[dict]:
    out = []
    for e in epochs:
        if "dropped_k" not in e:
            continue
        n, common = e["n"], {"split": "val", "epoch": e["epoch"]}
        kw = dict(dataset=d, model=cfg.model[d], metric="accuracy", n=n, seed=cfg.seed + 1)
        out.append(record(cfg, value=e["clean_k"] / n, **kw, **common))
        out += [record(cfg, value=k / n, defense="nodal_dropout", channel=j, **kw, **common)
                for j, k in enumerate(e["dropped_k"])]
    return out


# --------------------------------------------------------------------------- fragility and targeting


def fragility_all(run: Run) -> None:
    """Per data set, on the first ``n_fragility`` held-out images: each first-layer channel dropped in turn, clean
    accuracy and FGSM accuracy (the authors' convention: normalized-space radius ``authors_eps``, unclipped, every
    image attacked), as records with ``channel``; the undropped model's as ``channel=None``. The clean records carry
    their per-image outcome (:data:`kit.PER_IMAGE`): each channel is classified by a paired test."""
    cfg = run.cfg
    with run.timer("fragility"):
        for d in cfg.datasets:
            val = run.data[d]["val"].first(cfg.n_fragility[d])
            r = fn.fragility(run.nets[d], val.x, val.y, eps=authors_eps_pixels(cfg, d), clip=False,
                             batch_size=cfg.batch_size)
            n = r["n"]
            fgsm = dict(attack="fgsm", threat_model="linf_normalized", eps=cfg.authors_eps[d], clip=False)
            kw = dict(dataset=d, model=cfg.model[d], metric="accuracy", n=n, split="val")
            scores = (("clean", {}), ("fgsm", fgsm))
            per_image = {("clean", None): r["clean_correct_base"],
                         **{("clean", j): m for j, m in enumerate(r["clean_correct"])}}

            def mask(s, j):
                m = per_image.get((s, j))
                return {} if m is None else {kit.PER_IMAGE: evaluate.pack_mask(m)}

            run.records += [record(cfg, value=r[f"{s}_base"], channel=None, **at, **kw, **mask(s, None))
                            for s, at in scores]
            run.records += [record(cfg, value=float(r[s][j]), defense="nodal_dropout", channel=j, **at, **kw,
                                   interval=evaluate.wilson_interval(int(r[f"{s}_k"][j]), n), **mask(s, j))
                            for j in range(len(r["clean"])) for s, at in scores]


def fragility_scores(records: Sequence[dict], d: str, score: str = "clean", seed: int | None = None,
                     epoch: int | None = None) -> torch.Tensor:
    """Per channel, the accuracy lost when it is dropped: ``clean`` or ``fgsm`` (the authors' FGSM), from the
    records (``epoch``: the second copy's measurement at that epoch)."""
    attack = "none" if score == "clean" else "fgsm"
    match = {"dataset": d, "attack": attack, "split": "val"}
    if seed is not None:
        match["seed"] = seed
    rows = [r for r in select(records, **match)
            if r["metric"] == "accuracy" and r["setting"].get("epoch") == epoch]
    base = [r for r in rows if r["defense"] == "none"]
    dropped = sorted((r for r in rows if r["defense"] == "nodal_dropout"), key=lambda r: r["setting"]["channel"])
    if len(base) != 1 or not dropped:
        raise ValueError(f"no fragility records for {d} ({score}, seed={seed}, epoch={epoch})")
    return torch.tensor([base[0]["value"] - r["value"] for r in dropped], dtype=torch.float64)


def match_channels(similarity: torch.Tensor) -> list[int]:
    """The assignment of channels that maximizes the total ``similarity`` (square matrix, rows: the first network's
    channels, columns: the second's): ``match[i]`` is the second network's channel paired with channel ``i``
    (the Hungarian algorithm, O(C³); no SciPy in the pinned environment)."""
    cost = (-similarity.double()).tolist()
    n = len(cost)
    inf = float("inf")
    u, v, owner, way = [0.0] * (n + 1), [0.0] * (n + 1), [0] * (n + 1), [0] * (n + 1)
    for i in range(1, n + 1):
        owner[0], j0 = i, 0
        low, used = [inf] * (n + 1), [False] * (n + 1)
        while owner[j0]:
            used[j0], i0, delta, j1 = True, owner[j0], inf, 0
            for j in range(1, n + 1):
                if not used[j]:
                    cur = cost[i0 - 1][j - 1] - u[i0] - v[j]
                    if cur < low[j]:
                        low[j], way[j] = cur, j0
                    if low[j] < delta:
                        delta, j1 = low[j], j
            for j in range(n + 1):
                if used[j]:
                    u[owner[j]] += delta
                    v[j] -= delta
                else:
                    low[j] -= delta
            j0 = j1
        while j0:
            j1 = way[j0]
            owner[j0], j0 = owner[j1], j1
    match = [0] * n
    for j in range(1, n + 1):
        match[owner[j] - 1] = j - 1
    return match


def filter_similarity(a: nn.Module, b: nn.Module) -> torch.Tensor:
    """Cosine similarity of every first-layer filter of ``a`` with every one of ``b`` (``(C, C)``)."""
    wa, wb = (m.get_submodule(fn.first_conv_name(m)).weight.detach().flatten(1).double().cpu() for m in (a, b))
    return torch.nn.functional.normalize(wa, dim=1) @ torch.nn.functional.normalize(wb, dim=1).T


def targeting_all(run: Run) -> None:
    """Per data set: the targeting measurement (:func:`robustness_book.defenses.fragile_neurons.targeting`, the authors'
    FGSM, held-out images) as per-channel records (``targeting_change``, ``targeting_share``, and the control:
    ``targeting_random``, the change under a random-sign perturbation of the same radius, and
    ``targeting_excess``, FGSM's change over it), and rank correlations (Spearman, permutation p-value) of the
    targeting excess and the raw change with the clean fragility, of the change with the FGSM fragility, of the
    two fragilities with each other, and, with a second copy trained with ``evolution``, of the clean fragility of
    the two seeds after matching their channels (:func:`match_channels` on :func:`filter_similarity`; the mean
    similarity of the matched filters is recorded beside it)."""
    cfg, records, out = run.cfg, run.records, []
    with run.timer("targeting"):
        for d in cfg.datasets:
            val = run.data[d]["val"].first(cfg.n_fragility[d])
            t = fn.targeting(run.nets[d], val.x, val.y, eps=authors_eps_pixels(cfg, d), clip=False,
                             batch_size=cfg.batch_size, seed=cfg.seed)
            kw = dict(dataset=d, model=cfg.model[d], attack="fgsm", threat_model="linf_normalized",
                      eps=cfg.authors_eps[d], n=t["n"], split="val")
            out += [record(cfg, metric=f"targeting_{name}", value=float(t[key][j]), channel=j, **kw)
                    for j in range(len(t["change"]))
                    for name, key in (("change", "change"), ("share", "share"), ("random", "random_change"),
                                      ("excess", "excess"))]
            fr = {s: fragility_scores(_no_epoch(records), d, s, seed=cfg.seed) for s in SCORES}
            pairs = {("targeting_excess", "fragility_clean"): (t["excess"], fr["clean"]),
                     ("targeting_change", "fragility_clean"): (t["change"], fr["clean"]),
                     ("targeting_change", "fragility_fgsm"): (t["change"], fr["fgsm"]),
                     ("fragility_fgsm", "fragility_clean"): (fr["fgsm"], fr["clean"])}
            matched = {}
            if cfg.evolution[d]:
                last = max(r["setting"]["epoch"] for r in select(records, dataset=d) if r["setting"].get("epoch"))
                similarity = filter_similarity(run.nets[d], run.nets[d, "copy"])
                match = match_channels(similarity)
                copy = fragility_scores(records, d, "clean", seed=cfg.seed + 1, epoch=last)
                pairs["fragility_clean_seed2", "fragility_clean"] = (copy[match], fr["clean"])
                matched = {"matched": "filter cosine similarity",
                           "similarity": float(similarity[torch.arange(len(match)), match].mean())}
            for (a, b), (u, v) in pairs.items():
                s = evaluate.spearman(u, v, seed=cfg.seed)
                out.append(record(cfg, dataset=d, model=cfg.model[d], metric="rank_correlation", value=s["rho"],
                                  n=s["n"], x=a, y=b, p=s["p"], permutations=s["permutations"],
                                  **(matched if a == "fragility_clean_seed2" else {})))
    run.records += out


def _no_epoch(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if "epoch" not in r["setting"]]


# --------------------------------------------------------------------------- compress/amplify


def clipped_fgsm_radii(cfg: Mapping[str, Any], d: str) -> list[float]:
    """The radii (pixels) of the book's clipped FGSM: ``eps_grid`` and the authors' radius in pixels, so that the
    clipped FGSM and the worst case exist at the same radius on the same images (the worst case's radius is
    rounded the same way, :func:`adaptive_radii`)."""
    return sorted({*(float(e) for e in cfg["eps_grid"][d]), round(authors_eps_pixels(cfg, d), 6)})


def _fgsm_accuracy(cfg, d: str, net: nn.Module, ds, *, authors: bool, eps: float | None = None,
                   factor: float = 1.0) -> dict:
    """FGSM accuracy of ``net`` on ``ds``: the authors' convention (``factor`` times their radius, unclipped) or
    the book's (``eps`` pixels, clipped to [0, 1])."""
    radius = factor * authors_eps_pixels(cfg, d) if authors else eps
    x_adv = evaluate.run_attack(attacks.fgsm, net, ds.x, ds.y, cfg.batch_size, eps=radius, clip=not authors)
    correct = evaluate.predict(net, x_adv, cfg.batch_size) == ds.y
    r = evaluate.accuracy_record(correct)
    where = (dict(threat_model="linf_normalized", eps=factor * cfg.authors_eps[d], clip=False, factor=factor)
             if authors else dict(threat_model="linf", eps=eps, clip=True))
    return dict(metric="accuracy", attack="fgsm", value=r["value"], n=r["n"], interval=r["interval"],
                **{kit.PER_IMAGE: evaluate.pack_mask(correct)}, **where)


def rescaled(net: nn.Module, records: Sequence[dict], d: str, cfg: Mapping[str, Any], strength: float) -> nn.Module:
    """The compress/amplify copy of ``net`` at ``strength``, driven by the run's ``score`` (held-out fragility)."""
    return fn.compress_amplify(net, fragility_scores(_no_epoch(records), d, cfg["score"], seed=cfg["seed"]), strength)


def choose_strength(records: Sequence[dict], d: str, budget: float) -> dict:
    """The validation rule, fixed before any test number is seen: among the strengths whose held-out clean accuracy
    is at most ``budget`` below that of strength 0, the one with the highest held-out FGSM accuracy (the authors'
    convention: the paper's claim is about FGSM); ties go to the smaller strength, so 0 wins unless one helps."""
    by = {}
    for r in select(records, dataset=d, defense="compress_amplify", split="val"):
        by.setdefault(r["setting"]["strength"], {})[r["attack"]] = r["value"]
    clean0 = by[0.0]["none"]
    ok = [s for s, v in by.items() if v["none"] >= clean0 - budget - 1e-12]
    best = max(sorted(ok), key=lambda s: (by[s]["fgsm"], -s))
    return {"strength": best, "clean": by[best]["none"], "fgsm": by[best]["fgsm"]}


def strength_all(run: Run) -> None:
    """Per data set and strength of ``strengths``: held-out clean and FGSM (authors') accuracy, the chosen strength
    (:func:`choose_strength`), then on the test images clean accuracy, the authors' FGSM at each multiple
    ``authors_factors`` of their radius (``factor`` in the setting) and the book's clipped FGSM over
    :func:`clipped_fgsm_radii`."""
    cfg, out = run.cfg, []
    with run.timer("compress/amplify"):
        for d in cfg.datasets:
            val, test = run.data[d]["val"].first(cfg.n_fragility[d]), run.data[d]["test"]
            for s in sorted(cfg.strengths):
                net = rescaled(run.nets[d], run.records, d, cfg, s)
                base = dict(dataset=d, model=cfg.model[d], defense="compress_amplify", strength=s, score=cfg.score)
                for ds in (val, test):
                    out.append(kit.accuracy_record(cfg, net, ds, batch_size=cfg.batch_size, split=ds.split, **base))
                    out.append(record(cfg, split=ds.split, **base, **_fgsm_accuracy(cfg, d, net, ds, authors=True)))
                out += [record(cfg, split="test", **base, **_fgsm_accuracy(cfg, d, net, test, authors=True, factor=f))
                        for f in sorted(cfg.authors_factors) if f != 1.0]
                for e in clipped_fgsm_radii(cfg, d):
                    out.append(record(cfg, split="test", **base,
                                      **_fgsm_accuracy(cfg, d, net, test, authors=False, eps=e)))
            chosen = choose_strength(out, d, cfg.clean_budget[d])
            out.append(record(cfg, dataset=d, model=cfg.model[d], defense="compress_amplify",
                              metric="chosen_strength", value=chosen["strength"], budget=cfg.clean_budget[d],
                              score=cfg.score))
    run.records += out


def chosen_strength(records: Sequence[dict], d: str) -> float:
    return one(records, dataset=d, metric="chosen_strength")["value"]


# --------------------------------------------------------------------------- beyond the paper: adaptive evaluation


def adaptive_radii(cfg: Mapping[str, Any], d: str) -> list[float]:
    """The worst case's radii: the authors' FGSM radius in pixels (as a clipped threat model) and the threat radius
    ``eps``."""
    return sorted({round(authors_eps_pixels(cfg, d), 6), float(cfg["eps"][d])})


def judged_radius(records: Sequence[dict], params: Mapping[str, Any], d: str) -> float | None:
    """The radius the survival claim is judged at: of the radii the worst case was measured at for ``d``, the one
    nearest the authors' FGSM radius in pixels (it is in :func:`adaptive_radii`); ``None`` without a worst case."""
    radii = sorted({r["eps"] for r in select(records, dataset=d, attack="worst_case", defense="none")})
    if not radii:
        return None
    target = authors_eps_pixels({"authors_eps": params.get("authors_eps", AUTHORS_EPS)}, d)
    return min(radii, key=lambda e: abs(e - target))


def adaptive_all(run: Run) -> None:
    """The toolkit's worst case (``evaluate.members.default_members``; for the rescaled model also PGD transferred
    from the unmodified one) on the first ``n_adaptive`` test images, nested over :func:`adaptive_radii`, for the
    unmodified model and, when validation chose a strength > 0, for the rescaled one; then AutoAttack (standard) on the images
    the rescaled model's worst case left standing at the judged radius (the authors' radius,
    :func:`judged_radius`), whose record confirms or removes a positive. Records: :func:`kit.worst_case_records`
    (``defense`` the model, ``strength`` in the setting, per image the member that fooled it in
    :data:`kit.FOOLED_BY`) and :func:`kit.autoattack_on_survivors`; the results with their per-image outcomes go to
    ``run.raw[d, defense]`` (the health table's gradient-free check reads them)."""
    cfg, out = run.cfg, []
    with run.timer("adaptive"):
        for d in cfg.datasets:
            sub = run.data[d]["test"].first(cfg.n_adaptive[d])
            s = chosen_strength(run.records, d)
            for label, strength in (("none", 0.0), ("compress_amplify", s))[:2 if s > 0 else 1]:
                net = run.nets[d] if label == "none" else rescaled(run.nets[d], run.records, d, cfg, strength)
                members = M.default_members(cfg.pgd_steps, cfg.restarts, cfg.square_queries)
                if label != "none":
                    members.append(M.transfer(run.nets[d], steps=cfg.pgd_steps, restarts=cfg.restarts,
                                              name="transfer_from_unmodified"))
                curve = evaluate.worst_case_curve(net, sub.x, sub.y, adaptive_radii(cfg, d), members,
                                                  batch_size=cfg.batch_size, seed=cfg.seed)
                out += kit.worst_case_records(cfg, curve, dataset=d, model=cfg.model[d], run=run, key=(d, label),
                                              defense=label, strength=strength)
                if label == "none":
                    continue
                at = judged_radius(out, cfg, d)
                point = next(p for p in curve if math.isclose(p["eps"], at))
                rec, seconds = kit.autoattack_on_survivors(cfg, net, sub.x, sub.y, point, dataset=d,
                                                           model=cfg.model[d], batch_size=cfg.batch_size,
                                                           defense=label, strength=strength)
                out.append(rec)
                run.timings[f"{d}/autoattack"] = {"seconds": seconds}
    run.records += out


def health_all(run: Run) -> None:
    """The health table, per data set, of the model the defense chose (rescaled, or the unmodified one when the
    chosen strength is 0) at the threat radius ``eps``, with the gradient-free check and a transfer check: examples
    from the unmodified model for a rescaled one, from the second copy (seed + 1, trained for every data set) for
    the unmodified one. Rows tagged with ``strength``."""
    cfg = run.cfg
    with run.timer("health checks"):
        for d in cfg.datasets:
            sub, eps = run.data[d]["test"].first(cfg.n_adaptive[d]), cfg.eps[d]
            s = chosen_strength(run.records, d)
            net = rescaled(run.nets[d], run.records, d, cfg, s) if s > 0 else run.nets[d]
            worst = next(p for p in run.raw[d, "compress_amplify" if s > 0 else "none"]
                         if math.isclose(p["eps"], eps))
            run.health += kit.health_rows(net, sub.x, sub.y, dataset=d, model=cfg.model[d], eps=eps,
                                          steps=cfg.health_steps, num_classes=dataset_info(d).num_classes,
                                          seed=cfg.seed, batch_size=cfg.batch_size, worst=worst, strength=s,
                                          transfer_from=run.nets[d] if s > 0 else run.nets[d, "copy"])


# --------------------------------------------------------------------------- tables


def training_table(results: Mapping[str, Any]) -> str:
    """Per data set and model: the recipe in words, clean test accuracy with its interval, training time."""
    cfg, records, rows = {**results["parameters"], "profile": results["profile"]}, results["records"], []
    for d in cfg["datasets"]:
        for seed, suffix in ((cfg["seed"], ""), (cfg["seed"] + 1, f"-seed{cfg['seed'] + 1}")):
            acc = first(records, dataset=d, metric="accuracy", split="test", seed=seed, defense="none")
            if acc is None:
                continue
            t = results["timings"].get(f"{d}/{cfg['model'][d]}{suffix}", {})
            kw = train_recipe(cfg, d, seed)
            rows.append({"data": d, "model": cfg["model"][d], "seed": seed,
                         "recipe": f"zoo `{t['zoo']}`" if t.get("zoo") else "the chapter's own",
                         "training": f"{kw['train_size']:,} images, {kw['config'].describe()}",
                         "clean": pct_interval(acc), "time": duration(t.get("seconds"), t.get("cached", False))})
    return markdown_table(rows, {"data": "data set", "model": "model", "seed": "seed", "recipe": "weights",
                                 "training": "training", "clean": "clean test accuracy [95% CI]",
                                 "time": "training time"})


def fragility_summary(records: Sequence[dict], d: str) -> dict:
    """For data set ``d``: the undropped held-out accuracy; per channel its clean and FGSM fragility; the most
    fragile channel with its dropped-accuracy record; and each channel classified on the same images (the full
    network against the network without it, :func:`robustness_book.evaluate.paired_test`):

    * *fragile*: the exact McNemar test, Holm-adjusted over the layer's channels, finds a loss (p < :data:`ALPHA`);
    * *robust*: an equivalence test, the 95% paired interval of the loss lies inside ± :data:`ROBUST_MARGIN`;
    * *undetermined*: neither (or no per-image outcome in the file).

    ``tests`` holds each channel's paired test (``difference`` = the loss) and ``p_adjusted`` its Holm p;
    ``detectable`` is the smallest loss the test could call fragile on these images in the best case (every
    discordant image one way, at Holm's strictest level)."""
    recs = _no_epoch(records)
    base = one(recs, dataset=d, attack="none", split="val", defense="none", metric="accuracy")
    dropped = sorted(select(recs, dataset=d, attack="none", split="val", defense="nodal_dropout", metric="accuracy"),
                     key=lambda r: r["setting"]["channel"])
    base_iv = evaluate.wilson_interval(round(base["value"] * base["n"]), base["n"])
    tests = {r["setting"]["channel"]: _paired(base, r) for r in dropped}
    adjusted = kit.holm_by(tests)
    fragile, robust, undetermined = [], [], []
    for j, t in tests.items():
        if t is not None and adjusted[j] < ALPHA and t["difference"] > 0:
            fragile.append(j)
        elif t is not None and -ROBUST_MARGIN < t["interval"][0] and t["interval"][1] < ROBUST_MARGIN:
            robust.append(j)
        else:
            undetermined.append(j)
    worst = max(dropped, key=lambda r: base["value"] - r["value"])
    return {"base": {**base, "interval": list(base_iv)}, "most_fragile": worst, "fragile": fragile, "robust": robust,
            "undetermined": undetermined, "tests": tests, "p_adjusted": adjusted,
            "detectable": smallest_detectable(base["n"], ALPHA / max(len(dropped), 1)),
            "clean": fragility_scores(recs, d, "clean"), "fgsm": fragility_scores(recs, d, "fgsm"),
            "channels": len(dropped)}


def neurons_outcome(s: Mapping[str, Any]) -> Outcome:
    """"Fragile and robust neurons exist" from :func:`fragility_summary`: holds with at least one fragile and one
    robust channel; does not hold when every channel was classified and one class is empty; otherwise
    inconclusive (underpowered), naming the smallest loss these images can show."""
    detail = (f"{len(s['fragile'])} fragile, {len(s['robust'])} robust, {len(s['undetermined'])} undetermined of "
              f"{s['channels']} channels on the same {s['base']['n']} held-out images (fragile: exact McNemar, Holm "
              f"over the channels; robust: the loss's 95% paired interval inside ±{100 * ROBUST_MARGIN:g} points; "
              f"the smallest loss one channel can show on these images: {100 * s['detectable']:.1f} points, best "
              f"case)")
    if all(t is None for t in s["tests"].values()):
        return Outcome("inconclusive", "not_measured", kit.NO_PER_IMAGE_NOTE)
    if s["fragile"] and s["robust"]:
        return Outcome("holds", None, detail)
    if not s["undetermined"]:
        return Outcome("does not hold", None, detail + f"; every channel is {'fragile' if s['fragile'] else 'robust'}")
    return Outcome("inconclusive", "underpowered",
                   detail + "; an undetermined channel may be fragile below what these images can show, or robust")


def targeting_outcome(excess: Mapping[str, Any] | None, raw: Mapping[str, Any] | None) -> Outcome:
    """"FGSM concentrates on fragile neurons", judged on the rank correlation of the targeting *excess* (FGSM's
    activation change over a random-sign perturbation's of the same radius, which does not grow with the
    filter's norm) with clean fragility: holds when ρ > 0 with permutation p < :data:`ALPHA`; does not hold when
    ρ < 0 with p < ALPHA, when the excess is the same for every channel, or when the 95% interval of ρ lies below
    :data:`MIN_RHO`; otherwise inconclusive (underpowered). The raw change's correlation (confounded by the
    filter's norm) is named in the detail, never judged."""
    if excess is None:
        return Outcome("inconclusive", "not_measured", "this results file has no targeting excess (rerun the chapter)")
    raw_text = (f"; the raw change (it grows with the filter's norm, as fragility does): ρ = {_rho_text(raw)}"
                if raw else "")
    rho, p, n = excess["value"], excess["setting"]["p"], excess["n"]
    if math.isnan(rho):
        return Outcome("does not hold", None, "FGSM's excess over a random-sign perturbation is the same for every "
                                              "channel" + raw_text)
    lo, hi = spearman_interval(rho, n) if n > 3 else (-1.0, 1.0)
    detail = f"excess over a random-sign perturbation of the same radius: ρ = {_rho_text(excess)}, 95% interval " \
             f"[{lo:+.2f}, {hi:+.2f}] over {n} channels" + raw_text
    if p < ALPHA and rho > 0:
        return Outcome("holds", None, detail)
    if (p < ALPHA and rho < 0) or hi < MIN_RHO:
        return Outcome("does not hold", None, detail + (f"; a correlation of {MIN_RHO:g} is excluded"
                                                        if hi < MIN_RHO else ""))
    return Outcome("inconclusive", "underpowered", detail + f"; the interval still admits ρ = {MIN_RHO:g}")


def _correlation(records, d, x, y) -> dict | None:
    return first(records, dataset=d, metric="rank_correlation", x=x, y=y)


def _rho_text(r: dict | None) -> str:
    if r is None:
        return "–"
    return "undefined (constant)" if math.isnan(r["value"]) else f"{r['value']:+.2f} (p = {r['setting']['p']:.3g})"


def fragility_table(results: Mapping[str, Any]) -> str:
    """Per data set: held-out accuracy, the most fragile channel and what dropping it costs, and how many channels
    are fragile and robust."""
    rows = []
    for d in results["parameters"]["datasets"]:
        s = fragility_summary(results["records"], d)
        w = s["most_fragile"]
        rows.append({"data": d, "base": pct_interval(s["base"]), "top": f"#{w['setting']['channel']}: {pct_interval(w)}",
                     "counts": f"{len(s['fragile'])} / {len(s['robust'])} / {len(s['undetermined'])} of "
                               f"{s['channels']}", "detectable": f"{100 * s['detectable']:.1f}"})
    return markdown_table(rows, {"data": "data set", "base": "held-out accuracy [95% CI]",
                                 "top": "most fragile channel: accuracy without it",
                                 "counts": "fragile / robust / undetermined channels",
                                 "detectable": "smallest loss one channel can show (points)"})


def correlation_table(results: Mapping[str, Any]) -> str:
    """The rank correlations (Spearman's ρ with its permutation p-value) per data set."""
    pairs = {"ρ(targeting excess over random signs, clean fragility)": ("targeting_excess", "fragility_clean"),
             "ρ(targeting, clean fragility)": ("targeting_change", "fragility_clean"),
             "ρ(targeting, FGSM fragility)": ("targeting_change", "fragility_fgsm"),
             "ρ(FGSM fragility, clean fragility)": ("fragility_fgsm", "fragility_clean"),
             "ρ(fragility of the second copy, of the first; channels matched by filter)":
                 ("fragility_clean_seed2", "fragility_clean")}
    columns = {"largest share of images targeting one channel": lambda mine: pct(max(
                   (r["value"] for r in select(mine, metric="targeting_share")), default=float("nan"))),
               **{header: lambda mine, xy=xy: _rho_text(first(mine, metric="rank_correlation", x=xy[0], y=xy[1]))
                  for header, xy in pairs.items()}}
    rows = {d: {"dataset": d} for d in results["parameters"]["datasets"]}
    return record_table(results["records"], rows, columns, corner="data set")


def _test_strengths(records: Sequence[dict], d: str) -> tuple[list[dict], list[float]]:
    test = select(records, dataset=d, defense="compress_amplify", split="test")
    return test, sorted({r["setting"]["strength"] for r in test})


def strength_table(results: Mapping[str, Any]) -> str:
    """Per data set and strength, on the test images: clean accuracy, the authors' FGSM, and the book's clipped FGSM
    at each radius of the grid; the chosen strength is marked."""
    cfg, parts = results["parameters"], []
    for d in cfg["datasets"]:
        chosen = chosen_strength(results["records"], d)
        test, strengths = _test_strengths(results["records"], d)
        grid = sorted(r["eps"] for r in select(test, clip=True, strength=0.0))
        factors = sorted({r["setting"].get("factor", 1.0) for r in select(test, attack="fgsm", clip=False)})
        columns = {"clean [95% CI]": {"attack": "none"},
                   **{("FGSM, authors' [95% CI]" if f == 1.0 else f"authors' ×{f:g}"):
                      {"attack": "fgsm", "clip": False, "eps": f * cfg["authors_eps"][d]} for f in factors},
                   **{f"ε = {e:.3g}": (lambda at, e=e: pct(one(at, attack="fgsm", clip=True, eps=e)["value"]))
                      for e in grid}}
        rows = {f"{s:g}" + (" (chosen)" if s == chosen else ""): {"strength": s} for s in strengths}
        parts.append(f"**{d}** (FGSM of the authors: {cfg['authors_eps'][d]:g} normalized units = "
                     f"{authors_eps_pixels(cfg, d):.4f} pixels, unclipped; ×f: f times that radius; the ε columns "
                     f"are the book's clipped FGSM, the authors' radius in pixels among them)\n\n"
                     + record_table(test, rows, columns, corner="strength"))
    return "\n\n".join(parts)


def worst_case_table(results: Mapping[str, Any]) -> str:
    """Per data set, model (unmodified, rescaled) and radius: the worst case with its interval, and the images each
    member fooled that the earlier ones missed (``smaller ε``: fooled at a smaller radius already)."""
    records, rows = results["records"], []
    for d in results["parameters"]["datasets"]:
        for r in select(records, dataset=d, attack="worst_case"):
            fooled = sorted(select(records, dataset=d, defense=r["defense"], eps=r["eps"], metric="images_fooled"),
                            key=lambda x: x["setting"]["order"])
            rows.append({"data": d, "model": "unmodified" if r["defense"] == "none"
                         else f"compress/amplify, strength {r['setting']['strength']:g}",
                         "eps": f"{r['eps']:.4f}", "worst": pct_interval(r),
                         "added": ", ".join(f"{x['attack'].replace('smaller_eps', 'smaller ε')} {int(x['value'])}"
                                            for x in fooled)})
        for r in select(records, dataset=d, attack="autoattack"):
            rows.append({"data": d, "model": f"compress/amplify, strength {r['setting'].get('strength', 0):g}: "
                         "AutoAttack on the worst case's survivors", "eps": f"{r['eps']:.4f}",
                         "worst": pct_interval(r), "added": f"flags: {r['setting'].get('flags') or 'none'}"})
    return markdown_table(rows, {"data": "data set", "model": "model", "eps": "ε (pixels)",
                                 "worst": "worst-case accuracy [95% CI]", "added": "images each member fooled"})


def health_tables(results: Mapping[str, Any]) -> str:
    """The health checks, one table per data set, network and strength (0: the unmodified network)."""
    return grouped_health_tables(results["health"], by=("dataset", "model", "strength"))


# --------------------------------------------------------------------------- figures


def fragility_figure(results: Mapping[str, Any]):
    """Per data set, each channel's clean and FGSM fragility (accuracy lost when it is dropped), channels ordered by
    clean fragility."""
    records, ds = results["records"], results["parameters"]["datasets"]
    fig, axes = plt.subplots(len(ds), 1, figsize=(10, 3.2 * len(ds)), squeeze=False)
    for ax, d in zip(axes[:, 0], ds):
        s = fragility_summary(records, d)
        order = torch.argsort(s["clean"], descending=True)
        pos = torch.arange(len(order)).numpy()
        ax.bar(pos - 0.2, (100 * s["clean"][order]).numpy(), width=0.4, label="clean")
        ax.bar(pos + 0.2, (100 * s["fgsm"][order]).numpy(), width=0.4, label="FGSM (authors')")
        ax.set_xticks(pos, [str(int(j)) for j in order], fontsize=7 if len(order) > 20 else 9,
                      rotation=90 if len(order) > 20 else 0)
        ax.axhline(0, color="black", lw=0.6)
        ax.set(ylabel="accuracy lost (points)", title=f"{d}: first-layer channels, most fragile first")
        ax.legend()
    axes[-1, 0].set_xlabel("channel")
    fig.tight_layout()
    return fig


def targeting_figure(results: Mapping[str, Any]):
    """Per data set: the targeting distribution (share of images whose most-changed channel is ``j``), channels in
    fragility order; and the targeting change against clean fragility, with Spearman's ρ."""
    records, ds = results["records"], results["parameters"]["datasets"]
    fig, axes = plt.subplots(len(ds), 2, figsize=(11, 3.4 * len(ds)), squeeze=False)
    for (left, right), d in zip(axes, ds):
        clean = fragility_scores(_no_epoch(records), d, "clean")
        order = torch.argsort(clean, descending=True)
        share = torch.tensor([r["value"] for r in sorted(select(records, dataset=d, metric="targeting_share"),
                                                         key=lambda r: r["setting"]["channel"])])
        change = torch.tensor([r["value"] for r in sorted(select(records, dataset=d, metric="targeting_change"),
                                                          key=lambda r: r["setting"]["channel"])])
        left.bar(range(len(order)), (100 * share[order]).numpy())
        left.set(xlabel="channels, most fragile first", ylabel="images targeting it (%)",
                 title=f"{d}: where FGSM lands")
        right.scatter((100 * clean).numpy(), change.numpy(), s=14)
        right.set(xlabel="clean fragility (points)", ylabel="mean activation change",
                  title=f"Spearman ρ = {_rho_text(_correlation(records, d, 'targeting_change', 'fragility_clean'))}")
    fig.tight_layout()
    return fig


def evolution_figure(results: Mapping[str, Any]):
    """Per data set with a second copy: each channel's clean fragility after each measured epoch (the five most
    fragile at the end highlighted)."""
    ev = [r for r in results["records"] if r["setting"].get("epoch")]
    ds = [d for d in results["parameters"]["datasets"] if select(ev, dataset=d)]
    fig, axes = plt.subplots(1, max(len(ds), 1), figsize=(5.5 * max(len(ds), 1), 3.6), squeeze=False)
    for ax, d in zip(axes[0], ds):
        epochs = sorted({r["setting"]["epoch"] for r in select(ev, dataset=d)})
        drops = torch.stack([fragility_scores(ev, d, "clean", epoch=e) for e in epochs])  # (E, C)
        top = set(torch.argsort(drops[-1], descending=True)[:5].tolist())
        for j in range(drops.shape[1]):
            ax.plot(epochs, (100 * drops[:, j]).numpy(), lw=1.6 if j in top else 0.6,
                    alpha=1.0 if j in top else 0.4, label=f"channel {j}" if j in top else None)
        ax.set(xlabel="epoch", ylabel="accuracy lost when dropped (points)", title=f"{d}, second copy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def strength_figure(results: Mapping[str, Any]):
    """Per data set: the book's FGSM accuracy against the radius, one line per strength (test images); and clean
    and authors'-FGSM accuracy against the strength (the cost beside the gain)."""
    records, ds = results["records"], results["parameters"]["datasets"]
    fig, axes = plt.subplots(len(ds), 2, figsize=(11, 3.4 * len(ds)), squeeze=False)
    for (left, right), d in zip(axes, ds):
        test, strengths = _test_strengths(records, d)
        for s in strengths:
            at = select(test, strength=s)
            curve = [(0.0, one(at, attack="none")["value"])] + sorted(
                (r["eps"], r["value"]) for r in select(at, attack="fgsm", clip=True))
            left.plot(*zip(*curve), marker="o", label=f"strength {s:g}")
        left.set(xlabel="ε (pixels)", ylabel="FGSM accuracy (clipped)", title=f"{d}: FGSM vs ε")
        left.legend(fontsize=8)
        authors = {"attack": "fgsm", "clip": False, "eps": results["parameters"]["authors_eps"][d]}
        for label, match in (("clean", {"attack": "none"}), ("FGSM, authors'", authors)):
            pts = [(s, one(test, strength=s, **match)["value"]) for s in strengths]
            right.plot(*zip(*pts), marker="o", label=label)
        right.axvline(chosen_strength(records, d), color="red", ls="--", lw=1, label="chosen")
        right.set(xlabel="strength", ylabel="accuracy", title=f"{d}: gain and cost")
        right.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- verdict


def _paired(a: dict | None, b: dict | None) -> dict | None:
    """The paired test of two records on the same images, or ``None`` when either has no per-image outcome (left
    out of the Holm family)."""
    ma, mb = kit.per_image(a), kit.per_image(b)
    return evaluate.paired_test(ma, mb) if ma is not None and mb is not None and ma.shape == mb.shape else None


def _removed(weak: dict | None, weak_reference: dict | None, worst: dict | None) -> dict | None:
    """:func:`robustness_book.evaluate.outcome.removed_by` on the first images of the worst case (``weak`` and
    ``weak_reference``, the rescaled and the unmodified network under the same weak attack, cover at least as many:
    the worst case's images are the first ``n_adaptive`` of the test images)."""
    mask, ref, strong = kit.per_image(weak), kit.per_image(weak_reference), kit.worst_from_record(worst)
    if strong is None or mask is None or ref is None:
        return None
    n = len(strong["robust_mask"])
    if min(len(mask), len(ref)) < n:
        return None
    return removed_by(mask[:n], strong, weak_reference=ref[:n])


def _claim(outcome: Outcome, test: dict | None, **extra: Any) -> dict:
    return {**outcome.to_dict(), "test": test, **extra}


def _sweep(test: Sequence[dict], d: str, chosen: float, authors: float, num_classes: int) -> dict:
    """The paper's FGSM comparison (chosen strength against 0, same images) at each multiple of the authors'
    radius the run measured (``factor``), Holm over the multiples: ``{factor: claim}``. Reported beside the claim,
    which is judged at ×1."""
    factors = sorted({r["setting"].get("factor", 1.0) for r in select(test, attack="fgsm", clip=False)})
    pairs = {f: (first(test, strength=chosen, attack="fgsm", clip=False, eps=f * authors),
                 first(test, strength=0.0, attack="fgsm", clip=False, eps=f * authors)) for f in factors}
    adjusted = kit.holm_by({f: _paired(*ab) for f, ab in pairs.items()})
    out = {}
    for f, (a, b) in pairs.items():
        o, t = kit.paired_outcome(a, b, min_effect=MIN_EFFECT, p_adjusted=adjusted.get(f), num_classes=num_classes)
        out[f] = _claim(o, t, p_adjusted=adjusted.get(f), eps=f * authors)
    return out


def verdict_summary(results: Mapping[str, Any]) -> dict:
    """Per data set, from the results (live, read back, or hand-made records of the same shape), the four claims:

    - ``neurons``: fragile and robust neurons exist (:func:`neurons_outcome`: paired tests per channel, Holm over
      the channels, an equivalence test for robust);
    - ``targeting``: FGSM concentrates on fragile neurons (:func:`targeting_outcome`: the rank correlation of
      FGSM's *excess* activation change over a random-sign perturbation with clean fragility);
    - ``fgsm_gain`` and ``adaptive_gain``: compress/amplify at the chosen strength against strength 0 on the same
      images (:func:`kit.paired_outcome`, gain of at least :data:`MIN_EFFECT`, Holm over the data sets), under the
      authors' FGSM at their radius, and under the adaptive worst case at :func:`judged_radius` (confirmed by
      AutoAttack on its survivors). Each is a dict: ``outcome`` (holds / does not hold / inconclusive),
      ``reason`` (why inconclusive), ``detail`` (the numbers), ``mechanism`` (only with
      :func:`robustness_book.evaluate.outcome.removed_by`'s evidence, then ``evidence`` holds it), ``test`` (the paired
      test) and ``p_adjusted``. When validation chose strength 0 both do not hold (the rule kept the unmodified
      network). ``threat``: the worst cases at the threat radius ``eps``, reported beside, not judged.
      ``sweep``: the FGSM comparison at each multiple of the authors' radius (``authors_factors``), reported.
      The artefact evidence compares the rescaled network's worst case with its own *clipped* FGSM at the judged
      radius on the same images (the same radius and box: ``clipped_fgsm``, per strength), after that FGSM showed
      a significant gain over strength 0 there.

    ``category`` (for pages and tests that read one word): ``broken`` (the network the defense chose is broken,
    :data:`kit.BROKEN_RULE`), ``real`` (the gain survives), ``fgsm_only`` (only with removed_by's evidence),
    ``inconclusive``, ``no_gain``. ``note``: :data:`kit.NO_PER_IMAGE_NOTE` for a file without per-image outcomes.
    """
    recs, p = results["records"], results["parameters"]
    health = results.get("health", [])
    ds, seen = p["datasets"], {}
    for d in ds:
        chosen = chosen_strength(recs, d)
        test = select(recs, dataset=d, defense="compress_amplify", split="test")
        at = judged_radius(recs, p, d)
        threat = float(p["eps"][d]) if "eps" in p else float(threat_eps(d))
        authors = float(p.get("authors_eps", AUTHORS_EPS)[d])
        seen[d] = {"chosen": chosen, "at": at, "threat_eps": threat, "authors_eps": authors,
                   "fgsm": {st: one(test, strength=st, attack="fgsm", clip=False, eps=authors)
                            for st in {0.0, chosen}},
                   "clipped": {st: first(test, strength=st, attack="fgsm", clip=True, eps=at) if at is not None
                               else None for st in {0.0, chosen}},
                   "clean": {st: one(test, strength=st, attack="none") for st in {0.0, chosen}},
                   "worst": {lab: first(recs, dataset=d, attack="worst_case", defense=lab, eps=at)
                             for lab in ("none", "compress_amplify")} if at is not None else {},
                   "threat": {lab: first(recs, dataset=d, attack="worst_case", defense=lab, eps=threat)
                              for lab in ("none", "compress_amplify")},
                   "autoattack": first(recs, dataset=d, attack="autoattack", defense="compress_amplify", eps=at)
                   if at is not None else None}
    live = [d for d in ds if seen[d]["chosen"] > 0]
    holm_fgsm = kit.holm_by({d: _paired(seen[d]["fgsm"][seen[d]["chosen"]], seen[d]["fgsm"][0.0]) for d in live})
    holm_worst = kit.holm_by({d: _paired(seen[d]["worst"].get("compress_amplify"), seen[d]["worst"].get("none"))
                              for d in live})
    out = {}
    for d in ds:
        v = seen[d]
        s, chosen = fragility_summary(recs, d), v["chosen"]
        rho = _correlation(recs, d, "targeting_change", "fragility_clean")
        excess = _correlation(recs, d, "targeting_excess", "fragility_clean")
        neurons, targeting = neurons_outcome(s), targeting_outcome(excess, rho)
        num_classes = dataset_info(d).num_classes
        broken = kit.is_broken(v["clean"][chosen], num_classes)
        mine = [r for r in health if r.get("dataset") == d]
        mechanism = evidence = None
        if broken:
            kept = Outcome("inconclusive", "broken", "the network the defense chose is near chance")
            fgsm_claim, worst_claim = _claim(kept, None), _claim(kept, None)
        elif chosen == 0:
            kept = Outcome("does not hold", None, "validation kept strength 0: no strength raised held-out FGSM "
                                                  "accuracy within the clean budget")
            fgsm_claim, worst_claim = _claim(kept, None), _claim(kept, None)
        else:
            common = dict(min_effect=MIN_EFFECT, health=mine, num_classes=num_classes, clean=v["clean"][chosen])
            fo, ftest = kit.paired_outcome(v["fgsm"][chosen], v["fgsm"][0.0], p_adjusted=holm_fgsm.get(d), **common)
            wo, wtest = kit.paired_outcome(v["worst"].get("compress_amplify"), v["worst"].get("none"),
                                           confirm=v["autoattack"], p_adjusted=holm_worst.get(d), **common)
            if fo.outcome == "holds" and wo.outcome == "does not hold":
                # the weak attack at the same radius, in the same box, on the same images: the book's clipped FGSM
                evidence = _removed(v["clipped"][chosen], v["clipped"][0.0], v["worst"]["compress_amplify"])
                if evidence:
                    mechanism = (f"an FGSM artefact: the gain was removed by {evidence['member']} "
                                 f"({evidence['images']} images)")
            fgsm_claim = _claim(fo, ftest, p_adjusted=holm_fgsm.get(d))
            worst_claim = _claim(Outcome(wo.outcome, wo.reason, wo.detail, mechanism), wtest,
                                 p_adjusted=holm_worst.get(d), evidence=evidence)
        tw = v["threat"]
        ma, mb = kit.per_image(tw["compress_amplify"]), kit.per_image(tw["none"])
        reported = None if v["at"] is not None and math.isclose(v["threat_eps"], v["at"]) else {
            **tw, "eps": v["threat_eps"],
            "test": evaluate.paired_test(ma, mb) if ma is not None and mb is not None else None}
        no_masks = any(kit.per_image(r) is None for r in (*v["fgsm"].values(), *v["worst"].values()) if r)
        outcomes = (fgsm_claim["outcome"], worst_claim["outcome"])
        out[d] = {"neurons": neurons.to_dict(), "fragile": s["fragile"], "robust": s["robust"],
                  "undetermined": s["undetermined"], "channels": s["channels"], "detectable": s["detectable"],
                  "targeting": targeting.to_dict(), "targeting_rho": rho, "targeting_excess": excess,
                  "sweep": _sweep(select(recs, dataset=d, defense="compress_amplify", split="test"), d, chosen,
                                  v["authors_eps"], num_classes) if chosen > 0 and not broken else {},
                  "clipped_fgsm": v["clipped"],
                  # channel j of one seed and of another are the same neuron only after matching
                  "seed_rho": first(recs, dataset=d, metric="rank_correlation", x="fragility_clean_seed2",
                                    y="fragility_clean", matched="filter cosine similarity"),
                  "strength": chosen, "fgsm": v["fgsm"], "clean": v["clean"], "judged_eps": v["at"],
                  "min_effect": MIN_EFFECT, "fgsm_gain": fgsm_claim, "worst": v["worst"],
                  "adaptive_gain": worst_claim, "threat": reported, "autoattack": v["autoattack"],
                  "broken": broken, "note": kit.NO_PER_IMAGE_NOTE if no_masks else None,
                  "category": "broken" if broken else "real" if worst_claim["outcome"] == "holds"
                  else "fgsm_only" if mechanism else "inconclusive" if "inconclusive" in outcomes else "no_gain",
                  "failed_checks": kit.failed_checks(health, dataset=d)}
    return out


def _outcome_text(claim: Mapping[str, Any]) -> str:
    return Outcome(claim["outcome"], claim["reason"], claim["detail"]).text()


def _compress_amplify_lines(d: str, v: Mapping[str, Any], params: Mapping[str, Any]) -> list[str]:
    s, f0, f1 = v["strength"], v["fgsm"][0.0], v["fgsm"][v["strength"]]
    authors = params.get("authors_eps", AUTHORS_EPS)[d]
    model = params.get("model", {}).get(d) if isinstance(params.get("model"), Mapping) else params.get("model")
    whose = ("" if model == "resnet18" else
             f"; the radius the authors set for ResNet-18, reused for {model or 'this network'} by the book's choice")
    lines = [f"Compress/amplify at strength {s:g} against strength 0, under the authors' FGSM at their radius "
             f"({authors:g} normalized units, unclipped{whose}; the paper's claim) on the same {f0['n']} test "
             f"images: {pct_interval(f0)} → {pct_interval(f1)} (clean {pct_interval(v['clean'][0.0])} → "
             f"{pct_interval(v['clean'][s])}). The paper's claim: {_outcome_text(v['fgsm_gain'])}."]
    others = {f: c for f, c in v["sweep"].items() if f != 1.0}
    if others:
        lines.append("The same comparison at other multiples of their radius (reported, under FGSM only: the "
                     f"adaptive worst case does not re-check them; Holm over the {len(v['sweep'])} radii): " + "; ".join(
                         f"×{f:g} ({c['eps']:.3g} normalized): {_outcome_text(c)}" for f, c in others.items()) + ".")
    w0, w1 = v["worst"].get("none"), v["worst"].get("compress_amplify")
    if w0 is not None and w1 is not None:
        aa = v["autoattack"]
        lines.append(f"Does it survive the adaptive worst case? Judged at the authors' radius, ε = "
                     f"{v['judged_eps']:.4f} pixels, clipped (of the radii the chapter measures the one nearest "
                     f"theirs): {pct_interval(w0)} → {pct_interval(w1)} on "
                     f"the first {w0['n']} test images"
                     + (f", AutoAttack on the rescaled network's survivors {pct_interval(aa)}" if aa else "")
                     + f". Survival: {_outcome_text(v['adaptive_gain'])}.")
    ev = v["adaptive_gain"].get("evidence")
    if v["adaptive_gain"]["mechanism"] and ev:
        t = ev["test"]
        lines.append(f"Mechanism: {v['adaptive_gain']['mechanism']}. On the same first {t['n']} test images the "
                     f"rescaled network's worst case is {100 * t['difference']:.1f} points "
                     f"[{100 * t['interval'][0]:.1f}, {100 * t['interval'][1]:.1f}] below its own FGSM accuracy at "
                     f"the same radius, clipped (McNemar p = {t['p']:.2g}); {ev['member']} fooled most of the images "
                     f"FGSM left standing.")
    r = v["threat"]
    if r and r.get("none") and r.get("compress_amplify"):
        gap = (f", paired difference {100 * r['test']['difference']:+.1f} points" if r["test"] else "")
        lines.append(f"At the threat radius ε = {r['eps']:.4f} (reported, not judged: the unmodified network is "
                     f"at {pct_interval(r['none'])} there): {pct_interval(r['none'])} → "
                     f"{pct_interval(r['compress_amplify'])}{gap}.")
    return lines


def verdict(results: Mapping[str, Any]) -> str:
    """The verdict in Markdown, sentence by sentence from :func:`verdict_summary`: per claim the outcome word, the
    reason when inconclusive, the numbers; a mechanism word only with removed_by's evidence; AutoAttack's flags,
    :data:`kit.BROKEN_RULE` and the smoke note."""
    lines, notes, summary = [], set(), verdict_summary(results)
    for d, v in summary.items():
        lines.append(f"**{d}.** Fragile and robust neurons: {_outcome_text(v['neurons'])}. "
                     f"FGSM concentrating on fragile neurons: {_outcome_text(v['targeting'])}.")
        if v["seed_rho"] is not None:
            r = v["seed_rho"]
            lines.append(f"Fragility across two training seeds, channels matched by their filters (mean cosine "
                         f"similarity {r['setting']['similarity']:.2f}; reported): ρ = {_rho_text(r)}.")
        if v["broken"]:
            lines.append(f"Verdict: the network the defense chose is broken (clean test accuracy "
                         f"{pct_interval(v['clean'][v['strength']])}): its robustness numbers are not interpreted.")
        elif v["strength"] == 0:
            lines.append("Compress/amplify: no strength raised held-out FGSM accuracy within the clean budget, so "
                         "the rule kept the unmodified model; the claim does not hold here.")
        else:
            lines += _compress_amplify_lines(d, v, results["parameters"])
        if v["failed_checks"]:
            lines.append(f"Health checks failed (threat radius): {', '.join(v['failed_checks'])}.")
        if v["note"]:
            notes.add(v["note"])
        lines.append("")
    aa = select(results["records"], attack="autoattack")
    flags = kit.autoattack_flags(aa)
    lines += [f"Both compress/amplify claims compare the same images (exact McNemar test, Holm-adjusted over the "
              f"data sets): a significant gain holds (a floor hides gains, it cannot fake one); *does not hold* needs "
              f"the interval to exclude a gain of {100 * MIN_EFFECT:.0f} points; a missing gain where strength 0 is "
              f"at the floor is inconclusive (floor); a failed gradient-free, transfer, step-doubling or chance check "
              f"makes a positive inconclusive."]
    chosen = [v["strength"] for v in summary.values()]
    lines += ["; ".join(flags) + "." if flags else "No AutoAttack flag fired." if aa else
              "AutoAttack did not run: no strength above 0 was chosen." if not any(chosen) else
              "This results file has no AutoAttack record."]
    lines += [f"Note: {n}." for n in sorted(notes)]
    lines += ["", kit.BROKEN_RULE, "", kit.smoke_note(results.get("profile", ""))]
    return "\n".join(lines).strip()


def glance_rows(results: Mapping[str, Any]) -> list[dict]:
    """The "Results at a glance" rows (:data:`kit.GLANCE_KEYS`), one per data set, from :func:`verdict_summary`:
    compress/amplify at the chosen strength, the authors' FGSM, and the book's worst case at the judged radius
    (AutoAttack on its survivors where it ran); the outcome is the adaptive-gain claim's."""
    rows = []
    for d, v in verdict_summary(results).items():
        clean = v["clean"][v["strength"]]
        worst = v["autoattack"] or v["worst"].get("compress_amplify")
        rows.append(kit.glance_row(
            results, CHAPTER, dataset=d, threat_model="linf", eps=v["judged_eps"], defense="compress_amplify",
            network=clean["model"], claim_name="compress/amplify is more robust than strength 0",
            claim=v["adaptive_gain"], clean=clean, paper_attack="FGSM (the authors')",
            paper_attack_acc=v["fgsm"][v["strength"]], worst_case=worst))
    return rows
