"""Chapter 1 — threat model and attacks on an undefended model (chapter id ``baselines``).

Everything the chapter's page calls, in the order the page calls it:

* the parameters (:data:`SPEC`, with the profiles ``smoke``, ``laptop``, ``paper``);
* the one training recipe of the chapter's model (:func:`train_recipe`, :func:`train_model`), also used by
  ``python -m robustness bench``: the model zoo's (:mod:`robustness.zoo`) unless a reader changes it;
* the measurements, each returning result records (:mod:`robustness.results`): :func:`clean_records`,
  :func:`attack_curves`, :func:`threat_radius_records` (the headline: PGD at the threat radius, measured as its
  own record), :func:`min_norm_records`, :func:`worst_case_records`, :func:`evaluation_health` (health rows)
  and :func:`attack_cost` (wall-clock seconds, which go to the results' ``timings``, never to records);
* tables and figures, functions of the records: :func:`clean_summary`, :func:`curves_figure`,
  :func:`curves_table`, :func:`threat_table`, :func:`min_norm_table`, :func:`cost_table`,
  :func:`examples_figure` (the one figure drawn from images; the health rows are shown with
  :func:`robustness.report.health_markdown`);
* the verdict, a pure function of the results as read back (:func:`verdict`, :func:`verdict_markdown`), with
  its thresholds as module constants.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from .. import attacks, evaluate, zoo
from ..config import ChapterSpec, Param, RunConfig, check_counts
from ..data import DATASETS, dataset_info, load_dataset, threat_eps
from ..models import MODELS, check_model
from ..report import markdown_table, pct, plot_curves, plot_examples, records_table
from ..results import record, select


def _check(cfg: RunConfig) -> None:
    check_model(cfg.model, cfg.dataset)
    check_counts(cfg, {"train_size": "train", "n_clean": "test"})  # n_attack ≤ n_clean below
    if cfg.n_attack > cfg.n_clean:
        raise ValueError(f"parameter n_attack={cfg.n_attack} must not exceed n_clean={cfg.n_clean}")


PARAMS = {
    "dataset": Param("choice", "data set", DATASETS),
    "model": Param("choice", "architecture from robustness.models", tuple(MODELS), per_dataset=True),
    "train_size": Param("pos_int", "training images used (the first N)", per_dataset=True),
    "epochs": Param("pos_int", "training epochs", per_dataset=True),
    "lr": Param("pos_float", "SGD learning rate", per_dataset=True),
    "n_clean": Param("pos_int", "test images for clean accuracy (the first N)", per_dataset=True),
    "n_attack": Param("pos_int", "test images attacked (the first N)", per_dataset=True),
    "eps": Param("eps_linf", "L∞ threat-model radius on [0, 1] pixels", per_dataset=True),
    "eps_grid_linf": Param("eps_linf_list", "L∞ radii for the accuracy curves", per_dataset=True),
    "eps_grid_l2": Param("nonneg_float_list", "L2 radii for the accuracy curves", per_dataset=True),
    "pgd_steps": Param("pos_int", "PGD iterations"),
    "restarts": Param("pos_int", "PGD random restarts (worst case kept per image)"),
    "deepfool_iter": Param("pos_int", "DeepFool maximum iterations"),
    "ddn_steps": Param("pos_int", "DDN (minimum-norm L2 attack) iterations"),
    "square_queries": Param("pos_int", "queries per image of the Square member of the adaptive worst case"),
    "batch_size": Param("pos_int", "attack batch size"),
    "seed": Param("nonneg_int", "random seed"),
}

_COMMON = {
    "dataset": "mnist", "model": dict(zoo.ARCH), "eps": {d: threat_eps(d) for d in DATASETS},
    "batch_size": 256, "seed": 0,
}


def _training(profile: str) -> dict:
    """The training parameters of ``profile``, read from the model zoo (:mod:`robustness.zoo`): its recipe of
    each data set's architecture, which JumpReLU's baseline networks share, so both chapters train (and cache)
    one model."""
    recipes = {d: zoo.for_dataset(d, profile) for d in DATASETS}
    return {"train_size": {d: r.train_size for d, r in recipes.items()},
            "epochs": {d: r.config.epochs for d, r in recipes.items()},
            "lr": {d: r.config.lr for d, r in recipes.items()}}


_GRID_LINF = {"mnist": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4],
              "fashion_mnist": [0.0, 0.025, 0.05, 0.1, 0.15, 0.2],
              "cifar10": [0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]}
_GRID_L2 = {"mnist": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0], "fashion_mnist": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0],
            "cifar10": [0.0, 0.125, 0.25, 0.5, 1.0]}
PROFILES = {
    "smoke": {**_COMMON, **_training("smoke"), "n_clean": 1000, "n_attack": 100,
              "eps_grid_linf": {k: v[::2] for k, v in _GRID_LINF.items()},
              "eps_grid_l2": {k: v[::2] for k, v in _GRID_L2.items()},
              "pgd_steps": 10, "restarts": 1, "deepfool_iter": 20, "ddn_steps": 30, "square_queries": 500},
    "laptop": {**_COMMON, **_training("laptop"),
               "n_clean": {"mnist": 10000, "fashion_mnist": 10000, "cifar10": 1000}, "n_attack": 1000,
               "eps_grid_linf": _GRID_LINF, "eps_grid_l2": _GRID_L2,
               "pgd_steps": 40, "restarts": 1, "deepfool_iter": 50, "ddn_steps": 100,
               "square_queries": 5000},
    "paper": {**_COMMON, **_training("paper"), "n_clean": {"mnist": 10000, "fashion_mnist": 10000, "cifar10": 1000},
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


# --------------------------------------------------------------------------- the model and the data


def train_recipe(cfg: Mapping[str, Any], seed: int | None = None) -> dict:
    """Chapter 1's training recipe: the keyword arguments of :func:`robustness.train.trained_model`.

    The zoo recipe of the data set at the run's profile (:func:`robustness.zoo.for_dataset`: plain
    cross-entropy, SGD with momentum 0.9, weight decay 5e-4 and batch 128, JumpReLU's step schedule scaled to
    the epochs, :func:`robustness.train.official_milestones`), with the run's ``model``, ``train_size`` (the
    first N training images), ``epochs`` and ``lr``; the profile's values are the zoo's, so an unchanged run
    asks for the zoo's model. ``seed`` (default ``cfg["seed"]``) seeds the initialization and the batch order:
    another seed gives an independent copy of the same recipe (the transfer source of the health checks).
    ``trained_model(**train_recipe(cfg))`` trains it, or loads it from the checkpoint cache, which is keyed by
    this whole recipe.
    """
    return zoo.variant(zoo.for_dataset(cfg["dataset"], cfg["profile"]), model=cfg["model"],
                       train_size=cfg["train_size"], epochs=cfg["epochs"], lr=cfg["lr"],
                       seed=cfg["seed"] if seed is None else seed)


def train_model(cfg: Mapping[str, Any], seed: int | None = None) -> tuple[nn.Module, dict]:
    """``(model, meta)``: :func:`train_recipe` trained (or loaded from the cache). When the recipe is a zoo
    recipe (the profile's training parameters, the data set's architecture, the profile's seed) the model is
    the zoo's (:func:`robustness.zoo.get`), shared with JumpReLU's baseline; ``meta`` as
    :func:`robustness.train.cached_train` returns it (``cached``, ``train_seconds``, ``history``), with ``zoo``
    (the zoo name, or ``None`` for the chapter's own recipe)."""
    return zoo.model_for(**train_recipe(cfg, seed))


@dataclass(frozen=True)
class TestImages:
    """The test images of a run: the first ``n_clean`` for clean accuracy, the first ``n_attack`` (``x``, ``y``)
    for every attack, and the data set's facts."""

    source: str
    clean_x: torch.Tensor
    clean_y: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    classes: tuple[str, ...]
    num_classes: int


def load_test_images(cfg: Mapping[str, Any]) -> TestImages:
    """The first ``n_clean`` and ``n_attack`` test images of ``cfg["dataset"]`` (views, not copies)."""
    test = load_dataset(cfg["dataset"], "test")
    clean, attacked = test.first(cfg["n_clean"]), test.first(cfg["n_attack"])
    info = dataset_info(cfg["dataset"])
    return TestImages(test.source, clean.x, clean.y, attacked.x, attacked.y, info.classes, info.num_classes)


def train_timings(meta: dict) -> dict:
    """What the results' ``timings`` keep of training: whether it came from the cache, and its seconds."""
    return {"cached": bool(meta["cached"]), "seconds": float(meta["train_seconds"])}


# --------------------------------------------------------------------------- measurements → records


def _rec(cfg: Mapping[str, Any], **fields) -> dict:
    return record(cfg, dataset=cfg["dataset"], model=cfg["model"], **fields)


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Exactly k / n (not a float32 mean), so equal counts give equal records."""
    return int((evaluate.predict(model, x) == y).sum()) / max(len(y), 1)


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(evaluate.model_device(model)).manual_seed(seed)


def clean_records(cfg: Mapping[str, Any], model: nn.Module, data: TestImages, meta: dict | None = None) -> list[dict]:
    """Clean accuracy on the first ``n_clean`` test images (``subset="clean"``) and on the attacked ones
    (``subset="attacked"``, the starting point of every curve), and the last epoch's training loss."""
    out = [_rec(cfg, metric="accuracy", value=_accuracy(model, data.clean_x, data.clean_y),
                n=len(data.clean_y), subset="clean"),
           _rec(cfg, metric="accuracy", value=_accuracy(model, data.x, data.y), n=len(data.y),
                subset="attacked")]
    epochs = (meta or {}).get("history", {}).get("epochs", [])
    if epochs:
        out.append(_rec(cfg, metric="train_loss", value=epochs[-1]["loss"], epoch=len(epochs)))
    return out


def attack_curves(cfg: Mapping[str, Any], model: nn.Module, data: TestImages) -> list[dict]:
    """Accuracy of the attacked images under FGSM and PGD-L∞ at each radius of ``eps_grid_linf`` and under
    PGD-L2 at each radius of ``eps_grid_l2``: one record per (attack, radius), ``role="curve"``. PGD takes
    ``pgd_steps`` steps of 2.5·ε/steps from a random start, ``restarts`` times, seeded by ``seed``."""
    pgd = {"steps": cfg["pgd_steps"], "restarts": cfg["restarts"]}
    plan = [("fgsm", attacks.fgsm, "linf", cfg["eps_grid_linf"], {}),
            ("pgd_linf", attacks.pgd_linf, "linf", cfg["eps_grid_linf"], pgd),
            ("pgd_l2", attacks.pgd_l2, "l2", cfg["eps_grid_l2"], pgd)]
    out = []
    for name, fn, threat, grid, kwargs in plan:
        curve = evaluate.accuracy_curve(model, data.x, data.y, fn, grid, cfg["batch_size"], seed=cfg["seed"],
                                        **kwargs)
        out += [_rec(cfg, metric="accuracy", attack=name, threat_model=threat, eps=p["eps"],
                     value=round(p["accuracy"] * len(data.y)) / len(data.y),
                     n=len(data.y), role="curve", **kwargs) for p in curve]
    return out


def threat_radius_records(cfg: Mapping[str, Any], model: nn.Module,
                          data: TestImages) -> tuple[list[dict], torch.Tensor]:
    """The headline: accuracy under PGD-L∞ at exactly the threat radius ``eps`` (``role="threat"``), measured
    on its own whether or not ``eps`` lies on the curve's grid. Returns ``(records, adversarial images)``."""
    kwargs = {"steps": cfg["pgd_steps"], "restarts": cfg["restarts"]}
    x_adv = evaluate.run_attack(attacks.pgd_linf, model, data.x, data.y, cfg["batch_size"], eps=cfg["eps"],
                                generator=_generator(model, cfg["seed"]), **kwargs)
    acc = _accuracy(model, x_adv, data.y)
    return [_rec(cfg, metric="accuracy", attack="pgd_linf", threat_model="linf", eps=cfg["eps"], value=acc,
                 n=len(data.y), role="threat", **kwargs)], x_adv


def _min_norm_rows(cfg, attack: str, threat: str, summary: dict, n: int, **setting) -> list[dict]:
    common = {"attack": attack, "threat_model": threat, "n": n, **setting}
    rows = [_rec(cfg, metric="success_rate", value=summary["success_rate"], **common),
            _rec(cfg, metric="rho", value=summary["rho_median"], units="pixel", statistic="median", **common),
            _rec(cfg, metric="rho", value=summary["rho_mean"], units="pixel", statistic="mean", **common)]
    if "norm_median" in summary:
        rows.append(_rec(cfg, metric="norm", value=summary["norm_median"], statistic="median", **common))
    return rows


def min_norm_records(cfg: Mapping[str, Any], model: nn.Module, data: TestImages) -> list[dict]:
    """Minimum-norm attacks on the attacked images: DeepFool L2 and L∞ (``deepfool_iter`` iterations) and DDN
    (``ddn_steps`` steps, then twice as many to see whether it converged). Per attack: the success rate over
    the correctly classified images, the median and mean of ρ = ‖r‖/‖x‖ in pixels (the median counts a failure
    as ∞, the mean averages the successes) and the median ‖r‖ (``statistic`` in the setting)."""
    n, out = len(data.y), []
    for attack, p, threat in (("deepfool_l2", 2, "l2"), ("deepfool_linf", math.inf, "linf")):
        adv = evaluate.run_attack(attacks.deepfool, model, data.x, data.y, cfg["batch_size"], norm=p,
                                  max_iter=cfg["deepfool_iter"])
        summary = evaluate.min_norm_summary(data.x, adv, data.y, model, p=p)
        out += _min_norm_rows(cfg, attack, threat, summary, n, max_iter=cfg["deepfool_iter"])
    ddn = evaluate.min_norm(model, data.x, data.y, steps=cfg["ddn_steps"], batch_size=cfg["batch_size"],
                            seed=cfg["seed"])
    out += _min_norm_rows(cfg, "ddn", "l2", ddn, n, steps=ddn["steps"])
    double = {k[:-len("_double")]: v for k, v in ddn.items() if k.endswith("_double") and k != "steps_double"}
    out += _min_norm_rows(cfg, "ddn", "l2", double, n, steps=ddn["steps_double"])
    return out


def worst_case_records(cfg: Mapping[str, Any], model: nn.Module, data: TestImages) -> tuple[list[dict], dict]:
    """The adaptive worst case at the threat radius (``evaluate.worst_case`` with the default members: PGD on
    the cross-entropy, PGD on the margin loss, Square), each member run on the images the earlier ones left
    standing. Records: the robust accuracy (``attack="worst_case"``, with its Wilson interval) and, per member,
    the images it fooled that the earlier ones missed (``metric="newly_fooled"``, ``order`` in the setting).
    Returns ``(records, the worst_case result)``; the result feeds :func:`evaluation_health`."""
    members = evaluate.default_members(cfg["pgd_steps"], cfg["restarts"], cfg["square_queries"])
    worst = evaluate.worst_case(model, data.x, data.y, cfg["eps"], members, batch_size=cfg["batch_size"],
                                seed=cfg["seed"])
    knobs = {"steps": cfg["pgd_steps"], "restarts": cfg["restarts"], "queries": cfg["square_queries"]}
    out = [_rec(cfg, metric="accuracy", attack="worst_case", threat_model="linf", eps=worst["eps"],
                value=worst["robust"], n=worst["n"], interval=worst["interval"], role="threat",
                members="+".join(worst["members"]), **knobs)]
    out += [_rec(cfg, metric="newly_fooled", attack=name, threat_model="linf", eps=worst["eps"],
                 value=worst["added"][name], n=worst["n"], order=i, ensemble="worst_case")
            for i, name in enumerate(worst["members"])]
    return out, worst


def evaluation_health(cfg: Mapping[str, Any], model: nn.Module, data: TestImages, worst: dict) -> list[dict]:
    """The health rows of Carlini et al. (2019) for PGD-L∞ at ``eps`` (``evaluate.health_checks``), with the
    gradient-free check of the worst case ``worst`` and a transfer check: examples crafted at full strength on
    a second copy of the recipe trained from ``seed + 1`` must fool the model no more than white-box PGD."""
    source, _ = train_model(cfg, seed=cfg["seed"] + 1)
    transfer = evaluate.run_attack(attacks.pgd_linf, source, data.x, data.y, cfg["batch_size"], eps=cfg["eps"],
                                   steps=cfg["pgd_steps"], early_stop=False,
                                   generator=_generator(source, cfg["seed"]))
    return evaluate.health_checks(model, data.x, data.y, eps=cfg["eps"], steps=cfg["pgd_steps"],
                                  num_classes=data.num_classes, transfer_x_adv=transfer, worst=worst,
                                  batch_size=cfg["batch_size"], seed=cfg["seed"])


def attack_cost(cfg: Mapping[str, Any], model: nn.Module, data: TestImages) -> dict:
    """Wall-clock seconds and images per second of each attack on the attacked images (radius attacks at
    ``eps``), timed with :func:`robustness.evaluate.timed` (CUDA synchronized). Machine-dependent: these go to
    the results' ``timings``, never to records."""
    plan = {"FGSM": (attacks.fgsm, {"eps": cfg["eps"]}),
            f"PGD-{cfg['pgd_steps']} L∞": (attacks.pgd_linf, {"eps": cfg["eps"], "steps": cfg["pgd_steps"]}),
            f"DeepFool L2 (≤{cfg['deepfool_iter']} it.)": (attacks.deepfool,
                                                           {"norm": 2, "max_iter": cfg["deepfool_iter"]}),
            f"DDN ({cfg['ddn_steps']} steps)": (attacks.ddn, {"steps": cfg["ddn_steps"]})}
    costs = {}
    for name, (fn, kwargs) in plan.items():
        _, seconds = evaluate.timed(evaluate.run_attack, fn, model, data.x, data.y, cfg["batch_size"], **kwargs)
        costs[name] = {"seconds": seconds, "images_per_second": len(data.y) / max(seconds, 1e-9)}
    return costs


# --------------------------------------------------------------------------- tables and figures of the records

_ATTACK_NAMES = {"fgsm": "FGSM", "pgd_linf": "PGD L∞", "pgd_l2": "PGD L2", "deepfool_l2": "DeepFool L2",
                 "deepfool_linf": "DeepFool L∞", "ddn": "DDN L2", "worst_case": "adaptive worst case",
                 "pgd_ce": "PGD (cross-entropy)", "pgd_margin": "PGD (margin loss)", "square": "Square"}


def attack_name(rec: Mapping[str, Any]) -> str:
    """A record's attack as the page names it, with its steps (``PGD-10 L∞``)."""
    name = _ATTACK_NAMES.get(rec["attack"], rec["attack"])
    steps = rec.get("setting", {}).get("steps")
    if steps and rec["attack"] in ("pgd_linf", "pgd_l2"):
        name = name.replace("PGD", f"PGD-{steps}")
    return name


def _with_interval(rec: Mapping[str, Any]) -> str:
    if not rec.get("interval"):
        return pct(rec["value"])
    lo, hi = rec["interval"]
    return f"{pct(rec['value'])} [{pct(lo)}, {pct(hi)}]"


def _curve(records: Sequence[dict], attack: str, threat: str) -> list[dict]:
    points = select(records, metric="accuracy", attack=attack, threat_model=threat, role="curve")
    return sorted(({"eps": r["eps"], "accuracy": r["value"]} for r in points), key=lambda p: p["eps"])


def clean_summary(records: Sequence[dict], timings: Mapping[str, Any] | None = None) -> str:
    """One sentence: clean accuracy with its interval, on how many images, and how training went."""
    clean = select(records, metric="accuracy", attack="none", subset="clean")[0]
    text = f"Clean accuracy on the first {clean['n']:,} test images: **{_with_interval(clean)}**"
    loss = select(records, metric="train_loss")
    if loss:
        text += f"; training loss in the last epoch {loss[0]['value']:.3f}"
    train = (timings or {}).get("train")
    if train:
        text += (" (weights loaded from the cache" if train["cached"] else " (trained in this run")
        text += f", {train['seconds']:.0f} s of training)"
    return text + "."


def curves_figure(records: Sequence[dict]):
    """Accuracy against the radius: FGSM and PGD in L∞ (left), PGD in L2 (right), chance as a dotted line, the
    threat radius as a red dashed line with the headline measurement (PGD at exactly ε) as a red star."""
    rec = select(records, metric="accuracy", role="threat", attack="pgd_linf")
    info = dataset_info(records[0]["dataset"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    chance = 1 / info.num_classes
    for ax, threat, title in ((axes[0], "linf", "L∞ attacks"), (axes[1], "l2", "L2 attack")):
        curves = {attack_name(r): _curve(records, r["attack"], threat) for r in _first_per_attack(records, threat)}
        plot_curves(curves, f"{title[:2]} radius ε (pixels in [0, 1])", title=title, ax=ax, chance=chance)
    if rec:
        axes[0].axvline(rec[0]["eps"], color="red", ls="--", lw=1)
        axes[0].plot([rec[0]["eps"]], [rec[0]["value"]], "*", color="red", ms=12,
                     label=f"{attack_name(rec[0])} at ε = {rec[0]['eps']:.3g}")
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value
    return fig


def _first_per_attack(records: Sequence[dict], threat: str) -> list[dict]:
    seen, out = set(), []
    for r in select(records, metric="accuracy", threat_model=threat, role="curve"):
        if r["attack"] not in seen:
            seen.add(r["attack"])
            out.append(r)
    return out


def curves_table(records: Sequence[dict], threat: str = "linf") -> str:
    """The curve's numbers: one row per attack, one column per radius."""
    rows = select(records, metric="accuracy", threat_model=threat, role="curve")
    named = [{**r, "setting": {**r["setting"], "name": attack_name(r)}} for r in rows]
    return records_table(named, rows=["name"], column="eps", headers={"name": f"attack \\ {threat} radius ε"})


def threat_table(records: Sequence[dict]) -> str:
    """At the threat radius: clean accuracy of the attacked images, PGD alone (the headline), the adaptive worst
    case, and what each member of the worst case added, each with its 95% interval."""
    clean = select(records, metric="accuracy", attack="none", subset="attacked")
    rows = [{"what": "no attack", "accuracy": _with_interval(clean[0]), "n": clean[0]["n"]}] if clean else []
    for r in select(records, metric="accuracy", role="threat"):
        what = attack_name(r) + (f" (members: {r['setting']['members'].replace('+', ', ')})"
                                 if "members" in r["setting"] else f", {_restarts(r)}")
        rows.append({"what": what, "accuracy": _with_interval(r), "n": r["n"]})
    table = markdown_table(rows, {"what": f"at ε = {_threat_eps(records):.3g}", "accuracy": "accuracy [95% interval]",
                                  "n": "images"}, {"n": lambda v: f"{v:,}"})
    added = sorted(select(records, metric="newly_fooled"), key=lambda r: r["setting"]["order"])
    if added:
        table += ("\n\nImages each member of the worst case fooled that the earlier members missed: "
                  + ", ".join(f"{attack_name(r)} {int(r['value'])}" for r in added) + ".")
    return table


def _restarts(rec: Mapping[str, Any]) -> str:
    k = rec["setting"].get("restarts", 1)
    return f"{k} restart" + ("s" if k != 1 else "")


def _threat_eps(records: Sequence[dict]) -> float:
    return select(records, metric="accuracy", role="threat", attack="pgd_linf")[0]["eps"]


def min_norm_table(records: Sequence[dict]) -> str:
    """Per minimum-norm attack (and DDN's step budget): success rate, median and mean ρ, median ‖r‖."""
    rows = []
    for attack in ("deepfool_l2", "deepfool_linf", "ddn"):
        budgets = sorted({r["setting"].get("steps", r["setting"].get("max_iter")) for r in
                          select(records, attack=attack, metric="success_rate")})
        for b in budgets:
            key = {"steps": b} if attack == "ddn" else {"max_iter": b}
            get = lambda **m: select(records, attack=attack, **key, **m)  # noqa: E731
            row = {"attack": f"{_ATTACK_NAMES[attack]}, " + (f"{b} steps" if attack == "ddn" else f"≤ {b} it."),
                   "success": get(metric="success_rate")[0]["value"],
                   "median": get(metric="rho", statistic="median")[0]["value"],
                   "mean": get(metric="rho", statistic="mean")[0]["value"]}
            norm = get(metric="norm", statistic="median")
            row["norm"] = norm[0]["value"] if norm else float("nan")
            rows.append(row)
    fmt = lambda v: "–" if isinstance(v, float) and math.isnan(v) else f"{v:.4g}"  # noqa: E731
    return markdown_table(rows, {"attack": "attack", "success": "fooled (of correct)", "median": "median ρ",
                                 "mean": "mean ρ (fooled only)", "norm": "median ‖r‖ (attack's norm)"},
                          {"success": pct, "median": fmt, "mean": fmt, "norm": fmt})


def cost_table(costs: Mapping[str, Mapping[str, float]]) -> str:
    """Seconds and images per second per attack (from the results' ``timings``)."""
    return markdown_table([{"attack": k, **v} for k, v in costs.items()],
                          {"attack": "attack", "seconds": "seconds", "images_per_second": "images/s"},
                          {"seconds": lambda s: f"{s:.2f}", "images_per_second": lambda r: f"{r:.0f}"})


def examples_figure(model: nn.Module, data: TestImages, x_adv: torch.Tensor, eps: float, k: int = 8):
    """The first ``k`` attacked images: clean (true label → prediction), adversarial (new prediction) and the
    perturbation amplified to the full gray range."""
    k = min(k, len(data.y))
    x, y, adv = data.x[:k], data.y[:k], x_adv[:k]
    fig = plot_examples(x, adv, y, evaluate.predict(model, x), evaluate.predict(model, adv), data.classes, n=k,
                        title=f"PGD-L∞ at the threat radius ε = {eps:.3g}")
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- the verdict

#: PGD accuracy at the threat radius whose 95% interval lies below this: the model is not robust
NOT_ROBUST_BELOW = 0.10
#: clean accuracy at most chance plus this margin: the model is broken, nothing else is measurable
BROKEN_MARGIN = 0.10
#: DeepFool's median ρ above this multiple of DDN's: DeepFool over-states the distance to the boundary
DEEPFOOL_OVERSTATES = 1.05
#: doubling DDN's steps moves its median ρ by less than this fraction: DDN has converged
DDN_CONVERGED = 0.02


def _value(records, **match) -> float | None:
    found = select(records, **match)
    return found[0]["value"] if found else None


def verdict(results: Mapping[str, Any]) -> dict:
    """What a reader should conclude, from a results dict (``records`` and ``health``) alone.

    Returns ``{"category", "sound", "failed_checks", "headline", "worst_case", "clean", "newly_fooled",
    "deepfool_ratio", "ddn_change", "ddn_converged", "sentences"}``. ``headline`` is the PGD-L∞ record at the
    threat radius (``role="threat"``: measured there, never read off the curve). ``category``:

    * ``broken`` — clean accuracy ≤ chance + :data:`BROKEN_MARGIN`, or the near-constant health check failed;
    * ``not_robust`` — the headline's 95% interval lies below :data:`NOT_ROBUST_BELOW` (what an undefended
      model should show);
    * ``resists`` — the interval lies at or above it (unexpected without a defense: read the health table);
    * ``unclear`` — the interval straddles it (too few images).

    ``sound``: every health row passed. The minimum-norm findings compare DeepFool's median ρ with DDN's at the
    larger step budget (:data:`DEEPFOOL_OVERSTATES`) and DDN's two budgets with each other (:data:`DDN_CONVERGED`).
    """
    records, health = results["records"], results.get("health", [])
    threat = select(records, metric="accuracy", attack="pgd_linf", role="threat")
    if len(threat) != 1:
        raise ValueError(f"the results hold {len(threat)} PGD records at the threat radius (role='threat'); "
                         "expected exactly one")
    headline = threat[0]
    clean = select(records, metric="accuracy", attack="none", subset="clean")[0]
    worst = select(records, metric="accuracy", attack="worst_case")
    worst = worst[0] if worst else None
    failed = [h for h in health if not h["passed"]]
    chance = 1 / dataset_info(clean["dataset"]).num_classes
    constant = any(h.get("id") == "near_constant" for h in failed)
    lo, hi = headline["interval"]
    if clean["value"] <= chance + BROKEN_MARGIN or constant:
        category = "broken"
    elif hi < NOT_ROBUST_BELOW:
        category = "not_robust"
    elif lo >= NOT_ROBUST_BELOW:
        category = "resists"
    else:
        category = "unclear"
    newly = sorted(select(records, metric="newly_fooled"), key=lambda r: r["setting"]["order"])
    ddn_steps = sorted({r["setting"]["steps"] for r in select(records, attack="ddn", metric="rho")})
    df = _value(records, attack="deepfool_l2", metric="rho", statistic="median")
    ddn = [_value(records, attack="ddn", metric="rho", statistic="median", steps=s) for s in ddn_steps]
    ratio = df / ddn[-1] if ddn and df is not None and ddn[-1] and math.isfinite(ddn[-1]) else None
    change = (abs(ddn[-1] - ddn[0]) / ddn[0] if len(ddn) == 2 and all(v and math.isfinite(v) for v in ddn)
              else None)
    out = {"category": category, "sound": not failed, "failed_checks": [h["check"] for h in failed],
           "headline": headline, "worst_case": worst, "clean": clean,
           "newly_fooled": {r["attack"]: int(r["value"]) for r in newly}, "deepfool_ratio": ratio,
           "ddn_change": change, "ddn_converged": change is not None and change < DDN_CONVERGED}
    out["sentences"] = _sentences(out, results, len(health))
    return out


_HEAD = {
    "broken": "**Verdict: the model is broken.** Its clean accuracy is near chance (or one class takes most "
              "predictions), so no robustness number on this page means anything.",
    "not_robust": "**Verdict: the undefended model is not robust in this threat model**, as expected.",
    "resists": "**Verdict: unexpected.** The undefended model keeps a notable accuracy at the threat radius: "
               "either the radius is small for this data set, or the attack is weaker than it should be (see "
               "the health checks).",
    "unclear": "**Verdict: not settled at this scale.** The headline's interval straddles the threshold; attack "
               "more images.",
}


def _sentences(v: dict, results: Mapping[str, Any], n_checks: int) -> list[str]:
    h, clean = v["headline"], v["clean"]
    s = [_HEAD[v["category"]],
         f"Clean accuracy is {_with_interval(clean)} on {clean['n']:,} test images. Under {attack_name(h)} "
         f"({_restarts(h)}) at the threat radius ε = {h['eps']:.3g}, measured there, "
         f"{_with_interval(h)} of {h['n']:,} attacked images stay correct (threshold for *not robust*: the "
         f"interval below {pct(NOT_ROBUST_BELOW)})."]
    if v["worst_case"] is not None:
        w = v["worst_case"]
        late = {k: n for i, (k, n) in enumerate(v["newly_fooled"].items()) if i > 0}
        s.append(f"The adaptive worst case leaves {_with_interval(w)}"
                 + ("; after the first member, " + ", ".join(f"{attack_name({'attack': k})} fooled {n} more"
                                                            for k, n in late.items())
                    if late else "") + ".")
    if v["sound"]:
        s.append(f"All {n_checks} health checks passed: the attacks behave as attacks should, so later chapters "
                 "can compare a defense against these numbers.")
    else:
        s.append(f"**{len(v['failed_checks'])} of {n_checks} health checks failed** ({'; '.join(v['failed_checks'])})"
                 ": until they pass, the attack numbers may measure a broken attack rather than the model.")
    if v["deepfool_ratio"] is not None:
        r = v["deepfool_ratio"]
        s.append(f"DeepFool's median ρ is {r:.2f}× DDN's: " + (
            "DeepFool over-states the distance to the decision boundary." if r > DEEPFOOL_OVERSTATES else
            "on this model DeepFool's estimate is close to the stronger attack's."))
    if v["ddn_change"] is not None:
        s.append(f"Doubling DDN's steps moved its median ρ by {pct(v['ddn_change'])} ("
                 + ("converged" if v["ddn_converged"] else
                    f"not converged: above {pct(DDN_CONVERGED)}, so DDN's ρ is an upper bound") + ").")
    if results.get("profile") == "smoke":
        s.append("Profile `smoke`: these numbers only exercise the code and mean nothing.")
    return s


def verdict_markdown(results: Mapping[str, Any]) -> str:
    """The verdict's sentences as the page shows them: the head, then one bullet per finding."""
    first, *rest = verdict(results)["sentences"]
    return first + "\n\n" + "\n".join(f"- {line}" for line in rest)
