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

__all__ = ["BOOTSTRAP_RESAMPLES", "accuracy_record", "clearly_greater", "compare", "holm", "intervals_overlap",
           "mcnemar_exact", "min_discordant_for", "pack_mask", "paired_bootstrap", "paired_difference_interval",
           "paired_test", "ranks", "spearman", "spearman_interval", "unpack_mask", "wilson_interval"]

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


# --------------------------------------------------------------------------- paired comparisons of the same images


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X ≤ k) for X ~ Binomial(n, 1/2), exactly (integers, then one division)."""
    return sum(math.comb(n, i) for i in range(0, k + 1)) / 2 ** n


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant images (correct only under A, only under B):
    under the null each discordant image falls either way with probability 1/2, so ``p = min(1, 2·P(X ≤ min(b,
    c)))`` with X ~ Binomial(b + c, 1/2); no discordant image gives ``p = 1``."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be ≥ 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return min(1.0, 2 * _binom_cdf_half(min(b, c), b + c))


def paired_difference_interval(a: int, b: int, c: int, d: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval of the difference of two paired proportions p_A − p_B = (b − c) / n (Newcombe 1998, method
    10: Wilson intervals of both margins combined with the continuity-corrected phi of the 2×2 table).

    ``a``: correct under both; ``b``: under A only; ``c``: under B only; ``d``: under neither; n = a+b+c+d."""
    a, b, c, d = (int(v) for v in (a, b, c, d))
    n = a + b + c + d
    if min(a, b, c, d) < 0 or n == 0:
        raise ValueError(f"need counts ≥ 0 with n > 0, got a={a}, b={b}, c={c}, d={d}")
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    denom = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    cross = a * d - b * c
    if denom == 0:
        phi = 0.0
    else:
        phi = (max(cross - n / 2, 0.0) if cross > 0 else cross) / denom
    diff = p1 - p2
    down = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    up = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, diff - down), min(1.0, diff + up)


def paired_test(correct_a: torch.Tensor, correct_b: torch.Tensor) -> dict:
    """A against B on the same images: per image, correct under each (boolean masks of equal length).

    Returns ``{"n", "a_only", "b_only", "both", "neither", "difference" (accuracy A − B), "interval" (95%,
    Newcombe), "p" (exact McNemar, two-sided)}``. The verdicts of the book compare evaluations of the same images
    with this, never with two marginal intervals."""
    ca, cb = correct_a.bool().flatten(), correct_b.bool().flatten()
    if ca.shape != cb.shape:
        raise ValueError(f"the masks cover different images: {tuple(ca.shape)} vs {tuple(cb.shape)}")
    both, a_only = int((ca & cb).sum()), int((ca & ~cb).sum())
    b_only, neither = int((~ca & cb).sum()), int((~ca & ~cb).sum())
    n = ca.numel()
    return {"n": n, "a_only": a_only, "b_only": b_only, "both": both, "neither": neither,
            "difference": (a_only - b_only) / n if n else float("nan"),
            "interval": list(paired_difference_interval(both, a_only, b_only, neither)) if n else [-1.0, 1.0],
            "p": mcnemar_exact(a_only, b_only)}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control over several channels, radii or models),
    in the order given: the i-th smallest p is multiplied by (m − i + 1), running maxima kept, capped at 1."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        adjusted[i] = running
    return adjusted


def min_discordant_for(alpha: float = 0.05) -> int:
    """The fewest discordant images, all in one direction, for which the exact McNemar test reaches ``alpha``:
    below it no paired difference can be significant, whatever the effect (2 · 2⁻ᵏ ≤ alpha)."""
    k = 1
    while mcnemar_exact(k, 0) > alpha:
        k += 1
    return k


def pack_mask(mask: torch.Tensor) -> str:
    """A boolean per-image mask as a compact string (bits packed 8 per byte, base64), for a results file."""
    import base64

    bits = mask.bool().flatten().tolist()
    packed = bytearray((len(bits) + 7) // 8)
    for i, bit in enumerate(bits):
        if bit:
            packed[i // 8] |= 1 << (7 - i % 8)
    return base64.b64encode(bytes(packed)).decode("ascii")


def unpack_mask(text: str, n: int) -> torch.Tensor:
    """The inverse of :func:`pack_mask` for ``n`` images."""
    import base64

    packed = base64.b64decode(text.encode("ascii"), validate=True)
    if len(packed) != (n + 7) // 8:
        raise ValueError(f"a packed mask of {len(packed)} bytes cannot hold exactly {n} images")
    return torch.tensor([bool(packed[i // 8] >> (7 - i % 8) & 1) for i in range(n)], dtype=torch.bool)


#: Resamples of :func:`paired_bootstrap` (Deep Defense's median-ρ claim uses the default).
BOOTSTRAP_RESAMPLES = 2000


def paired_bootstrap(arrays: list[torch.Tensor], statistic, *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap of ``statistic(*arrays)`` over images resampled together (paired: every array is
    indexed by the same images). ``statistic`` maps arrays of shape ``(resamples, n)`` to ``(resamples,)``.
    A resample whose statistic is undefined (∞ − ∞) counts against both ends of the interval and both tails
    of ``p`` (conservative). Returns ``{"value", "interval", "p", "n", "resamples"}``; ``p`` is the two-sided
    bootstrap p-value of "the statistic is 0". The seed is fixed, so a verdict is a pure function of the results."""
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"paired bootstrap needs arrays over the same images, got lengths {[len(a) for a in arrays]}")
    value = float(statistic(*[a[None] for a in arrays])[0])
    idx = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    stats = statistic(*[a[idx] for a in arrays])
    undefined = torch.isnan(stats)
    low = torch.where(undefined, -math.inf, stats).sort().values
    high = torch.where(undefined, math.inf, stats).sort().values
    k = int(math.floor(alpha / 2 * resamples))
    tail = min(int(((stats <= 0) | undefined).sum()), int(((stats >= 0) | undefined).sum()))
    return {"value": value, "interval": (float(low[k]), float(high[resamples - 1 - k])),
            "p": min(1.0, 2 * (tail + 1) / (resamples + 1)), "n": n, "resamples": resamples}


def spearman_interval(rho: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% interval (``z`` = 1.96) of a Spearman ρ of ``n`` > 3 pairs: Fisher's z with Fieller, Hartley and
    Pearson's (1957) variance 1.06 / (n − 3)."""
    zr, se = math.atanh(max(min(rho, 1 - 1e-12), -1 + 1e-12)), math.sqrt(1.06 / (n - 3))
    return math.tanh(zr - z * se), math.tanh(zr + z * se)
