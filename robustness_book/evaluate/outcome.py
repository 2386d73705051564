"""The book's verdict rules, shared by every chapter: three outcomes, paired tests, the floor, the health gate.

A claim "the defense makes the network more robust" is judged on the *same images* under the reference network
and the defended one, with an exact McNemar test on the discordant images (:func:`.stats.paired_test`), never by
comparing two marginal intervals. Its outcome is one of three:

* ``holds`` — the defended network is right on significantly more images (Holm-adjusted where a claim is tested
  at several radii, channels or models), and the evaluation is healthy;
* ``does not hold`` — the paired interval of the gain lies below the smallest gain that would matter;
* ``inconclusive`` — with its reason: ``floor`` (the reference is at 0% or 100% and no significant gain showed: a
  missing gain there says nothing; a gain that does show is judged as anywhere else), ``underpowered``
  (too few images for the gain that would matter: the page says the smallest difference this many images can
  detect), ``unhealthy`` (a health check that invalidates a positive failed), ``broken`` (a network near chance),
  ``reduced_scale`` (training far below the paper's budget).

A mechanism word ("masked gradients", "an artefact of the weak attack") needs evidence: :func:`removed_by` shows
that the weak attack showed a significant gain over the reference and that a stronger attack measurably removed it
on the same images, and names the member that did.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import torch

from .stats import min_discordant_for, paired_test

__all__ = ["GATING_CHECKS", "OUTCOMES", "Outcome", "REASONS", "fooled_most", "health_gate", "judge_gain", "off_floor",
           "removed_by", "smallest_detectable"]

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"
OUTCOMES = (HOLDS, DOES_NOT_HOLD, INCONCLUSIVE)
#: Why an outcome is inconclusive, in the words a page uses.
REASONS = {
    "floor": "at the floor: the reference network is at 0% or 100% here, where no gain showed and a missing one "
             "says nothing about the claim",
    "underpowered": "too few images for the gain that would matter",
    "unhealthy": "the evaluation is unhealthy",
    "broken": "a network is near chance",
    "reduced_scale": "training far below the paper's budget",
    "not_measured": "this results file holds no per-image outcomes",
}
#: Health checks whose failure makes a positive outcome inconclusive: each says the attack may have missed
#: examples that exist (gradient-free or transfer attacks did better, more steps changed the answer, or an
#: unbounded attack could not reach chance).
GATING_CHECKS = ("gradient_free", "transfer", "step_doubling", "chance")


@dataclass(frozen=True)
class Outcome:
    """One judged claim: ``outcome`` (one of :data:`OUTCOMES`), ``reason`` (a :data:`REASONS` key, for
    inconclusive only), ``detail`` (the numbers that decided it, in words), ``mechanism`` (only with evidence)."""

    outcome: str
    reason: str | None = None
    detail: str = ""
    mechanism: str | None = None

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}; allowed: {', '.join(OUTCOMES)}")
        if (self.outcome == INCONCLUSIVE) != (self.reason is not None):
            raise ValueError("an inconclusive outcome names its reason, and only an inconclusive one")
        if self.reason is not None and self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}; allowed: {', '.join(REASONS)}")

    def text(self) -> str:
        """The outcome as a page prints it: ``holds``, or ``inconclusive (at the floor: …)``, with the detail."""
        head = f"**{self.outcome}**" + (f" ({REASONS[self.reason]})" if self.reason else "")
        return head + (f": {self.detail}" if self.detail else "")

    def to_dict(self) -> dict:
        return asdict(self)


def off_floor(interval: Sequence[float]) -> bool:
    """The floor rule: a comparison is judged only where the reference's 95% interval excludes 0 and 100%, except
    for a significant gain, which shows through the floor (:func:`judge_gain`)."""
    return interval[0] > 0 and interval[1] < 1


def smallest_detectable(n: int, alpha: float = 0.05) -> float:
    """The smallest accuracy difference ``n`` paired images can show at level ``alpha`` in the best case (every
    discordant image in one direction): the exact McNemar test needs :func:`.stats.min_discordant_for` of them."""
    return min_discordant_for(alpha) / n if n else float("inf")


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def judge_gain(defended: torch.Tensor, reference: torch.Tensor, *, min_effect: float, alpha: float = 0.05,
               p_adjusted: float | None = None) -> tuple[Outcome, dict]:
    """Is the defended network right on more of the same images than the reference? (Per-image boolean masks.)

    ``min_effect`` is the smallest gain (a fraction of images) that would matter for the claim; ``p_adjusted``
    replaces the test's p when the claim is tested several times (Holm). Returns ``(outcome, paired test)``."""
    test = paired_test(defended, reference)
    n = test["n"]
    ref = reference.bool()
    ref_interval = _wilson(int(ref.sum()), n)
    p = test["p"] if p_adjusted is None else p_adjusted
    lo, hi = test["interval"]
    detail = (f"gain {_pct(test['difference'])} points [{_pct(lo)}, {_pct(hi)}] on the same {n} images "
              f"({test['a_only']} right only when defended, {test['b_only']} only without), McNemar p = {p:.2g}")
    if p < alpha and test["difference"] > 0:
        # a gain that shows is evidence even where the reference is at 0%: the floor hides gains, it cannot fake one
        return Outcome(HOLDS, None, detail), test
    if not off_floor(ref_interval):
        return Outcome(INCONCLUSIVE, "floor", detail), test
    if hi < min_effect:
        return Outcome(DOES_NOT_HOLD, None, detail + f"; a gain of {_pct(min_effect)} points is excluded"), test
    return Outcome(INCONCLUSIVE, "underpowered",
                   detail + f"; {n} images cannot show a gain below {_pct(smallest_detectable(n, alpha))} points, "
                            f"and the interval still admits {_pct(min_effect)}"), test


def _wilson(k: int, n: int) -> tuple[float, float]:
    from .stats import wilson_interval

    return wilson_interval(k, n)


def health_gate(outcome: Outcome, rows: Sequence[Mapping]) -> Outcome:
    """A positive outcome with a failed gating health check (:data:`GATING_CHECKS`) among ``rows`` becomes
    *inconclusive (evaluation unhealthy)*, naming the checks; other outcomes are returned unchanged."""
    failed = [r["id"] for r in rows if not r["passed"] and r["id"] in GATING_CHECKS]
    if outcome.outcome != HOLDS or not failed:
        return outcome
    return Outcome(INCONCLUSIVE, "unhealthy", f"{outcome.detail}; failed health checks: {', '.join(failed)}")


def fooled_most(weak: torch.Tensor, worst: Mapping) -> tuple[str, int]:
    """The member of a ``worst_case`` result (``fooled_by``, ``members``) that fooled most of the images the weak
    attack left standing (``weak``, per image) and the worst case did not: ``(member, images)``."""
    removed = weak.bool() & ~worst["robust_mask"].bool()
    fooled_by = worst["fooled_by"][removed]
    counts = {name: int((fooled_by == i).sum()) for i, name in enumerate(worst["members"])}
    member = max(counts, key=counts.get)
    return member, counts[member]


def removed_by(weak: torch.Tensor, worst: Mapping, *, weak_reference: torch.Tensor,
               alpha: float = 0.05) -> dict | None:
    """Evidence for a mechanism word ("masked", "an artefact of the weak attack"), on the same images, per image:

    1. the weak attack showed a gain: the defended network under it (``weak``) is right on significantly more
       images than the reference network under the same attack (``weak_reference``), exact McNemar, p < ``alpha``;
       without a gain that showed, there is nothing a stronger attack could have removed;
    2. the stronger attacks removed it: the defended network's adaptive worst case (a ``worst_case`` result with
       ``robust_mask``, ``fooled_by`` and ``members``) is significantly below its own accuracy under the weak attack.

    Returns ``{"test", "weak_gain", "member", "images"}`` (``test``: step 2's paired test, ``weak_gain``: step 1's,
    ``member``: the member that fooled most of the images the weak attack left standing, :func:`fooled_most`) or
    ``None`` when either step lacks evidence."""
    strong = worst["robust_mask"].bool()
    if not len(weak) == len(weak_reference) == len(strong):
        raise ValueError(f"removed_by compares the same images: the weak attack covers {len(weak)}, the reference "
                         f"under it {len(weak_reference)} and the worst case {len(strong)}; slice them to the "
                         f"images they share")
    weak_gain = paired_test(weak.bool(), weak_reference.bool())
    if not (weak_gain["p"] < alpha and weak_gain["difference"] > 0):
        return None
    test = paired_test(weak.bool(), strong)
    if not (test["p"] < alpha and test["difference"] > 0):
        return None
    member, images = fooled_most(weak, worst)
    return {"test": test, "weak_gain": weak_gain, "member": member, "images": images}
