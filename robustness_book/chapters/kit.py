"""The chapter kit: what four or more chapters' steps do identically, written once.

A chapter keeps its SPEC, recipes, protocol, its own tables and figures, and its verdict rules (the κ rule, the
λ rule, leave-one-out ensembles: the page explains them). What every chapter does the same way lives here:

* :class:`Run` — one run's state: parameters, records, health rows, timings, raw results (tensors kept for the
  figures and for paired comparisons), exported networks; ``run.results()`` has the shape of
  :func:`robustness_book.results.load_results`, so tables and figures read a live run and a saved one alike.
  Every step of every chapter is ``step(run) -> None``.
* :func:`holdout_split` — training images after the ones a network trains on, never trained on.
* :func:`accuracy_record` — clean (or any) accuracy of a network on a data set, with its interval.
* :func:`worst_case_records` — an adaptive worst case (``evaluate.worst_case``) as records, in one vocabulary:
  ``attack="worst_case"`` (the robust accuracy) and per member ``metric="images_fooled"`` (the images it fooled
  that the earlier members missed, ``order`` its place). The per-image outcome goes to ``run.raw``.
* :func:`min_norm_records` — a minimum-norm summary (``evaluate.min_norm``, ``evaluate.min_norm_summary``) as
  records in one shape, with ``converged`` exactly as ``evaluate.min_norm`` decides it.
* :func:`autoattack_record` — AutoAttack's robust accuracy as a record.
* :func:`health_rows` — Carlini et al.'s health checks, tagged with the data set and network they belong to.
* :func:`is_broken`, :func:`failed_checks`, :func:`smoke_note` — the verdict's shared tail: one rule each.
* :func:`per_image`, :func:`paired_outcome`, :func:`autoattack_on_survivors`, :func:`autoattack_flags` — verdicts
  on the same images: per-image outcomes, paired tests, the floor, the health gate and AutoAttack's confirmation;
  :func:`combine_radii` — one claim judged at several radii as one outcome (a significant reversal refutes it).
* :func:`glance_row` — one row of the "Results at a glance" page (:data:`GLANCE_KEYS`), which every chapter's
  ``glance_rows(results)`` builds from its own ``verdict_summary``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .. import evaluate
from ..config import RunConfig
from ..evaluate.outcome import Outcome, health_gate, judge_gain
from ..evaluate.stats import paired_test
from ..data import ArrayDataset, load_dataset
from ..results import anchors, first, load_results, overrides_of, record, write_results
from ..timing import StageTimer


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    """One run of a chapter: its parameters, what it measured so far, and the live objects its next steps need.

    ``records``, ``health`` (health rows, each tagged with ``dataset`` and ``model``), ``timings`` (everything
    measured in seconds: never in records) and ``extra`` go to the results file; ``exports`` (networks another
    chapter may score, :func:`robustness_book.train.export_entry`) go to its ``extra["models"]``. ``raw`` keeps
    results with tensors (worst cases with their per-image outcomes) keyed as the chapter likes; ``nets`` and
    ``data`` hold networks and data sets. A chapter that needs more state subclasses it.
    """

    cfg: RunConfig
    records: list = field(default_factory=list)
    health: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    exports: list = field(default_factory=list)
    raw: dict = field(default_factory=dict)
    nets: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    timer: StageTimer = field(default_factory=StageTimer)

    def _extra(self) -> dict:
        return {**self.extra, "models": list(self.exports)} if self.exports else dict(self.extra)

    def results(self) -> dict:
        """The run so far in the shape of a results file (what the tables, figures and the verdict read)."""
        return {"chapter": self.cfg.chapter, "profile": self.cfg.profile,
                "parameters": {k: v for k, v in self.cfg.items() if k not in ("chapter", "profile")},
                "overridden": overrides_of(self.cfg), "provenance": {}, "records": self.records,
                "health": self.health, "timings": self.timings, "extra": self._extra()}

    def save(self) -> Path:
        """Write the results file (atomically); returns its path."""
        return write_results(self.cfg, self.records, health=self.health, timer=self.timer, timings=self.timings,
                             extra=self._extra())

    def saved(self) -> dict:
        """:meth:`save`, then the file as read back (non-finite numbers restored)."""
        self.save()
        return load_results(self.cfg.chapter, self.cfg.profile, overrides_of(self.cfg))


# --------------------------------------------------------------------------- data


def holdout_split(dataset: str, start: int, stop: int) -> ArrayDataset:
    """Training images ``start`` to ``stop`` (0-based, ``stop`` excluded) of ``dataset`` as the split ``"val"``:
    held out from the networks that train on the first ``start`` images, so choices made on them are honest."""
    train = load_dataset(dataset, "train")
    return ArrayDataset(dataset, "val", train.x[start:stop], train.y[start:stop],
                        f"{train.source}; images {start + 1:,}–{stop:,}, held out")


# --------------------------------------------------------------------------- measurements → records


def accuracy_record(cfg: Mapping[str, Any], net: nn.Module, ds: ArrayDataset, *, dataset: str, model: str,
                    batch_size: int, **fields: Any) -> dict:
    """The accuracy of ``net`` on ``ds`` (exactly k / n) as a record with its 95% Wilson interval; ``fields`` are
    the record's other fields and setting (``defense=``, ``split=``, …)."""
    correct = evaluate.predict(net, ds.x, batch_size) == ds.y
    r = evaluate.accuracy_record(correct)
    return record(cfg, dataset=dataset, model=model, metric="accuracy", value=r["value"], n=r["n"],
                  interval=r["interval"], **{PER_IMAGE: evaluate.pack_mask(correct)}, **fields)


def worst_case_records(cfg: Mapping[str, Any], result: dict | Sequence[dict], *, dataset: str, model: str,
                       run: Run | None = None, key: Any = None, first_alone: bool = False,
                       member_fields: Mapping[str, Any] | None = None,
                       robust_fields: Mapping[str, Any] | None = None, **fields: Any) -> list[dict]:
    """An adaptive worst case (``evaluate.worst_case``, or each radius of ``worst_case_curve``) as records.

    Per radius: the robust accuracy (``attack="worst_case"``, with its interval and ``members`` "a+b+c" in the
    setting) and, per member, ``metric="images_fooled"``: the images it fooled that the earlier members had not
    (``order``: its place; ``within="worst_case"``). A curve also records, as ``attack="smaller_eps"``, the images
    counted as fooled because a smaller radius fooled them. With ``first_alone``, the first member's own robust
    accuracy (``attack`` its name, ``alone=True``): what a single-attack evaluation would have reported. Both
    accuracy records carry their per-image outcome (setting :data:`PER_IMAGE`) for paired tests, and the robust
    one which member fooled each image (:data:`FOOLED_BY`; :func:`worst_from_record` reads it back).
    ``fields`` go to every record (``defense=``, setting keys), ``member_fields`` to the per-member ones only,
    ``robust_fields`` to the robust-accuracy record only (e.g. the ensemble's budget).
    With ``run`` and ``key``, the result (its per-image ``fooled_by`` and ``robust_mask`` included) is kept in
    ``run.raw[key]``, for figures and paired tests.
    """
    points = [result] if isinstance(result, dict) else list(result)
    out = []
    for p in points:
        at = {"dataset": dataset, "model": model, "threat_model": p["norm"], "eps": p["eps"], "n": p["n"], **fields}
        masks = evaluate.member_robust_masks(p) if "fooled_by" in p else {}
        robust_image = {PER_IMAGE: evaluate.pack_mask(p["robust_mask"])} if "robust_mask" in p else {}
        if "fooled_by" in p:
            robust_image[FOOLED_BY] = pack_fooled_by(p["fooled_by"])
        out.append(record(cfg, metric="accuracy", attack="worst_case", value=p["robust"], interval=p["interval"],
                          members="+".join(p["members"]), **at, **dict(robust_fields or {}), **robust_image))
        if first_alone and p["members"]:
            first = p["members"][0]
            k = round(p["clean"] * p["n"]) - p["added"][first]
            r = evaluate.accuracy_record(k, p["n"])
            alone_image = {PER_IMAGE: evaluate.pack_mask(masks[first])} if masks else {}
            out.append(record(cfg, metric="accuracy", attack=first, value=r["value"], interval=r["interval"],
                              alone=True, **at, **alone_image))
        extra = dict(member_fields or {})
        out += [record(cfg, metric="images_fooled", attack=name, value=p["added"][name], order=i,
                       within="worst_case", **at, **extra) for i, name in enumerate(p["members"])]
        if "carried" in p:
            out.append(record(cfg, metric="images_fooled", attack="smaller_eps", value=p["carried"],
                              order=len(p["members"]), within="worst_case", **at, **extra))
    if run is not None and key is not None:
        run.raw[key] = result
    return out


def min_norm_records(cfg: Mapping[str, Any], summary: Mapping[str, Any], *, dataset: str, model: str, attack: str,
                     threat_model: str, units: str = "pixel", **fields: Any) -> list[dict]:
    """A minimum-norm attack's summary as records of one shape: ``success_rate``; ρ = ‖δ‖/‖x‖ as ``metric="rho"``
    with ``statistic`` median (a failure counts as ∞) and mean (over the successes), in ``units``; the median
    ‖δ‖ (``metric="norm"``) when the summary has it; and, when the summary carries a convergence check
    (``evaluate.min_norm``), ``metric="converged"`` (1 or 0, as ``evaluate.min_norm`` decides it) with the
    doubled run's steps and the relative change of the median in its setting. ``n`` is the number of images."""
    at = {"dataset": dataset, "model": model, "attack": attack, "threat_model": threat_model,
          "n": summary.get("n"), **fields}
    out = [record(cfg, metric="success_rate", value=summary["success_rate"], **at),
           record(cfg, metric="rho", value=summary["rho_median"], units=units, statistic="median", **at),
           record(cfg, metric="rho", value=summary["rho_mean"], units=units, statistic="mean", **at)]
    if "norm_median" in summary:
        out.append(record(cfg, metric="norm", value=summary["norm_median"], statistic="median", **at))
    if "converged" in summary:
        out.append(record(cfg, metric="converged", value=float(summary["converged"]),
                          steps_double=summary["steps_double"], relative_change=summary["relative_change"], **at))
    return out


def autoattack_record(cfg: Mapping[str, Any], net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                      dataset: str, model: str, norm: str = "linf", version: str = "standard",
                      batch_size: int = 256, **fields: Any) -> tuple[dict, float]:
    """AutoAttack's robust accuracy of ``net`` on ``(x, y)`` at ``eps`` (``evaluate.autoattack_accuracy``, seeded
    by the run's seed) as a record (``attack="autoattack"``, ``version`` in the setting). Returns ``(record,
    seconds)``: seconds belong in the run's timings, never in a record."""
    res = evaluate.autoattack_accuracy(net, x, y, eps, norm=norm, version=version, batch_size=batch_size,
                                       seed=cfg["seed"])
    rec = record(cfg, dataset=dataset, model=model, metric="accuracy", attack="autoattack", threat_model=norm,
                 eps=eps, value=res["robust"], n=res["n"], interval=res["interval"], version=version,
                 **{PER_IMAGE: res["mask"]}, **fields)
    return rec, res["seconds"]


def health_rows(net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, dataset: str, model: str, eps: float,
                steps: int, num_classes: int, seed: int, batch_size: int = 256, **kwargs: Any) -> list[dict]:
    """Carlini et al.'s health checks (``evaluate.health_checks``; ``transfer_from=`` a second network crafts the
    transfer examples, ``worst=`` adds the gradient-free check, ``norm=``, ``attack_model=`` as there), each row
    tagged with ``dataset``, ``model`` and ``eps`` so that pages show every table under the network it checks. Keyword
    arguments that are not health-check arguments (``defense=``, ``eps_tag=`` …) become tags too."""
    check_args = {"norm", "attack", "attack_model", "transfer_x_adv", "transfer_from", "worst", "large_eps",
                  "max_class_share"}
    checks = {k: v for k, v in kwargs.items() if k in check_args}
    tags = {k: v for k, v in kwargs.items() if k not in check_args}
    rows = evaluate.health_checks(net, x, y, eps=eps, steps=steps, num_classes=num_classes, batch_size=batch_size,
                                  seed=seed, **checks)
    return [{**row, "dataset": dataset, "model": model, "eps": eps, **tags} for row in rows]


# --------------------------------------------------------------------------- the verdict's shared tail

#: A network is *broken* (its robustness numbers mean nothing) when even the upper end of its clean accuracy's
#: 95% interval is within this margin of chance. The interval, never the point value: the book's rule.
BROKEN_MARGIN = 0.10

BROKEN_RULE = (f"A network counts as broken when the upper end of its clean accuracy's 95% interval is at most "
               f"chance + {BROKEN_MARGIN * 100:.0f} points; its robustness numbers are then not interpreted.")


def is_broken(clean: Mapping[str, Any] | None, num_classes: int) -> bool:
    """:data:`BROKEN_RULE` for a clean-accuracy record (no record counts as broken: nothing was measured)."""
    if clean is None:
        return True
    upper = clean["interval"][1] if clean.get("interval") else clean["value"]
    return upper <= 1 / num_classes + BROKEN_MARGIN


def failed_checks(rows: Sequence[Mapping[str, Any]], **match: Any) -> list[str]:
    """The ids of the failed health checks among ``rows`` whose tags equal ``match`` (e.g. ``dataset="mnist"``)."""
    return [r["id"] for r in rows if not r["passed"] and all(r.get(k) == v for k, v in match.items())]


def smoke_note(profile: str) -> str:
    """The sentence every verdict ends with on the smoke profile ("" otherwise)."""
    if profile != "smoke":
        return ""
    return ("This is the smoke profile: it checks that every cell runs, on too few images and too little training "
            "for any of these outcomes to mean anything.")


# --------------------------------------------------------------------------- per-image outcomes and paired verdicts

#: The setting key holding a record's per-image outcome (packed bits, :func:`robustness_book.evaluate.stats.pack_mask`):
#: whether each of the record's ``n`` images was classified correctly. Paired tests read it.
PER_IMAGE = "correct"

NO_PER_IMAGE_NOTE = ("this results file has no per-image outcomes (it was written before they were recorded): "
                     "rerun the chapter to get paired tests")


def per_image(rec: Mapping[str, Any] | None) -> torch.Tensor | None:
    """A record's per-image outcome (bool tensor of its ``n`` images), or ``None`` when the record has none (a
    results file written before they were recorded)."""
    if rec is None or PER_IMAGE not in rec.get("setting", {}) or not rec.get("n"):
        return None
    return evaluate.unpack_mask(rec["setting"][PER_IMAGE], rec["n"])


def paired_outcome(defended: Mapping[str, Any] | None, reference: Mapping[str, Any] | None, *, min_effect: float,
                   health: Sequence[Mapping[str, Any]] = (), confirm: Mapping[str, Any] | None = None,
                   p_adjusted: float | None = None, num_classes: int | None = None,
                   clean: Mapping[str, Any] | None = None) -> tuple[Outcome, dict | None]:
    """The book's rule for "the defended network is more robust than the reference" on the same images.

    ``defended``/``reference``: accuracy records with per-image outcomes (same images, same radius). The outcome
    (:func:`robustness_book.evaluate.outcome.judge_gain`): holds / does not hold / inconclusive with its reason; a
    positive is then gated by the failed health checks among ``health`` (``unhealthy``), must be confirmed by
    ``confirm`` (AutoAttack's record on the same images: a positive whose gain AutoAttack removes is not one), and
    a defended network that :func:`is_broken` (``clean``, ``num_classes``) is never judged. Returns ``(outcome,
    paired test or None)``."""
    if clean is not None and num_classes is not None and is_broken(clean, num_classes):
        return Outcome("inconclusive", "broken", "the defended network is near chance (" + BROKEN_RULE + ")"), None
    a, b = per_image(defended), per_image(reference)
    if a is None or b is None:
        return Outcome("inconclusive", "not_measured", NO_PER_IMAGE_NOTE), None
    outcome, test = judge_gain(a, b, min_effect=min_effect, p_adjusted=p_adjusted)
    outcome = health_gate(outcome, health)
    if outcome.outcome == "holds" and confirm is not None:
        c = per_image(confirm)
        if c is not None:
            # AutoAttack's own paired test, under the same multiplicity correction as the claim's (Holm's factor)
            own = paired_test(c & a, b)["p"]
            scaled = None if p_adjusted is None else min(1.0, own * p_adjusted / max(test["p"], 1e-300))
            confirmed, _ = judge_gain(c & a, b, min_effect=min_effect, p_adjusted=scaled)
            if confirmed.outcome != "holds":
                outcome = Outcome(confirmed.outcome, confirmed.reason,
                                  f"AutoAttack on the survivors removed the gain: {confirmed.detail}")
    return outcome, test


def autoattack_on_survivors(cfg: Mapping[str, Any], net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            worst: Mapping[str, Any], *, dataset: str, model: str, batch_size: int = 256,
                            **fields: Any) -> tuple[dict, float]:
    """AutoAttack (standard) on the images the worst case ``worst`` left standing, at its radius: the record is the
    accuracy over all of the worst case's images (an image counts as robust only if both left it standing), with
    AutoAttack's reliability flags (``flags`` in the setting, "" when none fired) and the per-image outcome.
    Returns ``(record, seconds)``."""
    standing = worst["robust_mask"].bool()
    idx = standing.nonzero().flatten()
    robust = standing.clone()
    seconds, flags = 0.0, []
    if len(idx):
        res = evaluate.autoattack_accuracy(net, x[idx], y[idx], worst["eps"], norm=worst["norm"],
                                           batch_size=batch_size, seed=cfg["seed"])
        seconds, flags = res["seconds"], res["flags"]
        robust[idx] = evaluate.unpack_mask(res["mask"], len(idx))
    r = evaluate.accuracy_record(robust)
    rec = record(cfg, dataset=dataset, model=model, metric="accuracy", attack="autoattack",
                 threat_model=worst["norm"], eps=worst["eps"], value=r["value"], n=r["n"], interval=r["interval"],
                 on="worst_case_survivors", flags=",".join(flags), **{PER_IMAGE: evaluate.pack_mask(robust)},
                 **fields)
    return rec, seconds


def autoattack_flags(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Sentences naming every AutoAttack record whose run raised a reliability flag (RobustBench: "potentially
    unreliable"), for the page."""
    out = []
    for r in records:
        flags = r["setting"].get("flags") if r["attack"] == "autoattack" else None
        if flags:
            out.append(f"AutoAttack flagged {r['dataset']}/{r['model']}"
                       f"{'/' + r['defense'] if r['defense'] != 'none' else ''} at ε = {r['eps']:g}: "
                       f"{flags.replace(',', ', ')} (potentially unreliable)")
    return out


#: The setting key of a worst case's robust-accuracy record holding, per image, which member fooled it.
FOOLED_BY = "fooled_by"
_STANDING, _CLEAN_WRONG = "-", "x"


def pack_fooled_by(fooled_by: torch.Tensor) -> str:
    """A worst case's per-image ``fooled_by`` as one character per image: the member's index (``0``–``9``, then
    letters), ``-`` still standing, ``x`` misclassified before any attack (``evaluate.worst_case``'s codes)."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    return "".join(_STANDING if v == -1 else _CLEAN_WRONG if v == -2 else digits[int(v)] for v in fooled_by.tolist())


def unpack_fooled_by(text: str) -> torch.Tensor:
    """The inverse of :func:`pack_fooled_by` (int16 codes)."""
    return torch.tensor([-1 if c == _STANDING else -2 if c == _CLEAN_WRONG else int(c, 36) for c in text],
                        dtype=torch.int16)


def worst_from_record(rec: Mapping[str, Any] | None) -> dict | None:
    """What :func:`robustness_book.evaluate.outcome.removed_by` reads (``robust_mask``, ``fooled_by``, ``members``),
    rebuilt from a saved worst-case record; ``None`` for a record without per-image outcomes (an older file)."""
    if rec is None or FOOLED_BY not in rec.get("setting", {}):
        return None
    try:
        fooled_by = unpack_fooled_by(rec["setting"][FOOLED_BY])
    except ValueError:  # another encoding (an older file): no per-image attribution to read
        return None
    return {"robust_mask": fooled_by == -1, "fooled_by": fooled_by,
            "members": rec["setting"].get("members", "").split("+")}


def holm_by(tests: Mapping[Any, Mapping[str, Any] | None]) -> dict:
    """Holm-adjusted p-values of a family of paired tests (``{key: paired test or None}``; ``None`` entries — not
    judged — are left out of the family): ``{key: adjusted p}``."""
    keys = [k for k, t in tests.items() if t is not None]
    return dict(zip(keys, evaluate.holm([tests[k]["p"] for k in keys])))


def combine_radii(per: Sequence[Mapping[str, Any]], *, reference: str = "the reference",
                  alpha: float = 0.05) -> Outcome:
    """One claim judged at several radii (Holm already applied), as one outcome. Each entry: ``eps``, ``outcome``,
    ``reason``, ``detail``, and where measured ``test`` (the paired test) with ``p_adjusted``; ``reference`` names
    the network compared with, in the detail.

    * *does not hold* when a radius shows the defense significantly *worse* (adjusted p < ``alpha``, negative
      difference): "more robust" over the curve is refuted there, even where another radius holds (the detail
      names both);
    * *holds* when it holds at one radius and no radius is reversed;
    * *does not hold* when it does not hold at every radius off the floor (one at least);
    * otherwise *inconclusive*, for the reason of the first radius judged that is (the floor only if every radius
      is at the floor)."""
    detail = "; ".join(f"at ε = {r['eps']:.3g} {Outcome(r['outcome'], r['reason'], r['detail']).text()}" for r in per)

    def reversed_at(r: Mapping[str, Any]) -> bool:
        t = r.get("test")
        p = r.get("p_adjusted") if r.get("p_adjusted") is not None else (t or {}).get("p")
        return t is not None and p is not None and p < alpha and t["difference"] < 0

    worse = [r for r in per if reversed_at(r)]
    holds = [r for r in per if r["outcome"] == "holds"]
    if worse:
        def radii(rows: Sequence[Mapping[str, Any]]) -> str:
            return ", ".join(f"{r['eps']:.3g}" for r in rows)

        head = f"significantly below {reference} at ε = {radii(worse)}"
        if holds:
            head += f" although above it at ε = {radii(holds)}"
        return Outcome("does not hold", None, f"{head}: {detail}")
    if holds:
        return Outcome("holds", None, detail)
    judged = [r for r in per if r["reason"] != "floor"]
    if judged and all(r["outcome"] == "does not hold" for r in judged):
        return Outcome("does not hold", None, detail)
    if not judged:
        return Outcome("inconclusive", "floor", f"{reference} is at the floor at every radius measured: " + detail)
    return Outcome("inconclusive", next(r["reason"] for r in judged if r["outcome"] == "inconclusive"), detail)


# --------------------------------------------------------------------------------------------------------------
# "Results at a glance": one row vocabulary for every chapter's ``glance_rows(results)``

#: The keys of one row of the "Results at a glance" page (:func:`robustness_book.reference.glance_page`).
GLANCE_KEYS = ("dataset", "threat_model", "defense", "network", "clean", "paper_attack", "paper_attack_acc",
               "autoattack", "worst_case", "paper_reported", "flags", "outcome", "reason", "claim", "profile",
               "section")
#: The row keys that hold a measured number, each ``{"value", "interval", "n"}`` copied from one record, or None.
GLANCE_MEASURES = ("clean", "paper_attack_acc", "autoattack", "worst_case")
#: The threat models' names on the page.
THREAT_NAMES = {"linf": "L∞", "l2": "L2", "linf_normalized": "L∞ (normalized units)", "none": "no attack"}
#: The anchor of the section of a chapter's page that holds its verdict (the heading "Results and verdict").
VERDICT_SECTION = "results-and-verdict"


def glance_measure(rec: Mapping[str, Any] | None) -> dict | None:
    """A record's number as the glance page shows it: ``{"value", "interval", "n"}``, copied, never recomputed."""
    if rec is None:
        return None
    interval = rec.get("interval")
    return {"value": rec["value"], "interval": list(interval) if interval else None, "n": rec.get("n")}


def threat_label(threat_model: str, eps: float | None) -> str:
    """``"L∞, ε = 0.3"``: the threat model and radius a row is judged in."""
    name = THREAT_NAMES.get(threat_model, threat_model)
    return name if eps is None else f"{name}, ε = {eps:.4g}"


def flag_names(records: Sequence[Mapping[str, Any] | None]) -> list[str]:
    """AutoAttack's reliability flags ("potentially unreliable") raised on ``records``, by name, each once."""
    names: list[str] = []
    for r in records:
        flags = (r["setting"].get("flags") or "") if r and r["attack"] == "autoattack" else ""
        names += [f.strip() for f in flags.split(",") if f.strip() and f.strip() not in names]
    return names


def glance_reason(claim: Mapping[str, Any]) -> str | None:
    """The short reason a row shows: the inconclusive reason's key (``evaluate.outcome.REASONS``), or
    "mechanism named" where the verdict found one (its text, with its numbers, is on the chapter's page)."""
    if claim.get("outcome") == "inconclusive":
        return claim.get("reason")
    return "mechanism named in the chapter" if claim.get("mechanism") else None


def paper_number(paper: str, **match: Any) -> dict | None:
    """The paper's reported number matching ``match`` in ``robustness_book/anchors/<paper>.json``: ``{"value",
    "source"}``, or None."""
    rec = first(anchors(paper), **match)
    return None if rec is None else {"value": rec["value"], "source": rec["source"]}


def glance_row(results: Mapping[str, Any], chapter: str, *, dataset: str, threat_model: str, eps: float | None,
               defense: str, network: str, claim_name: str, claim: Mapping[str, Any],
               clean: Mapping[str, Any] | None = None, paper_attack: str | None = None,
               paper_attack_acc: Mapping[str, Any] | None = None, autoattack: Mapping[str, Any] | None = None,
               worst_case: Mapping[str, Any] | None = None, paper_reported: dict | None = None,
               flagged: Sequence[Mapping[str, Any] | None] = (), section: str = VERDICT_SECTION) -> dict:
    """One row of the glance page (:data:`GLANCE_KEYS`) from the records a chapter's verdict read and the claim it
    judged (``claim``: a verdict summary's ``outcome``, ``reason``, ``mechanism``). The flags are those of the
    AutoAttack records among ``autoattack``, ``worst_case`` and ``flagged`` (e.g. AutoAttack on the survivors).
    ``section``: the anchor of the chapter page's verdict heading."""
    return {"dataset": dataset, "threat_model": threat_label(threat_model, eps), "defense": defense,
            "network": network, "clean": glance_measure(clean), "paper_attack": paper_attack,
            "paper_attack_acc": glance_measure(paper_attack_acc), "autoattack": glance_measure(autoattack),
            "worst_case": glance_measure(worst_case), "paper_reported": paper_reported,
            "flags": flag_names([autoattack, worst_case, *flagged]), "outcome": claim["outcome"],
            "reason": glance_reason(claim),
            "claim": claim_name, "profile": results.get("profile"), "section": f"{chapter}#{section}"}


# --------------------------------------------------------------------------------------------------------------
# What one chapter borrows from another's results file, and what a training recipe costs


def borrowed(cfg: Mapping[str, Any], chapter: str, *, what: str, param: str | None = None, default: Any = None,
             dataset: str | None = None, metric: str | None = None, parameter: str | None = None,
             **match: Any) -> dict:
    """A hyperparameter another chapter chose (or used), read from that chapter's results file of this run's
    profile, never typed in: the ``value`` of its first record with ``metric`` (and ``dataset``, ``match``), or
    with ``parameter`` the value of that parameter (per data set where it is a mapping). Falls back to this run's
    parameter ``param`` (or, without one, to ``default``) — when a reader set it by hand (it then replaces the
    other chapter's choice), or as a labelled default when the file or the record is missing, with a ``note``
    naming the command that makes it.

    Returns ``{"value", "source", "note", "setting"}`` (``setting``: the record's setting, e.g. a direction; ``{}``
    for a parameter or a default)."""
    if param is not None:
        own = cfg[param]
        default = own[dataset] if isinstance(own, Mapping) and dataset in own else own
    rerun = f"`python -m robustness_book run {chapter} --profile {cfg['profile']}`"
    if param is not None and param in overrides_of(cfg):
        return {"value": default, "source": f"set by hand ({param})", "note": None, "setting": {}}
    try:
        results = load_results(chapter, cfg["profile"])
    except FileNotFoundError:
        results, problem = None, f"no {cfg['profile']} results yet"
    except ValueError as err:  # a damaged results file (ResultsFileError) is reported like a missing one
        results, problem = None, str(err)
    found, setting = None, {}
    if results is not None and metric is not None:
        rec = first(results["records"], metric=metric, **({"dataset": dataset} if dataset else {}), **match)
        found, setting = (None, {}) if rec is None else (rec["value"], dict(rec.get("setting", {})))
        problem = f"its {cfg['profile']} results hold no {metric} record for {dataset}"
    elif results is not None:
        value = results["parameters"].get(parameter)
        found = value[dataset] if isinstance(value, Mapping) and dataset in value else value
        problem = f"its {cfg['profile']} results hold no parameter {parameter}"
    if found is not None:
        setting.pop(PER_IMAGE, None)
        how = "chosen on held-out data by" if metric else f"parameter {parameter} of"
        return {"value": found, "source": f"{how} the {chapter} chapter ({cfg['profile']})", "note": None,
                "setting": setting}
    return {"value": default, "source": f"labelled default {param or repr(default)}: nothing to read from {chapter}",
            "note": f"`{chapter}` ({dataset or 'all data sets'}): {problem}; {what} uses the default {default!r}. "
                    f"Run {rerun}, then this chapter again.", "setting": {}}


class PassCounter:
    """Counts the images the given networks forward, and those whose output a gradient flows back through (hooks
    on each network's output), while the context is open. An attack's input gradient counts as a backward pass,
    a network queried under ``torch.no_grad`` as a forward pass only; a gradient taken once per class counts once
    per class."""

    def __init__(self, *models: nn.Module):
        self.models, self.forward, self.backward, self._handles = models, 0, 0, []

    def _hook(self, module, inputs, output):
        self.forward += output.shape[0]
        if output.requires_grad:
            output.register_hook(self._count_backward)

    def _count_backward(self, grad):
        self.backward += grad.shape[0]

    def __enter__(self) -> "PassCounter":
        self._handles = [m.register_forward_hook(self._hook) for m in self.models]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()


def passes_per_image(net: nn.Module, loss, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The forward and backward passes per training image of one training step of ``loss`` (``loss(model, x,
    y)``, then its backward) on a copy of ``net``, counted with :class:`PassCounter`: ``{"forward",
    "backward"}``. Every step of a recipe does the same work, so one step is exact; normal training is 1 and 1."""
    import copy

    counted = copy.deepcopy(net).train()
    with PassCounter(counted) as counter:
        loss(counted, x, y).backward()
    return {"forward": counter.forward / len(x), "backward": counter.backward / len(x)}


def per_dataset(gray: Any, color: Any, fashion: Any = None) -> dict:
    """A per-data-set profile value: ``gray`` for MNIST (and Fashion-MNIST unless ``fashion`` is given), ``color``
    for CIFAR-10."""
    return {"mnist": gray, "fashion_mnist": gray if fashion is None else fashion, "cifar10": color}


def layer_kinds(model: nn.Module) -> dict[str, str | None]:
    """Each ``nn.ReLU`` module (an entropy layer) with its kind: ``"conv"`` or ``"dense"`` after the type of the
    last ``nn.Conv2d``/``nn.Linear`` registered before it (``None`` when there is none)."""
    kinds, last = {}, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            last = "conv"
        elif isinstance(module, nn.Linear):
            last = "dense"
        elif isinstance(module, nn.ReLU):
            kinds[name] = last
    return kinds


def candidate_layers(model: nn.Module, which: str) -> list[str]:
    """The layers of :func:`layer_kinds` of kind ``which`` (``"dense"``, ``"conv"``, or ``"all"``)."""
    return [name for name, kind in layer_kinds(model).items() if which == "all" or kind == which]
