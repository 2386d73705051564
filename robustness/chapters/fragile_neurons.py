"""Chapter — fragile neurons (Pravin et al., ICANN 2021), reconstructed and attacked adaptively (id ``fragile_neurons``).

Everything the page calls, in page order:

* :data:`SPEC` (parameters, profiles ``smoke``/``laptop``/``paper``) and the training recipes (:func:`train_recipe`:
  the shared zoo's models in the smaller profiles, the authors' ResNet-18/Adam recipe in ``paper``);
* the measurements, each returning result records: :func:`train_all` (models, clean test accuracy, and the
  second-seed copies whose fragility is measured after every ``evolution_every`` epochs), :func:`fragility_all`
  (nodal dropout on validation images), :func:`targeting_all` (where FGSM lands, with rank correlations),
  :func:`strength_all` (compress/amplify over a strength grid: the strength chosen on validation, FGSM curves on
  test), :func:`adaptive_all` (the toolkit's worst case on the unmodified and the rescaled model) and
  :func:`health_all`;
* tables and figures as functions of the records; the verdict (:func:`verdict_summary`, :func:`verdict`), a pure
  function of the results with its thresholds as module constants.

The method itself (dropout views, fragility, targeting, compress/amplify) is :mod:`robustness.defenses.fragile_neurons`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from .. import attacks, evaluate, zoo
from ..config import ChapterSpec, Param, RunConfig, check_counts
from ..data import DATASETS, ArrayDataset, dataset_info, load_dataset, threat_eps
from ..defenses import fragile_neurons as fn
from ..evaluate import members as M
from ..models import MODELS, check_model
from ..report import markdown_table, pct, pct_interval
from ..results import one, record, select
from ..train import TrainConfig, trained_model

CHAPTER = "fragile_neurons"
RECIPES = ("zoo", "authors")
SCORES = ("clean", "fgsm")

#: The authors' later code (InferLink) normalizes MNIST with std 0.3081 and CIFAR-10 with std 0.5 and runs FGSM in
#: that normalized space, unclipped; its radii are in those units. A radius of ``e`` there is ``e · std`` pixels.
AUTHORS_STD = {"mnist": 0.3081, "fashion_mnist": 0.3081, "cifar10": 0.5}
#: Their ResNet-18 radii (normalized units): MNIST 0.38, CIFAR-10 0.015 (Fashion-MNIST: MNIST's, the book's choice).
AUTHORS_EPS = {"mnist": 0.38, "fashion_mnist": 0.38, "cifar10": 0.015}

#: Verdict thresholds. A rank correlation counts when its permutation p-value is below ALPHA; accuracies are
#: compared by their 95% Wilson intervals (robustness.evaluate.clearly_greater), never as points.
ALPHA = 0.05


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
    if 0.0 not in cfg.strengths:
        raise ValueError(f"parameter strengths={cfg.strengths} must contain 0 (the unmodified model)")


PARAMS = {
    "datasets": Param("subset", "data sets the chapter runs on", DATASETS),
    "model": Param("choice", "architecture (robustness.models) per data set", tuple(MODELS), per_dataset=True),
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
    "eps_grid": Param("eps_linf_list", "L∞ radii on [0, 1] pixels of the book's clipped FGSM curves",
                      per_dataset=True),
    "strengths": Param("nonneg_float_list", "compress/amplify strengths tried (0 leaves the model unchanged)"),
    "score": Param("choice", "fragility score that drives compress/amplify: clean (the definition of the thesis) or fgsm",
                   SCORES),
    "clean_budget": Param("nonneg_float", "largest validation clean-accuracy loss a chosen strength may cost",
                          per_dataset=True),
    "evolution": Param("bool", "train a second copy (seed + 1) and measure fragility during training",
                       per_dataset=True),
    "evolution_every": Param("pos_int", "epochs between two fragility measurements of the second copy",
                             per_dataset=True),
    "n_adaptive": Param("pos_int", "test images for the adaptive worst case (the first N)", per_dataset=True),
    "pgd_steps": Param("pos_int", "steps of the PGD members of the worst case"),
    "restarts": Param("pos_int", "random restarts of the PGD members"),
    "square_queries": Param("pos_int", "queries per image of the Square member"),
    "health_steps": Param("pos_int", "PGD steps of the health checks"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed (the second copy uses seed + 1)"),
}


def _per(gray, color) -> dict:
    return {"mnist": gray, "fashion_mnist": gray, "cifar10": color}


def _zoo_training(profile: str) -> dict:
    """train_size and epochs of each data set's zoo recipe at ``profile`` (shared with the other chapters)."""
    recipes = {d: zoo.for_dataset(d, profile) for d in DATASETS}
    return {"train_size": {d: r.train_size for d, r in recipes.items()},
            "epochs": {d: r.config.epochs for d, r in recipes.items()}}


_COMMON = {
    "datasets": ["mnist", "cifar10"], "model": dict(zoo.ARCH), "recipe": "zoo", "authors_eps": dict(AUTHORS_EPS),
    "eps_grid": _per([0.05, 0.1, 0.2, 0.3], [1 / 255, 2 / 255, 4 / 255, 8 / 255]),
    "strengths": [0.0, 0.25, 0.5, 1.0, 2.0], "score": "clean", "clean_budget": _per(0.01, 0.03),
    "batch_size": 250, "seed": 0,
}

PROFILES = {
    "smoke": {**_COMMON, **_zoo_training("smoke"), "n_val": _per(300, 200), "n_fragility": _per(300, 100),
              "n_test": _per(300, 100), "strengths": [0.0, 1.0], "eps_grid": _per([0.1, 0.3], [8 / 255]),
              "evolution": _per(True, False), "evolution_every": 1, "n_adaptive": _per(40, 16), "pgd_steps": 10,
              "restarts": 1, "square_queries": 100, "health_steps": 5},
    # 2 CPU cores: the zoo's shared models (MNIST LeNetLike on 55,000 images, CIFAR-10 AlexLike on 49,000 with the
    # book's fast recipe); the images after them are the held-out ones. The second copy trains on MNIST only (a
    # second AlexLike would double the CIFAR-10 training time).
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
    """The :func:`robustness.train.trained_model` keyword arguments of data set ``d``'s model.

    ``zoo``: the zoo recipe of the profile (:func:`robustness.zoo.variant`), so an unchanged run shares the model
    with the other chapters; ``authors``: Adam (lr 1e-3, no weight decay), batch 100, no augmentation, as the
    authors' later code. ``seed`` (default ``cfg["seed"]``) seeds initialization and batch order."""
    seed = cfg["seed"] if seed is None else seed
    if cfg["recipe"][d] == "zoo":
        return zoo.variant(zoo.for_dataset(d, cfg["profile"]), model=cfg["model"][d], train_size=cfg["train_size"][d],
                           epochs=cfg["epochs"][d], seed=seed)
    config = TrainConfig(epochs=cfg["epochs"][d], batch_size=100, lr=1e-3, weight_decay=0.0, optimizer="adam",
                         seed=seed)
    return {"model": cfg["model"][d], "dataset": d, "config": config, "train_size": cfg["train_size"][d]}


def splits(cfg: Mapping[str, Any], d: str) -> dict:
    """``val``: the ``n_val`` training images after the first ``train_size`` (never trained on); ``test``: the
    first ``n_test`` test images."""
    train = load_dataset(d, "train")
    a, b = cfg["train_size"][d], cfg["train_size"][d] + cfg["n_val"][d]
    val = ArrayDataset(d, "val", train.x[a:b], train.y[a:b], f"{train.source}; images {a + 1:,}–{b:,}, held out")
    return {"val": val, "test": load_dataset(d, "test").first(cfg["n_test"][d])}


class FragilityByEpoch:
    """An ``epoch_callback`` for the training loop: every ``every`` epochs (and at the last), the clean accuracy of
    the model and of each one-channel dropout on fixed held-out images, as counts (the history keeps them, so a
    cached model brings its evolution along)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, every: int, epochs: int, batch_size: int, source: str):
        self.x, self.y, self.every, self.epochs, self.batch_size = x, y, every, epochs, batch_size
        self.spec = {"name": "fragility_by_epoch", "every": every, "n": len(y), "images": source}

    def __call__(self, epoch: int, model: nn.Module) -> dict:
        if epoch % self.every and epoch != self.epochs:
            return {}
        r = fn.fragility(model, self.x, self.y, eps=0.0, batch_size=self.batch_size, fgsm_too=False)
        return {"clean_k": round(r["clean_base"] * r["n"]), "dropped_k": r["clean_k"].tolist(), "n": r["n"]}


def train_all(cfg: RunConfig) -> tuple[dict, dict, list[dict], dict]:
    """Per data set: the model (``nets[d]``), the data (``data[d]``), and, with ``evolution``, the second copy
    (seed + 1) trained with :class:`FragilityByEpoch`. Records: clean test accuracy of both; the copy's per-epoch
    fragility (``epoch`` in the setting). Timings: training seconds and whether each model came from the cache."""
    nets, data, records, timings = {}, {}, [], {}
    for d in cfg.datasets:
        data[d] = splits(cfg, d)
        net, meta = zoo.model_for(**train_recipe(cfg, d))
        nets[d] = net
        timings[f"{d}/{cfg.model[d]}"] = {"seconds": meta.get("train_seconds"), "cached": meta["cached"],
                                          "zoo": meta.get("zoo")}
        records.append(_accuracy(cfg, d, net, data[d]["test"], seed=cfg.seed))
        if cfg.evolution[d]:
            val = data[d]["val"].first(cfg.n_fragility[d])
            kw = train_recipe(cfg, d, seed=cfg.seed + 1)
            cb = FragilityByEpoch(val.x, val.y, cfg.evolution_every[d], kw["config"].epochs, cfg.batch_size,
                                  val.source)
            copy_net, copy_meta = trained_model(**kw, epoch_callback=cb)
            nets[d, "copy"] = copy_net
            timings[f"{d}/{cfg.model[d]}-seed{cfg.seed + 1}"] = {"seconds": copy_meta.get("train_seconds"),
                                                                 "cached": copy_meta["cached"], "zoo": None}
            records.append(_accuracy(cfg, d, copy_net, data[d]["test"], seed=cfg.seed + 1))
            records += _evolution_records(cfg, d, copy_meta["history"]["epochs"])
    return nets, data, records, timings


def _accuracy(cfg, d, net, ds, seed, **setting) -> dict:
    r = evaluate.accuracy_record(evaluate.predict(net, ds.x, cfg.batch_size) == ds.y)
    return record(cfg, dataset=d, model=cfg.model[d], metric="accuracy", value=r["value"], n=r["n"],
                  interval=r["interval"], seed=seed, split=ds.split, **setting)


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


def fragility_all(nets: dict, data: dict, cfg: RunConfig) -> list[dict]:
    """Per data set, on the first ``n_fragility`` held-out images: each first-layer channel dropped in turn, clean
    accuracy and FGSM accuracy (the authors' convention: normalized-space radius ``authors_eps``, unclipped, every
    image attacked), as records with ``channel``; the undropped model's as ``channel=None``."""
    out = []
    for d in cfg.datasets:
        val = data[d]["val"].first(cfg.n_fragility[d])
        eps = authors_eps_pixels(cfg, d)
        r = fn.fragility(nets[d], val.x, val.y, eps=eps, clip=False, batch_size=cfg.batch_size)
        n = r["n"]
        fgsm = dict(attack="fgsm", threat_model="linf_normalized", eps=cfg.authors_eps[d], clip=False)
        kw = dict(dataset=d, model=cfg.model[d], metric="accuracy", n=n, split="val")
        out.append(record(cfg, value=r["clean_base"], channel=None, **kw))
        out.append(record(cfg, value=r["fgsm_base"], channel=None, **fgsm, **kw))
        for j in range(len(r["clean"])):
            out.append(record(cfg, value=float(r["clean"][j]), defense="nodal_dropout", channel=j,
                              interval=evaluate.wilson_interval(int(r["clean_k"][j]), n), **kw))
            out.append(record(cfg, value=float(r["fgsm"][j]), defense="nodal_dropout", channel=j,
                              interval=evaluate.wilson_interval(int(r["fgsm_k"][j]), n), **fgsm, **kw))
    return out


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


def targeting_all(nets: dict, data: dict, records: Sequence[dict], cfg: RunConfig) -> list[dict]:
    """Per data set: the targeting measurement (:func:`robustness.defenses.fragile_neurons.targeting`, the authors'
    FGSM, held-out images) as per-channel records (``targeting_change``, ``targeting_share``), and rank
    correlations (Spearman, permutation p-value) of the targeting change with the clean fragility and with the
    FGSM fragility, of the two fragilities with each other, and, with a second copy, of the clean fragility of the
    two seeds."""
    out = []
    for d in cfg.datasets:
        val = data[d]["val"].first(cfg.n_fragility[d])
        t = fn.targeting(nets[d], val.x, val.y, eps=authors_eps_pixels(cfg, d), clip=False,
                         batch_size=cfg.batch_size)
        kw = dict(dataset=d, model=cfg.model[d], attack="fgsm", threat_model="linf_normalized",
                  eps=cfg.authors_eps[d], n=t["n"], split="val")
        for j in range(len(t["change"])):
            out.append(record(cfg, metric="targeting_change", value=float(t["change"][j]), channel=j, **kw))
            out.append(record(cfg, metric="targeting_share", value=float(t["share"][j]), channel=j, **kw))
        fr = {s: fragility_scores(_no_epoch(records), d, s, seed=cfg.seed) for s in SCORES}
        pairs = {("targeting_change", "fragility_clean"): (t["change"], fr["clean"]),
                 ("targeting_change", "fragility_fgsm"): (t["change"], fr["fgsm"]),
                 ("fragility_fgsm", "fragility_clean"): (fr["fgsm"], fr["clean"])}
        if cfg.evolution[d]:
            last = max(r["setting"]["epoch"] for r in select(records, dataset=d) if r["setting"].get("epoch"))
            pairs["fragility_clean_seed2", "fragility_clean"] = (
                fragility_scores(records, d, "clean", seed=cfg.seed + 1, epoch=last), fr["clean"])
        for (a, b), (u, v) in pairs.items():
            s = evaluate.spearman(u, v, seed=cfg.seed)
            out.append(record(cfg, dataset=d, model=cfg.model[d], metric="rank_correlation", value=s["rho"],
                              n=s["n"], x=a, y=b, p=s["p"], permutations=s["permutations"]))
    return out


def _no_epoch(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if "epoch" not in r["setting"]]


# --------------------------------------------------------------------------- compress/amplify


def _fgsm_accuracy(cfg, d: str, net: nn.Module, ds, *, authors: bool, eps: float | None = None) -> dict:
    """FGSM accuracy of ``net`` on ``ds``: the authors' convention (their radius, unclipped) or the book's
    (``eps`` pixels, clipped to [0, 1])."""
    radius = authors_eps_pixels(cfg, d) if authors else eps
    x_adv = evaluate.run_attack(attacks.fgsm, net, ds.x, ds.y, cfg.batch_size, eps=radius, clip=not authors)
    r = evaluate.accuracy_record(evaluate.predict(net, x_adv, cfg.batch_size) == ds.y)
    where = (dict(threat_model="linf_normalized", eps=cfg.authors_eps[d], clip=False) if authors
             else dict(threat_model="linf", eps=eps, clip=True))
    return dict(metric="accuracy", attack="fgsm", value=r["value"], n=r["n"], interval=r["interval"], **where)


def rescaled(net: nn.Module, records: Sequence[dict], d: str, cfg: Mapping[str, Any], strength: float) -> nn.Module:
    """The compress/amplify copy of ``net`` at ``strength``, driven by the run's ``score`` (held-out fragility)."""
    return fn.compress_amplify(net, fragility_scores(_no_epoch(records), d, cfg["score"], seed=cfg["seed"]), strength)


def choose_strength(records: Sequence[dict], d: str, budget: float) -> dict:
    """The validation rule, fixed before any test number is seen: among the strengths whose held-out clean accuracy
    is at most ``budget`` below that of strength 0, the one with the highest held-out FGSM accuracy (the authors'
    convention: the paper's claim is about FGSM); ties go to the smaller strength, so 0 wins unless one helps."""
    val = [r for r in select(records, dataset=d, defense="compress_amplify", split="val")]
    by = {}
    for r in val:
        by.setdefault(r["setting"]["strength"], {})[r["attack"]] = r["value"]
    clean0 = by[0.0]["none"]
    ok = [s for s, v in by.items() if v["none"] >= clean0 - budget - 1e-12]
    best = max(sorted(ok), key=lambda s: (by[s]["fgsm"], -s))
    return {"strength": best, "clean": by[best]["none"], "fgsm": by[best]["fgsm"]}


def strength_all(nets: dict, data: dict, records: Sequence[dict], cfg: RunConfig) -> list[dict]:
    """Per data set and strength of ``strengths``: held-out clean and FGSM (authors') accuracy, the chosen strength
    (:func:`choose_strength`), then on the test images clean accuracy, the authors' FGSM and the book's clipped
    FGSM over ``eps_grid``."""
    out = []
    for d in cfg.datasets:
        val = data[d]["val"].first(cfg.n_fragility[d])
        test = data[d]["test"]
        for s in sorted(cfg.strengths):
            net = rescaled(nets[d], records, d, cfg, s)
            base = dict(dataset=d, model=cfg.model[d], defense="compress_amplify", strength=s, score=cfg.score)
            for ds in (val, test):
                r = evaluate.accuracy_record(evaluate.predict(net, ds.x, cfg.batch_size) == ds.y)
                out.append(record(cfg, metric="accuracy", value=r["value"], n=r["n"], interval=r["interval"],
                                  split=ds.split, **base))
                out.append(record(cfg, split=ds.split, **base, **_fgsm_accuracy(cfg, d, net, ds, authors=True)))
            for e in cfg.eps_grid[d]:
                out.append(record(cfg, split="test", **base, **_fgsm_accuracy(cfg, d, net, test, authors=False, eps=e)))
        chosen = choose_strength(out, d, cfg.clean_budget[d])
        out.append(record(cfg, dataset=d, model=cfg.model[d], defense="compress_amplify", metric="chosen_strength",
                          value=chosen["strength"], budget=cfg.clean_budget[d], score=cfg.score))
    return out


def chosen_strength(records: Sequence[dict], d: str) -> float:
    return one(records, dataset=d, metric="chosen_strength")["value"]


# --------------------------------------------------------------------------- beyond the paper: adaptive evaluation


def adaptive_radii(cfg: Mapping[str, Any], d: str) -> list[float]:
    """The worst case's radii: the authors' FGSM radius in pixels (as a clipped threat model) and the data set's
    threat radius."""
    return sorted({round(authors_eps_pixels(cfg, d), 6), float(threat_eps(d))})


def adaptive_all(nets: dict, data: dict, records: Sequence[dict], cfg: RunConfig) -> tuple[list[dict], dict]:
    """The toolkit's worst case (PGD-CE, PGD-margin, Square; for the rescaled model also PGD transferred from the
    unmodified one) on the first ``n_adaptive`` test images, nested over :func:`adaptive_radii`, for the unmodified
    model and, when validation chose a strength > 0, for the rescaled one. Returns records and the raw results (for
    the health table's gradient-free check)."""
    out, raw = [], {}
    for d in cfg.datasets:
        sub = data[d]["test"].first(cfg.n_adaptive[d])
        s = chosen_strength(records, d)
        for label, strength in (("none", 0.0), ("compress_amplify", s))[:2 if s > 0 else 1]:
            net = nets[d] if label == "none" else rescaled(nets[d], records, d, cfg, strength)
            members = M.default_members(cfg.pgd_steps, cfg.restarts, cfg.square_queries)
            if label != "none":
                members.append(M.transfer(nets[d], steps=cfg.pgd_steps, restarts=cfg.restarts,
                                          name="transfer_from_unmodified"))
            curve = evaluate.worst_case_curve(net, sub.x, sub.y, adaptive_radii(cfg, d), members,
                                              batch_size=cfg.batch_size, seed=cfg.seed)
            raw[d, label] = curve
            for p in evaluate.to_record(curve):
                at = dict(dataset=d, model=cfg.model[d], defense=label, threat_model="linf", eps=p["eps"],
                          n=p["n"], strength=strength)
                out.append(record(cfg, metric="accuracy", attack="worst_case", value=p["robust"],
                                  interval=p["interval"], members="+".join(p["members"]), **at))
                out += [record(cfg, metric="images_fooled", attack=m, value=k, **at) for m, k in p["added"].items()]
    return out, raw


def health_all(nets: dict, data: dict, records: Sequence[dict], raw: dict, cfg: RunConfig) -> list[dict]:
    """The health table, per data set, of the model the defense chose (rescaled, or the unmodified one when the
    chosen strength is 0) at the threat radius, with the gradient-free check and a transfer check: examples from
    the unmodified model for a rescaled one, from the second copy (seed + 1) for the unmodified one (none without
    a second copy)."""
    rows = []
    for d in cfg.datasets:
        sub = data[d]["test"].first(cfg.n_adaptive[d])
        eps = float(threat_eps(d))
        s = chosen_strength(records, d)
        net = rescaled(nets[d], records, d, cfg, s) if s > 0 else nets[d]
        source = nets[d] if s > 0 else nets.get((d, "copy"))
        transfer = None
        if source is not None:
            gen = torch.Generator(evaluate.model_device(source)).manual_seed(cfg.seed)
            transfer = evaluate.run_attack(attacks.pgd_linf, source, sub.x, sub.y, cfg.batch_size, eps=eps,
                                           steps=cfg.health_steps, generator=gen, early_stop=False)
        worst = next(p for p in raw[d, "compress_amplify" if s > 0 else "none"] if math.isclose(p["eps"], eps))
        for row in evaluate.health_checks(net, sub.x, sub.y, eps=eps, steps=cfg.health_steps,
                                          num_classes=dataset_info(d).num_classes, transfer_x_adv=transfer,
                                          worst=worst, batch_size=cfg.batch_size, seed=cfg.seed):
            rows.append({**row, "dataset": d, "model": cfg.model[d], "strength": s})
    return rows


# --------------------------------------------------------------------------- tables


def training_table(records: Sequence[dict], timings: Mapping[str, dict], cfg: Mapping[str, Any]) -> str:
    """Per data set and model: the recipe in words, clean test accuracy with its interval, training time."""
    rows = []
    for d in cfg["datasets"]:
        for seed, suffix in ((cfg["seed"], ""), (cfg["seed"] + 1, f"-seed{cfg['seed'] + 1}")):
            acc = [r for r in select(records, dataset=d, metric="accuracy", split="test", seed=seed)
                   if r["defense"] == "none"]
            if not acc:
                continue
            t = timings.get(f"{d}/{cfg['model'][d]}{suffix}", {})
            kw = train_recipe(cfg, d, seed)
            where = f"zoo `{t['zoo']}`" if t.get("zoo") else "the chapter's own"
            took = "cached" if t.get("cached") else (f"{t['seconds'] / 60:.1f} min" if t.get("seconds") else "–")
            rows.append({"data": d, "model": cfg["model"][d], "seed": seed, "recipe": where,
                         "training": f"{kw['train_size']:,} images, {kw['config'].describe()}",
                         "clean": pct_interval(acc[0]), "time": took})
    return markdown_table(rows, {"data": "data set", "model": "model", "seed": "seed", "recipe": "model",
                                 "training": "training", "clean": "clean test accuracy [95% CI]",
                                 "time": "training time"})


def fragility_summary(records: Sequence[dict], d: str) -> dict:
    """For data set ``d``: the undropped held-out accuracy; per channel its clean and FGSM fragility; the most
    fragile channel with its dropped-accuracy record; which channels are *fragile* (dropped accuracy clearly below
    the undropped, intervals disjoint) and which *robust* (intervals overlap)."""
    recs = _no_epoch(records)
    base = one([r for r in select(recs, dataset=d, attack="none", split="val", defense="none")
                if r["metric"] == "accuracy"])
    dropped = sorted((r for r in select(recs, dataset=d, attack="none", split="val", defense="nodal_dropout")
                      if r["metric"] == "accuracy"), key=lambda r: r["setting"]["channel"])
    base_iv = evaluate.wilson_interval(round(base["value"] * base["n"]), base["n"])
    fragile = [r["setting"]["channel"] for r in dropped if evaluate.clearly_greater(base_iv, r)]
    robust = [r["setting"]["channel"] for r in dropped if r["setting"]["channel"] not in fragile]
    worst = max(dropped, key=lambda r: base["value"] - r["value"])
    return {"base": {**base, "interval": list(base_iv)}, "most_fragile": worst, "fragile": fragile, "robust": robust,
            "clean": fragility_scores(recs, d, "clean"), "fgsm": fragility_scores(recs, d, "fgsm"),
            "channels": len(dropped)}


def _correlation(records, d, x, y) -> dict | None:
    rows = [r for r in select(records, dataset=d, metric="rank_correlation", x=x, y=y)]
    return rows[0] if rows else None


def _rho_text(r: dict | None) -> str:
    if r is None:
        return "–"
    return "undefined (constant)" if math.isnan(r["value"]) else f"{r['value']:+.2f} (p = {r['setting']['p']:.3g})"


def fragility_table(records: Sequence[dict], cfg: Mapping[str, Any]) -> str:
    """Per data set: held-out accuracy, the most fragile channel and what dropping it costs, and how many channels
    are fragile and robust."""
    rows = []
    for d in cfg["datasets"]:
        s = fragility_summary(records, d)
        w = s["most_fragile"]
        rows.append({"data": d, "base": pct_interval(s["base"]), "top": f"#{w['setting']['channel']}: {pct_interval(w)}",
                     "counts": f"{len(s['fragile'])} / {len(s['robust'])} of {s['channels']}"})
    return markdown_table(rows, {"data": "data set", "base": "held-out accuracy [95% CI]",
                                 "top": "most fragile channel: accuracy without it",
                                 "counts": "fragile / robust channels"})


def correlation_table(records: Sequence[dict], cfg: Mapping[str, Any]) -> str:
    """The rank correlations (Spearman's ρ with its permutation p-value) per data set."""
    rows = []
    for d in cfg["datasets"]:
        top = [r for r in select(records, dataset=d, metric="targeting_share")]
        share = max(r["value"] for r in top) if top else float("nan")
        rows.append({"data": d, "share": pct(share),
                     "clean": _rho_text(_correlation(records, d, "targeting_change", "fragility_clean")),
                     "fgsm": _rho_text(_correlation(records, d, "targeting_change", "fragility_fgsm")),
                     "both": _rho_text(_correlation(records, d, "fragility_fgsm", "fragility_clean")),
                     "seeds": _rho_text(_correlation(records, d, "fragility_clean_seed2", "fragility_clean"))})
    return markdown_table(rows, {"data": "data set", "share": "largest share of images targeting one channel",
                                 "clean": "ρ(targeting, clean fragility)", "fgsm": "ρ(targeting, FGSM fragility)",
                                 "both": "ρ(FGSM fragility, clean fragility)",
                                 "seeds": "ρ(fragility of the second copy, of the first)"})


def strength_table(records: Sequence[dict], cfg: Mapping[str, Any]) -> str:
    """Per data set and strength, on the test images: clean accuracy, the authors' FGSM, and the book's clipped FGSM
    at each radius of the grid; the chosen strength is marked."""
    parts = []
    for d in cfg["datasets"]:
        chosen = chosen_strength(records, d)
        test = select(records, dataset=d, defense="compress_amplify", split="test")
        rows = []
        for s in sorted({r["setting"]["strength"] for r in test}):
            at = [r for r in test if r["setting"]["strength"] == s]
            row = {"s": f"{s:g}" + (" (chosen)" if s == chosen else ""),
                   "clean": pct_interval(one(at, attack="none")), "authors": pct_interval(one(at, attack="fgsm", clip=False))}
            for r in select(at, attack="fgsm", clip=True):
                row[f"{r['eps']:.4f}"] = pct(r["value"])
            rows.append(row)
        eps_cols = {f"{e:.4f}": f"ε = {e:.3g}" for e in sorted(r["eps"] for r in select(test, clip=True,
                                                                                          strength=0.0))}
        parts.append(f"**{d}** (FGSM of the authors: {cfg['authors_eps'][d]:g} normalized units = "
                     f"{authors_eps_pixels(cfg, d):.4f} pixels, unclipped)\n\n"
                     + markdown_table(rows, {"s": "strength", "clean": "clean [95% CI]",
                                             "authors": "FGSM, authors' [95% CI]", **eps_cols}))
    return "\n\n".join(parts)


def adaptive_table(records: Sequence[dict], cfg: Mapping[str, Any]) -> str:
    """Per data set, model (unmodified, rescaled) and radius: the worst case with its interval, and what each
    member added."""
    rows = []
    for d in cfg["datasets"]:
        for r in select(records, dataset=d, attack="worst_case"):
            fooled = select(records, dataset=d, defense=r["defense"], eps=r["eps"], metric="images_fooled")
            rows.append({"data": d, "model": "unmodified" if r["defense"] == "none"
                         else f"compress/amplify, strength {r['setting']['strength']:g}",
                         "eps": f"{r['eps']:.4f}", "worst": pct_interval(r),
                         "added": ", ".join(f"{x['attack']} {int(x['value'])}" for x in fooled)})
    return markdown_table(rows, {"data": "data set", "model": "model", "eps": "ε (pixels)",
                                 "worst": "worst-case accuracy [95% CI]", "added": "images each member fooled"})


# --------------------------------------------------------------------------- figures


def _datasets_of(records) -> list[str]:
    return list(dict.fromkeys(r["dataset"] for r in records))


def fragility_figure(records: Sequence[dict]):
    """Per data set, each channel's clean and FGSM fragility (accuracy lost when it is dropped), channels ordered by
    clean fragility."""
    ds = _datasets_of(select(records, defense="nodal_dropout"))
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
        ax.set_ylabel("accuracy lost (points)")
        ax.set_title(f"{d}: first-layer channels, most fragile first")
        ax.legend()
    axes[-1, 0].set_xlabel("channel")
    fig.tight_layout()
    return fig


def targeting_figure(records: Sequence[dict]):
    """Per data set: the targeting distribution (share of images whose most-changed channel is ``j``), channels in
    fragility order; and the targeting change against clean fragility, with Spearman's ρ."""
    ds = _datasets_of(select(records, metric="targeting_share"))
    fig, axes = plt.subplots(len(ds), 2, figsize=(11, 3.4 * len(ds)), squeeze=False)
    for (left, right), d in zip(axes, ds):
        clean = fragility_scores(_no_epoch(records), d, "clean")
        order = torch.argsort(clean, descending=True)
        share = torch.tensor([r["value"] for r in sorted(select(records, dataset=d, metric="targeting_share"),
                                                         key=lambda r: r["setting"]["channel"])])
        change = torch.tensor([r["value"] for r in sorted(select(records, dataset=d, metric="targeting_change"),
                                                          key=lambda r: r["setting"]["channel"])])
        left.bar(range(len(order)), (100 * share[order]).numpy())
        left.set_xlabel("channels, most fragile first")
        left.set_ylabel("images targeting it (%)")
        left.set_title(f"{d}: where FGSM lands")
        right.scatter((100 * clean).numpy(), change.numpy(), s=14)
        rho = _correlation(records, d, "targeting_change", "fragility_clean")
        right.set_xlabel("clean fragility (points)")
        right.set_ylabel("mean activation change")
        right.set_title(f"Spearman ρ = {_rho_text(rho)}")
    fig.tight_layout()
    return fig


def evolution_figure(records: Sequence[dict]):
    """Per data set with a second copy: each channel's clean fragility after each measured epoch (the five most
    fragile at the end highlighted)."""
    ev = [r for r in records if r["setting"].get("epoch")]
    ds = _datasets_of(ev)
    fig, axes = plt.subplots(1, max(len(ds), 1), figsize=(5.5 * max(len(ds), 1), 3.6), squeeze=False)
    for ax, d in zip(axes[0], ds):
        epochs = sorted({r["setting"]["epoch"] for r in select(ev, dataset=d)})
        drops = torch.stack([fragility_scores(ev, d, "clean", epoch=e) for e in epochs])  # (E, C)
        top = set(torch.argsort(drops[-1], descending=True)[:5].tolist())
        for j in range(drops.shape[1]):
            ax.plot(epochs, (100 * drops[:, j]).numpy(), lw=1.6 if j in top else 0.6,
                    alpha=1.0 if j in top else 0.4, label=f"channel {j}" if j in top else None)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy lost when dropped (points)")
        ax.set_title(f"{d}, second copy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def strength_figure(records: Sequence[dict]):
    """Per data set: the book's FGSM accuracy against the radius, one line per strength (test images); and clean
    and authors'-FGSM accuracy against the strength (the cost beside the gain)."""
    ds = _datasets_of(select(records, defense="compress_amplify"))
    fig, axes = plt.subplots(len(ds), 2, figsize=(11, 3.4 * len(ds)), squeeze=False)
    for (left, right), d in zip(axes, ds):
        test = select(records, dataset=d, defense="compress_amplify", split="test")
        strengths = sorted({r["setting"]["strength"] for r in test})
        for s in strengths:
            at = [r for r in test if r["setting"]["strength"] == s]
            curve = [(0.0, one(at, attack="none")["value"])] + sorted(
                (r["eps"], r["value"]) for r in select(at, attack="fgsm", clip=True))
            left.plot(*zip(*curve), marker="o", label=f"strength {s:g}")
        left.set_xlabel("ε (pixels)")
        left.set_ylabel("FGSM accuracy (clipped)")
        left.set_title(f"{d}: FGSM vs ε")
        left.legend(fontsize=8)
        for attack, label in (("none", "clean"), ("fgsm", "FGSM, authors'")):
            match = {"attack": "none"} if attack == "none" else {"attack": "fgsm", "clip": False}
            pts = [(s, one([r for r in test if r["setting"]["strength"] == s], **match)["value"]) for s in strengths]
            right.plot(*zip(*pts), marker="o", label=label)
        right.axvline(chosen_strength(records, d), color="red", ls="--", lw=1, label="chosen")
        right.set_xlabel("strength")
        right.set_ylabel("accuracy")
        right.set_title(f"{d}: gain and cost")
        right.legend(fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------- verdict


def verdict_summary(results: Mapping[str, Any]) -> dict:
    """Per data set, from the results (live, read back, or hand-made records of the same shape), the four claims:

    - ``neurons``: fragile and robust neurons exist (at least one channel whose dropped accuracy interval lies
      below the undropped one, and at least one whose interval overlaps it);
    - ``targeting``: FGSM's activation change is rank-correlated with clean fragility (ρ > 0, p < :data:`ALPHA`);
    - ``fgsm_gain``: compress/amplify at the chosen strength raises the authors'-FGSM test accuracy (intervals
      disjoint); ``False`` when validation chose strength 0;
    - ``adaptive_gain``: the worst case at the threat radius is clearly higher for the rescaled model.

    ``category``: ``real`` (both gains), ``fgsm_only`` (the FGSM gain does not survive the worst case), ``no_gain``.
    """
    recs = results["records"]
    out = {}
    for d in _datasets_of(select(recs, metric="chosen_strength")):
        s = fragility_summary(recs, d)
        rho = _correlation(recs, d, "targeting_change", "fragility_clean")
        chosen = chosen_strength(recs, d)
        test = select(recs, dataset=d, defense="compress_amplify", split="test")
        at = {st: [r for r in test if r["setting"]["strength"] == st] for st in (0.0, chosen)}
        fg = {st: one(v, attack="fgsm", clip=False) for st, v in at.items()}
        clean = {st: one(v, attack="none") for st, v in at.items()}
        threat = float(threat_eps(d))
        worst = {lab: next((r for r in select(recs, dataset=d, attack="worst_case", defense=lab)
                            if math.isclose(r["eps"], threat)), None) for lab in ("none", "compress_amplify")}
        fgsm_gain = chosen > 0 and evaluate.compare(fg[chosen], fg[0.0]) == "higher"
        adaptive_gain = chosen > 0 and evaluate.compare(worst["compress_amplify"], worst["none"]) == "higher"
        checks = [h for h in results.get("health", []) if h.get("dataset") == d]
        out[d] = {"neurons": bool(s["fragile"]) and bool(s["robust"]), "fragile": s["fragile"],
                  "robust": s["robust"], "channels": s["channels"],
                  "targeting": rho is not None and not math.isnan(rho["value"]) and rho["value"] > 0
                  and rho["setting"]["p"] < ALPHA, "targeting_rho": rho,
                  "seed_rho": _correlation(recs, d, "fragility_clean_seed2", "fragility_clean"),
                  "strength": chosen, "fgsm": fg, "clean": clean, "fgsm_gain": fgsm_gain,
                  "clean_cost": evaluate.compare(clean[0.0], clean[chosen]) == "higher" if chosen > 0 else False,
                  "worst": worst, "adaptive_gain": adaptive_gain,
                  "category": "real" if fgsm_gain and adaptive_gain else "fgsm_only" if fgsm_gain else "no_gain",
                  "failed_checks": [h["check"] for h in checks if not h["passed"]]}
    return out


def _yes(flag: bool) -> str:
    return "holds" if flag else "does not hold"


def verdict(results: Mapping[str, Any]) -> str:
    """The verdict in Markdown, sentence by sentence from :func:`verdict_summary`."""
    lines = []
    for d, v in verdict_summary(results).items():
        rho = v["targeting_rho"]
        lines.append(f"**{d}.** Fragile and robust neurons: {_yes(v['neurons'])} ({len(v['fragile'])} of "
                     f"{v['channels']} channels clearly fragile, {len(v['robust'])} robust on held-out images). "
                     f"FGSM concentrating on fragile neurons: {_yes(v['targeting'])} (ρ = {_rho_text(rho)}).")
        if v["seed_rho"] is not None:
            lines.append(f"Fragility across two training seeds: ρ = {_rho_text(v['seed_rho'])}.")
        if v["strength"] == 0:
            lines.append("Compress/amplify: no strength raised held-out FGSM accuracy within the clean budget, so "
                         "the rule kept the unmodified model; the claim does not hold here.")
        else:
            f0, f1 = v["fgsm"][0.0], v["fgsm"][v["strength"]]
            w0, w1 = v["worst"]["none"], v["worst"]["compress_amplify"]
            lines.append(f"Compress/amplify at strength {v['strength']:g}: the authors' FGSM {pct_interval(f0)} → {pct_interval(f1)} "
                         f"({'a clear gain' if v['fgsm_gain'] else 'no clear gain'}; clean {pct_interval(v['clean'][0.0])} → "
                         f"{pct_interval(v['clean'][v['strength']])}). Adaptive worst case at the threat radius: {pct_interval(w0)} → "
                         f"{pct_interval(w1)}.")
        words = {"real": "the gain survives the adaptive evaluation.",
                 "fgsm_only": "the gain is an FGSM artefact: it does not survive the adaptive worst case.",
                 "no_gain": "no robustness gain to audit."}
        lines.append(f"Verdict: {words[v['category']]}")
        if v["failed_checks"]:
            lines.append(f"Health checks failed: {', '.join(v['failed_checks'])}.")
        lines.append("")
    if results.get("profile") == "smoke":
        lines.append("This is the smoke profile: the numbers only show that every cell runs.")
    return "\n".join(lines).strip()
