"""The shared verdict rules (robustness_book/evaluate/outcome.py) on hand-made per-image outcomes."""
from __future__ import annotations

import pytest
import torch

from robustness_book.evaluate import outcome as O


def _mask(*bits):
    return torch.tensor(bits, dtype=torch.bool)


def _masks(n, ref_right, defended_only, reference_only):
    """n images: the reference right on ``ref_right`` of them; the defended network additionally right on
    ``defended_only`` images the reference misses, and wrong on ``reference_only`` images the reference gets."""
    ref = torch.zeros(n, dtype=torch.bool)
    ref[:ref_right] = True
    dfd = ref.clone()
    dfd[ref_right:ref_right + defended_only] = True
    dfd[:reference_only] = False
    return dfd, ref


def test_a_real_gain_holds():
    dfd, ref = _masks(200, 60, 30, 2)
    result, test = O.judge_gain(dfd, ref, min_effect=0.05)
    assert result.outcome == "holds" and test["a_only"] == 30 and test["b_only"] == 2


def test_a_gain_excluded_does_not_hold():
    dfd, ref = _masks(2000, 600, 3, 3)
    result, _ = O.judge_gain(dfd, ref, min_effect=0.05)
    assert result.outcome == "does not hold" and "excluded" in result.detail


def test_at_the_floor_a_missing_gain_is_inconclusive_not_a_negative():
    dfd, ref = _masks(2000, 0, 2, 0)  # the reference at 0%: an interval excluding 5 points says nothing there
    result, _ = O.judge_gain(dfd, ref, min_effect=0.05)
    assert (result.outcome, result.reason) == ("inconclusive", "floor")
    dfd, ref = _masks(200, 200, 0, 0)  # at 100% no gain can exist
    result, _ = O.judge_gain(dfd, ref, min_effect=0.05)
    assert (result.outcome, result.reason) == ("inconclusive", "floor")


def test_a_gain_that_shows_through_the_floor_holds():
    # adversarial training at 76% where the normal network is at 0%: the floor hides gains, it cannot fake one
    dfd, ref = _masks(200, 0, 152, 0)
    result, test = O.judge_gain(dfd, ref, min_effect=0.05)
    assert result.outcome == "holds" and test["a_only"] == 152
    result, _ = O.judge_gain(dfd, ref, min_effect=0.05, p_adjusted=0.2)  # not significant after Holm
    assert (result.outcome, result.reason) == ("inconclusive", "floor")


def test_too_few_images_is_inconclusive_and_says_what_could_be_detected():
    dfd, ref = _masks(20, 8, 2, 0)
    result, _ = O.judge_gain(dfd, ref, min_effect=0.05)
    assert (result.outcome, result.reason) == ("inconclusive", "underpowered")
    assert f"{100 * O.smallest_detectable(20):.1f} points" in result.detail


def test_holm_adjusted_p_is_used():
    dfd, ref = _masks(200, 60, 8, 1)
    plain, test = O.judge_gain(dfd, ref, min_effect=0.05)
    assert plain.outcome == "holds" and test["p"] < 0.05
    adjusted, _ = O.judge_gain(dfd, ref, min_effect=0.05, p_adjusted=0.2)
    assert adjusted.outcome == "inconclusive"


def test_a_failed_gating_health_check_makes_a_positive_inconclusive():
    positive = O.Outcome("holds", None, "gain 10 points")
    rows = [{"id": "transfer", "passed": False}, {"id": "gradients", "passed": False}]
    gated = O.health_gate(positive, rows)
    assert (gated.outcome, gated.reason) == ("inconclusive", "unhealthy") and "transfer" in gated.detail
    assert "gradients" not in gated.detail  # not a gating check
    negative = O.Outcome("does not hold", None, "")
    assert O.health_gate(negative, rows) is negative
    assert O.health_gate(positive, [{"id": "transfer", "passed": True}]) is positive


def test_outcome_validates_its_words():
    with pytest.raises(ValueError, match="reason"):
        O.Outcome("inconclusive")
    with pytest.raises(ValueError, match="unknown outcome"):
        O.Outcome("masked")
    assert "at the floor" in O.Outcome("inconclusive", "floor").text()


def test_a_mechanism_needs_a_stronger_attack_that_removed_the_gain():
    n = 100
    weak = torch.ones(n, dtype=torch.bool)
    weak_reference = torch.zeros(n, dtype=torch.bool)  # the weak attack showed a gain of 100 points
    fooled_by = torch.full((n,), -1, dtype=torch.int16)
    fooled_by[:30] = 2  # Square removed 30 images the weak attack left standing
    fooled_by[30:33] = 0
    worst = {"robust_mask": fooled_by == -1, "fooled_by": fooled_by, "members": ["pgd_ce", "pgd_margin", "square"]}
    evidence = O.removed_by(weak, worst, weak_reference=weak_reference)
    assert evidence["member"] == "square" and evidence["images"] == 30
    assert evidence["test"]["a_only"] == 33 and evidence["weak_gain"]["a_only"] == n
    # no measurable removal: no mechanism word
    worst_same = {**worst, "robust_mask": weak.clone(), "fooled_by": torch.full((n,), -1, dtype=torch.int16)}
    assert O.removed_by(weak, worst_same, weak_reference=weak_reference) is None


def test_a_mechanism_needs_a_gain_the_weak_attack_showed():
    # Deep Defense's MLP in the laptop reference: the worst case is far below the weak attack's accuracy, but the
    # weak attack's gain over the reference was not significant (most of the drop is the weak attack being weak on
    # both networks), so nothing was removed and no mechanism may be named
    n = 200
    weak = torch.zeros(n, dtype=torch.bool)
    weak[:60] = True
    weak_reference = torch.zeros(n, dtype=torch.bool)
    weak_reference[:55] = True  # 5 discordant images, all for the defense: exact p = 0.0625
    fooled_by = torch.zeros(n, dtype=torch.int16)  # the worst case fools what the weak attack fooled, and more
    fooled_by[:40] = 1
    fooled_by[40:60] = -1
    worst = {"robust_mask": fooled_by == -1, "fooled_by": fooled_by, "members": ["pgd_ce", "pgd_margin"]}
    assert O.removed_by(weak, worst, weak_reference=weak_reference) is None
    # the same removal after a gain that did show names the member
    weak_reference[30:55] = False
    assert O.removed_by(weak, worst, weak_reference=weak_reference)["member"] == "pgd_margin"
    # different image counts are refused, not silently compared
    with pytest.raises(ValueError, match="same images"):
        O.removed_by(weak, worst, weak_reference=weak_reference[:100])
