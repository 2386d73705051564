"""Tests for robustness_book.attacks on the tiny blobs model (whole file: a few seconds on CPU)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustness_book.attacks import (
    BPDA, LOSSES, DeepFoolResult, MinNormResult, attack_loss, ddn, deepfool, eval_mode, fgsm, ifgsm, input_gradient,
    l2_norm, pgd_l2, pgd_linf, project_l2, project_linf, square_l2, square_linf, with_bpda,
)

INF = float("inf")


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


@pytest.fixture(scope="module")
def data(tiny_data, tiny_model):
    x, y = tiny_data
    assert accuracy(tiny_model, x, y) > 0.95  # the premise of the "accuracy drops" tests
    return x, y


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- _core ---------------------------------------------------------------------------------

def test_projections():
    d = torch.randn(5, 1, 3, 3) * 3
    assert project_linf(d, 0.5).abs().max() <= 0.5
    p = project_l2(d, 1.0)
    assert torch.allclose(l2_norm(p), torch.ones(5), atol=1e-5)
    small = d / l2_norm(d).view(-1, 1, 1, 1) * 0.3
    assert torch.equal(project_l2(small, 1.0), small)  # inside the ball: untouched
    assert torch.equal(project_l2(torch.zeros(2, 1, 2, 2), 0.0), torch.zeros(2, 1, 2, 2))  # no 0/0
    assert torch.allclose(l2_norm(d), d.flatten(1).norm(dim=1))


def test_input_gradient_is_per_sample_and_leaves_no_param_grad(data, tiny_model):
    x, y = data
    g_all = input_gradient(tiny_model, x[:8], y[:8])
    g_one = input_gradient(tiny_model, x[3:4], y[3:4])
    assert torch.allclose(g_all[3:4], g_one, atol=1e-6)  # summed loss: unscaled per-sample gradients
    assert not g_all.requires_grad
    assert all(p.grad is None for p in tiny_model.parameters())
    with torch.no_grad():  # attacks must work when called from an evaluation loop
        assert torch.allclose(input_gradient(tiny_model, x[:8], y[:8]), g_all)


def test_eval_mode_restores_flags_even_on_exception():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2))
    model.train()
    model[2].eval()  # mixed state must survive
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, True, False]
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            raise RuntimeError("boom")
    assert [m.training for m in model.modules()] == [True, True, True, False]


def test_margin_loss_value_and_gradient_by_hand():
    # logits z = W x + b of a 2-pixel input; the margin is max_{j != y} z_j - z_y, its gradient W[j*] - W[y]
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.5, 0.0]))
    x = torch.tensor([[0.2, 0.4], [0.9, 0.1]]).view(2, 1, 1, 2)
    y = torch.tensor([0, 1])
    # z(x0) = [0.2, 1.3, 0.2]: y=0, runner-up class 1 -> 1.1, gradient W1 - W0 = [-1, 2]
    # z(x1) = [0.9, 0.7, -0.8]: y=1, runner-up class 0 -> 0.2, gradient W0 - W1 = [1, -2]
    with torch.no_grad():
        value = attack_loss(model(x), y, "margin")
    assert value.shape == (2,) and torch.allclose(value, torch.tensor([1.1, 0.2]), atol=1e-6)
    grad, logits = input_gradient(model, x, y, loss="margin", return_logits=True)
    assert torch.allclose(grad.view(2, 2), torch.tensor([[-1.0, 2.0], [1.0, -2.0]]))
    assert torch.allclose(logits, model(x).detach())
    assert all(p.grad is None for p in model.parameters())
    # the "ce" member of the shared definition is the usual per-sample cross-entropy
    with torch.no_grad():
        ce = attack_loss(model(x), y, "ce")
        assert torch.allclose(ce, nn.functional.cross_entropy(model(x), y, reduction="none"))
    assert LOSSES == ("ce", "margin")


class CountingNet(nn.Module):
    """Counts the images that pass through ``inner`` (the compute an attack spends) and records the
    batch size of every forward call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.images, self.sizes = inner, 0, []

    def forward(self, x):
        self.images += x.shape[0]
        self.sizes.append(x.shape[0])
        return self.inner(x)


@pytest.mark.parametrize("call", [
    lambda m, x, y, loss: input_gradient(m, x, y, loss=loss),
    lambda m, x, y, loss: attack_loss(m(x), y, loss),
    lambda m, x, y, loss: pgd_linf(m, x, y, steps=2, loss=loss),
    lambda m, x, y, loss: pgd_l2(m, x, y, steps=2, loss=loss),
    lambda m, x, y, loss: square_linf(m, x, y, queries=2, loss=loss),
    lambda m, x, y, loss: square_l2(m, x, y, queries=2, loss=loss),
], ids=["input_gradient", "attack_loss", "pgd_linf", "pgd_l2", "square_linf", "square_l2"])
def test_unknown_loss_raises_naming_allowed_values(call, data, tiny_model):
    x, y = data
    net = CountingNet(tiny_model)
    with pytest.raises(ValueError, match="'ce'.*'margin'"):
        call(net, x[:4], y[:4], "dlr")
    for ok in LOSSES:  # the allowed names pass
        call(net, x[:4], y[:4], ok)


# --- budgets, box, eps = 0 -------------------------------------------------------------------

LINF_ATTACKS = {
    "fgsm": (lambda m, x, y: fgsm(m, x, y, eps=0.3), 0.3),
    "pgd_linf": (lambda m, x, y: pgd_linf(m, x, y, eps=0.3, steps=10, generator=gen()), 0.3),
    "ifgsm": (lambda m, x, y: ifgsm(m, x, y, step=0.01, steps=40), 0.4),  # budget steps * step
}


@pytest.mark.parametrize("name", list(LINF_ATTACKS))
def test_linf_budget_box_and_accuracy_drop(name, data, tiny_model):
    x, y = data
    attack, eps = LINF_ATTACKS[name]
    x_adv = attack(tiny_model, x, y)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and not x_adv.requires_grad
    assert (x_adv - x).abs().max() <= eps + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(tiny_model, x_adv, y) < 0.25  # clean is > 0.95


def test_pgd_l2_budget_box_and_accuracy_drop(data, tiny_model):
    x, y = data
    x_adv = pgd_l2(tiny_model, x, y, eps=2.0, steps=10, generator=gen())
    assert (l2_norm(x_adv - x) <= 2.0 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert accuracy(tiny_model, x_adv, y) < 0.1


def test_weak_budgets_do_less_damage(data, tiny_model):
    # the accuracy drop comes from the budget, not from e.g. a broken clip
    x, y = data
    assert accuracy(tiny_model, fgsm(tiny_model, x, y, eps=0.02), y) > 0.9
    assert accuracy(tiny_model, pgd_linf(tiny_model, x, y, eps=0.02, steps=5, generator=gen()), y) > 0.9
    assert accuracy(tiny_model, pgd_l2(tiny_model, x, y, eps=0.1, steps=5, generator=gen()), y) > 0.9


def test_ifgsm_only_moves_correct_images_and_stops(data, tiny_model):
    x, y = data
    # one step from x: every image was correct, so every pixel moved by exactly `step` (or hit the box)
    one = ifgsm(tiny_model, x, y, step=0.01, steps=1)
    moved = (one - x).abs()
    assert torch.all(((moved - 0.01).abs() < 1e-6) | (one == 0) | (one == 1))
    # images that are already misclassified are never touched
    wrong = y.clone()
    wrong[:10] = (predict(tiny_model, x[:10]) + 1) % 4
    out = ifgsm(tiny_model, x[:20], wrong[:20], step=0.01, steps=5)
    assert torch.equal(out[:10], x[:10])
    assert not torch.equal(out[10:], x[10:20])
    # a fooled image is frozen: extra iterations change nothing once all are fooled
    a = ifgsm(tiny_model, x[:50], y[:50], step=0.05, steps=40)
    b = ifgsm(tiny_model, x[:50], y[:50], step=0.05, steps=80)
    assert accuracy(tiny_model, a, y[:50]) == 0 and torch.equal(a, b)
    # per image the result does not depend on the batch it ran in (fooled images leave the batch;
    # float64 so that no gradient sign rests on rounding)
    net, xd = copy.deepcopy(tiny_model).double(), x[:40].double()
    batch = ifgsm(net, xd, y[:40], step=0.02, steps=10)
    alone = torch.cat([ifgsm(net, xd[i:i + 1], y[i:i + 1], step=0.02, steps=10) for i in range(40)])
    assert 0 < (predict(net, batch) != y[:40]).sum() < 40 and torch.equal(batch, alone)


def test_fgsm_eps_zero_returns_x(data, tiny_model):
    x, y = data
    assert torch.equal(fgsm(tiny_model, x[:50], y[:50], eps=0.0), x[:50])


@pytest.mark.parametrize("attack", [pgd_linf, pgd_l2])
@pytest.mark.parametrize("early_stop", [True, False])
def test_pgd_eps_zero_runs_the_loop_and_returns_x(attack, early_stop, data, tiny_model):
    # the health check "eps = 0 gives clean accuracy" must exercise the attack code, not a short-circuit
    x, y = data
    x, y = x[:50], y[:50]
    y = y.clone()
    y[:5] = (predict(tiny_model, x[:5]) + 1) % 4  # five images "fooled" at x itself
    net = CountingNet(tiny_model)
    out = attack(net, x, y, eps=0.0, steps=7, generator=gen(), early_stop=early_stop)
    assert torch.equal(out, x)
    assert len(net.sizes) == 8  # one forward per iterate: the (zero) random start and 7 steps
    # early stop: the five fooled at the start leave the batch; the others take every step
    assert net.sizes == ([50] + [45] * 7 if early_stop else [50] * 8)


# --- PGD: which iterate is returned --------------------------------------------------------------

class Ridge(nn.Module):
    """1-pixel toy classifier, class 1 score ``g(x) = height - slope * |x - centre|`` (class 0 scores 0):
    a sign step from one side of the ridge overshoots to the other, then comes back."""

    def __init__(self, height, centre=0.6, slope=20.0):
        super().__init__()
        self.height, self.centre, self.slope = height, centre, slope

    def forward(self, x):
        t = x.flatten(1)[:, :1]
        g = self.height - self.slope * (t - self.centre).abs()
        return torch.cat([torch.zeros_like(g), g], 1)


def one_pixel(*values):
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1)


@pytest.mark.parametrize("attack", [pgd_linf, pgd_l2])
def test_pgd_first_success_is_never_lost(attack):
    # from 0.52 the sign steps of 0.1 go 0.52 -> 0.62 (class 1 wins: fooled) -> 0.52 (correct again)
    model, y = Ridge(height=1.0).double(), torch.zeros(1, dtype=torch.long)
    x = one_pixel(0.52)
    point = x.clone()
    for _ in range(2):  # plain PGD, judged on its final iterate only, ends correctly classified
        point = point + 0.1 * input_gradient(model, point, y).sign()
    assert predict(model, point).item() == 0 and torch.allclose(point, x)
    for early_stop in (True, False):
        out = attack(model, x, y, eps=0.3, steps=2, step_size=0.1, random_start=False, early_stop=early_stop)
        assert predict(model, out).item() == 1, early_stop
        assert torch.allclose(out, one_pixel(0.62))


class Staircase(nn.Module):
    """1-pixel, 3-class toy: the CE gradient always points to larger x (backward of ``[-x, 0, 0]``), the
    forward is a lookup: below 0.55 correct with a low CE; on [0.55, 0.65) fooled with CE 0.80; from 0.65
    on correct again, yet with a *higher* CE (1.09: all three logits nearly tied)."""

    def forward(self, x):
        t = x.flatten(1)[:, :1]
        surrogate = torch.cat([-t, torch.zeros_like(t), torch.zeros_like(t)], 1)
        table = torch.where(t < 0.55, torch.tensor([0.0, -5.0, -5.0], dtype=t.dtype),
                            torch.where(t < 0.65, torch.tensor([0.0, 0.2, -10.0], dtype=t.dtype),
                                        torch.tensor([0.0, -0.01, -0.01], dtype=t.dtype)))
        return surrogate + (table - surrogate).detach()


@pytest.mark.parametrize("attack", [pgd_linf, pgd_l2])
@pytest.mark.parametrize("early_stop", [True, False])
def test_pgd_fooling_iterate_beats_a_higher_loss_correct_one(attack, early_stop):
    # iterates 0.5 -> 0.6 (fooled, CE 0.80) -> 0.7 (correct, CE 1.09): the highest-CE iterate is not
    # adversarial, so "highest loss" alone would lose the success, even without early stop
    model, y = Staircase(), torch.zeros(1, dtype=torch.long)
    x = one_pixel(0.5)
    with torch.no_grad():
        ce = attack_loss(model(one_pixel(0.6, 0.7)), torch.zeros(2, dtype=torch.long), "ce")
    assert ce[1] > ce[0]
    out = attack(model, x, y, eps=0.3, steps=2, step_size=0.1, random_start=False, early_stop=early_stop)
    assert torch.allclose(out, one_pixel(0.6)) and predict(model, out).item() != 0


@pytest.mark.parametrize("attack", [pgd_linf, pgd_l2])
@pytest.mark.parametrize("loss", LOSSES)
def test_pgd_unfooled_image_gets_its_highest_loss_iterate(attack, loss):
    # the ridge never reaches class 1 (height < 0); the loss peaks at the middle iterate 0.62
    model, y = Ridge(height=-0.5).double(), torch.zeros(1, dtype=torch.long)
    out = attack(model, one_pixel(0.52), y, eps=0.3, steps=2, step_size=0.1, random_start=False, loss=loss)
    assert predict(model, out).item() == 0 and torch.allclose(out, one_pixel(0.62))


@pytest.mark.parametrize("attack", [pgd_linf, pgd_l2])
def test_pgd_early_stop_returns_first_fooling_iterate_else_the_deepest(attack):
    # class 1 wins beyond 0.55; the iterates from 0.5 are 0.6 (first fooled), 0.7, 0.8 (ball edge)
    class Linear1(nn.Module):  # g(x) = 10 (x - 0.55), rising through the boundary
        def forward(self, x):
            g = 10 * (x.flatten(1)[:, :1] - 0.55)
            return torch.cat([torch.zeros_like(g), g], 1)

    model = CountingNet(Linear1())
    x, y = one_pixel(0.5, 0.5), torch.zeros(2, dtype=torch.long)
    first = attack(model, x, y, eps=0.3, steps=3, step_size=0.1, random_start=False, early_stop=True)
    assert torch.allclose(first, one_pixel(0.6, 0.6)) and model.sizes == [2, 2]  # left the batch once fooled
    model.sizes = []
    deep = attack(model, x, y, eps=0.3, steps=3, step_size=0.1, random_start=False, early_stop=False)
    assert torch.allclose(deep, one_pixel(0.8, 0.8)) and model.sizes == [2, 2, 2, 2]  # every step taken


@pytest.mark.parametrize("attack,eps", [(pgd_linf, 0.2), (pgd_l2, 1.0)])
@pytest.mark.parametrize("loss", LOSSES)
def test_pgd_restarts_never_weaker(attack, eps, loss, data, tiny_model):
    x, y = data
    one = attack(tiny_model, x, y, eps=eps, steps=10, restarts=1, generator=gen(7), loss=loss)
    three = attack(tiny_model, x, y, eps=eps, steps=10, restarts=3, generator=gen(7), loss=loss)
    fooled1 = predict(tiny_model, one) != y
    fooled3 = predict(tiny_model, three) != y
    assert 0 < fooled1.sum() < len(y)  # an informative regime
    assert fooled3.sum() > fooled1.sum()  # the extra restarts found more
    assert torch.all(fooled3[fooled1])
    # exact: restart #1 reproduces the single run, and a fooling first restart is kept
    assert torch.equal(three[fooled1], one[fooled1])
    # an image no restart fooled gets the highest-loss point over all restarts
    with torch.no_grad():
        l1, l3 = attack_loss(tiny_model(one), y, loss), attack_loss(tiny_model(three), y, loss)
    assert torch.all(l3[~fooled3] >= l1[~fooled3] - 1e-6)
    assert (l3[~fooled3] > l1[~fooled3] + 1e-6).any()
    # the generator drives the random start: another seed gives another result
    other = attack(tiny_model, x, y, eps=eps, steps=10, restarts=1, generator=gen(8), loss=loss)
    assert not torch.equal(other, one)


@pytest.mark.parametrize("attack,eps", [(pgd_linf, 0.2), (pgd_l2, 1.0)])
@pytest.mark.parametrize("early_stop", [True, False])
def test_pgd_restarts_run_only_on_survivors(attack, eps, early_stop, data, tiny_model):
    x, y = data
    net = CountingNet(tiny_model)
    one = attack(net, x, y, eps=eps, steps=10, restarts=1, generator=gen(7), early_stop=early_stop)
    sizes_one, net.sizes = net.sizes, []
    attack(net, x, y, eps=eps, steps=10, restarts=2, generator=gen(7), early_stop=early_stop)
    survivors = int((predict(tiny_model, one) == y).sum())
    assert 0 < survivors < len(y)
    assert net.sizes[:len(sizes_one)] == sizes_one  # restart #1 is the restarts=1 run
    second = net.sizes[len(sizes_one):]
    assert len(second) == 11 and second[0] == survivors  # restart #2 attacks the survivors only
    assert max(second) == survivors


@pytest.mark.parametrize("attack,eps", [(pgd_linf, 0.2), (pgd_l2, 1.0)])
def test_pgd_early_stop_fools_the_same_images_for_less_compute(attack, eps, data, tiny_model):
    x, y = data
    net = CountingNet(copy.deepcopy(tiny_model))
    full = attack(net, x, y, eps=eps, steps=10, restarts=2, generator=gen(3), early_stop=False)
    full_cost, net.images = net.images, 0
    early = attack(net, x, y, eps=eps, steps=10, restarts=2, generator=gen(3))  # early_stop=True by default
    fooled_full, fooled_early = predict(tiny_model, full) != y, predict(tiny_model, early) != y
    assert 0 < fooled_full.sum() < len(y)  # an informative regime
    # both judge every iterate of the same trajectories: an image fooled at any step counts in both
    assert torch.equal(fooled_early, fooled_full)
    assert net.images < full_cost
    # the frozen points are real examples of the attack: inside the ball and the box
    delta = (early - x).flatten(1)
    size = delta.abs().amax(1) if attack is pgd_linf else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5 and early.min() >= 0 and early.max() <= 1
    # without early stop the fooled images are pushed deeper: a larger margin than at the first crossing
    with torch.no_grad():
        m_full = attack_loss(tiny_model(full), y, "margin")[fooled_full]
        m_early = attack_loss(tiny_model(early), y, "margin")[fooled_full]
    assert m_full.mean() > m_early.mean()


class Scale(nn.Module):
    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x):
        return self.inner(x) * self.factor


@pytest.mark.parametrize("attack,eps", [(pgd_linf, 0.3), (pgd_l2, 2.0)])
def test_margin_loss_fools_a_saturated_softmax_where_ce_cannot(attack, eps, data, tiny_model):
    x, y = data
    net = Scale(tiny_model, 1e4)  # same decisions, softmax saturated: exp(-1e4 * margin) underflows
    zero = input_gradient(net, x, y).flatten(1).abs().amax(1) == 0
    assert zero.float().mean() > 0.9  # CE's gradient is exactly zero in float32 for most images
    ce = attack(net, x, y, eps=eps, steps=10, random_start=False)
    margin = attack(net, x, y, eps=eps, steps=10, random_start=False, loss="margin")
    assert torch.equal(ce[zero], x[zero])  # CE-PGD never moves them
    assert accuracy(net, ce, y) > 0.9
    assert accuracy(net, margin, y) < 0.25  # the margin's gradient survives the scaling


# --- DeepFool ----------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", [2, INF])
def test_deepfool_fools_and_crosses_boundary(norm, data, tiny_model):
    x, y = data
    res = deepfool(tiny_model, x, y, norm=norm)
    assert isinstance(res, DeepFoolResult)
    assert res.fooled.float().mean() >= 0.95
    assert torch.all(predict(tiny_model, res.x_adv)[res.fooled] != y[res.fooled])
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.allclose(res.perturbation, res.x_adv - x)
    assert res.iterations.dtype == torch.int64 and res.iterations.shape == y.shape
    assert torch.all(res.iterations[res.fooled] >= 1)  # all were correct at x
    assert torch.allclose(res.norms, res.perturbation.flatten(1).norm(p=norm, dim=1))
    # y=None moves away from the model's own prediction (= y here, the model is ~perfect)
    same = y == predict(tiny_model, x)
    res_none = deepfool(tiny_model, x[same][:40], norm=norm)
    assert torch.allclose(res_none.x_adv, res.x_adv[same][:40], atol=1e-5)


@pytest.mark.parametrize("norm", [2, INF])
def test_deepfool_batched_equals_per_sample(norm, data, tiny_model):
    x, y = data
    x, y = x[:40], y[:40]
    batched = deepfool(tiny_model, x, y, norm=norm)
    for i in range(len(y)):  # the per-sample loop lives in the test only
        single = deepfool(tiny_model, x[i:i + 1], y[i:i + 1], norm=norm)
        assert torch.allclose(single.x_adv, batched.x_adv[i:i + 1], atol=1e-4), i
        assert single.iterations.item() == batched.iterations[i].item()
        assert single.fooled.item() == batched.fooled[i].item()


def test_deepfool_already_fooled_gets_zero_perturbation(data, tiny_model):
    x, y = data
    wrong = (y[:10] + 1) % 4  # "labels" the model already disagrees with
    res = deepfool(tiny_model, x[:10], wrong)
    assert res.fooled.all() and (res.iterations == 0).all()
    assert torch.equal(res.x_adv, x[:10])


def test_deepfool_num_classes_restricts_target_classes(data, tiny_model):
    x, y = data
    x, y = x[:30], y[:30]
    res = deepfool(tiny_model, x, y, num_classes=2)  # only the runner-up class
    with torch.no_grad():
        runner_up = tiny_model(x).argsort(1, descending=True)[:, 1]
    ok = res.fooled & (predict(tiny_model, res.x_adv) == runner_up)
    assert ok.float().mean() > 0.8


def test_deepfool_toward_reaches_true_label(data, tiny_model):
    x, y = data
    # misclassified points: DeepFool adversarials; pushing toward y must restore the true label
    adv = deepfool(tiny_model, x[:40], y[:40], overshoot=0.2)
    xa = adv.x_adv[adv.fooled]
    ya = y[:40][adv.fooled]
    toward = ya.clone()
    toward[::2] = -1  # every other row: ordinary DeepFool away from the (wrong) prediction
    pred0 = predict(tiny_model, xa)
    res = deepfool(tiny_model, xa, toward=toward)
    pred = predict(tiny_model, res.x_adv)
    t = toward >= 0
    assert res.fooled.float().mean() >= 0.95
    assert torch.all(pred[t & res.fooled] == ya[t & res.fooled])
    assert torch.all(pred[~t & res.fooled] != pred0[~t & res.fooled])


def test_deepfool_keep_graph_is_differentiable(data, tiny_model):
    x, y = data
    model = copy.deepcopy(tiny_model)
    model.train()  # keep_graph leaves the mode to the caller
    res = deepfool(model, x[:20], y[:20], keep_graph=True)
    assert all(m.training for m in model.modules())
    assert res.perturbation.requires_grad
    assert torch.allclose(res.x_adv, x[:20] + res.perturbation)  # unclipped by design
    assert res.fooled.float().mean() >= 0.95
    assert all(p.grad is None for p in model.parameters())  # nothing backpropagated yet
    weight = model.net[1].weight
    (g,) = torch.autograd.grad(res.norms.sum(), weight)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    # the (unclipped) perturbation really crosses the boundary, judged in eval mode
    model.eval()
    assert torch.all(predict(model, res.x_adv.detach())[res.fooled] != y[:20][res.fooled])


# --- DDN ---------------------------------------------------------------------------------------

def test_ddn_min_norm_beats_deepfool(data, tiny_model):
    x, y = data
    x, y = x[:200], y[:200]
    res = ddn(tiny_model, x, y, steps=100, generator=gen())
    assert isinstance(res, MinNormResult)
    assert res.success.float().mean() >= 0.95
    assert torch.all(predict(tiny_model, res.x_adv)[res.success] != y[res.success])  # real successes
    assert torch.allclose(res.norms[res.success], l2_norm(res.x_adv - x)[res.success], atol=1e-5)
    assert torch.all(torch.isinf(res.norms[~res.success]))
    assert torch.equal(res.x_adv[~res.success], x[~res.success])
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    df = deepfool(tiny_model, x, y, norm=2)
    both = res.success & df.fooled
    assert res.norms[both].mean() <= l2_norm(df.x_adv - x)[both].mean()


def test_ddn_unfoolable_sample_reports_inf():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # constant logits: class 0 always wins
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.rand(3, 1, 2, 2)
    res = ddn(model, x, torch.zeros(3, dtype=torch.long), steps=5, generator=gen())
    assert not res.success.any() and torch.isinf(res.norms).all() and torch.equal(res.x_adv, x)


# --- BPDA --------------------------------------------------------------------------------------

class StepModule(nn.Module):
    """Hard threshold: gradient is zero almost everywhere (obfuscated gradient)."""

    def forward(self, x):
        return (x > 0.5).to(x.dtype)


def step_model():
    torch.manual_seed(3)
    inner = nn.Sequential(StepModule(), nn.Flatten())  # nested, to exercise the recursive swap
    return nn.Sequential(inner, nn.Linear(36, 8), nn.Tanh(), nn.Linear(8, 4)).eval()


def test_bpda_forward_real_backward_surrogate(data):
    x, y = data
    x, y = x[:16], y[:16]
    model = step_model()
    wrapped = with_bpda(model, {StepModule: lambda m: nn.Identity()})
    assert isinstance(wrapped[0][0], BPDA) and isinstance(model[0][0], StepModule)  # original untouched
    with torch.no_grad():
        assert torch.equal(wrapped(x), model(x))  # forward value is the real module's
    # gradient = surrogate (identity) backward, evaluated at the real forward values
    # with an identity surrogate, d loss/dx = d loss/dh at h = step(x)
    h = StepModule()(x).requires_grad_(True)
    rest = nn.Sequential(nn.Flatten(), *list(model.children())[1:])
    expected = torch.autograd.grad(nn.functional.cross_entropy(rest(h), y, reduction="sum"), h)[0]
    got = input_gradient(wrapped, x, y)
    assert torch.allclose(got, expected, atol=1e-6) and got.abs().sum() > 0
    assert input_gradient(model, x, y).abs().sum() == 0  # the real model masks its gradient
    # an unchanged attack works on the wrapped copy but is stuck on the original
    x_orig = pgd_linf(model, x, y, eps=0.3, steps=10, random_start=False)
    x_bpda = pgd_linf(wrapped, x, y, eps=0.3, steps=10, random_start=False)
    assert torch.equal(x_orig, x)
    assert accuracy(model, x_bpda, y) < accuracy(model, x, y)


def test_bpda_generic_surrogate_gradient():
    surrogate = nn.Sigmoid()
    layer = BPDA(StepModule(), surrogate)
    x = torch.rand(4, 3, requires_grad=True)
    out = layer(x)
    assert torch.equal(out, StepModule()(x))
    (g,) = torch.autograd.grad(out.sum(), x)
    (g_s,) = torch.autograd.grad(surrogate(x).sum(), x)
    assert torch.allclose(g, g_s)


def test_with_bpda_matches_subclasses_and_root():
    class SubStep(StepModule):
        pass

    m = nn.Sequential(SubStep(), nn.ReLU())
    w = with_bpda(m, {StepModule: lambda mod: nn.Identity()})
    assert isinstance(w[0], BPDA) and isinstance(w[0].module, SubStep) and isinstance(w[1], nn.ReLU)
    root = with_bpda(StepModule(), {StepModule: lambda mod: nn.Identity()})
    assert isinstance(root, BPDA)


# --- hygiene shared by all attacks ---------------------------------------------------------------

ALL_ATTACKS = {
    "fgsm": lambda m, x, y: fgsm(m, x, y),
    "pgd_linf": lambda m, x, y: pgd_linf(m, x, y, steps=3, restarts=2, generator=gen()),
    "pgd_l2": lambda m, x, y: pgd_l2(m, x, y, steps=3, restarts=2, generator=gen()),
    "ifgsm": lambda m, x, y: ifgsm(m, x, y, steps=3),
    "deepfool2": lambda m, x, y: deepfool(m, x, y, norm=2).x_adv,
    "deepfoolinf": lambda m, x, y: deepfool(m, x, y, norm=INF).x_adv,
    "ddn": lambda m, x, y: ddn(m, x, y, steps=5, generator=gen()).x_adv,
    "pgd_linf_margin_full": lambda m, x, y: pgd_linf(m, x, y, steps=3, restarts=2, generator=gen(), loss="margin",
                                                     early_stop=False),
    "square_linf": lambda m, x, y: square_linf(m, x, y, queries=20, restarts=2, generator=gen()),
    "square_l2": lambda m, x, y: square_l2(m, x, y, queries=20, restarts=2, generator=gen()),
}


class DropoutNet(nn.Module):
    """Dropout makes train vs eval observable: eval mode gives a deterministic forward."""

    def __init__(self, base):
        super().__init__()
        self.base = base
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.base(self.drop(x))


@pytest.mark.parametrize("name", list(ALL_ATTACKS))
def test_attack_hygiene(name, data, tiny_model):
    x, y = data
    x, y = x[:20], y[:20]
    model = DropoutNet(copy.deepcopy(tiny_model))
    model.train()
    model.base.net[1].eval()  # mixed flags must come back unchanged
    before = [m.training for m in model.modules()]
    a = ALL_ATTACKS[name](model, x, y)
    b = ALL_ATTACKS[name](model, x, y)
    assert [m.training for m in model.modules()] == before
    assert all(p.grad is None for p in model.parameters())
    assert not a.requires_grad and a.device == x.device
    assert torch.equal(a, b)  # eval mode inside: dropout off, so deterministic
    with torch.no_grad():  # callable from an evaluation loop
        assert torch.equal(ALL_ATTACKS[name](model, x, y), a)
