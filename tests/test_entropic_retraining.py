"""The entropic-retraining chapter: its rules (layers, λ), its measurements on known models (profiles, float32
saturation, cost arithmetic), its verdict on hand-made results, its parameters, and its smoke run."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustness_book.chapters import entropic_retraining as chapter
from robustness_book import evaluate
from robustness_book.chapters import kit
from robustness_book.config import resolve
from robustness_book.data import ArrayDataset
from robustness_book.evaluate.stats import pack_mask
from robustness_book.defenses.entropic import layer_entropies
from robustness_book.models import build_model
from robustness_book.results import anchors, one, record
from robustness_book.train import TrainConfig, cross_entropy

CFG = {"chapter": "entropic_retraining", "profile": "laptop", "seed": 0}
D, MODEL = "cifar10", "entropic_cnn"
NORMAL, CONTROL, ENTROPIC, ADVERSARIAL = chapter.NORMAL, chapter.CONTROL, chapter.ENTROPIC, chapter.ADVERSARIAL
FREE = chapter.ENTROPIC_FREE


def rec(**kw):
    return record(CFG, dataset=D, model=MODEL, **kw)


# --------------------------------------------------------------------------- layers and initialization


def test_the_anchor_cnn_has_four_conv_and_five_dense_activation_layers():
    kinds = chapter.layer_kinds(build_model(MODEL, D))
    assert list(kinds.values()) == ["conv"] * 4 + ["dense"] * 5
    assert chapter.candidate_layers(kinds, "dense") == list(kinds)[4:]
    assert chapter.candidate_layers(kinds, "conv") == list(kinds)[:4]
    assert chapter.candidate_layers(kinds, "all") == list(kinds)
    with pytest.raises(ValueError, match="layer_candidates='relu'.*dense, conv, all"):
        chapter.candidate_layers(kinds, "relu")


def test_keras_initialization_is_glorot_uniform_with_zero_biases_and_seeded():
    net = chapter.keras_initialized(MODEL, D, seed=3)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 10
    for layer in layers:
        w = layer.weight
        fan_in, fan_out = w[0].numel(), w.shape[0] * w[0, 0].numel()
        assert torch.all(layer.bias == 0)
        assert w.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-7
        # a uniform draw on [-b, b] has standard deviation b/√3: far from PyTorch's default for the big layers
        if w.numel() > 10_000:
            assert w.std().item() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.05)
    again, other = chapter.keras_initialized(MODEL, D, seed=3), chapter.keras_initialized(MODEL, D, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert not torch.equal(net[1].weight, other[1].weight)


# --------------------------------------------------------------------------- profiles and the rules


def test_a_profile_is_the_mean_and_spread_of_per_batch_entropies(tiny_model, tiny_data):
    x = tiny_data[0][:70]
    prof = chapter.entropy_profile(tiny_model, x, ["net.2", "net.4"], batch_size=32, bins=8)
    per = [layer_entropies(tiny_model, x[i:i + 32], ["net.2", "net.4"], bins=8) for i in (0, 32)]  # 6 dropped
    for name in ("net.2", "net.4"):
        values = torch.tensor([p[name] for p in per], dtype=torch.float64)
        assert prof[name][0] == pytest.approx(float(values.mean()), abs=1e-12)
        assert prof[name][1] == pytest.approx(float(values.std()), abs=1e-12)
    with pytest.raises(ValueError, match="at least one batch of 128"):
        chapter.entropy_profile(tiny_model, x, ["net.2"], batch_size=128)


def _profile(role, values, kinds=("conv", "dense", "dense", "dense"), **setting):
    return [rec(metric="entropy", defense=role, value=v, n=4, split="val", layer=f"L{i}", kind=k, std=0.01,
                **setting) for i, (v, k) in enumerate(zip(values, kinds))]


def test_the_layers_are_those_adversarial_training_moved_most_in_forward_order():
    records = _profile(NORMAL, [1.0, 2.0, 1.5, 1.2]) + _profile(ADVERSARIAL, [3.0, 1.7, 1.5, 1.312345678])
    # among the dense candidates, L1 moved by −0.3, L2 by 0, L3 by +0.112: the largest |change| first
    two = chapter.choose_layers(records, D, ["L1", "L2", "L3"], 2)
    assert [c["layer"] for c in two] == ["L1", "L3"]
    assert two[1]["target"] == 1.3123 and two[0]["change"] == pytest.approx(-0.3)
    # the conv layer moved most but is not a candidate; with all four, it comes first in forward order
    assert [c["layer"] for c in chapter.choose_layers(records, D, ["L0", "L1", "L2", "L3"], 2)] == ["L0", "L1"]
    # ties go to the earlier layer
    tied = _profile(NORMAL, [1.0, 1.0, 1.0, 1.0]) + _profile(ADVERSARIAL, [1.0, 1.5, 0.5, 1.5])
    assert [c["layer"] for c in chapter.choose_layers(tied, D, ["L1", "L2", "L3"], 2)] == ["L1", "L2"]


def test_the_analysis_counts_only_changes_beyond_the_batch_spread():
    # changes +2, −0.3, 0 and +0.01 against a spread of 0.01 (the threshold: CHANGE_SPREADS × 0.01 = 0.02)
    records = _profile(NORMAL, [1.0, 2.0, 1.5, 1.2]) + _profile(ADVERSARIAL, [3.0, 1.7, 1.5, 1.21])
    assert chapter.CHANGE_SPREADS == 2.0
    assert chapter.changed_layers(records, D) == {"lowered": ["L1"], "raised": ["L0"], "all": ["L0", "L1", "L2", "L3"]}
    saved = _saved()
    saved["records"] += records
    assert "lowered the entropy of 1 and raised that of 1 of the 4 activation layers" in chapter.verdict(saved)


def _sweep(lam, clean, pgd):
    kw = dict(defense=ENTROPIC, split="val", n=1000, lam=lam)
    return [rec(metric="accuracy", value=clean, **kw),
            rec(metric="accuracy", value=pgd, attack="pgd_ce", threat_model="linf", eps=8 / 255, steps=10, **kw)]


def test_lambda_rule_respects_the_clean_budget_and_prefers_the_smaller_lambda():
    recs = _sweep(0.0, 0.80, 0.01) + _sweep(1.0, 0.79, 0.05) + _sweep(10.0, 0.70, 0.30) + _sweep(100.0, 0.795, 0.05)
    # λ = 10 is best under PGD but costs 10 points; 1 and 100 tie: the smaller wins
    assert chapter.choose_lambda(recs, D, budget=0.03) == 1.0
    assert chapter.choose_lambda(recs, D, budget=0.15) == 10.0
    assert chapter.choose_lambda(_sweep(0.0, 0.8, 0.02) + _sweep(1.0, 0.8, 0.02), D, 0.03) == 0.0
    # what the test images measure: the chosen λ, else the largest λ within the budget, else none
    assert chapter.lambda_to_test(recs, D, 0.03) == (1.0, "chosen")
    flat = _sweep(0.0, 0.8, 0.02) + _sweep(1.0, 0.8, 0.02) + _sweep(10.0, 0.78, 0.02) + _sweep(100.0, 0.1, 0.1)
    assert chapter.within_budget(flat, D, 0.03) == [0.0, 1.0, 10.0]
    assert chapter.lambda_to_test(flat, D, 0.03) == (10.0, "largest_within_budget")
    assert chapter.lambda_to_test(_sweep(0.0, 0.8, 0.02) + _sweep(1.0, 0.5, 0.02), D, 0.03) == (0.0, "none")


@pytest.mark.parametrize("kernel", ["triangular", "gaussian"])
def test_a_diverged_unit_has_a_nan_entropy_and_does_not_break_the_sweep(kernel):
    # a λ too large can make a fine-tuning diverge; its non-finite activations must give NaN (the model is then
    # scored at its accuracy like any other), never an out-of-range bin index that stops the whole sweep
    from robustness_book.defenses.entropic import EntropyEstimator

    a = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    a[4, 1], a[7, 2] = float("nan"), float("inf")
    h = EntropyEstimator(kernel=kernel).unit_entropy(a)
    assert torch.isfinite(h[0]) and h[0] > 0 and torch.isnan(h[1:]).all()
    assert torch.equal(EntropyEstimator(kernel=kernel).unit_entropy(torch.full((9, 2), 0.5)), torch.zeros(2))


# --------------------------------------------------------------------------- the saturation measurement


class Gap(nn.Module):
    """Two logits, (−100·mean(x), 100·mean(x)): on a constant image of value v the gap between them is 200·v."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(200.0))

    def forward(self, x):
        half = self.scale * x.flatten(1).mean(1) / 2
        return torch.stack([-half, half], 1)


def test_saturation_counts_rounded_softmax_and_vanished_cross_entropy_gradients():
    # gaps 1, 50 and 200: p = 1 rounds to exactly 1 in float32 from a gap of about 17, and the other probability
    # underflows to 0 (the gradient of the cross-entropy with it) beyond about 104
    x = torch.tensor([0.005, 0.25, 1.0]).view(3, 1, 1, 1).expand(3, 1, 2, 2).contiguous()
    y = torch.ones(3, dtype=torch.long)
    s = chapter.logit_saturation(Gap(), x, y)
    assert (s["n"], s["saturated"], s["ce_gradient_zero"]) == (3, 2, 1)
    assert s["median_gap"] == pytest.approx(50.0)


# --------------------------------------------------------------------------- cost


def test_cost_ratios_are_steps_times_seconds_over_normal_training():
    per_step = {"plain": 0.1, "entropic": 0.15, "adversarial": 0.5}
    steps = {"train": 1000, "fine_tune": 200}
    c = chapter.training_costs(per_step, steps, "normal")
    # normal: 1000 × 0.1 = 100 s; plus 200 fine-tuning steps of 0.1, 0.15 or 0.5 s
    assert c["recipe"] == pytest.approx({NORMAL: 1.0, CONTROL: 1.2, ENTROPIC: 1.3, ADVERSARIAL: 2.0})
    assert c["step"] == pytest.approx({"plain": 1.0, "entropic": 1.5, "adversarial": 5.0})
    # from scratch: 1000 adversarial steps of 0.5 s instead of normal training plus a fine-tuning
    assert chapter.training_costs(per_step, steps, "scratch")["recipe"][ADVERSARIAL] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="at_from='later'"):
        chapter.training_costs(per_step, steps, "later")


# --------------------------------------------------------------------------- the verdict on hand-made results

N = 200
MEMBERS = ("pgd_ce", "pgd_margin", "square", "transfer_from_normal")


def _mask(k, n=N):
    """The first ``k`` of ``n`` images right (nested masks: a network right on more images is right on these)."""
    return torch.arange(n) < k


def _acc(mask, **kw):
    r = evaluate.accuracy_record(mask)
    return rec(metric="accuracy", value=r["value"], n=r["n"], interval=r["interval"], correct=pack_mask(mask), **kw)


def _saved(*, lam=10.0, chosen=None, normal=(160, 40, 20), control=(156, 40, 20), entropic=(154, 60, 50),
           adversarial=(130, 110, 100), removed=None, survivors=None, saturated=(0.05, 0.60), n=N, health=(),
           per_image=True, free=None, free_lam=1.0):
    """Results of one data set (CIFAR-10), per image on ``n`` test images: per network the number of images right
    (clean, PGD-CE alone, worst case), nested; the worst case's members removed ``removed`` (member → images) of
    what PGD-CE alone left standing (by default all by square); AutoAttack on the survivors of the entropic and the
    adversarially trained network leaves ``survivors`` (role → images; by default all) standing. ``free``: reading
    B's counts at ``free_lam`` (lowering the entropy of layers 13-17); ``None``: a results file without reading B."""
    chosen = lam if chosen is None else chosen
    out = [rec(metric="loss_layer", defense=ENTROPIC, value=1.5, split="val", layer=name, kind="dense",
               change=0.2, order=i) for i, name in enumerate(("15", "17"))]
    out += [rec(metric="chosen_lambda", defense=ENTROPIC, value=chosen, budget=0.03),
            rec(metric="tested_lambda", defense=ENTROPIC, value=lam, budget=0.03,
                rule="chosen" if chosen else "largest_within_budget" if lam else "none")]
    if free is not None:
        direction = "lower" if free_lam else None
        out += [rec(metric="chosen_lambda", defense=FREE, value=free_lam, direction=direction, budget=0.03),
                rec(metric="tested_lambda", defense=FREE, value=free_lam, direction=direction, budget=0.03,
                    rule="chosen" if free_lam else "none", layers="13,15,17")]
    survivors = survivors or {}

    def model(role, counts, s, **setting):
        (c, p, w), kw = counts, dict(defense=role, split="test", **setting)
        adv = dict(threat_model="linf", eps=8 / 255, **kw)
        gone = (removed or {}).get(role, {"square": p - w})
        fooled = {"pgd_ce": c - p, **{m: gone.get(m, 0) for m in MEMBERS[1:]}}
        # which member fooled each image: PGD-CE the images after p, the later members in turn those from w to p
        codes = [i for i, m in enumerate(MEMBERS[1:], 1) for _ in range(fooled[m])]
        fooled_by = torch.tensor([-1] * w + codes + [0] * (c - p) + [-2] * (n - c))
        assert len(fooled_by) == n, "removed must account for every image PGD-CE alone left and the worst case did not"
        recs = [_acc(_mask(c, n), **kw), _acc(_mask(p, n), attack="pgd_ce", alone=True, **adv),
                _acc(_mask(w, n), attack="worst_case", members="+".join(MEMBERS), **adv,
                     **{kit.FOOLED_BY: kit.pack_fooled_by(fooled_by)}),
                rec(metric="saturated_share", value=s, n=n, interval=_wilson(s, n), **kw)]
        recs += [rec(metric="images_fooled", attack=m, value=fooled[m], order=i, within="worst_case", n=n, **adv)
                 for i, m in enumerate(MEMBERS)]
        if role in (ENTROPIC, FREE, ADVERSARIAL):
            recs.append(_acc(_mask(survivors.get(role, w), n), attack="autoattack", on="worst_case_survivors",
                             flags="", **adv))
        return recs

    out += model(NORMAL, normal, 0.02) + model(CONTROL, control, saturated[0])
    out += model(ADVERSARIAL, adversarial, 0.0)
    if lam > 0:
        out += model(ENTROPIC, entropic, saturated[1], lam=lam)
    if free is not None and free_lam > 0:
        out += model(FREE, free, saturated[0], lam=free_lam, direction="lower")
    if not per_image:
        for r in out:
            r["setting"].pop(kit.PER_IMAGE, None)
            r["setting"].pop(kit.FOOLED_BY, None)
    cost = {D: chapter.training_costs({"plain": 0.1, "entropic": 0.11, "adversarial": 0.4},
                                      {"train": 2000, "fine_tune": 300}, "normal")}
    return {"records": out, "health": list(health), "profile": "laptop", "timings": {"cost": cost}}


def _wilson(share, n):
    from robustness_book.evaluate import wilson_interval

    return wilson_interval(round(share * n), n)


def test_verdict_a_gain_over_the_normal_network_on_the_same_images_holds():
    # worst case 50/200 against the normal network's 20/200 on the same images: 30 images only the entropic
    # network gets right, none the other way; AutoAttack on its 50 survivors leaves them standing
    saved = _saved()
    v = chapter.verdict_summary(saved)[D]
    assert v["outcome"] == "holds" and v["reason"] is None and v["mechanism"] is None and v["category"] == "holds"
    assert "30 right only when defended, 0 only without" in v["detail"]
    assert v["yardstick"]["outcome"] == "holds"
    assert v["vs_control"]["difference"] == 30 / N and v["vs_adversarial"]["difference"] == -50 / N
    text = chapter.verdict(saved)
    assert ("Verdict, reading A (targets from an adversarially trained network), λ = 10: entropic retraining is more "
            "robust than the normal network: **holds**") in text
    assert "Yardstick: adversarial training is more robust than the normal network: **holds**" in text
    # graded: +15 points against adversarial training's +40 on the same images
    assert v["has_yardstick"] and v["grade"]["value"] == pytest.approx(15 / 40)
    lo, hi = v["grade"]["interval"]
    assert 0 < lo < 15 / 40 < hi < 1
    assert f"recovers {100 * v['grade']['value']:.0f}% [{100 * lo:.0f}%, {100 * hi:.0f}%]" in text and "No yardstick" not in text
    # the authors' number is read from the anchors file, beside AutoAttack on both networks on the same images
    anchor = one(anchors("entropic_retraining"), attack="autoattack", threat_model="linf")
    assert f"the authors report {100 * anchor['value']:.2f}% under AutoAttack L∞ at ε = 8/255" in text
    assert "25.0% [19.5%, 31.4%], adversarial training 50.0% [43.1%, 56.9%] on the same images" in text
    assert "No AutoAttack flag fired." in text
    assert "smallest gain that would matter is 5 points" in text and "masked" not in text
    # the cost sentence reads the timings: normal 200 s; entropic + 300 × 0.11 s; adversarial + 300 × 0.4 s
    assert "Cost: reading A 1.17× normal training" in text and "adversarial training 1.60×" in text


def test_verdict_autoattack_on_the_survivors_can_remove_a_positive():
    v = chapter.verdict_summary(_saved(survivors={ENTROPIC: 21}))[D]
    assert v["outcome"] != "holds" and "AutoAttack on the survivors removed the gain" in v["detail"]


def test_verdict_a_gain_the_stronger_members_remove_names_the_mechanism_with_evidence():
    # PGD-CE alone leaves 90 images standing, the worst case 20, as for the normal network: Square removed 50,
    # PGD-margin 15 and transfer 5 on the same images. The gain is excluded (does not hold) and, with evidence,
    # the mechanism is named with the member that removed it
    removed = {ENTROPIC: {"pgd_margin": 15, "square": 50, "transfer_from_normal": 5}}
    saved = _saved(entropic=(154, 90, 20), removed=removed)
    v = chapter.verdict_summary(saved)[D]
    assert v["outcome"] == "does not hold" and v["reason"] is None
    assert v["mechanism"] == "the gain was removed by square (50 images)"
    text = chapter.verdict(saved)
    assert "**does not hold**" in text and "masked gradients" in text and "removed by square (50 images)" in text


def test_verdict_without_a_gain_the_weak_attack_saw_names_no_mechanism():
    # rewritten from "a gain only PGD-CE sees is masking" (absence of evidence): the worst case equals PGD-CE alone,
    # so nothing was removed and no mechanism word is printed, whatever the outcome
    saved = _saved(entropic=(154, 21, 21), normal=(160, 20, 20))
    v = chapter.verdict_summary(saved)[D]
    assert v["outcome"] == "does not hold" and v["mechanism"] is None
    assert "masked" not in chapter.verdict(saved)


def test_verdict_at_the_floor_is_inconclusive_and_says_so():
    # the normal network at 0/200 under the worst case: its interval includes 0%, no gain can show
    saved = _saved(normal=(160, 5, 0), control=(156, 5, 0), entropic=(154, 6, 1), adversarial=(130, 3, 0))
    v = chapter.verdict_summary(saved)[D]
    assert v["outcome"] == "inconclusive" and v["reason"] == "floor" and v["category"] == "inconclusive"
    assert v["yardstick"]["reason"] == "floor" and v["mechanism"] is None
    text = chapter.verdict(saved)
    assert "**inconclusive** (at the floor" in text and "the chapter measures no smaller one" in text


def test_verdict_with_too_few_images_is_inconclusive_and_names_the_smallest_detectable_difference():
    # 20 images: 8 against 5 is 3 discordant images, not significant, and the interval admits 5 points
    saved = _saved(n=20, normal=(16, 6, 5), control=(16, 6, 5), entropic=(16, 8, 8), adversarial=(14, 12, 12))
    v = chapter.verdict_summary(saved)[D]
    assert v["outcome"] == "inconclusive" and v["reason"] == "underpowered"
    assert "20 images cannot show a gain below 30.0 points" in v["detail"]
    assert "too few images for the gain that would matter" in chapter.verdict(saved)


def test_verdict_a_failed_gating_health_row_makes_a_positive_inconclusive():
    row = {"id": "gradient_free", "check": "c", "measured": "m", "expected": "e", "passed": False, "dataset": D,
           "model": MODEL, "defense": ENTROPIC}
    saved = _saved(health=[row])
    v = chapter.verdict_summary(saved)[D]
    assert v["outcome"] == "inconclusive" and v["reason"] == "unhealthy" and "gradient_free" in v["detail"]
    assert v["yardstick"]["outcome"] == "holds"  # the row is the entropic model's, not adversarial training's
    assert "the evaluation is unhealthy" in chapter.verdict(saved)


def test_verdict_reads_old_results_without_per_image_outcomes():
    saved = _saved(per_image=False)
    v = chapter.verdict_summary(saved)[D]
    assert v["outcome"] == "inconclusive" and not v["per_image"] and v["vs_control"] is None
    assert kit.NO_PER_IMAGE_NOTE in chapter.verdict(saved)


def test_verdict_holm_adjusts_across_data_sets():
    one_set = _saved(entropic=(154, 30, 27))  # 7 discordant images: p = 2⁻⁶ ≈ 0.016
    assert chapter.verdict_summary(one_set)[D]["outcome"] == "holds"
    # the same claim tested on two data sets: each p is doubled (0.031), still below 5% here
    other = [{**r, "dataset": "mnist"} for r in one_set["records"]]
    both = {**one_set, "records": one_set["records"] + other}
    v = chapter.verdict_summary(both)
    assert v.keys() == {D, "mnist"} and "p = 0.031" in v[D]["detail"]


def test_verdict_clean_cost_is_a_paired_comparison():
    # 2 points on 200 images, all in one direction: 4 discordant images, not significant
    assert not chapter.verdict_summary(_saved(control=(158, 40, 20), entropic=(154, 60, 50)))[D]["clean_cost"]
    assert chapter.verdict_summary(_saved(control=(170, 40, 20), entropic=(154, 60, 50)))[D]["clean_cost"]


def test_verdict_a_broken_model_is_not_interpreted_by_the_interval_rule():
    # 12.5% clean on 200 CIFAR-10 images: the interval's upper end (17.9%) is within chance + 10 points
    saved = _saved(entropic=(25, 22, 20))
    v = chapter.verdict_summary(saved)[D]
    assert v["broken"] and v["category"] == "broken" and v["reason"] == "broken"
    text = chapter.verdict(saved)
    assert "robustness numbers are not interpreted" in text and kit.BROKEN_RULE in text
    # 25%: the point is within the margin, the interval [19.5%, 31.4%] is not, so the model is judged as usual
    v = chapter.verdict_summary(_saved(entropic=(50, 45, 40)))[D]
    assert not v["broken"] and v["outcome"] == "holds"


def test_health_tables_name_the_data_set_and_network():
    row = {"check": "eps = 0 gives clean accuracy", "measured": "m", "expected": "e", "passed": True}
    rows = [{**row, "id": "eps_zero", "dataset": d, "model": MODEL, "defense": ENTROPIC} for d in ("mnist", D)]
    text = chapter.health_tables({"health": rows})
    assert text.count("All checks passed") == 2
    assert "dataset `mnist` · model `entropic_cnn` · defense `entropic`" in text and "dataset `cifar10`" in text


def test_verdict_when_validation_kept_lambda_zero():
    # the test images still measure the largest λ within the clean budget, and the verdict reads them
    saved = _saved(lam=10.0, chosen=0.0)
    v = chapter.verdict_summary(saved)[D]
    assert v["chosen"] == 0 and v["lam"] == 10 and v["model"] == ENTROPIC and v["outcome"] == "holds"
    text = chapter.verdict(saved)
    assert "validation kept λ = 0" in text and "at the largest λ the clean budget allows, λ = 10" in text
    # no λ > 0 within the budget: plain fine-tuning is all there is, and no gain is claimed
    saved = _saved(lam=0.0)
    v = chapter.verdict_summary(saved)[D]
    assert v["model"] == CONTROL and v["outcome"] == "does not hold" and v["mechanism"] is None
    assert "no model of this reading is tested" in chapter.verdict(saved)


# --------------------------------------------------------------------------- reading B, the yardstick, the grade


@pytest.mark.parametrize("role", [ENTROPIC, FREE])
@pytest.mark.parametrize("n, counts, normal, adversarial, outcome, reason", [
    # 30 images only the entropic network gets right, none the other way
    (N, (154, 60, 50), (160, 40, 20), (130, 110, 100), "holds", None),
    # one image more than the normal network: the interval excludes a 5-point gain
    (N, (154, 21, 21), (160, 20, 20), (130, 110, 100), "does not hold", None),
    # the normal network at 0/200: no gain can show
    (N, (154, 6, 1), (160, 5, 0), (130, 3, 0), "inconclusive", "floor"),
    # 20 images: 3 discordant images, not significant, and the interval still admits 5 points
    (20, (16, 8, 8), (16, 6, 5), (14, 12, 12), "inconclusive", "underpowered"),
])
def test_each_reading_holds_does_not_hold_or_is_inconclusive_and_names_itself(role, n, counts, normal, adversarial,
                                                                              outcome, reason):
    # the reading under test gets ``counts``; the other one no gain over the normal network
    flat = (counts[0], normal[1], normal[2])
    saved = _saved(n=n, normal=normal, control=normal, adversarial=adversarial,
                   entropic=counts if role == ENTROPIC else flat, free=counts if role == FREE else flat)
    v = chapter.verdict_summary(saved)[D]
    mine = v["readings"][role]
    assert (mine["outcome"], mine["reason"]) == (outcome, reason)
    text = chapter.verdict(saved)
    name = "reading A (targets from an adversarially trained network), λ = 10" if role == ENTROPIC else \
        "reading B (AT-free: a fixed direction, no adversarial example), λ = 1, lowering the entropy"
    assert f"Verdict, {name}: entropic retraining is more robust than the normal network: **{outcome}**" in text
    # every sentence on a reading's model names the reading
    for line in text.split("\n\n")[0].splitlines():  # the data set's sentences, before the method's
        if any(k in line for k in ("entropic retraining is more robust", "recovers", "reported beside it",
                                   "AutoAttack on the worst case's survivors")):
            assert "eading A (" in line or "eading B (" in line, line


def test_both_readings_share_one_holm_family():
    # 7 discordant images each (p = 2⁻⁶ ≈ 0.016): two claims on one data set, so the smaller p is doubled
    saved = _saved(entropic=(154, 30, 27), free=(154, 30, 27))
    v = chapter.verdict_summary(saved)[D]
    assert {r["outcome"] for r in v["readings"].values()} == {"holds"}
    assert all("p = 0.031" in r["detail"] for r in v["readings"].values())
    assert "Holm-adjusted across the 2 claims of the readings and data sets" in chapter.verdict(saved)


def test_a_reading_b_result_file_without_a_tested_model_says_so():
    saved = _saved(free=(154, 60, 50), free_lam=0.0)
    b = chapter.verdict_summary(saved)[D]["readings"][FREE]
    assert b["outcome"] == "does not hold" and b["model"] == CONTROL and b["grade"] is None
    assert "Reading B (AT-free: a fixed direction, no adversarial example): on held-out images no λ > 0" in \
        chapter.verdict(saved)


@pytest.mark.parametrize("n, normal, adversarial, outcome, reason", [
    (N, (160, 40, 20), (130, 22, 21), "does not hold", None),  # one image more: no yardstick
    (20, (16, 6, 5), (14, 8, 8), "inconclusive", "underpowered"),  # 3 discordant images of 20
    (N, (160, 5, 0), (130, 3, 1), "inconclusive", "floor"),  # the normal network at 0%, no gain showed
])
def test_without_a_robust_yardstick_no_reading_is_graded(n, normal, adversarial, outcome, reason):
    entropic = (min(154, n), min(60, n - 4), min(50, n - 8))
    saved = _saved(n=n, normal=normal, control=normal, adversarial=adversarial, entropic=entropic, free=entropic)
    v = chapter.verdict_summary(saved)[D]
    assert (v["yardstick"]["outcome"], v["yardstick"]["reason"]) == (outcome, reason)
    assert not v["has_yardstick"] and all(r["grade"] is None for r in v["readings"].values())
    text = chapter.verdict(saved)
    assert "**No yardstick**" in text and "of adversarial training's gain over the normal network" not in text


def test_the_grade_is_the_fraction_of_the_yardsticks_gain_with_fiellers_interval():
    normal, yardstick, defended = _mask(20), _mask(100), _mask(60)
    g = chapter.gain_recovered(defended, normal, yardstick)
    assert g["value"] == pytest.approx(0.5) and g["n"] == N
    assert g["gain"] == pytest.approx(0.2) and g["yardstick_gain"] == pytest.approx(0.4)
    lo, hi = g["interval"]
    assert lo < 0.5 < hi
    # the bounds are where the ratio's test statistic equals z: (mean(a − θ·b))² = z²·Var(a − θ·b)/n
    a, b = defended.double() - normal.double(), yardstick.double() - normal.double()
    for theta in (lo, hi):
        diff = a - theta * b
        assert float(diff.mean()) ** 2 == pytest.approx(chapter.Z95 ** 2 * float(diff.var()) / N, rel=1e-9)
    # right on exactly the yardstick's images: 1, and no image-to-image spread around it (a point interval)
    full = chapter.gain_recovered(yardstick, normal, yardstick)
    assert full["value"] == pytest.approx(1.0) and full["interval"] == pytest.approx((1.0, 1.0))
    # a yardstick that gains two images: its gain is not clearly away from 0, so the interval is unbounded
    weak = chapter.gain_recovered(_mask(21), normal, _mask(22))
    assert weak["value"] == pytest.approx(0.5) and weak["interval"] is None
    # a yardstick that gains nothing: no ratio
    assert math.isnan(chapter.gain_recovered(defended, normal, normal)["value"])


def _free_sweep(direction, lam, clean, pgd):
    return [{**r, "defense": FREE, "setting": {**r["setting"], "direction": direction}}
            for r in _sweep(lam, clean, pgd)]


def test_reading_b_chooses_its_direction_and_lambda_on_held_out_images_alone():
    recs = (_sweep(0.0, 0.80, 0.02) + _free_sweep("lower", 1.0, 0.79, 0.05) + _free_sweep("lower", 10.0, 0.60, 0.30)
            + _free_sweep("raise", 1.0, 0.80, 0.03))
    # λ = 10 lowering is best under PGD but costs 20 points; lowering at λ = 1 beats raising at λ = 1
    assert chapter.free_to_test(recs, D, 0.03) == ("lower", 1.0, "chosen")
    assert chapter.free_to_test(recs, D, 0.25) == ("lower", 10.0, "chosen")
    # reading A's rule sees only its own sweep (here: λ = 0 alone)
    assert chapter.choose_lambda(recs, D, 0.03) == 0.0
    # no direction helps: the largest λ within the budget of the best direction under PGD is still tested
    flat = _sweep(0.0, 0.8, 0.05) + _free_sweep("lower", 1.0, 0.8, 0.02) + _free_sweep("raise", 1.0, 0.8, 0.04)
    assert chapter.free_to_test(flat, D, 0.03) == ("raise", 1.0, "largest_within_budget")
    assert chapter.free_to_test(flat, D, 0.03, chosen_only=True) == (None, 0.0, "none")
    # none within the budget
    assert chapter.free_to_test(_sweep(0.0, 0.8, 0.05) + _free_sweep("lower", 1.0, 0.5, 0.4), D, 0.03) == \
        (None, 0.0, "none")


def test_reading_b_loss_moves_every_layer_in_one_direction_without_targets():
    cfg = resolve(chapter.SPEC, "laptop")
    loss = chapter.free_loss(cfg, ["13", "15", "17"], "lower", 1.0)
    assert loss.spec["direction"] == {"13": -1, "15": -1, "17": -1} and "targets" not in loss.spec
    assert chapter.free_loss(cfg, ["13"], "raise", 1.0).spec["direction"] == {"13": 1}
    with pytest.raises(ValueError, match="direction='up' is invalid: expected one of lower, raise"):
        chapter.free_loss(cfg, ["13"], "up", 1.0)


def test_the_weak_attack_is_the_papers_pgd_ce_first_then_the_books_ensemble():
    from robustness_book.evaluate import members as M

    cfg = resolve(chapter.SPEC, "smoke")
    names = [m.name for m in chapter._members(cfg, None)]
    default = [m.name for m in M.default_members(cfg.pgd_steps, cfg.restarts, cfg.square_queries)]
    assert names == ["pgd_ce"] + default
    assert [m.name for m in chapter._members(cfg, nn.Linear(1, 1))][-1] == "transfer_from_normal"


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("given, match", [
    ({"lams": [1.0, 10.0]}, "lams=.*must contain 0"),
    ({"lams": [0.0, 1.0, 1.0]}, "must not repeat"),
    ({"n_layers": 6}, "n_layers=6 exceeds the 5 dense activation layers of entropic_cnn"),
    ({"layer_candidates": "conv", "n_layers": 5}, "n_layers=5 exceeds the 4 conv"),
    ({"layer_candidates": "relu"}, "layer_candidates='relu' is invalid"),
    ({"n_autoattack": 30}, "n_autoattack\\['mnist'\\]=30 must not exceed n_adaptive"),
    ({"entropy_batches": 5}, "entropy_batches × batch_size = 640 exceed n_val\\['mnist'\\]=500"),
    ({"train_size": 59_800}, "train_size\\['mnist'\\] \\+ n_val\\['mnist'\\] = 60,300 exceed"),
    ({"ft_size": 5000}, "ft_size\\['mnist'\\]=5,000 must not exceed train_size"),
    ({"bins": 1}, "bins=1 must be at least 2"),
    ({"model": {"mnist": "alex_like"}}, "model\\['mnist'\\]='alex_like'"),
    ({"at_from": "later"}, "at_from='later' is invalid"),
    ({"at_mix": 1.5}, "at_mix=1.5 is invalid: expected a number in \\[0, 1\\]"),
    ({"estimator": "knn"}, "estimator='knn' is invalid"),
    ({"free_directions": ["sideways"]}, "free_directions=\\['sideways'\\] is invalid: expected .*'lower', 'raise'"),
    ({"eps": 0.0}, "eps\\['mnist'\\]=0.0 must be positive"),
    ({"eps": {"cifar10": 2}}, "eps.*is invalid: expected an L∞ radius in \\[0, 1\\]"),
])
def test_bad_parameters_fail_before_any_work(given, match):
    with pytest.raises(ValueError, match=match):
        resolve(chapter.SPEC, "smoke", **given)


def test_the_profiles_train_as_described():
    laptop, paper = resolve(chapter.SPEC, "laptop"), resolve(chapter.SPEC, "paper")
    assert laptop.at_from == "normal" and paper.at_from == "scratch"
    ft = chapter.finetune_config(laptop, "cifar10")
    assert ft.epochs == 2 and ft.lr == 0.02 and not ft.augment and chapter.train_config(laptop, "cifar10").augment
    assert chapter.adversarial_loss(laptop, "mnist").spec["mix"] == 0.5
    loss = chapter.adversarial_loss(paper, "cifar10")
    assert loss.spec == {"name": "adversarial", "attack": "pgd_linf", "mix": 1.0, "eps": 8 / 255, "steps": 7,
                         "seed": 0}
    targets = {"15": 1.2, "17": 0.8}
    assert chapter.entropic_loss(laptop, targets, 10.0).spec["targets"] == targets


def test_the_threat_radius_is_a_parameter_per_data_set():
    # the profiles take the data sets' standard radii; a reader may set another one for one data set
    assert resolve(chapter.SPEC, "laptop").eps == {"mnist": 0.3, "cifar10": 8 / 255}
    cfg = resolve(chapter.SPEC, "smoke", eps={"cifar10": 4 / 255})
    assert cfg.eps == {"mnist": 0.3, "cifar10": 4 / 255}
    assert chapter.adversarial_loss(cfg, "cifar10").spec["eps"] == 4 / 255


@pytest.mark.notebook
def test_entropic_retraining_smoke_run_writes_its_results(isolated_outputs):
    from robustness_book.results import FIELDS, load_results
    from robustness_book.runner import run_chapter

    notebook = run_chapter("entropic_retraining", "smoke", output_dir=isolated_outputs / "executed")
    assert notebook.exists()
    saved = load_results("entropic_retraining", "smoke")
    recs, p = saved["records"], saved["parameters"]
    assert all(tuple(r) == FIELDS for r in recs)
    for d in p["datasets"]:
        mine = [r for r in recs if r["dataset"] == d]
        # every activation layer profiled for the two references and every model of both readings' sweeps
        models = 2 + len(p["lams"]) + len(p["free_directions"]) * len([lam for lam in p["lams"] if lam > 0])
        assert len([r for r in mine if r["metric"] == "entropy"]) == 9 * models
        assert len([r for r in mine if r["metric"] == "loss_layer"]) == p["n_layers"]
        assert {r["defense"] for r in mine if r["attack"] == "worst_case"} >= {NORMAL, CONTROL, ADVERSARIAL}
        # per model: PGD-CE alone (the paper's attack, the worst case's first member) and each member's
        # images_fooled, in order; transfer from the normal model on every model but itself
        for role in {r["defense"] for r in mine if r["attack"] == "worst_case"}:
            alone = [r for r in mine if r["defense"] == role and r["setting"].get("alone")]
            assert [r["attack"] for r in alone] == ["pgd_ce"] and alone[0]["eps"] == p["eps"][d]
            members = one(mine, defense=role, attack="worst_case")["setting"]["members"].split("+")
            assert members[0] == "pgd_ce" and ("transfer_from_normal" in members) == (role != NORMAL)
            orders = [r["setting"]["order"] for r in mine if r["defense"] == role and r["metric"] == "images_fooled"]
            assert orders == list(range(len(members)))
        # AutoAttack on the same first images for every entropic model and the yardstick
        autoattack = [r for r in mine if r["attack"] == "autoattack"]
        assert ADVERSARIAL in {r["defense"] for r in autoattack} and len({r["n"] for r in autoattack}) == 1
        assert saved["timings"]["cost"][d]["recipe"][NORMAL] == 1.0
    assert {h["dataset"] for h in saved["health"]} == set(p["datasets"])
    assert chapter.verdict_summary(saved).keys() == set(p["datasets"])
