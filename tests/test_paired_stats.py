"""Paired comparisons of the same images: exact McNemar, Newcombe's interval, Holm, packed masks (hand computations)."""
from __future__ import annotations

import math

import pytest
import torch

from robustness_book.evaluate import stats


def test_mcnemar_exact_matches_hand_computation():
    # b=3, c=1: P(X ≤ 1 | n=4, 1/2) = (1 + 4) / 16, doubled
    assert stats.mcnemar_exact(3, 1) == pytest.approx(10 / 16)
    assert stats.mcnemar_exact(10, 0) == pytest.approx(2 / 2 ** 10)
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert stats.mcnemar_exact(5, 5) == 1.0
    assert stats.mcnemar_exact(7, 2) == stats.mcnemar_exact(2, 7)


def test_paired_interval_properties():
    lo, hi = stats.paired_difference_interval(40, 0, 0, 60)  # identical outcomes
    assert lo < 0 < hi or (lo == 0 == hi)
    lo, hi = stats.paired_difference_interval(40, 15, 1, 44)  # A clearly better on the same images
    assert 0 < lo < 14 / 100 < hi
    lo2, hi2 = stats.paired_difference_interval(40, 1, 15, 44)
    assert (lo2, hi2) == pytest.approx((-hi, -lo))
    # pairing makes the interval narrower than two independent Wilson intervals would suggest when the outcomes agree
    l1, u1 = stats.wilson_interval(55, 100)
    l2, u2 = stats.wilson_interval(41, 100)
    assert hi - lo < (u1 - l1) + (u2 - l2)


def test_paired_test_from_masks():
    a = torch.tensor([1, 1, 1, 0, 0, 1, 0, 1], dtype=torch.bool)
    b = torch.tensor([1, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool)
    t = stats.paired_test(a, b)
    assert (t["both"], t["a_only"], t["b_only"], t["neither"]) == (2, 3, 1, 2)
    assert t["difference"] == pytest.approx((3 - 1) / 8)
    assert t["p"] == pytest.approx(stats.mcnemar_exact(3, 1))
    with pytest.raises(ValueError, match="different images"):
        stats.paired_test(a, b[:4])


def test_holm_matches_hand_computation():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == [0.5]
    assert stats.holm([0.6, 0.6]) == [1.0, 1.0]


def test_min_discordant():
    k = stats.min_discordant_for(0.05)
    assert stats.mcnemar_exact(k, 0) <= 0.05 < stats.mcnemar_exact(k - 1, 0)
    assert k == math.ceil(math.log2(2 / 0.05))


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 300])
def test_packed_masks_round_trip(n):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) > 0.5
    text = stats.pack_mask(mask)
    assert len(text) <= 4 * ((n + 7) // 8 + 2) // 3 + 4
    assert torch.equal(stats.unpack_mask(text, n), mask)
    if n:
        with pytest.raises(ValueError):
            stats.unpack_mask(text, n + 8)


def test_autoattack_flags_are_captured_not_printed(capsys):
    import logging

    from robustness_book.evaluate.autoattack import _collect_flags, flags_of

    with _collect_flags() as messages:
        logging.getLogger("auto-attack").warning("there are 3 points with zero gradient! This might lead to ...")
        logging.getLogger("auto-attack").warning("it seems to be a randomized defense! Please use version='rand'.")
    assert flags_of(messages) == ["zero_gradients", "randomized"]
    assert flags_of(["something new"]) == ["other"]
    assert "zero gradient" not in capsys.readouterr().err


def test_provenance_names_the_autoattack_version():
    from robustness_book.results import provenance

    assert provenance({"seed": 0})["versions"]["pyautoattack"] == "0.2.0"
