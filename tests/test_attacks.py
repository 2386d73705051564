"""Tests for robustness.attacks on the tiny blobs model (whole file: a few seconds on CPU)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustness.attacks import (
    BPDA, DeepFoolResult, MinNormResult, ddn, deepfool, eval_mode, fgsm, ifgsm, input_gradient, l2_norm,
    pgd_l2, pgd_linf, project_l2, project_linf, with_bpda,
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


@pytest.mark.parametrize("attack", [fgsm, pgd_linf, pgd_l2])
def test_eps_zero_returns_x(attack, data, tiny_model):
    x, y = data
    assert torch.equal(attack(tiny_model, x[:50], y[:50], eps=0.0), x[:50])


# --- PGD restarts ------------------------------------------------------------------------------

@pytest.mark.parametrize("attack,eps", [(pgd_linf, 0.2), (pgd_l2, 1.0)])
def test_pgd_restarts_never_weaker(attack, eps, data, tiny_model):
    x, y = data
    one = attack(tiny_model, x, y, eps=eps, steps=10, restarts=1, generator=gen(7))
    three = attack(tiny_model, x, y, eps=eps, steps=10, restarts=3, generator=gen(7))
    fooled1 = predict(tiny_model, one) != y
    fooled3 = predict(tiny_model, three) != y
    assert 0 < fooled1.sum() < len(y)  # an informative regime
    assert accuracy(tiny_model, three, y) <= accuracy(tiny_model, one, y)
    assert torch.all(fooled3[fooled1])
    # exact: restart #1 reproduces the single run, and a fooling first restart is kept
    assert torch.equal(three[fooled1], one[fooled1])
    # the generator drives the random start: another seed gives another result
    other = attack(tiny_model, x, y, eps=eps, steps=10, restarts=1, generator=gen(8))
    assert not torch.equal(other, one)


class CountingNet(nn.Module):
    """Counts the images that pass through ``inner`` (the compute an attack spends)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.inner(x)


@pytest.mark.parametrize("attack,eps", [(pgd_linf, 0.2), (pgd_l2, 1.0)])
def test_pgd_early_stop_fools_the_same_images_for_less_compute(attack, eps, data, tiny_model):
    x, y = data
    net = CountingNet(copy.deepcopy(tiny_model))
    full = attack(net, x, y, eps=eps, steps=10, restarts=2, generator=gen(3))
    full_cost, net.images = net.images, 0
    early = attack(net, x, y, eps=eps, steps=10, restarts=2, generator=gen(3), early_stop=True)
    fooled_full, fooled_early = predict(tiny_model, full) != y, predict(tiny_model, early) != y
    assert 0 < fooled_full.sum() < len(y)  # an informative regime
    # an image fooled at the last step was fooled at some step, where early stop froze it
    assert torch.equal(fooled_early, fooled_full)
    assert net.images < full_cost
    # the frozen points are real examples of the attack: inside the ball and the box
    delta = (early - x).flatten(1)
    size = delta.abs().amax(1) if attack is pgd_linf else delta.norm(dim=1)
    assert size.max() <= eps + 1e-5 and early.min() >= 0 and early.max() <= 1


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


def test_deepfool_candidates_restrict_target_classes(data, tiny_model):
    x, y = data
    x, y = x[:30], y[:30]
    res = deepfool(tiny_model, x, y, num_classes=2)  # only the runner-up class
    with torch.no_grad():
        runner_up = tiny_model(x).argsort(1, descending=True)[:, 1]
    ok = res.fooled & (predict(tiny_model, res.x_adv) == runner_up)
    assert ok.float().mean() > 0.8
    # explicit per-sample candidates: a single class per row
    target = (y + 2) % 4
    res_c = deepfool(tiny_model, x, y, candidates=target[:, None])
    hit = predict(tiny_model, res_c.x_adv) == target
    assert hit[res_c.fooled].float().mean() > 0.8


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
