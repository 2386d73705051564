"""APGD and APGD-T (robustness_book.attacks.apgd) and their worst-case members, on the tiny blobs model (a few seconds
on CPU): the threat model, the step-size schedule on hand-made loss traces, the DLR loss by hand, targeting,
strength against plain PGD, determinism, and the members inside ``evaluate.worst_case``."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from robustness_book import attacks, evaluate
from robustness_book.attacks import APGD_LOSSES, apgd, apgd_loss, apgd_targeted, dlr_loss, pgd_l2, pgd_linf
from robustness_book.attacks.apgd import checkpoints, halve_step, step_halvings
from robustness_book.evaluate import members as M

TOL = 1e-5


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def predict(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def size(delta, norm):
    d = delta.flatten(1)
    return d.abs().amax(1) if norm == "linf" else d.norm(dim=1)


@pytest.fixture(scope="module")
def data(tiny_data, tiny_model):
    x, y = tiny_data
    assert (predict(tiny_model, x) == y).float().mean() > 0.95
    return x, y


class CountingNet(nn.Module):
    """Records the batch size of every forward pass through ``inner``."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.sizes = inner, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.inner(x)


# --- threat model ------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
@pytest.mark.parametrize("loss", APGD_LOSSES)
@pytest.mark.parametrize("early_stop", [True, False])
def test_eps_ball_and_box(norm, eps, loss, early_stop, data, tiny_model):
    x, y = data
    x, y = x[:200], y[:200]
    out = apgd(tiny_model, x, y, eps=eps, steps=10, norm=norm, loss=loss, generator=gen(), early_stop=early_stop)
    assert out.shape == x.shape and not out.requires_grad
    assert size(out - x, norm).max() <= eps + TOL
    assert out.min() >= 0 and out.max() <= 1
    fooled = predict(tiny_model, out) != y
    assert 0 < fooled.sum() < len(y)  # an informative regime: the attack moves, within the budget
    targeted = apgd_targeted(tiny_model, x, y, eps=eps, steps=5, norm=norm, targets=3, loss=loss, generator=gen(),
                             early_stop=early_stop)
    assert size(targeted - x, norm).max() <= eps + TOL
    assert targeted.min() >= 0 and targeted.max() <= 1


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_x(norm, data, tiny_model):
    x, y = data
    out = apgd(tiny_model, x[:20], y[:20], eps=0.0, steps=5, norm=norm, generator=gen())
    assert torch.equal(out, x[:20])


def test_unknown_names_raise_naming_allowed_values(data, tiny_model):
    x, y = data
    with pytest.raises(ValueError, match="'ce'.*'dlr'.*'margin'"):
        apgd(tiny_model, x[:4], y[:4], loss="cw")
    with pytest.raises(ValueError, match="'linf'.*'l2'"):
        apgd(tiny_model, x[:4], y[:4], norm="l1")
    with pytest.raises(ValueError, match="target has shape"):
        apgd(tiny_model, x[:4], y[:4], target=y[:3])
    with pytest.raises(ValueError, match="targets must be a positive integer"):
        apgd_targeted(tiny_model, x[:4], y[:4], targets=0)


# --- step-size schedule ------------------------------------------------------------------------------

def paper_checkpoints(steps):
    """``ceil(p_j * steps)`` with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p, out = [0.0, 0.22], []
    while math.ceil(round(p[-1] * steps, 9)) < steps:
        out.append(math.ceil(round(p[-1] * steps, 9)))
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return out


def test_checkpoints_follow_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    for steps in (100, 200, 300, 1000):
        assert checkpoints(steps) == paper_checkpoints(steps), steps
    for steps in (1, 2, 5, 10, 37):  # short runs: strictly increasing, inside the run, intervals of >= 1 step
        w = checkpoints(steps)
        assert all(0 < a < b < steps for a, b in zip(w, w[1:])) and (not w or w[-1] < steps)
    assert checkpoints(1) == []


def rising(n, start=0.0):
    return [start + i for i in range(1, n + 1)]


def test_no_halving_while_every_step_improves():
    assert step_halvings([0.0] + rising(100)) == []


def test_halving_at_every_checkpoint_of_a_flat_trace():
    assert step_halvings([1.0] * 101) == checkpoints(100)


def test_condition_one_counts_the_rising_steps_strictly():
    # first interval: 22 steps; rho * 22 = 16.5, so 16 rising steps halve and 17 do not
    for ups, halves in ((16, True), (17, False)):
        trace = [0.0] + rising(ups) + [float(ups) - 0.5] * (22 - ups)  # ups rises, then flat just below the top
        trace += rising(100 - 22, start=1000.0)  # afterwards every step improves: no more halvings
        assert len(trace) == 101
        assert step_halvings(trace) == ([22] if halves else []), ups
    # rho is a parameter: with rho = 0.5, 11 rising steps of 22 are enough
    trace = [0.0] + rising(11) + [10.5] * 11 + rising(78, start=1000.0)
    assert step_halvings(trace, rho=0.5) == [] and step_halvings(trace) == [22]


def test_condition_two_stalled_best_without_a_halving_last_time():
    # after the first checkpoint the loss keeps rising step by step but never beats its best (100 at step 22):
    # each interval drops once and then rises on every other step, so condition 1 never holds; condition 2
    # (best unchanged, not halved at the last checkpoint) halves at 41, then not at 57 (halved last time),
    # at 70, not at 80, at 87, not at 93, at 99
    trace = [0.0] + [100.0 * i / 22 for i in range(1, 23)]
    w = checkpoints(100)
    for a, b in zip(w, w[1:] + [100]):
        k = b - a
        trace += [0.0] + [50.0 * i / k for i in range(1, k)]  # one drop, k - 1 rises, all below 100
    assert len(trace) == 101
    assert step_halvings(trace) == [41, 70, 87, 99]


def test_first_checkpoint_applies_condition_one_only():
    # the best never beats the start (100), yet 17 of the first 22 steps rise: no halving at 22, since there was
    # no earlier checkpoint; at 41 condition 2 applies
    trace = [100.0, 0.0] + rising(17) + [0.0] * 4 + rising(78)
    trace[-78:] = [min(v, 50.0) for v in trace[-78:]]  # then steady: rises until 50, flat after
    assert len(trace) == 101
    assert step_halvings(trace)[:1] == [41]


def test_halve_step_is_elementwise():
    increases = torch.tensor([10, 20, 20, 20])
    best = torch.tensor([1.0, 1.0, 2.0, 1.0])
    at_last = torch.tensor([1.0, 1.0, 1.0, 1.0])
    halved_last = torch.tensor([False, False, False, True])
    out = halve_step(increases, 22, best, at_last, halved_last, rho=0.75)
    # too few rises | stalled best, not halved before | improved | stalled but halved last time
    assert out.tolist() == [True, True, False, False]


# --- losses ------------------------------------------------------------------------------------------

def test_dlr_loss_by_hand():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0], [0.5, 4.0, -1.0, 2.0]])
    y = torch.tensor([0, 2, 1])
    # sorted: [3, 2, 1, 0] -> z_pi1 - z_pi3 = 2; (max other - z_y) / 2
    # row 0: (2 - 3) / 2 = -0.5; row 1: (3 - 2) / 2 = 0.5; row 2: sorted [4, 2, 0.5, -1]: (2 - 4) / 3.5
    expected = torch.tensor([-0.5, 0.5, -2.0 / 3.5])
    assert torch.allclose(dlr_loss(z, y), expected, atol=1e-6)
    assert torch.allclose(apgd_loss(z, y, "dlr"), expected, atol=1e-6)
    # targeted: (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    t = torch.tensor([3, 1, 0])
    expected_t = torch.tensor([(0 - 3) / (3 - 0.5), (1 - 2) / (3 - 0.5), (0.5 - 4) / (4 - (0.5 - 1) / 2)])
    assert torch.allclose(dlr_loss(z, y, t), expected_t, atol=1e-6)
    # invariant to shifting and (positively) rescaling the logits, unlike CE
    assert torch.allclose(dlr_loss(7 * z - 3, y), expected, atol=1e-6)
    assert torch.allclose(dlr_loss(7 * z - 3, y, t), expected_t, atol=1e-6)
    # the other losses: the toolkit's CE and margin; targeted CE and margin
    assert torch.allclose(apgd_loss(z, y, "ce"), attacks.attack_loss(z, y, "ce"))
    assert torch.allclose(apgd_loss(z, y, "margin"), attacks.attack_loss(z, y, "margin"))
    assert torch.allclose(apgd_loss(z, y, "ce", t), -nn.functional.cross_entropy(z, t, reduction="none"))
    assert torch.allclose(apgd_loss(z, y, "margin", t), torch.tensor([-3.0, -1.0, -3.5]))


def test_dlr_gradient_survives_a_saturated_softmax(data, tiny_model):
    x, y = data

    class Scale(nn.Module):
        def forward(self, x):
            return tiny_model(x) * 1e4

    net = Scale()
    dead = attacks.input_gradient(net, x, y).flatten(1).abs().amax(1) == 0
    assert dead.float().mean() > 0.9  # CE's gradient underflows to exactly zero
    ce = apgd(net, x, y, eps=0.3, steps=10, loss="ce", generator=gen())
    dlr = apgd(net, x, y, eps=0.3, steps=10, loss="dlr", generator=gen())
    assert (predict(net, dlr) != y).sum() > (predict(net, ce) != y).sum()


@pytest.mark.parametrize("loss", APGD_LOSSES)
def test_targeted_loss_moves_toward_the_target(loss, data, tiny_model):
    x, y = data
    with torch.no_grad():
        clean = tiny_model(x)
    target = clean.argmin(1)  # the least likely class: the hardest target

    def gap(z):  # how far the target's logit trails the true one
        return (z.gather(1, target[:, None]) - z.gather(1, y[:, None])).squeeze(1)

    kw = dict(eps=0.3, steps=20, loss=loss, generator=gen(), early_stop=False)
    toward = apgd(tiny_model, x, y, target=target, **kw)
    away = apgd(tiny_model, x, y, **kw)
    with torch.no_grad():
        z_toward, z_away = tiny_model(toward), tiny_model(away)
    assert torch.all(gap(z_toward) > gap(clean))  # every image moved toward its target
    assert gap(z_toward).mean() > gap(z_away).mean() + 1
    hit_toward = (z_toward.argmax(1) == target).float().mean()
    hit_away = (z_away.argmax(1) == target).float().mean()
    assert hit_toward > 0.5 and hit_toward > hit_away + 0.3


def test_apgd_targeted_tries_the_top_classes_on_survivors_only(data, tiny_model):
    x, y = data
    net = CountingNet(tiny_model)
    out = apgd_targeted(net, x, y, eps=0.2, steps=5, targets=3, generator=gen())
    fooled = predict(tiny_model, out) != y
    assert 0 < fooled.sum() < len(y)
    # per target: apgd's 6 judged iterates (early stop) and one check of its result, each on fewer images
    firsts = [net.sizes[1 + j * 7] for j in range(3)]
    assert net.sizes[0] == len(y) and firsts[0] == len(y) and firsts[1] < firsts[0] and firsts[2] <= firsts[1]
    assert len(net.sizes) == 1 + 3 * 7
    # more targets: never weaker per image (the first targets' runs are identical)
    one = apgd_targeted(tiny_model, x, y, eps=0.2, steps=5, targets=1, generator=gen())
    f1 = predict(tiny_model, one) != y
    assert torch.all(fooled[f1]) and torch.equal(out[f1], one[f1])
    # more targets than classes - 1 are clipped: 4 classes, 3 other classes
    assert torch.equal(apgd_targeted(tiny_model, x, y, eps=0.2, steps=5, targets=9, generator=gen()), out)


# --- strength, determinism, early stop, restarts ---------------------------------------------------------

@pytest.mark.parametrize("norm,eps,loss", [("linf", 0.2, "ce"), ("linf", 0.15, "margin"), ("l2", 1.0, "ce"),
                                           ("l2", 1.0, "margin")])
@pytest.mark.parametrize("steps", [10, 50])
def test_at_least_as_strong_as_pgd(norm, eps, loss, steps, data, tiny_model):
    # same images, steps, loss and seed. (On this near-linear toy, L∞ with the margin loss at eps 0.2 is decided by
    # the random start for both attacks: each fools 323-331 of 600 images depending on the seed, and the union over
    # six seeds is the same 347 for both; so that regime compares seeds, not attacks, and is left out.)
    x, y = data
    pgd = pgd_linf if norm == "linf" else pgd_l2
    plain = pgd(tiny_model, x, y, eps=eps, steps=steps, generator=gen(), loss=loss)
    auto = apgd(tiny_model, x, y, eps=eps, steps=steps, norm=norm, generator=gen(), loss=loss)
    fooled_plain = int((predict(tiny_model, plain) != y).sum())
    fooled_auto = int((predict(tiny_model, auto) != y).sum())
    assert 0 < fooled_plain < len(y)
    assert fooled_auto >= fooled_plain


def test_stronger_than_pgd_where_the_step_size_matters(data, tiny_model):
    # L2 at eps 1.0: PGD's fixed step (2.5 eps / steps) needs many steps; APGD's schedule gets there in 5
    x, y = data
    plain = pgd_l2(tiny_model, x, y, eps=1.0, steps=5, generator=gen())
    auto = apgd(tiny_model, x, y, eps=1.0, steps=5, norm="l2", generator=gen())
    assert (predict(tiny_model, auto) != y).sum() > (predict(tiny_model, plain) != y).sum() + 20


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_deterministic_with_a_seeded_generator(norm, eps, data, tiny_model):
    x, y = data
    a = apgd(tiny_model, x, y, eps=eps, steps=10, norm=norm, restarts=2, generator=gen(5))
    b = apgd(tiny_model, x, y, eps=eps, steps=10, norm=norm, restarts=2, generator=gen(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, apgd(tiny_model, x, y, eps=eps, steps=10, norm=norm, restarts=2, generator=gen(6)))
    t1 = apgd_targeted(tiny_model, x, y, eps=eps, steps=5, norm=norm, targets=2, generator=gen(5))
    t2 = apgd_targeted(tiny_model, x, y, eps=eps, steps=5, norm=norm, targets=2, generator=gen(5))
    assert torch.equal(t1, t2)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_early_stop_fools_the_same_images_for_less_compute(norm, eps, data, tiny_model):
    # the per-image state (step size, best point, momentum, schedule) is sliced as images leave: the images
    # still in the batch follow exactly the trajectories they follow without early stop
    x, y = data
    net = CountingNet(tiny_model)
    full = apgd(net, x, y, eps=eps, steps=30, norm=norm, generator=gen(2), early_stop=False)
    full_sizes, net.sizes = net.sizes, []
    early = apgd(net, x, y, eps=eps, steps=30, norm=norm, generator=gen(2))
    assert full_sizes == [len(y)] * 31 and len(net.sizes) <= 31 and sum(net.sizes) < sum(full_sizes)
    fooled_full, fooled_early = predict(tiny_model, full) != y, predict(tiny_model, early) != y
    assert 0 < fooled_full.sum() < len(y) and torch.equal(fooled_early, fooled_full)
    # standing images: the same highest-loss point either way
    assert torch.allclose(early[~fooled_full], full[~fooled_full], atol=1e-6)
    # fooled images keep their first fooling iterate: the margin just past the boundary is smaller than at the
    # deepest fooling iterate that early_stop=False returns
    with torch.no_grad():
        m_full = attacks.attack_loss(tiny_model(full), y, "margin")[fooled_full]
        m_early = attacks.attack_loss(tiny_model(early), y, "margin")[fooled_full]
    assert torch.all(m_early > 0) and m_full.mean() > m_early.mean()


class Recorder(nn.Module):
    """Keeps a copy of every input that goes through ``inner``."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_first_fooling_iterate_is_kept(norm, eps, data, tiny_model):
    x, y = data
    checked = 0
    for i in range(60):
        net = Recorder(tiny_model)
        out = apgd(net, x[i:i + 1], y[i:i + 1], eps=eps, steps=20, norm=norm, generator=gen(i))
        fooling = [p for p in net.inputs if predict(tiny_model, p).item() != y[i].item()]
        if fooling:
            checked += 1
            assert torch.equal(out, fooling[0])  # the first fooling iterate, not a later one
            assert torch.equal(net.inputs[-1], fooling[0])  # and the image left the batch right there
        else:
            assert len(net.inputs) == 21  # every iterate judged (the last one without a backward)
    assert checked > 5


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_restarts_never_weaker_and_run_on_survivors(norm, eps, data, tiny_model):
    x, y = data
    net = CountingNet(tiny_model)
    one = apgd(net, x, y, eps=eps, steps=5, norm=norm, restarts=1, generator=gen(7))
    sizes_one, net.sizes = net.sizes, []
    three = apgd(net, x, y, eps=eps, steps=5, norm=norm, restarts=3, generator=gen(7))
    f1, f3 = predict(tiny_model, one) != y, predict(tiny_model, three) != y
    assert net.sizes[:len(sizes_one)] == sizes_one  # restart #1 is the restarts=1 run
    assert net.sizes[len(sizes_one)] == int((~f1).sum())  # restart #2 starts on the survivors only
    assert torch.all(f3[f1]) and torch.equal(three[f1], one[f1]) and f3.sum() >= f1.sum()


def test_hygiene(data, tiny_model):
    x, y = data
    x, y = x[:20], y[:20]

    class DropoutNet(nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base, self.drop = base, nn.Dropout(0.5)

        def forward(self, x):
            return self.base(self.drop(x))

    model = DropoutNet(copy.deepcopy(tiny_model))
    model.train()
    model.base.net[1].eval()
    before = [m.training for m in model.modules()]
    for call in (lambda: apgd(model, x, y, eps=0.2, steps=5, generator=gen()),
                 lambda: apgd_targeted(model, x, y, eps=0.2, steps=5, targets=2, generator=gen())):
        a, b = call(), call()
        assert [m.training for m in model.modules()] == before
        assert all(p.grad is None for p in model.parameters())
        assert not a.requires_grad and torch.equal(a, b)
        with torch.no_grad():  # callable from an evaluation loop
            assert torch.equal(call(), a)


# --- members -----------------------------------------------------------------------------------------

def test_members_by_name_and_the_strong_ensemble():
    names = ["apgd_ce", "apgd_t", "square"]
    assert evaluate.check_members(names) == names
    assert {"apgd_ce", "apgd_dlr", "apgd_t"} <= set(evaluate.MEMBER_NAMES)
    with pytest.raises(ValueError, match="apgd_ce.*apgd_dlr.*apgd_t"):  # the error lists them
        evaluate.check_members(["apgd_x"])
    built = evaluate.members_from_names(names, steps=7, queries=50, targets=3)
    assert [(m.name, m.kind, m.loss, m.steps, m.targets) for m in built] == [
        ("apgd_ce", "gradient", "ce", 7, 0), ("apgd_t", "gradient", "dlr", 7, 3),
        ("square", "square", "margin", 100, 0)]
    assert built[2].queries == 50
    assert M.member("apgd_dlr").loss == "dlr" and M.member("apgd_t").targets == M.DEFAULT_TARGETS
    assert M.apgd_t().targets == 9  # the attack's own default is AutoAttack's
    default = evaluate.default_members(steps=20, queries=300, targets=4)
    assert [(m.name, m.kind, m.steps, m.targets) for m in default] == [
        ("apgd_ce", "gradient", 20, 0), ("apgd_t", "gradient", 20, 4), ("square", "square", 100, 0)]
    assert default[2].queries == 300
    assert [m.name for m in M.classic_members()] == ["pgd_ce", "pgd_margin", "square"]
    with pytest.raises(ValueError, match="unknown loss"):
        M.apgd("xent")
    with pytest.raises(ValueError, match="targets"):
        M.Member("p", "pgd", targets=2)
    with pytest.raises(ValueError, match="gradient attack"):
        M.Member("g", "gradient")  # a gradient member names its algorithm


def test_craft_gradient_runs_the_members_attack(data, tiny_model):
    x, y = data
    m = M.apgd("dlr", steps=5)
    out = M.craft_gradient(m, tiny_model, x, y, 0.2, "linf", batch_size=250, generator=gen(3))
    g = gen(3)  # one generator across the batches, as run_attack passes it
    direct = torch.cat([apgd(tiny_model, x[i:i + 250], y[i:i + 250], eps=0.2, steps=5, loss="dlr", generator=g)
                        for i in range(0, len(x), 250)])
    assert torch.equal(out, direct)
    t = M.craft_gradient(M.apgd_t(2, steps=5), tiny_model, x, y, 1.0, "l2", batch_size=len(x), generator=gen(3))
    assert torch.equal(t, apgd_targeted(tiny_model, x, y, eps=1.0, steps=5, norm="l2", targets=2, generator=gen(3)))
    with pytest.raises(ValueError, match="not 'gradient'"):
        M.craft_gradient(M.pgd(), tiny_model, x, y, 0.2)


@pytest.mark.parametrize("norm,eps", [("linf", 0.2), ("l2", 1.0)])
def test_members_inside_worst_case(norm, eps, data, tiny_model):
    from robustness_book.evaluate.worst_case import _member_seed

    x, y = data
    members = evaluate.default_members(steps=10, queries=100, targets=3)
    res = evaluate.worst_case(tiny_model, x, y, eps, members, norm=norm, batch_size=200, seed=1)
    assert res["kinds"] == {"apgd_ce": "gradient", "apgd_t": "gradient", "square": "square"}
    assert res["added"]["apgd_ce"] > 0 and 0 < res["robust"] < 1
    fooled = ~res["robust_mask"]
    assert torch.all(predict(tiny_model, res["x_adv"][fooled]) != y[fooled])
    assert size(res["x_adv"] - x, norm).max() <= eps + TOL
    # the first member's examples are those of APGD itself, with the member's own seeded generator
    by_first = res["fooled_by"] == 0
    g = torch.Generator().manual_seed(_member_seed(1, "apgd_ce"))
    direct = M.craft_gradient(members[0], tiny_model, x, y, eps, norm, batch_size=200, generator=g)
    assert torch.equal(res["x_adv"][by_first], direct[by_first])
    assert int(by_first.sum()) == res["added"]["apgd_ce"]
    # at least as strong as the book's first (PGD) ensemble at the same steps and queries
    classic = evaluate.worst_case(tiny_model, x, y, eps, M.classic_members(steps=10, queries=100), norm=norm,
                                  batch_size=200, seed=1)
    assert res["robust"] <= classic["robust"]
