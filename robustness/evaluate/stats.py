"""Confidence intervals for accuracies, and verdict helpers that compare intervals, not points.

An accuracy measured on ``n`` images is a binomial proportion; the book reports it with its 95% Wilson
score interval (Wilson 1927), which behaves well at 0 and at ``n`` out of ``n``, where the normal
approximation collapses to a zero-width interval. A verdict "A is more robust than B" is only drawn
when the two intervals are disjoint (:func:`clearly_greater`).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import torch

__all__ = ["accuracy_record", "clearly_greater", "compare", "intervals_overlap", "ranks", "spearman", "wilson_interval"]

Interval = Union[Sequence[float], Mapping[str, object]]


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval ``(lo, hi)`` for ``k`` successes in ``n`` trials (``z = 1.96``: 95%).

    ``center = (p + z²/2n) / (1 + z²/n)``, ``half = z / (1 + z²/n) · sqrt(p(1 − p)/n + z²/4n²)`` with
    ``p = k/n``; exactly 0 (resp. 1) at ``k = 0`` (resp. ``k = n``). ``n = 0`` (nothing measured) gives
    ``(0, 1)``. Raises ``ValueError`` unless ``0 <= k <= n`` and ``z > 0``.
    """
    k, n = int(k), int(n)
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if not z > 0:
        raise ValueError(f"z must be > 0, got {z!r}")
    if n == 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


def accuracy_record(correct: torch.Tensor | int, n: int | None = None, z: float = 1.96) -> dict:
    """``{"value", "k", "n", "interval"}`` of an accuracy: from a boolean mask (one entry per image, ``n``
    then defaults to its length) or from a count ``k`` of correct images out of ``n``."""
    if isinstance(correct, torch.Tensor) and correct.dim() > 0:
        mask = correct.bool().flatten()
        k = int(mask.sum())
        n = mask.numel() if n is None else int(n)
        if n != mask.numel():
            raise ValueError(f"n={n} but the mask has {mask.numel()} entries")
    else:
        if n is None:
            raise ValueError("give n with a count of correct images")
        k = int(correct)
    lo, hi = wilson_interval(k, n, z)
    return {"value": k / n if n else float("nan"), "k": k, "n": int(n), "interval": [lo, hi]}


def _interval(a: Interval) -> tuple[float, float]:
    if isinstance(a, Mapping):
        a = a["interval"]
    lo, hi = (float(v) for v in a)
    if lo > hi:
        raise ValueError(f"interval ({lo}, {hi}) has lo > hi")
    return lo, hi


def intervals_overlap(a: Interval, b: Interval) -> bool:
    """Whether two intervals share a point; each is ``(lo, hi)`` or a record with an ``"interval"``."""
    (alo, ahi), (blo, bhi) = _interval(a), _interval(b)
    return alo <= bhi and blo <= ahi


def clearly_greater(a: Interval, b: Interval) -> bool:
    """``a`` is clearly above ``b``: ``a``'s interval lies entirely above ``b``'s (no overlap)."""
    return _interval(a)[0] > _interval(b)[1]


def compare(a: Mapping[str, object] | None, b: Mapping[str, object] | None) -> str | None:
    """``a`` against ``b`` by their 95% intervals: ``"higher"`` (``a``'s lies entirely above), ``"lower"``, or
    ``"same"`` (they overlap); ``None`` when a record or its interval is missing (no interval, no claim)."""
    if a is None or b is None or not a.get("interval") or not b.get("interval"):
        return None
    return "higher" if clearly_greater(a, b) else "lower" if clearly_greater(b, a) else "same"


def ranks(values: Sequence[float]) -> torch.Tensor:
    """Ranks 1..n of ``values`` (float64), ties sharing their average rank (as Spearman's ρ needs)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    order = torch.argsort(v, stable=True)
    out = torch.empty_like(v)
    out[order] = torch.arange(1, len(v) + 1, dtype=torch.float64)
    for value in torch.unique(v):  # average the ranks of tied values
        tied = v == value
        if int(tied.sum()) > 1:
            out[tied] = out[tied].mean()
    return out


def spearman(a: Sequence[float], b: Sequence[float], permutations: int = 10_000, seed: int = 0) -> dict:
    """Spearman's rank correlation of ``a`` and ``b`` with a two-sided permutation p-value.

    ``rho`` is Pearson's correlation of the (tie-averaged) ranks; ``p`` = (1 + #{|ρ_perm| ≥ |ρ|}) / (1 +
    ``permutations``) over random permutations of ``b`` (seeded), which is exact in the limit and valid for the
    few tens of channels a layer has, where the t approximation is not. A constant input has no ranking:
    ``rho`` is NaN and ``p`` is 1. Returns ``{"rho", "p", "n", "permutations"}``."""
    ra, rb = ranks(a), ranks(b)
    if len(ra) != len(rb) or len(ra) < 3:
        raise ValueError(f"need two sequences of the same length ≥ 3, got {len(ra)} and {len(rb)}")
    ca, cb = ra - ra.mean(), rb - rb.mean()
    denom = float(ca.norm() * cb.norm())
    if denom == 0:
        return {"rho": float("nan"), "p": 1.0, "n": len(ra), "permutations": permutations}
    rho = float(ca @ cb) / denom
    g = torch.Generator().manual_seed(seed)
    perms = torch.argsort(torch.rand(permutations, len(cb), generator=g), dim=1)
    null = (cb[perms] @ ca) / denom
    extreme = int((null.abs() >= abs(rho) - 1e-12).sum())
    return {"rho": rho, "p": (1 + extreme) / (1 + permutations), "n": len(ra), "permutations": permutations}
