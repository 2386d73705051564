"""robustness_book.evaluate.health_checks: every check passes on an ordinary network and fails where it should.

The tiny blobs model (4 classes, 6x6 images) is robust up to eps ≈ 0.1 and broken at 0.4 (L∞), so eps = 0.2 is
where accuracy under PGD is near 50%. Each failing case is a concrete way an evaluation goes wrong: masked
gradients (a rounding layer, a large-kappa JumpReLU retrofit), a broken attack, a near-constant classifier.
"""
import copy

import pytest
import torch
from torch import nn

from robustness_book import attacks, evaluate
from robustness_book.defenses.jumprelu import bpda_relu, retrofit  # tests only: evaluate never imports a defense
from robustness_book.evaluate import members as M

from conftest import TinyNet, train_tiny

N, EPS, STEPS = 120, 0.2, 10
ALL = {"eps_zero", "monotone", "chance", "single_step", "step_doubling", "gradients", "near_constant"}


class Round(nn.Module):
    """``x -> round(4x) / 4``: piecewise constant, so autograd's input gradient is exactly zero."""

    def forward(self, x):
        return torch.round(4 * x) / 4


def _data(tiny_data, n=N):
    return tiny_data[0][:n], tiny_data[1][:n]


def _rows(model, x, y, **kw):
    kw = {"eps": EPS, "steps": STEPS, "num_classes": 4, "batch_size": 64, **kw}
    return {r["id"]: r for r in evaluate.health_checks(model, x, y, **kw)}


def _failed(rows):
    return {k for k, r in rows.items() if not r["passed"]}


@pytest.fixture(scope="module")
def other_model(tiny_data):
    """A second tiny network trained from another seed: the transfer source."""
    return train_tiny(*tiny_data, seed=1)


def _transfer(source, x, y, eps=EPS, norm="linf"):
    fn = attacks.pgd_linf if norm == "linf" else attacks.pgd_l2
    return fn(source, x, y, eps=eps, steps=20, early_stop=False, generator=torch.Generator().manual_seed(0))


def test_an_ordinary_network_passes_every_check(tiny_model, tiny_data, other_model):
    x, y = _data(tiny_data)
    worst = evaluate.worst_case(tiny_model, x, y, EPS, M.default_members(steps=20, queries=300))
    rows = _rows(tiny_model, x, y, worst=worst, transfer_x_adv=_transfer(other_model, x, y))
    assert set(rows) == ALL | {"gradient_free", "transfer"}
    assert _failed(rows) == set()
    for r in rows.values():
        assert set(r) == {"id", "check", "measured", "expected", "passed"} and isinstance(r["passed"], bool)
    # the step-doubling check is measured where accuracy is still undecided (near 50%), not at 0%
    assert "at eps 0.2 " in rows["step_doubling"]["measured"]
    # a BPDA copy whose backward is exact computes the same table; the table is deterministic
    same = attacks.with_bpda(tiny_model, {})
    assert _rows(tiny_model, x, y, attack_model=same, worst=worst,
                 transfer_x_adv=_transfer(other_model, x, y)) == rows


def test_an_ordinary_network_passes_every_check_in_l2(tiny_model, tiny_data, other_model):
    x, y = _data(tiny_data)
    worst = evaluate.worst_case(tiny_model, x, y, 1.0, M.default_members(steps=20, queries=300), norm="l2")
    rows = _rows(tiny_model, x, y, eps=1.0, norm="l2", worst=worst,
                 transfer_x_adv=_transfer(other_model, x, y, eps=1.0, norm="l2"))
    assert _failed(rows) == set()
    # L2 rows: PGD-L2, a one-step L2 reference instead of FGSM, and a large radius of 0.5·sqrt(36) = 3
    assert "PGD-L2" in rows["single_step"]["check"] and "one PGD-L2 step" in rows["single_step"]["check"]
    assert rows["chance"]["check"] == "near chance at eps = 3"


def test_masked_gradients_fail(tiny_model, tiny_data, other_model):
    # a rounding layer in front of the net: same decisions almost everywhere, zero gradient everywhere
    x, y = _data(tiny_data)
    masked = nn.Sequential(Round(), tiny_model).eval()
    worst = evaluate.worst_case(masked, x, y, EPS, M.default_members(steps=20, queries=300))
    rows = _rows(masked, x, y, worst=worst, transfer_x_adv=_transfer(other_model, x, y))
    failed = _failed(rows)
    # PGD cannot move, so it stays far above chance, Square (no gradients) and transfer find what PGD missed
    assert {"chance", "gradients", "gradient_free", "transfer"} <= failed
    assert rows["gradients"]["measured"].startswith("100.0% of images")
    assert "near_constant" not in failed  # the classifier itself is fine


def test_a_no_op_attack_fails(tiny_model, tiny_data):
    x, y = _data(tiny_data)

    def no_op(model, x, y, eps, steps, **kw):
        return x.clone()

    failed = _failed(_rows(tiny_model, x, y, attack=no_op))
    assert {"chance", "single_step"} <= failed
    assert "near_constant" not in failed and "gradients" not in failed


def test_eps_zero_fails_for_an_attack_that_ignores_eps(tiny_model, tiny_data):
    x, y = _data(tiny_data)

    def ignores_eps(model, x, y, eps, steps, **kw):
        return attacks.pgd_linf(model, x, y, eps=0.3, steps=steps, **kw)

    rows = _rows(tiny_model, x, y, attack=ignores_eps)
    assert not rows["eps_zero"]["passed"]
    assert rows["eps_zero"]["measured"].endswith("vs clean 100.0%")


def test_monotone_fails_for_an_attack_that_gives_up_at_large_eps(tiny_model, tiny_data):
    x, y = _data(tiny_data)

    def gives_up(model, x, y, eps, steps, **kw):
        return attacks.pgd_linf(model, x, y, eps=eps, steps=steps, **kw) if eps <= EPS else x.clone()

    failed = _failed(_rows(tiny_model, x, y, attack=gives_up))
    assert "monotone" in failed and "eps_zero" not in failed


def test_step_doubling_fails_for_an_attack_that_has_not_converged(tiny_model, tiny_data):
    # a step size meant for twice the steps: with `steps` steps PGD walks at most half the ball, with twice as
    # many the whole ball, so doubling the steps changes the answer where accuracy is near 50%
    x, y = _data(tiny_data)

    def half_way(model, x, y, eps, steps, **kw):
        return attacks.pgd_linf(model, x, y, eps=eps, steps=steps, step_size=eps / (2 * STEPS),
                                random_start=False, **kw)

    rows = _rows(tiny_model, x, y, attack=half_way)
    assert not rows["step_doubling"]["passed"]
    assert "at eps 0.4 " in rows["step_doubling"]["measured"]  # where this attack leaves about 40%
    assert rows["eps_zero"]["passed"] and rows["monotone"]["passed"]


def test_a_near_constant_classifier_is_flagged(tiny_model, tiny_data):
    x, y = _data(tiny_data)
    constant = copy.deepcopy(tiny_model)
    with torch.no_grad():
        constant.net[-1].bias += torch.tensor([1e4, 0, 0, 0])  # predicts class 0 everywhere
    rows = _rows(constant, x, y)
    # its accuracy is the share of class 0 at every eps, near chance: the other checks cannot see it
    assert _failed(rows) == {"near_constant"}
    assert "(class 0) 100.0%" in rows["near_constant"]["measured"]


def test_a_large_kappa_jumprelu_retrofit_is_flagged(tiny_model, tiny_data):
    x, y = _data(tiny_data)
    jump = retrofit(tiny_model, 5.0)  # every activation cut: a constant classifier with zero gradients
    rows = _rows(jump, x, y, attack_model=bpda_relu(jump))
    assert {"near_constant", "gradients"} <= _failed(rows)
    # a moderate kappa keeps the classifier; attacked through BPDA it passes
    jump = retrofit(tiny_model, 0.5)
    assert _failed(_rows(jump, x, y, attack_model=bpda_relu(jump))) == set()


def test_the_gradient_free_check_needs_square_after_a_gradient_member(tiny_model, tiny_data):
    x, y = _data(tiny_data, 40)
    worst = evaluate.worst_case(tiny_model, x, y, EPS, [M.square(queries=50), M.pgd(steps=5)])
    with pytest.raises(ValueError, match="Square member runs after a gradient member"):
        _rows(tiny_model, x, y, worst=worst)
    # a JSON record of a worst case (tensors dropped) serves as well as the result itself
    worst = evaluate.worst_case(tiny_model, x, y, EPS, [M.pgd(steps=5), M.square(queries=50)])
    rows = _rows(tiny_model, x, y, worst=evaluate.to_record(worst))
    assert f"fooled {worst['added']['square']} more of 40 images" in rows["gradient_free"]["measured"]


def test_bad_arguments_are_refused(tiny_model, tiny_data):
    x, y = _data(tiny_data, 50)
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.net[-1].bias += torch.tensor([1e4, 0, 0, 0])
    with pytest.raises(ValueError, match="same function"):
        _rows(tiny_model, x, y, attack_model=other)
    with pytest.raises(ValueError, match="allowed: linf, l2"):
        _rows(tiny_model, x, y, norm="l1")
    with pytest.raises(ValueError, match="eps must be"):
        _rows(tiny_model, x, y, eps=0.0)
