"""The chapter kit (robustness_book/chapters/kit.py): one vocabulary, one rule each, checked on hand-made cases."""
from __future__ import annotations

import pytest
import torch

from conftest import TinyNet, make_blobs, train_tiny
from robustness_book import evaluate
from robustness_book.chapters import kit
from robustness_book.evaluate.worst_case import CLEAN_WRONG, STANDING
from robustness_book.results import check_records, select

CFG = {"chapter": "test", "profile": "smoke", "seed": 0}


def _rec(value, interval=None):
    return {"value": value, "interval": interval}


def test_is_broken_uses_the_upper_end_of_the_interval():
    # 10 classes: chance 0.1, margin 0.1 → broken when the upper end ≤ 0.2
    assert kit.is_broken(_rec(0.15, [0.10, 0.20]), 10)
    assert not kit.is_broken(_rec(0.15, [0.10, 0.21]), 10)  # the point is near chance, the interval is not
    assert not kit.is_broken(_rec(0.95, [0.9, 0.98]), 10)
    assert kit.is_broken(None, 10)
    assert f"{kit.BROKEN_MARGIN * 100:.0f} points" in kit.BROKEN_RULE


def test_failed_checks_and_smoke_note():
    rows = [{"id": "a", "passed": False, "dataset": "mnist"}, {"id": "b", "passed": True, "dataset": "mnist"},
            {"id": "c", "passed": False, "dataset": "cifar10"}]
    assert kit.failed_checks(rows) == ["a", "c"]
    assert kit.failed_checks(rows, dataset="mnist") == ["a"]
    assert kit.smoke_note("laptop") == "" and "smoke" in kit.smoke_note("smoke")


def _fake_result(clean_k=8, n=10):
    return {"eps": 0.1, "norm": "linf", "n": n, "clean": clean_k / n, "robust": 0.3, "k": 3,
            "interval": [0.1, 0.6], "members": ["pgd_ce", "pgd_margin", "square"],
            "added": {"pgd_ce": 3, "pgd_margin": 2, "square": 0}}


def test_worst_case_records_one_vocabulary():
    recs = kit.worst_case_records(CFG, _fake_result(), dataset="mnist", model="m", first_alone=True,
                                  defense="none", role="threat")
    check_records(recs)
    (worst,) = select(recs, attack="worst_case")
    assert worst["value"] == 0.3 and worst["interval"] == [0.1, 0.6] and worst["setting"]["members"] == \
        "pgd_ce+pgd_margin+square"
    fooled = select(recs, metric="images_fooled")
    assert [(r["attack"], r["value"], r["setting"]["order"]) for r in fooled] == \
        [("pgd_ce", 3, 0), ("pgd_margin", 2, 1), ("square", 0, 2)]
    assert all(r["setting"]["within"] == "worst_case" and r["setting"]["role"] == "threat" for r in recs
               if r["metric"] == "images_fooled")
    (alone,) = select(recs, attack="pgd_ce", alone=True)
    assert alone["value"] == pytest.approx((8 - 3) / 10)  # the clean images minus what the first member fooled


def test_worst_case_records_of_a_curve_count_what_smaller_radii_fooled():
    curve = [dict(_fake_result(), eps=0.05, carried=0), dict(_fake_result(), eps=0.1, carried=4)]
    recs = kit.worst_case_records(CFG, curve, dataset="mnist", model="m")
    assert [r["value"] for r in select(recs, attack="smaller_eps")] == [0, 4]
    assert len(select(recs, attack="worst_case")) == 2


def test_worst_case_keeps_per_image_outcomes_in_the_run(tiny_data):
    x, y = tiny_data
    model = train_tiny(x, y)
    run = kit.Run(cfg=dict(CFG))
    res = evaluate.worst_case(model, x[:64], y[:64], 0.3, evaluate.default_members(steps=5, queries=20))
    kit.worst_case_records(CFG, res, dataset="synth", model="tiny", run=run, key="w")
    fooled_by = run.raw["w"]["fooled_by"]
    masks = evaluate.member_robust_masks(run.raw["w"])
    # each member's count of fooled images is read back from the per-image outcome
    for i, name in enumerate(res["members"]):
        assert int((fooled_by == i).sum()) == res["added"][name]
    assert torch.equal(list(masks.values())[-1], res["robust_mask"])
    assert int((fooled_by == STANDING).sum()) == res["k"]
    clean_wrong = evaluate.predict(model, x[:64]) != y[:64]
    assert torch.equal(fooled_by == CLEAN_WRONG, clean_wrong)


def test_min_norm_records_report_convergence_as_min_norm_decides_it(tiny_data):
    x, y = tiny_data
    model = train_tiny(x, y)
    summary = evaluate.min_norm(model, x[:32], y[:32], steps=5)
    recs = kit.min_norm_records(CFG, summary, dataset="synth", model="tiny", attack="ddn", threat_model="l2",
                                steps=summary["steps"])
    check_records(recs)
    (conv,) = select(recs, metric="converged")
    assert conv["value"] == float(summary["converged"])
    assert {r["metric"] for r in recs} == {"success_rate", "rho", "norm", "converged"}


def test_health_rows_are_tagged_and_transfer_from_equals_the_hand_crafted_examples(tiny_data):
    x, y = tiny_data
    x, y = x[:48], y[:48]
    model, source = train_tiny(x, y, seed=0), train_tiny(x, y, seed=1)
    rows = kit.health_rows(model, x, y, dataset="synth", model="tiny", eps=0.1, steps=5, num_classes=4, seed=3,
                           transfer_from=source, defense="none")
    assert all(r["dataset"] == "synth" and r["model"] == "tiny" and r["defense"] == "none" for r in rows)
    gen = torch.Generator().manual_seed(3)
    by_hand = evaluate.run_attack(__import__("robustness_book").attacks.pgd_linf, source, x, y, 256, eps=0.1, steps=5,
                                  early_stop=False, generator=gen)
    expected = evaluate.health_checks(model, x, y, eps=0.1, steps=5, num_classes=4, seed=3, transfer_x_adv=by_hand)
    assert [r["measured"] for r in rows] == [r["measured"] for r in expected]


def test_run_results_have_the_shape_of_a_results_file(tmp_path, monkeypatch):
    from robustness_book.chapters import baselines
    from robustness_book.config import resolve
    from robustness_book.results import load_results

    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    cfg = resolve(baselines.SPEC, "smoke")
    run = kit.Run(cfg)
    run.records.append(kit.accuracy_record(cfg, TinyNet(side=28, classes=10), _tiny_mnist_like(), dataset="mnist",
                                           model="tiny", batch_size=64, split="test"))
    run.exports.append({"label": "x"})
    live = run.results()
    saved = run.saved()
    assert set(live) == set(load_results(cfg.chapter, cfg.profile))
    assert live["records"] == saved["records"] and saved["extra"]["models"] == [{"label": "x"}]


def _tiny_mnist_like():
    from robustness_book.data import ArrayDataset

    x, y = make_blobs(n=20, classes=10, side=28)
    return ArrayDataset("mnist", "test", x, y, "synthetic")


def test_holdout_split_takes_the_images_after_the_training_ones(monkeypatch):
    from robustness_book.data import ArrayDataset

    x, y = make_blobs(n=50)
    monkeypatch.setattr(kit, "load_dataset", lambda d, split: ArrayDataset(d, split, x, y, "synthetic"))
    val = kit.holdout_split("synth", 30, 45)
    assert val.split == "val" and len(val) == 15 and torch.equal(val.x, x[30:45])
    assert "images 31–45, held out" in val.source


# --------------------------------------------------------------------------- per-image outcomes and paired verdicts

def _acc(mask, attack="worst_case", **setting):
    from robustness_book.evaluate import pack_mask

    r = __import__("robustness_book").evaluate.accuracy_record(mask)
    return {"chapter": "t", "dataset": "mnist", "model": "m", "defense": "none", "attack": attack,
            "threat_model": "linf", "eps": 0.1, "metric": "accuracy", "value": r["value"], "n": r["n"],
            "interval": r["interval"], "profile": "smoke", "seed": 0,
            "setting": {kit.PER_IMAGE: pack_mask(mask), **setting}}


def _pair(n=200, ref_right=60, gain=30):
    ref = torch.zeros(n, dtype=torch.bool)
    ref[:ref_right] = True
    dfd = ref.clone()
    dfd[ref_right:ref_right + gain] = True
    return dfd, ref


def test_paired_outcome_holds_and_is_gated_by_health_and_autoattack():
    dfd, ref = _pair()
    outcome, test = kit.paired_outcome(_acc(dfd), _acc(ref), min_effect=0.05)
    assert outcome.outcome == "holds" and test["a_only"] == 30
    gated, _ = kit.paired_outcome(_acc(dfd), _acc(ref), min_effect=0.05,
                                  health=[{"id": "gradient_free", "passed": False}])
    assert (gated.outcome, gated.reason) == ("inconclusive", "unhealthy")
    # AutoAttack on the survivors fools every image the defense gained: the positive does not stand
    aa = dfd.clone()
    aa[60:90] = False
    confirmed, _ = kit.paired_outcome(_acc(dfd), _acc(ref), min_effect=0.05, confirm=_acc(aa, "autoattack"))
    assert confirmed.outcome != "holds" and "AutoAttack" in confirmed.detail


def test_paired_outcome_of_an_old_results_file_is_a_note_not_a_crash():
    dfd, ref = _pair()
    old = _acc(dfd)
    del old["setting"][kit.PER_IMAGE]
    outcome, test = kit.paired_outcome(old, _acc(ref), min_effect=0.05)
    assert test is None and outcome.outcome == "inconclusive" and "rerun" in outcome.detail
    assert kit.per_image(None) is None


def test_a_broken_defended_network_is_not_judged():
    dfd, ref = _pair()
    clean = {"value": 0.12, "interval": [0.08, 0.18]}
    outcome, _ = kit.paired_outcome(_acc(dfd), _acc(ref), min_effect=0.05, clean=clean, num_classes=10)
    assert (outcome.outcome, outcome.reason) == ("inconclusive", "broken")


def test_accuracy_and_worst_case_records_carry_per_image_outcomes(tiny_data):
    x, y = tiny_data
    model = train_tiny(x, y)
    res = evaluate.worst_case(model, x[:40], y[:40], 0.3, evaluate.default_members(steps=3, queries=10))
    recs = kit.worst_case_records(CFG, res, dataset="synth", model="tiny", first_alone=True)
    (worst,) = select(recs, attack="worst_case")
    assert torch.equal(kit.per_image(worst), res["robust_mask"])
    (alone,) = select(recs, alone=True)
    assert int(kit.per_image(alone).sum()) == round(alone["value"] * alone["n"])


def test_autoattack_on_survivors_only_attacks_what_the_worst_case_left(tiny_data):
    x, y = tiny_data
    model = train_tiny(x, y)
    x, y = x[:30], y[:30]
    res = evaluate.worst_case(model, x, y, 0.05, evaluate.default_members(steps=3, queries=10))
    rec, _ = kit.autoattack_on_survivors(CFG, model, x, y, res, dataset="synth", model="tiny", batch_size=30)
    mask = kit.per_image(rec)
    assert not (mask & ~res["robust_mask"]).any()  # never robust where the worst case already fooled
    assert rec["setting"]["on"] == "worst_case_survivors" and isinstance(rec["setting"]["flags"], str)
    assert kit.autoattack_flags([dict(rec, setting={**rec["setting"], "flags": "zero_gradients"})])


def test_autoattack_confirmation_gets_its_own_p_value_under_holm():
    # the claim's gain is large; AutoAttack leaves one image more than the reference: the positive must not stand
    dfd, ref = _pair(n=200, ref_right=60, gain=30)
    aa = ref.clone()
    aa[60] = True
    outcome, _ = kit.paired_outcome(_acc(dfd), _acc(ref), min_effect=0.05, confirm=_acc(aa, "autoattack"),
                                    p_adjusted=1e-6)
    assert outcome.outcome != "holds"


def test_worst_case_record_keeps_which_member_fooled_each_image(tiny_data):
    from robustness_book.evaluate.outcome import removed_by

    x, y = tiny_data
    model = train_tiny(x, y)
    res = evaluate.worst_case(model, x[:40], y[:40], 0.3, evaluate.default_members(steps=3, queries=10))
    (rec,) = select(kit.worst_case_records(CFG, res, dataset="synth", model="tiny"), attack="worst_case")
    back = kit.worst_from_record(rec)
    assert torch.equal(back["fooled_by"], res["fooled_by"]) and back["members"] == res["members"]
    weak = evaluate.predict(model, x[:40]) == y[:40]
    none = torch.zeros_like(weak)
    assert removed_by(weak, back, weak_reference=none) == removed_by(weak, res, weak_reference=none)
    assert kit.unpack_fooled_by(kit.pack_fooled_by(torch.tensor([-2, -1, 0, 11]))).tolist() == [-2, -1, 0, 11]
    assert kit.worst_from_record({"setting": {}}) is None


def test_holm_by_leaves_unjudged_claims_out():
    tests = {"a": {"p": 0.01}, "b": None, "c": {"p": 0.04}}
    assert kit.holm_by(tests) == pytest.approx({"a": 0.02, "c": 0.04})


def test_an_older_fooled_by_encoding_reads_as_no_attribution():
    assert kit.worst_from_record({"setting": {kit.FOOLED_BY: "..0.1"}}) is None


def test_combine_radii_a_significant_reversal_refutes_more_robust_over_the_curve():
    def at(eps, outcome, reason=None, difference=0.0, p=1.0, p_adjusted=None):
        return {"eps": eps, "outcome": outcome, "reason": reason, "detail": "d",
                "test": {"difference": difference, "p": p}, "p_adjusted": p_adjusted}

    gain, loss = at(0.1, "holds", difference=0.2, p=1e-6), at(0.3, "does not hold", difference=-0.1, p=1e-4)
    assert kit.combine_radii([gain]).outcome == "holds"
    mixed = kit.combine_radii([gain, loss], reference="normal training")
    assert mixed.outcome == "does not hold"
    assert mixed.detail.startswith("significantly below normal training at ε = 0.3 although above it at ε = 0.1")
    # the reversal counts at the Holm-adjusted p: adjusted above alpha, it is not evidence of a loss
    assert kit.combine_radii([gain, {**loss, "p_adjusted": 0.2}]).outcome == "holds"
    # the rest of the rule: all at the floor, inconclusive (floor); the first inconclusive judged radius decides
    floor = at(0.3, "inconclusive", "floor")
    assert (kit.combine_radii([floor]).outcome, kit.combine_radii([floor]).reason) == ("inconclusive", "floor")
    weak = at(0.1, "inconclusive", "underpowered", difference=0.02, p=0.3)
    assert kit.combine_radii([weak, floor]).reason == "underpowered"
    none = at(0.1, "does not hold", difference=0.0, p=1.0)
    assert kit.combine_radii([none, floor]).outcome == "does not hold"
