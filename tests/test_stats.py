"""robustness_book.evaluate.stats: Wilson intervals against hand-computed values, and interval verdicts."""
import math

import pytest
import torch

from robustness_book.evaluate import accuracy_record, clearly_greater, intervals_overlap, ranks, spearman, wilson_interval


def _wilson_by_hand(k, n, z=1.96):
    # the textbook formula, written out independently of the implementation
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return center - half, center + half


def test_wilson_interval_matches_hand_computed_values():
    # k = 0, n = 10: center = half = (1.96²/20) / (1 + 1.96²/10) = 0.19208 / 1.38416 = 0.138770
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277540, abs=1e-6)
    # k = 5, n = 10: symmetric around 0.5, half = 1.96 · sqrt(0.025 + 0.009604) / 1.38416 = 0.263411
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.236589, abs=1e-6) and hi == pytest.approx(0.763411, abs=1e-6)
    # k = n = 10: the mirror image of k = 0
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(1 - 0.277540, abs=1e-6) and hi == 1.0
    for k, n in [(3, 7), (1, 200), (199, 200), (500, 1000)]:
        assert wilson_interval(k, n) == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)


def test_wilson_interval_properties():
    # contains the point estimate, shrinks with n, widens with z, nothing measured = no information
    for k, n in [(0, 5), (2, 5), (5, 5), (37, 100)]:
        lo, hi = wilson_interval(k, n)
        assert 0 <= lo <= k / n <= hi <= 1
    assert wilson_interval(30, 100)[1] - wilson_interval(30, 100)[0] > wilson_interval(300, 1000)[1] - \
        wilson_interval(300, 1000)[0]
    assert wilson_interval(30, 100, z=2.576)[0] < wilson_interval(30, 100)[0]
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for bad in [(-1, 10), (11, 10)]:
        with pytest.raises(ValueError, match="k <= n"):
            wilson_interval(*bad)
    with pytest.raises(ValueError, match="z must be"):
        wilson_interval(1, 2, z=0)


def test_accuracy_record_from_a_mask_or_a_count():
    mask = torch.tensor([True, False, True, True, False, True, True, False, True, True])
    rec = accuracy_record(mask)
    assert rec["value"] == 0.7 and rec["k"] == 7 and rec["n"] == 10
    assert rec["interval"] == list(wilson_interval(7, 10))
    assert accuracy_record(7, 10) == rec
    assert accuracy_record(torch.tensor(7), 10) == rec  # a 0-d tensor is a count
    with pytest.raises(ValueError, match="give n"):
        accuracy_record(7)
    with pytest.raises(ValueError, match="entries"):
        accuracy_record(mask, 12)


def test_interval_verdicts_compare_intervals_not_points():
    a, b = accuracy_record(60, 100), accuracy_record(50, 100)
    # 60% vs 50% on 100 images each: the points differ but the intervals overlap, so no verdict
    assert intervals_overlap(a, b) and not clearly_greater(a, b) and not clearly_greater(b, a)
    c, d = accuracy_record(600, 1000), accuracy_record(500, 1000)
    assert not intervals_overlap(c, d) and clearly_greater(c, d) and not clearly_greater(d, c)
    # plain (lo, hi) pairs work too; touching intervals overlap
    assert intervals_overlap((0.1, 0.2), (0.2, 0.3)) and not clearly_greater((0.2, 0.3), (0.1, 0.2))
    assert clearly_greater((0.21, 0.3), (0.1, 0.2))
    with pytest.raises(ValueError, match="lo > hi"):
        intervals_overlap((0.3, 0.2), (0.1, 0.2))


def test_ranks_average_ties():
    assert ranks([10, 30, 20, 20]).tolist() == [1.0, 4.0, 2.5, 2.5]


def test_spearman_matches_the_textbook_formula_and_detects_order():
    # no ties: rho = 1 - 6 Σd² / (n(n² - 1)), computed by hand
    a = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0]
    b = [2.0, 1.0, 3.0, 5.0, 4.0, 8.0, 0.5, 7.0]
    d = ranks(a) - ranks(b)
    n = len(a)
    by_hand = 1 - 6 * float((d ** 2).sum()) / (n * (n * n - 1))
    r = spearman(a, b, permutations=2000)
    assert r["rho"] == pytest.approx(by_hand, abs=1e-12)
    # a monotone relation is perfectly ranked and significant; an unrelated one is not
    x = torch.arange(12.0)
    assert spearman(x, x ** 3)["rho"] == pytest.approx(1.0)
    assert spearman(x, x ** 3)["p"] < 0.01



def test_spearman_p_value_is_calibrated_under_the_null():
    # independent samples: p < 0.05 about 5% of the time (binomial 95% range for 300 trials: 2.7%–7.7%, widened)
    g = torch.Generator().manual_seed(0)
    hits = sum(spearman(torch.rand(12, generator=g), torch.rand(12, generator=g), permutations=400, seed=i)["p"] < 0.05
               for i in range(300))
    assert 0.015 <= hits / 300 <= 0.10


def test_spearman_constant_input_has_no_ranking():
    r = spearman([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])
    assert math.isnan(r["rho"]) and r["p"] == 1.0
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2, 3], [1, 2])


def test_compare_reads_intervals_and_makes_no_claim_without_them():
    from robustness_book.evaluate import compare

    a, b = {"value": 0.8, "interval": [0.75, 0.85]}, {"value": 0.6, "interval": [0.55, 0.65]}
    assert compare(a, b) == "higher" and compare(b, a) == "lower"
    assert compare(a, {"value": 0.82, "interval": [0.78, 0.86]}) == "same"
    assert compare(a, None) is None and compare(a, {"value": 0.1}) is None


def test_pct_interval_formats_a_record():
    from robustness_book.report import pct_interval

    assert pct_interval({"value": 0.818, "interval": [0.793, 0.84]}) == "81.8% [79.3%, 84.0%]"
    assert pct_interval({"value": 0.5}) == "50.0%" and pct_interval(None) == "–"


def test_spearman_interval_is_fishers_z_with_the_fieller_variance():
    from robustness_book.evaluate.stats import spearman_interval

    # by hand: z = atanh(0.5) = 0.5493, se = sqrt(1.06 / 25) = 0.2059, tanh(z ± 1.96 se) = 0.1447, 0.7413
    lo, hi = spearman_interval(0.5, 28)
    assert lo == pytest.approx(0.1447, abs=1e-3) and hi == pytest.approx(0.7413, abs=1e-3)
    assert spearman_interval(1.0, 10)[1] <= 1.0  # a perfect ρ stays inside [-1, 1]
