"""Transfer attacks: MI-FGSM, ensemble PGD and input diversity (whole file: a few seconds on CPU)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import make_blobs, train_tiny
from robustness_book.attacks import ensemble_pgd, input_diversity, mi_fgsm, pgd_linf


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def surrogates(tiny_data):
    """Two models trained from other seeds than ``tiny_model``: the attacker's surrogates."""
    return train_tiny(*tiny_data, seed=1), train_tiny(*tiny_data, seed=2)


@pytest.fixture(scope="module")
def linear_pair():
    """A random linear 2-class model in float64 and 40 images: its cross-entropy is convex in x and each
    sign step (clipped to the box) never lowers it, and with 2 classes an image once fooled stays fooled,
    so PGD's kept iterate (early_stop=False: the highest-loss one, among fooling ones if any) is its last."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2)).double().eval()
    x, y = make_blobs(n=40, classes=2, seed=3)
    return model, x.double(), y


def in_ball(x_adv, x, eps):
    return bool((x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1)


# --- input diversity -------------------------------------------------------------------------------

def test_input_diversity_with_p0_is_the_identity_and_draws_nothing():
    x = torch.rand(3, 1, 28, 28)
    g = gen()
    state = g.get_state()
    assert input_diversity(x, p=0.0, generator=g) is x
    assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("side, sizes", [(28, {25, 26, 27}), (32, {28, 29, 30, 31})])
def test_input_diversity_shrinks_within_the_documented_bounds_and_pads_back(side, sizes):
    ones = torch.ones(2, 3, side, side)
    seen = set()
    for seed in range(60):
        out = input_diversity(ones, p=1.0, generator=gen(seed))
        assert out.shape == ones.shape
        rows, cols = out[0, 0].amax(1) > 0, out[0, 0].amax(0) > 0
        s = int(rows.sum())
        assert int(cols.sum()) == s  # square image stays square
        # the image is one contiguous s×s block of ones, the rest is zero padding
        assert float(out.sum()) == 2 * 3 * s * s and set(out.unique().tolist()) == {0.0, 1.0}
        seen.add(s)
    assert seen == sizes  # every allowed size occurs in 60 draws, no other does


def test_input_diversity_is_differentiable():
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    out = input_diversity(x, p=1.0, generator=gen(4))
    out.sum().backward()
    # nearest-neighbour: each pixel of the shrunk block copies one input pixel, so the gradient counts them
    block = input_diversity(torch.ones(2, 1, 28, 28), p=1.0, generator=gen(4))  # same draw: the block's mask
    assert x.grad is not None and float(x.grad.sum()) == float(block.sum()) < x.numel()


def test_input_diversity_applies_with_probability_p_reproducibly():
    x = torch.rand(1, 1, 28, 28)
    g1, g2 = gen(5), gen(5)
    applied = 0
    for _ in range(200):
        a, b = input_diversity(x, p=0.5, generator=g1), input_diversity(x, p=0.5, generator=g2)
        assert torch.equal(a, b)
        applied += a is not x
    assert abs(applied / 200 - 0.5) < 4 * math.sqrt(0.25 / 200)  # binomial: 4 standard errors


@pytest.mark.parametrize("kwargs", [{"p": 1.5}, {"p": -0.1}, {"scale": 1.0}, {"scale": 0.0}])
def test_input_diversity_rejects_bad_arguments(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        input_diversity(torch.rand(1, 1, 28, 28), **kwargs)


# --- MI-FGSM ---------------------------------------------------------------------------------------

def test_mi_fgsm_without_momentum_is_iterative_fgsm(tiny_data, tiny_model, linear_pair):
    x, y = tiny_data
    x, y = x[:100], y[:100]
    # BIM: ensemble PGD of one model from x with MI-FGSM's step eps / steps (shares no momentum code)
    mi = mi_fgsm(tiny_model, x, y, eps=0.3, steps=10, momentum=0.0)
    bim = ensemble_pgd(tiny_model, x, y, eps=0.3, steps=10, step_size=0.03, random_start=False)
    assert torch.allclose(mi, bim, atol=1e-6, rtol=0)
    # and pgd_linf itself, where its kept iterate is provably the last one (see linear_pair)
    model, xl, yl = linear_pair
    mi = mi_fgsm(model, xl, yl, eps=0.2, steps=8, momentum=0.0)
    pgd = pgd_linf(model, xl, yl, eps=0.2, steps=8, step_size=0.025, random_start=False, early_stop=False)
    assert torch.allclose(mi, pgd, atol=1e-6, rtol=0)


def test_mi_fgsm_momentum_changes_the_path(tiny_data, tiny_model):
    x, y = tiny_data
    plain = mi_fgsm(tiny_model, x[:100], y[:100], eps=0.3, momentum=0.0)
    momentum = mi_fgsm(tiny_model, x[:100], y[:100], eps=0.3, momentum=1.0)
    assert not torch.equal(plain, momentum)


def test_mi_fgsm_lowers_accuracy_white_box_and_by_transfer(tiny_data, tiny_model, surrogates):
    x, y = tiny_data
    assert accuracy(tiny_model, x, y) > 0.95
    white = mi_fgsm(tiny_model, x, y, eps=0.3)
    transfer = mi_fgsm(surrogates[0], x, y, eps=0.3)
    for x_adv in (white, transfer):
        assert in_ball(x_adv, x, 0.3)
        assert accuracy(tiny_model, x_adv, y) < 0.25


def test_mi_fgsm_with_input_diversity_is_reproducible(tiny_data, tiny_model):
    x, y = tiny_data
    x, y = x[:100], y[:100]
    a = mi_fgsm(tiny_model, x, y, eps=0.3, diversity=0.5, generator=gen(3))
    b = mi_fgsm(tiny_model, x, y, eps=0.3, diversity=0.5, generator=gen(3))
    assert torch.equal(a, b) and in_ball(a, x, 0.3)
    assert not torch.equal(a, mi_fgsm(tiny_model, x, y, eps=0.3))


# --- ensemble PGD ----------------------------------------------------------------------------------

def test_ensemble_of_one_is_pgd(linear_pair, tiny_data, tiny_model):
    model, x, y = linear_pair
    for loss in ("ce", "margin"):
        for combine in ("logits", "loss"):
            ens = ensemble_pgd([model], x, y, eps=0.2, steps=6, step_size=0.05, combine=combine, loss=loss,
                               generator=gen(11))
            pgd = pgd_linf(model, x, y, eps=0.2, steps=6, step_size=0.05, generator=gen(11), early_stop=False,
                           loss=loss)
            assert torch.allclose(ens, pgd, atol=1e-6, rtol=0)
    # on a non-convex model, the two fusions of one model are the same attack
    xt, yt = tiny_data
    by_logits = ensemble_pgd([tiny_model], xt[:100], yt[:100], steps=5, combine="logits", generator=gen(2))
    by_loss = ensemble_pgd([tiny_model], xt[:100], yt[:100], steps=5, combine="loss", generator=gen(2))
    assert torch.equal(by_logits, by_loss)


def test_ensemble_fusions_differ_on_two_models_and_respect_the_threat_model(tiny_data, surrogates):
    x, y = tiny_data
    x, y = x[:200], y[:200]
    by_logits = ensemble_pgd(list(surrogates), x, y, eps=0.2, steps=10, combine="logits", generator=gen(1))
    by_loss = ensemble_pgd(list(surrogates), x, y, eps=0.2, steps=10, combine="loss", generator=gen(1))
    assert not torch.allclose(by_logits, by_loss)
    assert in_ball(by_logits, x, 0.2) and in_ball(by_loss, x, 0.2)


def test_ensemble_pgd_lowers_accuracy_white_box_and_by_transfer(tiny_data, tiny_model, surrogates):
    x, y = tiny_data
    white = ensemble_pgd([tiny_model], x, y, eps=0.3, steps=10, generator=gen())
    transfer = ensemble_pgd(list(surrogates), x, y, eps=0.3, steps=10, diversity=0.5, generator=gen())
    for x_adv in (white, transfer):
        assert in_ball(x_adv, x, 0.3)
        assert accuracy(tiny_model, x_adv, y) < 0.25


def test_transfer_attacks_leave_models_as_they_were(tiny_data, surrogates):
    x, y = tiny_data
    first, second = surrogates
    first.train()
    try:
        with torch.no_grad():  # callable from an evaluation loop
            outs = [mi_fgsm([first, second], x[:20], y[:20], steps=2, combine="loss"),
                    ensemble_pgd([first, second], x[:20], y[:20], steps=2, generator=gen())]
        assert first.training and not second.training
    finally:
        first.eval()
    for out in outs:
        assert not out.requires_grad and out.device == x.device
    assert all(p.grad is None for m in surrogates for p in m.parameters())


@pytest.mark.parametrize("attack", [mi_fgsm, ensemble_pgd])
@pytest.mark.parametrize("kwargs, name", [({"combine": "mean"}, "combine"), ({"loss": "l2"}, "loss"),
                                          ({"diversity": 2.0}, "diversity")])
def test_transfer_attacks_reject_bad_arguments(attack, kwargs, name, tiny_data, tiny_model):
    x, y = tiny_data
    with pytest.raises(ValueError, match=name):
        attack(tiny_model, x[:4], y[:4], **kwargs)
    with pytest.raises(ValueError, match="models"):
        attack([], x[:4], y[:4])


def test_mi_fgsm_rejects_negative_momentum(tiny_data, tiny_model):
    x, y = tiny_data
    with pytest.raises(ValueError, match="momentum"):
        mi_fgsm(tiny_model, x[:4], y[:4], momentum=-0.5)
