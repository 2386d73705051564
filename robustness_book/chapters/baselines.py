"""Chapter 1 — threat model and attacks on an undefended model (chapter id ``baselines``).

Everything the chapter's page calls, in the order the page calls it:

* the parameters (:data:`SPEC`, with the profiles ``smoke``, ``laptop``, ``paper``);
* the one training recipe of the chapter's model (:func:`train_recipe`, :func:`train_model`), also used by
  ``python -m robustness_book bench``: the model zoo's (:mod:`robustness_book.zoo`) unless a reader changes it;
* the measurements, each a step ``step(run)`` on a :class:`robustness_book.chapters.kit.Run` (``chapter.Run``) that
  appends result records (:mod:`robustness_book.results`), health rows and timings: :func:`train`,
  :func:`attack_curves`, :func:`threat_radius` (the headline: PGD at the threat radius, measured as its own
  record), :func:`min_norm_attacks`, :func:`worst_case`, :func:`evaluation_health` and :func:`attack_cost`
  (wall-clock seconds, which go to the results' ``timings``, never to records);
* tables and figures, functions of the results (``run.results()`` or a saved file): :func:`clean_summary`,
  :func:`curves_figure`, :func:`curves_table`, :func:`worst_case_table`, :func:`min_norm_table`,
  :func:`health_tables`, :func:`cost_table`, and :func:`examples_figure` (the one figure drawn from images, so
  from the run);
* the verdict, a pure function of the results as read back (:func:`verdict_summary`, :func:`verdict`), with
  its thresholds as module constants and the book's broken rule (:data:`robustness_book.chapters.kit.BROKEN_RULE`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import matplotlib.pyplot as plt
import torch
from torch import nn

from .. import attacks, evaluate, report, zoo
from ..config import ChapterSpec, Param, RunConfig, check_counts
from ..evaluate.outcome import GATING_CHECKS, REASONS, Outcome, fooled_most, off_floor
from ..data import DATASETS, dataset_info, load_dataset, threat_eps
from ..models import MODELS, check_model
from ..report import markdown_table, pct, pct_interval, plot_curves, plot_examples, record_table, records_table
from ..results import first, record, select
from . import kit
from .kit import Run  # noqa: F401  (the page's ``chapter.Run(cfg)``)

def _check(cfg: RunConfig) -> None:
    check_model(cfg.model, cfg.dataset)
    check_counts(cfg, {"train_size": "train", "n_clean": "test"})  # n_attack ≤ n_clean below
    if cfg.n_attack > cfg.n_clean:
        raise ValueError(f"parameter n_attack={cfg.n_attack} must not exceed n_clean={cfg.n_clean}")


PARAMS = {
    "dataset": Param("choice", "data set", DATASETS),
    "model": Param("choice", "architecture from robustness_book.models", tuple(MODELS), per_dataset=True),
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
    """The training parameters of ``profile``, read from the model zoo (:mod:`robustness_book.zoo`): its recipe of
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


# --------------------------------------------------------------------------- the model


def train_recipe(cfg: Mapping[str, Any], seed: int | None = None) -> dict:
    """Chapter 1's training recipe: the keyword arguments of :func:`robustness_book.train.trained_model`.

    The zoo recipe of the data set at the run's profile (:func:`robustness_book.zoo.for_dataset`: plain
    cross-entropy, SGD with momentum 0.9, weight decay 5e-4, batch 128, JumpReLU's step schedule scaled to the
    epochs) with the run's ``model``, ``train_size`` (the first N training images), ``epochs`` and ``lr``: an
    unchanged run asks for the zoo's model. ``seed`` (default ``cfg["seed"]``) seeds the initialization and the
    batch order; another seed gives an independent copy (the transfer source of the health checks). The
    checkpoint cache is keyed by this whole recipe.
    """
    return zoo.variant(zoo.for_dataset(cfg["dataset"], cfg["profile"]), model=cfg["model"],
                       train_size=cfg["train_size"], epochs=cfg["epochs"], lr=cfg["lr"],
                       seed=cfg["seed"] if seed is None else seed)


def train_model(cfg: Mapping[str, Any], seed: int | None = None) -> tuple[nn.Module, dict]:
    """``(model, meta)``: :func:`train_recipe` trained (or loaded from the cache); an unchanged zoo recipe gives
    the zoo's model (:func:`robustness_book.zoo.get`), shared with JumpReLU's baseline. ``meta`` as
    :func:`robustness_book.train.cached_train` returns it, with ``zoo`` (the zoo name, or ``None``)."""
    return zoo.model_for(**train_recipe(cfg, seed))


# --------------------------------------------------------------------------- the steps


def _rec(cfg: Mapping[str, Any], **fields) -> dict:
    return record(cfg, dataset=cfg["dataset"], model=cfg["model"], **fields)


def _attacked(run: Run) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return run.nets["model"], run.data["attacked"].x, run.data["attacked"].y


def train(run: Run) -> None:
    """Train (or load) the model and take the test images: the first ``n_clean`` (``run.data["clean"]``), the
    first ``n_attack`` for every attack (``"attacked"``). Records the clean accuracy of both (``subset``) and the
    last epoch's training loss; the timings keep whether training came from the cache, and its seconds."""
    cfg = run.cfg
    with run.timer("train"):
        run.nets["model"], meta = train_model(cfg)
    test = load_dataset(cfg.dataset, "test")
    run.data.update(clean=test.first(cfg.n_clean), attacked=test.first(cfg.n_attack))
    run.records += [kit.accuracy_record(cfg, run.nets["model"], run.data[s], dataset=cfg.dataset, model=cfg.model,
                                        batch_size=cfg.batch_size, subset=s) for s in ("clean", "attacked")]
    epochs = meta.get("history", {}).get("epochs", [])
    if epochs:
        run.records.append(_rec(cfg, metric="train_loss", value=epochs[-1]["loss"], epoch=len(epochs)))
    run.timings["train"] = {"cached": bool(meta["cached"]), "seconds": float(meta["train_seconds"])}


def attack_curves(run: Run) -> None:
    """Accuracy of the attacked images under FGSM and PGD-L∞ at each radius of ``eps_grid_linf`` and under
    PGD-L2 at each radius of ``eps_grid_l2``: one record per (attack, radius), ``role="curve"``. PGD takes
    ``pgd_steps`` steps of 2.5·ε/steps from a random start, ``restarts`` times, seeded by ``seed``."""
    cfg, (model, x, y) = run.cfg, _attacked(run)
    pgd = {"steps": cfg.pgd_steps, "restarts": cfg.restarts}
    plan = [("fgsm", attacks.fgsm, "linf", cfg.eps_grid_linf, {}),
            ("pgd_linf", attacks.pgd_linf, "linf", cfg.eps_grid_linf, pgd),
            ("pgd_l2", attacks.pgd_l2, "l2", cfg.eps_grid_l2, pgd)]
    with run.timer("accuracy curves"):
        for name, fn, threat, grid, kwargs in plan:
            curve = evaluate.accuracy_curve(model, x, y, fn, grid, cfg.batch_size, seed=cfg.seed, **kwargs)
            run.records += [_rec(cfg, metric="accuracy", attack=name, threat_model=threat, eps=p["eps"],
                                 value=round(p["accuracy"] * len(y)) / len(y), n=len(y), role="curve", **kwargs)
                            for p in curve]


def threat_radius(run: Run) -> None:
    """The headline: accuracy under PGD-L∞ at exactly the threat radius ``eps`` (``role="threat"``), measured
    on its own whether or not ``eps`` lies on the curve's grid. The adversarial images go to
    ``run.raw["threat"]`` (:func:`examples_figure`)."""
    cfg, (model, x, y) = run.cfg, _attacked(run)
    kwargs = {"steps": cfg.pgd_steps, "restarts": cfg.restarts}
    with run.timer("threat radius"):
        run.raw["threat"] = evaluate.run_attack(
            attacks.pgd_linf, model, x, y, cfg.batch_size, eps=cfg.eps,
            generator=torch.Generator(evaluate.model_device(model)).manual_seed(cfg.seed), **kwargs)
    correct = int((evaluate.predict(model, run.raw["threat"]) == y).sum())
    run.records.append(_rec(cfg, metric="accuracy", attack="pgd_linf", threat_model="linf", eps=cfg.eps,
                            value=correct / max(len(y), 1), n=len(y), role="threat", **kwargs))


def min_norm_attacks(run: Run) -> None:
    """Minimum-norm attacks on the attacked images: DeepFool L2 and L∞ (``deepfool_iter`` iterations) and DDN
    (``evaluate.min_norm``: ``ddn_steps`` steps, then twice as many), per attack and budget as
    :func:`robustness_book.chapters.kit.min_norm_records` (success rate over the correct images, median and mean ρ in
    pixels, median ‖r‖); DDN's ``converged`` record is ``evaluate.min_norm``'s."""
    cfg, (model, x, y) = run.cfg, _attacked(run)
    at = {"dataset": cfg.dataset, "model": cfg.model, "n": len(y)}
    with run.timer("minimum-norm attacks"):
        for attack, p, threat in (("deepfool_l2", 2, "l2"), ("deepfool_linf", math.inf, "linf")):
            adv = evaluate.run_attack(attacks.deepfool, model, x, y, cfg.batch_size, norm=p,
                                      max_iter=cfg.deepfool_iter)
            run.records += kit.min_norm_records(cfg, evaluate.min_norm_summary(x, adv, y, model, p=p), attack=attack,
                                                threat_model=threat, max_iter=cfg.deepfool_iter, **at)
        ddn = evaluate.min_norm(model, x, y, steps=cfg.ddn_steps, batch_size=cfg.batch_size, seed=cfg.seed)
    double = {k[:-len("_double")]: v for k, v in ddn.items() if k.endswith("_double") and k != "steps_double"}
    for summary, steps in ((ddn, ddn["steps"]), (double, ddn["steps_double"])):
        run.records += kit.min_norm_records(cfg, summary, attack="ddn", threat_model="l2", steps=steps, **at)


def _judged_radius(run: Run) -> float | None:
    """The radius of the PGD-L∞ curve where the worst-case claim is judged when the threat radius is at the floor:
    of the grid radii below ``eps`` whose PGD accuracy interval excludes 0 and 100%, the one where PGD's accuracy is
    nearest 50% (``None`` if none). Not the largest: there PGD alone is often just off the floor, and the stronger
    worst case back on it, so the claim would be at the floor again."""
    cfg = run.cfg
    off = {r["eps"]: r["value"] for r in select(run.records, metric="accuracy", attack="pgd_linf", role="curve")
           if 0 < r["eps"] < cfg.eps and off_floor(r["interval"])}
    return min(off, key=lambda e: (abs(off[e] - 0.5), -e), default=None)


def worst_case(run: Run) -> None:
    """The adaptive worst case at the threat radius (``evaluate.worst_case``, default members: APGD-CE, APGD-T,
    Square) as :func:`robustness_book.chapters.kit.worst_case_records` (the
    robust accuracy with ``role="threat"``; per member ``images_fooled``; the first member alone, ``alone=True``,
    every accuracy with its per-image outcome), then AutoAttack (standard) on the images it left standing
    (:func:`robustness_book.chapters.kit.autoattack_on_survivors`, its flags in the record). When the worst case is at
    the floor there (0% or 100%: no paired comparison can show), it is also run at the radius of
    :func:`_judged_radius` (``role="judged"``), where the verdict judges the worst case against PGD alone. The
    results, with their per-image outcomes, go to ``run.raw["worst_case"]`` (and ``"worst_case_judged"``)."""
    cfg, (model, x, y) = run.cfg, _attacked(run)
    members = evaluate.default_members(cfg.pgd_steps, cfg.restarts, cfg.square_queries)
    at = {"dataset": cfg.dataset, "model": cfg.model}
    knobs = {"steps": cfg.pgd_steps, "restarts": cfg.restarts, "queries": cfg.square_queries}
    with run.timer("worst case"):
        worst = evaluate.worst_case(model, x, y, cfg.eps, members, batch_size=cfg.batch_size, seed=cfg.seed)
    recs = kit.worst_case_records(cfg, worst, **at, run=run, key="worst_case", first_alone=True,
                                  robust_fields={"role": "threat", **knobs})
    run.records += recs
    run.timings["worst_case"] = worst["seconds"]
    with run.timer("AutoAttack on the survivors"):
        aa, run.timings["autoattack"] = kit.autoattack_on_survivors(cfg, model, x, y, worst, **at,
                                                                    batch_size=cfg.batch_size)
    run.records.append(aa)
    judged = None if off_floor(worst["interval"]) else _judged_radius(run)
    if judged is not None:
        with run.timer("worst case at the judged radius"):
            worst = evaluate.worst_case(model, x, y, judged, members, batch_size=cfg.batch_size, seed=cfg.seed)
        recs = kit.worst_case_records(cfg, worst, **at, run=run, key="worst_case_judged", first_alone=True,
                                      robust_fields={"role": "judged", **knobs})
        run.records += recs


def evaluation_health(run: Run) -> None:
    """The health rows of Carlini et al. (2019) for PGD-L∞ at ``eps`` (:func:`robustness_book.chapters.kit.health_rows`),
    with the gradient-free check of the worst case and a transfer check: examples crafted at full strength on a
    second copy of the recipe trained from ``seed + 1`` must fool the model no more than white-box PGD."""
    cfg, (model, x, y) = run.cfg, _attacked(run)
    with run.timer("health checks"):
        source, _ = train_model(cfg, seed=cfg.seed + 1)
        run.health += kit.health_rows(model, x, y, dataset=cfg.dataset, model=cfg.model, eps=cfg.eps,
                                      steps=cfg.pgd_steps, num_classes=dataset_info(cfg.dataset).num_classes,
                                      seed=cfg.seed, batch_size=cfg.batch_size, transfer_from=source,
                                      worst=run.raw["worst_case"])


def attack_cost(run: Run) -> None:
    """Wall-clock seconds and images per second of each attack on the attacked images (radius attacks at
    ``eps``), timed with :func:`robustness_book.evaluate.timed` (CUDA synchronized), into
    ``run.timings["attack_cost"]``. Machine-dependent: never in records."""
    cfg, (model, x, y) = run.cfg, _attacked(run)
    plan = {"FGSM": (attacks.fgsm, {"eps": cfg.eps}),
            f"PGD-{cfg.pgd_steps} L∞": (attacks.pgd_linf, {"eps": cfg.eps, "steps": cfg.pgd_steps}),
            f"DeepFool L2 (≤{cfg.deepfool_iter} it.)": (attacks.deepfool, {"norm": 2, "max_iter": cfg.deepfool_iter}),
            f"DDN ({cfg.ddn_steps} steps)": (attacks.ddn, {"steps": cfg.ddn_steps})}
    costs = run.timings["attack_cost"] = {}
    with run.timer("attack cost"):
        for name, (fn, kwargs) in plan.items():
            _, seconds = evaluate.timed(evaluate.run_attack, fn, model, x, y, cfg.batch_size, **kwargs)
            costs[name] = {"seconds": seconds, "images_per_second": len(y) / max(seconds, 1e-9)}


# --------------------------------------------------------------------------- tables and figures of the results

_ATTACK_NAMES = {"fgsm": "FGSM", "pgd_linf": "PGD L∞", "pgd_l2": "PGD L2", "deepfool_l2": "DeepFool L2",
                 "deepfool_linf": "DeepFool L∞", "ddn": "DDN L2", "worst_case": "adaptive worst case",
                 "pgd_ce": "PGD (cross-entropy)", "pgd_margin": "PGD (margin loss)", "square": "Square",
                 "apgd_ce": "APGD (cross-entropy)", "apgd_t": "APGD-T (targeted DLR)",
                 "autoattack": "AutoAttack (standard) on the worst case's survivors"}


def attack_name(rec: Mapping[str, Any]) -> str:
    """A record's attack as the page names it, with its steps (``PGD-10 L∞``)."""
    name = _ATTACK_NAMES.get(rec["attack"], rec["attack"])
    steps = rec.get("setting", {}).get("steps")
    if steps and rec["attack"] in ("pgd_linf", "pgd_l2"):
        name = name.replace("PGD", f"PGD-{steps}")
    return name


def _curves(records: list[dict], threat: str) -> dict[str, list[dict]]:
    """Per attack (in the records' order), its curve's points ``{"eps", "accuracy"}`` sorted by radius."""
    out: dict[str, list[dict]] = {}
    for r in select(records, metric="accuracy", threat_model=threat, role="curve"):
        out.setdefault(attack_name(r), []).append({"eps": r["eps"], "accuracy": r["value"]})
    return {name: sorted(points, key=lambda p: p["eps"]) for name, points in out.items()}


def clean_summary(results: Mapping[str, Any]) -> str:
    """One sentence: clean accuracy with its interval, on how many images, and how training went."""
    records = results["records"]
    clean = first(records, metric="accuracy", attack="none", subset="clean")
    text = f"Clean accuracy on the first {clean['n']:,} test images: **{pct_interval(clean)}**"
    loss = first(records, metric="train_loss")
    if loss:
        text += f"; training loss in the last epoch {loss['value']:.3f}"
    train = results.get("timings", {}).get("train")
    if train:
        text += (" (weights loaded from the cache" if train["cached"] else " (trained in this run")
        text += f", {train['seconds']:.0f} s of training)"
    return text + "."


def curves_figure(results: Mapping[str, Any]):
    """Accuracy against the radius: FGSM and PGD in L∞ (left), PGD in L2 (right), chance as a dotted line, the
    threat radius as a red dashed line with the headline measurement (PGD at exactly ε) as a red star."""
    records = results["records"]
    rec = first(records, metric="accuracy", role="threat", attack="pgd_linf")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    chance = 1 / dataset_info(records[0]["dataset"]).num_classes
    for ax, threat, title in ((axes[0], "linf", "L∞ attacks"), (axes[1], "l2", "L2 attack")):
        plot_curves(_curves(records, threat), f"{title[:2]} radius ε (pixels in [0, 1])", title=title, ax=ax,
                    chance=chance)
    if rec:
        axes[0].axvline(rec["eps"], color="red", ls="--", lw=1)
        axes[0].plot([rec["eps"]], [rec["value"]], "*", color="red", ms=12,
                     label=f"{attack_name(rec)} at ε = {rec['eps']:.3g}")
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # shown once, as the cell's value
    return fig


def curves_table(results: Mapping[str, Any], threat: str = "linf") -> str:
    """The curve's numbers: one row per attack, one column per radius."""
    rows = select(results["records"], metric="accuracy", threat_model=threat, role="curve")
    named = [{**r, "setting": {**r["setting"], "name": attack_name(r)}} for r in rows]
    words = kit.THREAT_NAMES.get(threat, threat)
    return records_table(named, rows=["name"], column="eps", headers={"name": f"attack \\ {words} radius ε"})


def _restarts(rec: Mapping[str, Any]) -> str:
    k = rec["setting"].get("restarts", 1)
    return f"{k} restart" + ("s" if k != 1 else "")


def worst_case_table(results: Mapping[str, Any]) -> str:
    """At the threat radius: clean accuracy of the attacked images, PGD alone (the headline), the worst case's
    first member alone, the adaptive worst case, AutoAttack on its survivors, and what each member of the worst
    case added, each with its 95% interval; then the same at the judged radius when the worst case ran there."""
    records = results["records"]
    clean = first(records, metric="accuracy", attack="none", subset="attacked")
    rows = [{"what": "no attack", "accuracy": pct_interval(clean), "n": clean["n"]}] if clean else []
    eps = first(records, metric="accuracy", role="threat", attack="pgd_linf")["eps"]
    for r in select(records, metric="accuracy", role="threat") + _strong(records, eps, "threat")[1:]:
        rows.append({"what": _what(r), "accuracy": pct_interval(r), "n": r["n"]})
    table = markdown_table(rows, {"what": f"at ε = {eps:.3g}", "accuracy": "accuracy [95% interval]",
                                  "n": "images"}, {"n": lambda v: f"{v:,}"})
    table += _fooled_line(records, eps)
    judged = first(records, metric="accuracy", attack="worst_case", role="judged")
    if judged:
        rows = [{"what": _what(r), "accuracy": pct_interval(r), "n": r["n"]}
                for r in (_alone(records, judged["eps"]), judged) if r]
        table += ("\n\n" + markdown_table(rows, {"what": f"at the judged radius ε = {judged['eps']:.3g}",
                                                  "accuracy": "accuracy [95% interval]", "n": "images"},
                                           {"n": lambda v: f"{v:,}"}) + _fooled_line(records, judged["eps"]))
    return table


def _what(r: Mapping[str, Any]) -> str:
    s = r["setting"]
    if "members" in s:
        return f"{attack_name(r)} (members: {s['members'].replace('+', ', ')})"
    if s.get("alone"):
        return f"{attack_name(r)} alone (the worst case's first member)"
    if r["attack"] == "autoattack":
        return "AutoAttack (standard) on the worst case's survivors" + (f" — flags: {s['flags']}" if s.get("flags")
                                                                       else "")
    return f"{attack_name(r)}, {_restarts(r)}"


def _fooled_line(records: list[dict], eps: float) -> str:
    fooled = sorted(select(records, metric="images_fooled", eps=eps), key=lambda r: r["setting"]["order"])
    return ("\n\nImages each member of the worst case fooled that the earlier members missed: "
            + ", ".join(f"{attack_name(r)} {int(r['value'])}" for r in fooled) + ".") if fooled else ""


def _alone(records: list[dict], eps: float) -> dict | None:
    """The worst case's first member alone at ``eps`` (``alone=True``)."""
    return first(records, metric="accuracy", alone=True, eps=eps)


def _strong(records: list[dict], eps: float, role: str) -> list[dict]:
    """At ``eps``: the worst case (``role``), the first member alone, AutoAttack on the survivors (those present)."""
    out = [first(records, metric="accuracy", attack="worst_case", role=role), _alone(records, eps),
           first(records, metric="accuracy", attack="autoattack", on="worst_case_survivors", eps=eps)]
    return [r for r in out if r is not None] if out[0] is not None else []


def _number(**match: Any):
    """A :func:`robustness_book.report.record_table` column: the row's one record matching ``match``, to 4 digits."""
    def cell(recs: list[dict]) -> str:
        rec = first(recs, **match)
        return "–" if rec is None or math.isnan(rec["value"]) else f"{rec['value']:.4g}"
    return cell


def min_norm_table(results: Mapping[str, Any]) -> str:
    """Per minimum-norm attack (and DDN's step budget): success rate, median and mean ρ, median ‖r‖."""
    records, rows = results["records"], {}
    for r in select(records, metric="success_rate"):
        budget = {k: r["setting"][k] for k in ("steps", "max_iter") if k in r["setting"]}
        label = f"{budget['steps']} steps" if "steps" in budget else f"≤ {budget['max_iter']} it."
        rows[f"{_ATTACK_NAMES[r['attack']]}, {label}"] = {"attack": r["attack"], **budget}
    return record_table(records, rows, {"fooled (of correct)": {"metric": "success_rate"},
                                        "median ρ": _number(metric="rho", statistic="median"),
                                        "mean ρ (fooled only)": _number(metric="rho", statistic="mean"),
                                        "median ‖r‖ (attack's norm)": _number(metric="norm", statistic="median")},
                        corner="attack", cell=lambda rec: pct(rec["value"]))


def health_tables(results: Mapping[str, Any]) -> str:
    """The health rows under the data set and network they check (failed checks marked, never hidden)."""
    return report.health_tables(results["health"])


def cost_table(results: Mapping[str, Any]) -> str:
    """Seconds and images per second per attack (from the results' ``timings["attack_cost"]``)."""
    return markdown_table([{"attack": k, **v} for k, v in results["timings"]["attack_cost"].items()],
                          {"attack": "attack", "seconds": "seconds", "images_per_second": "images/s"},
                          {"seconds": lambda s: f"{s:.2f}", "images_per_second": lambda r: f"{r:.0f}"})


def examples_figure(run: Run, k: int = 8):
    """The first ``k`` attacked images of a live run: clean (true label → prediction), adversarial under PGD-L∞
    at the threat radius (:func:`threat_radius`; new prediction) and the perturbation amplified to the full
    gray range."""
    model, x, y = _attacked(run)
    x, y, adv = x[:k], y[:k], run.raw["threat"][:k]
    fig = plot_examples(x, adv, y, evaluate.predict(model, x), evaluate.predict(model, adv),
                        dataset_info(run.cfg.dataset).classes, n=len(y),
                        title=f"PGD-L∞ at the threat radius ε = {run.cfg.eps:.3g}")
    plt.close(fig)
    return fig


# --------------------------------------------------------------------------- the verdict

#: The strongest robust accuracy at the threat radius whose 95% interval lies below this: the model is not robust
NOT_ROBUST_BELOW = 0.10
#: The smallest share of images the worst case must fool beyond PGD alone for it to matter: later chapters judge
#: defense gains of 5–10 points against this baseline, so a single PGD that misses 5 points would be a weak one
WORST_CASE_MIN_EFFECT = 0.05
#: DeepFool's median ρ above this multiple of DDN's: DeepFool over-states the distance to the boundary
DEEPFOOL_OVERSTATES = 1.05


def _strongest(records: list[dict], eps: float) -> dict:
    """The lowest robust accuracy measured at the threat radius: AutoAttack on the worst case's survivors, else the
    worst case, else the PGD headline (each an upper bound on the true robust accuracy)."""
    for match in ({"attack": "autoattack", "on": "worst_case_survivors"}, {"attack": "worst_case", "role": "threat"},
                  {"attack": "pgd_linf", "role": "threat"}):
        rec = first(records, metric="accuracy", eps=eps, **match)
        if rec is not None:
            return rec
    raise AssertionError("unreachable: the headline is always present")


def _not_robust(strongest: dict, broken: bool, health: list[dict]) -> Outcome:
    """Claim 1, one measurement against a threshold (no comparison, so no floor): *holds* when the strongest
    robust accuracy's interval lies below :data:`NOT_ROBUST_BELOW`; *does not hold* when it lies at or above it
    (a positive robustness finding for an undefended network, so a failed gating health check makes it
    inconclusive); else inconclusive (too few images)."""
    lo, hi = strongest["interval"]
    detail = (f"{attack_name(strongest)} leaves {pct_interval(strongest)} of {strongest['n']:,} images correct "
              f"at ε = {strongest['eps']:.3g}; threshold {pct(NOT_ROBUST_BELOW)}")
    if broken:
        return Outcome("inconclusive", "broken", detail)
    if hi < NOT_ROBUST_BELOW:
        return Outcome("holds", None, detail)
    if lo < NOT_ROBUST_BELOW:
        return Outcome("inconclusive", "underpowered", detail + f"; the interval straddles the threshold at "
                                                                f"{strongest['n']:,} images")
    failed = [r["id"] for r in health if not r["passed"] and r["id"] in GATING_CHECKS]
    if failed:
        return Outcome("inconclusive", "unhealthy", detail + f"; failed health checks: {', '.join(failed)}")
    return Outcome("does not hold", None, detail)


def _removed(alone: dict, worst: dict) -> str | None:
    """Which member removed PGD alone's extra accuracy: on the same images, the worst case is significantly below
    PGD alone (exact McNemar, p < 0.05), and the member that fooled most of the images PGD alone left standing
    (:func:`robustness_book.evaluate.outcome.fooled_most`, read with :func:`kit.worst_from_record`). There is no
    defended network here, so no mechanism is named, only the member. ``None`` without that evidence, or for a
    file that does not say which member fooled each image."""
    weak, strong = kit.per_image(alone), kit.worst_from_record(worst)
    if weak is None or strong is None:
        return None
    test = evaluate.paired_test(weak, strong["robust_mask"])
    if not (test["p"] < 0.05 and test["difference"] > 0):
        return None
    member, images = fooled_most(weak, strong)
    return f"PGD alone's extra accuracy was removed by {attack_name({'attack': member})} ({images} images)"


def _beyond_pgd(records: list[dict], health: list[dict], clean: dict | None, num_classes: int) -> dict:
    """Claim 2, the adaptive worst case finds more than PGD alone (its first member, on the same images): a paired
    test (:func:`robustness_book.chapters.kit.paired_outcome`, ``min_effect`` :data:`WORST_CASE_MIN_EFFECT`, the health
    gate) judged at the threat radius, or, where the worst case is at the floor there, at the judged radius
    (``role="judged"``), the threat-radius outcome reported beside it."""
    def judge(role: str) -> dict | None:
        worst = first(records, metric="accuracy", attack="worst_case", role=role)
        if worst is None:
            return None
        alone = _alone(records, worst["eps"])
        outcome, _ = kit.paired_outcome(alone, worst, min_effect=WORST_CASE_MIN_EFFECT, health=health,
                                        clean=clean, num_classes=num_classes)
        paired = kit.per_image(alone) is not None and kit.per_image(worst) is not None
        mechanism = _removed(alone, worst) if paired else None
        return {**outcome.to_dict(), "mechanism": mechanism, "eps": worst["eps"], "role": role,
                "min_effect": WORST_CASE_MIN_EFFECT, "per_image": paired}

    threat, judged = judge("threat"), judge("judged")
    if threat is None:
        return {"outcome": "inconclusive", "reason": "underpowered", "detail": "no worst case in the results",
                "mechanism": None, "eps": None, "role": None, "min_effect": WORST_CASE_MIN_EFFECT,
                "per_image": False, "threat": None}
    if judged is None:
        return {**threat, "threat": None}
    return {**judged, "threat": threat}


def verdict_summary(results: Mapping[str, Any]) -> dict:
    """What a reader should conclude, from a results dict (``records`` and ``health``) alone: ``{data set:
    {"outcome", "reason", "detail", "mechanism", "category", "claims", "broken", "sound", "failed_checks",
    "headline", "strongest", "worst_case", "clean", "images_fooled", "autoattack_flags", "deepfool_ratio",
    "ddn_change", "ddn_converged"}}`` (one data set per run). ``headline`` is the PGD-L∞ record at the threat
    radius (``role="threat"``: measured there, never read off the curve). Two claims
    (``claims``, each ``{"outcome", "reason", "detail", "mechanism"}``: holds / does not hold / inconclusive with
    a :data:`robustness_book.evaluate.outcome.REASONS` key):

    * ``not_robust`` (its outcome is also the top level's) — the undefended network is not robust at the threat
      radius: the strongest robust accuracy there (:func:`_strongest`: AutoAttack on the worst case's survivors)
      against :data:`NOT_ROBUST_BELOW` (:func:`_not_robust`); ``broken`` by
      :func:`robustness_book.chapters.kit.is_broken` (``BROKEN_RULE``) or a failed near-constant check;
    * ``worst_case_beyond_pgd`` — the adaptive worst case finds more than PGD alone (:func:`_beyond_pgd`); its
      ``mechanism`` names the member that removed PGD alone's extra accuracy, only where the worst case is
      significantly below PGD alone on the same images (:func:`_removed`).

    ``category`` (the page's head) maps claim 1's outcome: ``broken``, ``not_robust`` (holds), ``resists`` (does
    not hold), ``unclear`` (inconclusive). ``sound``: every health row passed. DeepFool's median ρ is compared
    with DDN's at the larger budget (:data:`DEEPFOOL_OVERSTATES`; a ratio of medians, reported, not judged: the
    results keep no per-image distances); convergence is DDN's ``converged`` record (``evaluate.min_norm``'s).
    """
    records, health = results["records"], results.get("health", [])
    threat = select(records, metric="accuracy", attack="pgd_linf", role="threat")
    if len(threat) != 1:
        raise ValueError(f"the results hold {len(threat)} PGD records at the threat radius (role='threat'); "
                         "expected exactly one")
    headline = threat[0]
    num_classes = dataset_info(headline["dataset"]).num_classes
    clean = first(records, metric="accuracy", attack="none", subset="clean")
    failed = kit.failed_checks(health)
    broken = kit.is_broken(clean, num_classes)
    strongest = _strongest(records, headline["eps"])
    claim1 = _not_robust(strongest, broken or "near_constant" in failed, health)
    category = {"holds": "not_robust", "does not hold": "resists"}.get(claim1.outcome, "unclear")
    category = "broken" if claim1.reason == "broken" else category
    claims = {"not_robust": claim1.to_dict(),
              "worst_case_beyond_pgd": _beyond_pgd(records, health, clean, num_classes)}
    fooled = sorted(select(records, metric="images_fooled", eps=headline["eps"]), key=lambda r: r["setting"]["order"])
    df = first(records, attack="deepfool_l2", metric="rho", statistic="median")
    ddn = max(select(records, attack="ddn", metric="rho", statistic="median"), default=None,
              key=lambda r: r["setting"]["steps"])
    ratio = (df["value"] / ddn["value"] if df and ddn and ddn["value"] and math.isfinite(ddn["value"]) else None)
    converged = first(records, attack="ddn", metric="converged")
    change = converged["setting"]["relative_change"] if converged else None
    return {headline["dataset"]: {
        **claim1.to_dict(), "category": category, "claims": claims,
        "broken": broken, "sound": not failed, "failed_checks": failed, "headline": headline,
        "strongest": strongest, "worst_case": first(records, metric="accuracy", attack="worst_case", role="threat"),
        "clean": clean, "images_fooled": {r["attack"]: int(r["value"]) for r in fooled},
        "autoattack_flags": kit.autoattack_flags(records), "deepfool_ratio": ratio,
        "ddn_change": change if change is not None and math.isfinite(change) else None,
        "ddn_converged": bool(converged and converged["value"])}}


_HEAD = {
    "broken": "**Verdict: the model is broken.** Its clean accuracy is near chance (or one class takes most "
              "predictions), so no robustness number on this page means anything.",
    "not_robust": "**Verdict: the undefended model is not robust in this threat model**, as expected.",
    "resists": "**Verdict: unexpected.** The undefended model keeps a notable accuracy at the threat radius even "
               "under AutoAttack on the worst case's survivors: the radius is small for this data set, or the "
               "attacks are weaker than they should be (see the health checks).",
    "unclear": "**Verdict: not settled.**",
}


def _claim_text(c: Mapping[str, Any]) -> str:
    return Outcome(c["outcome"], c["reason"], c["detail"]).text()


def _sentences(v: dict, results: Mapping[str, Any]) -> list[str]:
    h, clean, health = v["headline"], v["clean"], results.get("health", [])
    c1, c2 = v["claims"]["not_robust"], v["claims"]["worst_case_beyond_pgd"]
    head = _HEAD[v["category"]] + (f" Claim 1 is inconclusive: {REASONS[v['reason']]}." if v["category"] == "unclear"
                                   else "")
    s = [head,
         f"Clean accuracy is {pct_interval(clean)} on {clean['n']:,} test images. Under {attack_name(h)} "
         f"({_restarts(h)}) at the threat radius ε = {h['eps']:.3g}, measured there, "
         f"{pct_interval(h)} of {h['n']:,} attacked images stay correct.",
         f"By the book's rule the model is {'' if v['broken'] else 'not '}broken: {kit.BROKEN_RULE}",
         f"Claim 1, *the undefended model is not robust at the threat radius* (the strongest evaluation's interval "
         f"below {pct(NOT_ROBUST_BELOW)}): {_claim_text(c1)}."]
    if v["worst_case"] is not None:
        late = list(v["images_fooled"].items())[1:]
        s.append(f"The adaptive worst case leaves {pct_interval(v['worst_case'])}"
                 + ("; after the first member, " + ", ".join(f"{attack_name({'attack': k})} fooled {n} more"
                                                            for k, n in late) if late else "") + ".")
    s.append(_beyond_text(c2))
    flags = v["autoattack_flags"]
    if first(results["records"], attack="autoattack"):
        s.append("; ".join(flags) + "." if flags else "No AutoAttack flag fired on the worst case's survivors.")
    if v["sound"]:
        s.append(f"All {len(health)} health checks passed: the attacks behave as attacks should, so later "
                 "chapters can compare a defense against these numbers.")
    else:
        names = [h["check"] for h in health if h["id"] in v["failed_checks"]]
        s.append(f"**{len(names)} of {len(health)} health checks failed** ({'; '.join(names)}): until they pass, "
                 "the attack numbers may measure a broken attack rather than the model.")
    if v["deepfool_ratio"] is not None:
        r = v["deepfool_ratio"]
        s.append(f"DeepFool's median ρ is {r:.2f}× DDN's: " + (
            "on the median, DeepFool over-states the distance to the decision boundary" if r > DEEPFOOL_OVERSTATES
            else "on this model DeepFool's median is close to the stronger attack's")
            + f" (margin {DEEPFOOL_OVERSTATES:g}×; a ratio of medians on the same images, reported, not a paired "
              "test: the results keep no per-image distances).")
    if v["ddn_change"] is not None:
        s.append(f"Doubling DDN's steps moved its median ρ by {pct(v['ddn_change'])} ("
                 + ("converged" if v["ddn_converged"] else "not converged by `robustness_book.evaluate.min_norm`'s "
                    "rule, so DDN's ρ is an upper bound") + ").")
    note = kit.smoke_note(results.get("profile", ""))
    return s + ([note] if note else [])


def _beyond_text(c: Mapping[str, Any]) -> str:
    """Claim 2's sentence: where it was judged and why, the outcome, the mechanism only with evidence, and the
    threat-radius outcome beside it when the claim was judged elsewhere."""
    if not c["per_image"]:
        return f"Claim 2, *the adaptive worst case finds more than PGD alone*: not judged; {kit.NO_PER_IMAGE_NOTE}."
    where = (f"at the threat radius ε = {c['eps']:.3g}" if c["threat"] is None else
             f"at ε = {c['eps']:.3g}, the radius of the PGD curve below the threat radius where PGD's accuracy is "
             f"nearest 50% (at the threat radius the worst case is at the floor)")
    text = (f"Claim 2, *the adaptive worst case finds more than PGD alone* (its first member, on the same images; "
            f"the smallest gain that matters: {pct(c['min_effect'])} of the images; in the test's words *defended* is "
            f"PGD alone, *without* the worst case), judged {where}: "
            f"{_claim_text(c)}")
    if c["mechanism"]:
        text += f". {c['mechanism']}"
    if c["threat"] is not None:
        text += f". At the threat radius (reported, not judged): {_claim_text(c['threat'])}"
    return text + "."


def verdict(results: Mapping[str, Any]) -> str:
    """The verdict as the page shows it, from the results as read back: the head, then one bullet per finding."""
    head, *rest = _sentences(next(iter(verdict_summary(results).values())), results)
    return head + "\n\n" + "\n".join(f"- {line}" for line in rest)


def glance_rows(results: Mapping[str, Any]) -> list[dict]:
    """The "Results at a glance" rows (:data:`kit.GLANCE_KEYS`), one per data set, from :func:`verdict_summary`:
    the undefended network at the threat radius, PGD-L∞ as the attack measured first, the strongest evaluation
    (AutoAttack on the worst case's survivors) as the book's worst case, claim 1's outcome."""
    rows = []
    for d, v in verdict_summary(results).items():
        h = v["headline"]
        rows.append(kit.glance_row(
            results, SPEC.name, dataset=d, threat_model=h["threat_model"], eps=h["eps"], defense="none",
            network=h["model"], claim_name="the undefended network is not robust", claim=v, clean=v["clean"],
            paper_attack=attack_name(h), paper_attack_acc=h, worst_case=v["strongest"],
            autoattack=first(results["records"], metric="accuracy", attack="autoattack", protocol="autoattack",
                             eps=h["eps"])))
    return rows
