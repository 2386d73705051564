"""Tests for the Square attack (robustness_book.attacks.square) on the tiny blobs model (a few seconds on CPU)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustness_book import evaluate
from robustness_book.attacks import attack_loss, input_gradient, l2_norm, pgd_linf, square_l2, square_linf
from robustness_book.attacks.square import _l2_propose, _p_at


from test_attacks import accuracy, predict  # the attack tests' two tiny helpers


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def size(attack, delta):
    flat = delta.flatten(1)
    return flat.abs().amax(1) if attack is square_linf else flat.norm(dim=1)


class CountingNet(nn.Module):
    """Records the batch size of every forward call, and whether autograd was on."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.sizes, self.grad_on = inner, [], []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        self.grad_on.append(torch.is_grad_enabled() or x.requires_grad)
        return self.inner(x)


@pytest.fixture(scope="module")
def data(tiny_data, tiny_model):
    x, y = tiny_data
    assert accuracy(tiny_model, x, y) > 0.95
    return x, y


# eps strong enough to fool most images in 100 queries, and weak enough to fool almost none
STRONG = {square_linf: 0.3, square_l2: 2.0}
WEAK = {square_linf: 0.1, square_l2: 0.5}


@pytest.mark.parametrize("attack", [square_linf, square_l2])
def test_square_budget_box_and_accuracy_drop(attack, data, tiny_model):
    x, y = data
    eps = STRONG[attack]
    x_adv = attack(tiny_model, x, y, eps=eps, queries=100, generator=gen())
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert size(attack, x_adv - x).max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(tiny_model, x_adv, y) < 0.25  # clean is > 0.95
    # the budget, not a broken clip, does the damage
    weak = attack(tiny_model, x, y, eps=WEAK[attack], queries=100, generator=gen())
    assert accuracy(tiny_model, weak, y) > 0.9


@pytest.mark.parametrize("attack", [square_linf, square_l2])
def test_square_is_reproducible_with_a_generator(attack, data, tiny_model):
    x, y = data
    x, y = x[:100], y[:100]
    a = attack(tiny_model, x, y, eps=STRONG[attack], queries=30, generator=gen(1))
    b = attack(tiny_model, x, y, eps=STRONG[attack], queries=30, generator=gen(1))
    c = attack(tiny_model, x, y, eps=STRONG[attack], queries=30, generator=gen(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("Square must not backpropagate")


class Quantize(nn.Module):
    """Rounds pixels to multiples of 1/4: the input gradient is zero almost everywhere (gradient masking)."""

    def forward(self, x):
        return torch.round(x * 4) / 4


@pytest.mark.parametrize("attack", [square_linf, square_l2])
def test_square_uses_forward_passes_only(attack, data, tiny_model):
    x, y = data
    x, y = x[:100], y[:100]

    class Guarded(nn.Module):
        def forward(self, t):
            return tiny_model(NoBackward.apply(t))

    net = CountingNet(Guarded())
    x_adv = attack(net, x, y, eps=STRONG[attack], queries=50, generator=gen())
    assert not any(net.grad_on)  # every forward ran without autograd, so no backward was possible
    assert accuracy(tiny_model, x_adv, y) < 0.5


def test_square_fools_a_quantized_model_where_pgd_cannot(data, tiny_model):
    x, y = data
    net = nn.Sequential(Quantize(), copy.deepcopy(tiny_model)).eval()
    assert accuracy(net, x, y) > 0.95
    assert input_gradient(net, x, y).abs().max() == 0  # a gradient attack sees a flat loss
    pgd = pgd_linf(net, x, y, eps=0.3, steps=10, generator=gen())
    square = square_linf(net, x, y, eps=0.3, queries=100, generator=gen())
    assert accuracy(net, pgd, y) > 0.9
    assert accuracy(net, square, y) < 0.1
    assert (square - x).abs().max() <= 0.3 + 1e-6


@pytest.mark.parametrize("attack", [square_linf, square_l2])
def test_square_one_forward_per_query_on_images_still_standing(attack, data, tiny_model):
    x, y = data
    x, y = x[:60], y[:60].clone()
    y[:6] = (predict(tiny_model, x[:6]) + 1) % 4  # already misclassified: returned as they are
    net = CountingNet(tiny_model)
    x_adv = attack(net, x, y, eps=STRONG[attack], queries=40, generator=gen())
    assert torch.equal(x_adv[:6], x[:6])
    # one call on x, then one per query over a shrinking set of images (fooled ones stop)
    assert net.sizes[0] == 60 and net.sizes[1] == 54 and len(net.sizes) <= 41
    assert all(a >= b for a, b in zip(net.sizes[1:], net.sizes[2:]))
    fooled = predict(tiny_model, x_adv) != y
    assert fooled[6:].sum() > 27
    # a hopeless budget uses every query
    net.sizes = []
    attack(net, x[6:], y[6:], eps=1e-3, queries=40, generator=gen())
    assert net.sizes == [54] * 41


@pytest.mark.parametrize("attack", [square_linf, square_l2])
def test_square_eps_zero_returns_x(attack, data, tiny_model):
    x, y = data
    assert torch.equal(attack(tiny_model, x[:50], y[:50], eps=0.0, queries=10, generator=gen()), x[:50])


@pytest.mark.parametrize("attack", [square_linf, square_l2])
def test_square_restarts_only_on_survivors_and_never_weaker(attack, data, tiny_model):
    x, y = data
    eps = {square_linf: 0.25, square_l2: 1.5}[attack]
    net = CountingNet(tiny_model)
    one = attack(net, x, y, eps=eps, queries=20, generator=gen(5))
    sizes_one, net.sizes = net.sizes, []
    two = attack(net, x, y, eps=eps, queries=20, restarts=2, generator=gen(5))
    fooled1, fooled2 = predict(tiny_model, one) != y, predict(tiny_model, two) != y
    assert 0 < fooled1.sum() < fooled2.sum() < len(y)
    assert torch.equal(two[fooled1], one[fooled1])  # restart #1 is the single run; its successes are kept
    assert net.sizes[:len(sizes_one)] == sizes_one
    assert net.sizes[len(sizes_one)] == int((~fooled1).sum())  # restart #2 starts on the survivors only
    with torch.no_grad():
        m1, m2 = attack_loss(tiny_model(one), y, "margin"), attack_loss(tiny_model(two), y, "margin")
    assert torch.all(m2[~fooled2] >= m1[~fooled2] - 1e-6)


def test_square_size_schedule_halves_as_in_the_paper():
    # for 10,000 queries p halves after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000
    assert _p_at(0.8, 10, 10000) == 0.8 and _p_at(0.8, 11, 10000) == 0.4
    assert _p_at(0.8, 200, 10000) == 0.2 and _p_at(0.8, 201, 10000) == 0.1
    assert _p_at(0.8, 9999, 10000) == 0.8 / 512
    # other budgets are rescaled: with 1,000 queries the first halving comes after query 1
    assert _p_at(0.8, 1, 1000) == 0.8 and _p_at(0.8, 2, 1000) == 0.4 and _p_at(0.8, 999, 1000) == 0.8 / 512
    values = [_p_at(0.05, i, 5000) for i in range(1, 5000)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_square_l2_step_moves_mass_between_two_windows_at_norm_eps():
    # away from the box edges (x = 0.5, small eps) nothing is clipped: the step keeps the norm at eps
    # and changes at most two windows per channel
    x = torch.full((8, 3, 10, 10), 0.5)
    g = gen(3)
    delta = torch.randn(x.shape, generator=g)
    cur = x + delta * (0.2 / l2_norm(delta)).view(-1, 1, 1, 1)  # norm 0.2 of eps 0.4: half the budget unused
    for _ in range(5):
        new = _l2_propose(cur, x, 0.4, 0.09, g)  # p = 0.09: side round(sqrt(9)) = 3
        assert torch.allclose(l2_norm(new - x), torch.full((8,), 0.4), atol=1e-5)
        changed = (new != cur).flatten(2).sum(2)  # per image and channel
        assert changed.max() <= 2 * 3 * 3 and changed.min() > 0
        # the second window is emptied (its mass moved to the first): pixels return exactly to x
        emptied = ((new == x) & (cur != x)).flatten(1).any(1)
        assert emptied.sum() >= 6  # all images but those whose two windows happened to overlap
        cur = new


def test_square_l2_stays_in_the_ball_after_clipping(data, tiny_model):
    # the blobs have many pixels at 0 or 1: clipping bites, the norm must still be <= eps
    x, y = data
    x_adv = square_l2(tiny_model, x, y, eps=3.0, queries=30, generator=gen())
    assert (l2_norm(x_adv - x) <= 3.0 + 1e-6).all() and x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("attack", [square_linf, square_l2])
def test_square_runs_through_the_book_runner(attack, data, tiny_model):
    x, y = data
    eps = STRONG[attack]
    x_adv = evaluate.run_attack(attack, tiny_model, x, y, 128, eps=eps, queries=60, generator=gen())
    assert x_adv.shape == x.shape and size(attack, x_adv - x).max() <= eps + 1e-6
    assert evaluate.accuracy(tiny_model, x_adv, y) < 0.3
    curve = evaluate.accuracy_curve(tiny_model, x, y, attack, [0.0, eps], batch_size=256, queries=60)
    assert curve[0]["accuracy"] == evaluate.accuracy(tiny_model, x, y) and curve[1]["accuracy"] < 0.3
