"""robustness_book.evaluate: the adaptive worst case, its members, AutoAttack and the adaptive min-norm attack,
on the tiny blobs model (robust up to L∞ eps ≈ 0.1, about 40% at 0.2, broken at 0.4)."""
import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from robustness_book import attacks, evaluate
from robustness_book.evaluate import members as M

EPS = 0.2


class Round(nn.Module):
    """``x -> round(4x) / 4``: piecewise constant, so autograd's input gradient is exactly zero."""

    def forward(self, x):
        return torch.round(4 * x) / 4


class Spy(nn.Module):
    """The wrapped model's exact function; records the batch size of every forward pass."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(len(x))
        return self.model(x)


def _data(tiny_data, n=120):
    return tiny_data[0][:n], tiny_data[1][:n]


# --------------------------------------------------------------------------- members


def test_member_constructors_and_defaults():
    assert M.pgd() == M.Member("pgd_ce", "pgd", loss="ce", steps=100, restarts=1)
    assert M.pgd("margin", steps=20, restarts=3).name == "pgd_margin"
    sq = M.square()
    assert (sq.kind, sq.queries, sq.restarts, sq.loss) == ("square", 5000, 1, "margin")
    aa = M.autoattack()
    assert (aa.name, aa.kind, aa.version) == ("autoattack", "autoattack", "standard")
    surrogate, source = nn.Identity(), nn.Identity()
    b = M.bpda(surrogate, loss="margin", steps=7, name="pgd_bpda")
    assert (b.name, b.kind, b.loss, b.steps, b.transfer) == ("pgd_bpda", "pgd", "margin", 7, False)
    assert b.through is surrogate
    t = M.transfer(source)
    assert (t.name, t.transfer, t.steps) == ("transfer", True, 100) and t.through is source
    assert [m.name for m in evaluate.default_members(10, 2)] == ["apgd_ce", "apgd_t", "square"]
    assert all(m.steps == 10 and m.restarts == 2 for m in evaluate.default_members(10, 2)[:2])
    with pytest.raises(dataclasses.FrozenInstanceError):
        sq.queries = 10


def test_members_are_validated_before_any_work(tiny_model, tiny_data):
    assert evaluate.check_members(["pgd_ce", "pgd_margin", "square"]) == ["pgd_ce", "pgd_margin", "square"]
    with pytest.raises(ValueError, match=r"unknown member 'pgd_cw'; allowed: pgd_ce, pgd_margin, square"):
        evaluate.check_members(["pgd_ce", "pgd_cw"])
    with pytest.raises(ValueError, match="named twice"):
        evaluate.check_members(["square", "square"])
    with pytest.raises(ValueError, match="at least one"):
        evaluate.check_members([])
    with pytest.raises(ValueError, match="list of names"):
        evaluate.check_members("pgd_ce")
    built = evaluate.members_from_names(["square", "pgd_margin"], steps=5, queries=50)
    assert [(m.name, m.kind, m.steps, m.queries) for m in built] == [("square", "square", 100, 50),
                                                                     ("pgd_margin", "pgd", 5, 5000)]
    with pytest.raises(ValueError, match="unknown loss 'dlr'; allowed: ce, margin"):
        M.pgd("dlr")
    with pytest.raises(ValueError, match="unknown kind"):
        M.Member("x", "fgsm")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        M.pgd(steps=0)
    with pytest.raises(ValueError, match="needs a source model"):
        M.Member("t", "pgd", transfer=True)
    x, y = _data(tiny_data, 20)
    with pytest.raises(ValueError, match="unknown norm 'l1'; allowed: linf, l2"):
        evaluate.worst_case(tiny_model, x, y, EPS, ["pgd_ce"], norm="l1")
    with pytest.raises(ValueError, match="distinct"):
        evaluate.worst_case(tiny_model, x, y, EPS, [M.pgd(steps=2), M.pgd(steps=3)])
    with pytest.raises(ValueError, match="unknown member"):
        evaluate.worst_case(tiny_model, x, y, EPS, ["pgd_ce", "fgsm"])


# --------------------------------------------------------------------------- worst case


def test_worst_case_is_a_per_image_worst_case_judged_on_the_model(tiny_model, tiny_data):
    x, y = _data(tiny_data)
    members = evaluate.default_members(steps=10, queries=200)
    res = evaluate.worst_case(tiny_model, x, y, EPS, members, batch_size=50)
    clean_ok = evaluate.predict(tiny_model, x) == y
    mask = res["robust_mask"]
    # the bookkeeping: every correctly classified image is robust or fooled by exactly one member
    assert res["k"] == int(mask.sum()) and res["robust"] == pytest.approx(res["k"] / len(y))
    assert int(clean_ok.sum()) - res["k"] == sum(res["added"].values())
    assert res["members"] == ["apgd_ce", "apgd_t", "square"] and res["added"]["apgd_ce"] > 0
    lo, hi = res["interval"]
    assert lo <= res["robust"] <= hi and res["interval"] == list(evaluate.wilson_interval(res["k"], len(y)))
    # the examples: inside the ball and the box, misclassified by the model exactly where it is not robust,
    # and the clean image where it is
    x_adv = res["x_adv"]
    assert (x_adv - x).abs().max() <= EPS + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert torch.equal(evaluate.predict(tiny_model, x_adv) == y, mask)
    assert torch.equal(x_adv[mask], x[mask])
    # the ensemble is at least as strong as its first member alone (which it runs on the same images first)
    alone = evaluate.worst_case(tiny_model, x, y, EPS, members[:1], batch_size=50)
    assert alone["added"]["apgd_ce"] == res["added"]["apgd_ce"] and res["k"] <= alone["k"]
    # deterministic: the same seed gives the same result, tensors included
    again = evaluate.worst_case(tiny_model, x, y, EPS, members, batch_size=50)
    assert torch.equal(again["x_adv"], x_adv) and evaluate.to_record(again) == evaluate.to_record(res)


def test_each_member_attacks_only_the_images_still_standing(tiny_model, tiny_data):
    x, y = _data(tiny_data)
    spy = Spy(tiny_model)
    # a transfer member takes every step on every image it gets (no early stop), so each forward pass of the
    # spy sees exactly the images the earlier member left standing
    res = evaluate.worst_case(tiny_model, x, y, EPS, [M.pgd(steps=10), M.transfer(spy, steps=5)], batch_size=500)
    standing = int((evaluate.predict(tiny_model, x) == y).sum()) - res["added"]["pgd_ce"]
    assert 0 < standing < len(y)
    assert spy.sizes and set(spy.sizes) == {standing}
    assert len(spy.sizes) == 5 + 1  # 5 steps, and the last iterate judged


def test_gradient_free_member_finds_what_masked_gradients_hide(tiny_model, tiny_data):
    x, y = _data(tiny_data)
    masked = nn.Sequential(Round(), tiny_model).eval()
    res = evaluate.worst_case(masked, x, y, EPS, evaluate.default_members(steps=10, queries=300))
    # APGD follows a zero gradient and fools (almost) nothing; Square does not need gradients
    assert res["added"]["apgd_ce"] + res["added"]["apgd_t"] <= 2
    assert res["added"]["square"] > 0.3 * len(y)
    # a BPDA copy (identity backward for the rounding) restores the gradient attack
    bpda_copy = attacks.with_bpda(masked, {Round: lambda m: nn.Identity()})
    res = evaluate.worst_case(masked, x, y, EPS, [M.bpda(bpda_copy, steps=10), M.square(queries=300)])
    assert res["added"]["bpda_ce"] > 0.3 * len(y)


def test_through_must_compute_the_models_function_unless_it_is_a_transfer_source(tiny_model, tiny_data):
    x, y = _data(tiny_data, 60)
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        other.net[-1].bias += torch.tensor([0, 0, 0, 1e4])  # another function: predicts class 3 everywhere
    with pytest.raises(ValueError, match="same function"):
        evaluate.worst_case(tiny_model, x, y, 0.3, [M.bpda(other, steps=5)])
    # as a transfer source another model is fine: its examples are judged on the model
    source = copy.deepcopy(tiny_model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in source.parameters():
            p += 0.1 * torch.randn(p.shape, generator=g)
    res = evaluate.worst_case(tiny_model, x, y, 0.3, [M.transfer(source, steps=10)])
    fooled = ~res["robust_mask"]
    assert fooled.any() and (evaluate.predict(tiny_model, res["x_adv"][fooled]) != y[fooled]).all()


def test_worst_case_at_eps_zero_is_clean_accuracy(tiny_model, tiny_data):
    x, y = _data(tiny_data, 60)
    y = y.clone()
    y[:6] = (y[:6] + 1) % 4  # some images the model gets wrong
    res = evaluate.worst_case(tiny_model, x, y, 0.0, evaluate.default_members(steps=5, queries=50))
    assert res["robust"] == res["clean"] == pytest.approx(evaluate.accuracy(tiny_model, x, y)) == 0.9
    assert sum(res["added"].values()) == 0 and torch.equal(res["x_adv"], x)


def test_worst_case_in_l2(tiny_model, tiny_data):
    x, y = _data(tiny_data, 60)
    res = evaluate.worst_case(tiny_model, x, y, 1.0, evaluate.default_members(steps=10, queries=200), norm="l2")
    d = (res["x_adv"] - x).flatten(1).norm(dim=1)
    assert d.max() <= 1.0 + 1e-5 and 0 < res["robust"] < 1
    assert torch.equal(evaluate.predict(tiny_model, res["x_adv"]) == y, res["robust_mask"])


def test_worst_case_curve_is_nested_and_monotone(tiny_model, tiny_data):
    x, y = _data(tiny_data)
    eps_list = [0.3, 0.0, 0.1, 0.2]  # any order: the curve runs in ascending eps
    curve = evaluate.worst_case_curve(tiny_model, x, y, eps_list, evaluate.default_members(steps=10, queries=100))
    assert [p["eps"] for p in curve] == [0.0, 0.1, 0.2, 0.3]
    robust = [p["robust"] for p in curve]
    assert robust == sorted(robust, reverse=True) and robust[0] == curve[0]["clean"] and robust[-1] < robust[2]
    for prev, cur in zip(curve, curve[1:]):
        # an image fooled at a smaller eps stays fooled (with the same, still valid, example)
        assert not (cur["robust_mask"] & ~prev["robust_mask"]).any()
        gone = ~prev["robust_mask"]
        assert torch.equal(cur["x_adv"][gone], prev["x_adv"][gone])
        n_clean = round(cur["clean"] * len(y))
        assert cur["carried"] == n_clean - prev["k"]
        assert cur["carried"] + sum(cur["added"].values()) + cur["k"] == n_clean
    for p in curve:
        assert (p["x_adv"] - x).abs().max() <= p["eps"] + 1e-6
    # JSON-ready without tensors and wall-clock seconds
    record = evaluate.to_record(curve)
    json.dumps(record)
    assert "x_adv" not in record[0] and "robust_mask" not in record[0] and "seconds" not in record[0]
    assert "seconds" in curve[0] and set(curve[0]["seconds"]) == set(curve[0]["members"])


# --------------------------------------------------------------------------- AutoAttack


def test_autoattack_accuracy_runs_on_cpu_and_restores_the_random_state(tiny_model, tiny_data):
    x, y = _data(tiny_data, 40)
    state = torch.random.get_rng_state()
    res = evaluate.autoattack_accuracy(tiny_model, x, y, EPS, batch_size=40)
    assert torch.equal(torch.random.get_rng_state(), state)  # AutoAttack seeds the global generator
    assert all(p.grad is None for p in tiny_model.parameters())  # nor does it leave gradients on the weights
    assert set(res) == {"eps", "norm", "version", "n", "clean", "robust", "k", "interval", "seconds", "flags", "mask"}
    assert res["n"] == 40 and res["clean"] == 1.0 and 0 < res["robust"] < 1
    json.dumps(res)
    # AutoAttack is at least as strong as one PGD run on these images
    pgd = evaluate.worst_case(tiny_model, x, y, EPS, [M.pgd(steps=10)])
    assert res["robust"] <= pgd["robust"]
    with pytest.raises(ValueError, match="allowed: linf, l2"):
        evaluate.autoattack_accuracy(tiny_model, x, y, EPS, norm="l1")


def test_autoattack_as_a_member_after_pgd(tiny_model, tiny_data):
    x, y = _data(tiny_data, 40)
    res = evaluate.worst_case(tiny_model, x, y, EPS, [M.pgd(steps=10), M.autoattack()])
    assert res["kinds"]["autoattack"] == "autoattack"
    assert torch.equal(evaluate.predict(tiny_model, res["x_adv"]) == y, res["robust_mask"])
    assert (res["x_adv"] - x).abs().max() <= EPS + 1e-5


# --------------------------------------------------------------------------- adaptive min-norm


def test_min_norm_reports_rho_and_a_convergence_check(tiny_model, tiny_data):
    x, y = _data(tiny_data, 80)
    res = evaluate.min_norm(tiny_model, x, y, steps=30)
    assert res["n"] == 80 and res["n_correct"] == 80 and res["success_rate"] == 1.0
    assert res["steps_double"] == 60 and res["converged"] and res["relative_change"] < 0.02
    json.dumps(res)
    # ρ is the relative L2 size in pixel space: consistent with PGD-L2 at the median distance
    rho = res["rho_median"]
    assert 0 < rho < 1 and res["rho_mean"] >= min(rho, res["rho_median_double"]) * 0.5
    median_norm = res["norm_median"]
    at_median = evaluate.worst_case(tiny_model, x, y, 1.2 * median_norm, [M.pgd(steps=50)], norm="l2")
    assert at_median["robust"] < 0.5  # PGD-L2 at 1.2x the median min-norm distance fools most images
    # too few steps: the doubled run moves the median, so the check says "not converged"
    few = evaluate.min_norm(tiny_model, x, y, steps=3)
    assert not few["converged"] and few["relative_change"] >= 0.02
    assert few["rho_median"] >= few["rho_median_double"]


def test_min_norm_follows_the_attack_model_and_judges_on_the_model(tiny_model, tiny_data):
    x, y = _data(tiny_data, 60)
    masked = nn.Sequential(Round(), tiny_model).eval()
    # with the masked model's own (zero) gradient DDN only wanders at random; through BPDA it finds small
    # perturbations; success is judged on the masked model
    plain = evaluate.min_norm(masked, x, y, steps=30, check_convergence=False)
    bpda_copy = attacks.with_bpda(masked, {Round: lambda m: nn.Identity()})
    adaptive = evaluate.min_norm(masked, x, y, attack_model=bpda_copy, steps=30, check_convergence=False)
    assert "converged" not in plain
    assert adaptive["success_rate"] > 0.9 and adaptive["rho_median"] < plain["rho_median"]
    with pytest.raises(ValueError, match="allowed: l2"):
        evaluate.min_norm(tiny_model, x, y, norm="linf")


def test_predict_keeps_each_submodules_training_flag():
    """predict runs in eval mode and restores every flag (a BatchNorm frozen in eval stays frozen)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    net.train()
    net[2].eval()
    x = torch.rand(10, 1, 2, 2)
    with torch.no_grad():
        expected = nn.Sequential(*copy.deepcopy(list(net))).eval()(x).argmax(1)
    assert torch.equal(evaluate.predict(net, x, batch_size=3), expected)  # dropout off, running statistics used
    assert [m.training for m in net] == [True, True, False, True, True]
