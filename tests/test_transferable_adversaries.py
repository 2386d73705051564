"""The transferable-adversaries chapter: fooling rates, the transfer matrix, defensive distillation, pass counts,
parameter checks and the verdict (tiny models and hand-made records, seconds), and its smoke run."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import train_tiny
from robustness_book.chapters import kit, transferable_adversaries as chapter
from robustness_book.config import resolve
from robustness_book.data import DATASETS, ArrayDataset, threat_eps
from robustness_book import zoo
from robustness_book.defenses import AdversarialLoss, SuperimpositionLoss
from robustness_book.evaluate import pack_mask, wilson_interval
from robustness_book.models import build_model
from robustness_book.results import record
from robustness_book.train import TrainConfig, cross_entropy


# --------------------------------------------------------------------------- fooling rate and transfer matrix


def brightness_classifier() -> nn.Module:
    """Class 1 exactly when the mean of a 1×2×2 image exceeds 0.5."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[-0.25] * 4, [0.25] * 4]))
        net[1].bias.copy_(torch.tensor([0.25, -0.25]))
    return net.eval()


def test_fooling_rate_counts_only_the_images_the_target_gets_right():
    def images(levels):
        return torch.tensor(levels).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()

    y = torch.tensor([1, 1, 0, 0, 0])
    x = images([0.9, 0.8, 0.2, 0.1, 0.7])  # predicted 1, 1, 0, 0, 1: the last image is wrong already
    x_adv = images([0.1, 0.9, 0.9, 0.2, 0.2])  # predicted 0, 1, 1, 0, 0
    # images 0 and 2 are fooled; image 4 flips to its true class, and being wrong clean it does not count
    assert chapter.fooling_counts(brightness_classifier(), x, x_adv, y) == (2, 4)


@pytest.fixture(scope="module")
def pool(tiny_data):
    return {f"tiny-seed{s}": train_tiny(*tiny_data, seed=s) for s in range(3)}


def test_transfer_matrix_leaves_out_white_box_cells_and_judges_each_cell_on_its_target(pool, tiny_data):
    x, y = tiny_data[0][:120], tiny_data[1][:120]
    kw = dict(eps=0.3, steps=5, seed=0)
    rows = chapter.transfer_matrix(pool, x, y, ["fgsm", "ensemble_pgd"], **kw)
    fgsm = [r for r in rows if r["generator"] == "fgsm"]
    ens = [r for r in rows if r["generator"] == "ensemble_pgd"]
    assert len(fgsm) == 6 and all(r["source"] != r["target"] for r in fgsm)  # 3 sources × 2 other targets
    assert len(ens) == 3 and all(r["source"] == "others" and r["target"] not in r["sources"]
                                 and len(r["sources"]) == 2 for r in ens)
    # every cell is the source's examples judged on the target, over the images the target gets right
    for r in rows:
        adv = chapter.craft(r["generator"], [pool[s] for s in r["sources"]], x, y, **kw)
        assert (r["k"], r["n"]) == chapter.fooling_counts(pool[r["target"]], x, adv, y)
    assert all(r["n"] > 100 for r in rows) and any(r["k"] > 0 for r in rows)


@pytest.mark.parametrize("generator", list(chapter.GENERATORS))
def test_every_generator_stays_in_the_eps_ball_and_the_box(pool, tiny_data, generator):
    x, y = tiny_data[0][:40], tiny_data[1][:40]
    models = list(pool.values()) if chapter.GENERATORS[generator].ensemble else [pool["tiny-seed0"]]
    adv = chapter.craft(generator, models, x, y, eps=0.1, steps=3, seed=1)
    assert adv.shape == x.shape and (adv - x).abs().max() <= 0.1 + 1e-6 and 0 <= adv.min() and adv.max() <= 1
    if not chapter.GENERATORS[generator].ensemble:
        with pytest.raises(ValueError, match="one source"):
            chapter.craft(generator, list(pool.values()), x, y, eps=0.1, steps=3)


# --------------------------------------------------------------------------- distillation and the cost counts


def test_distillation_loss_is_tempered_cross_entropy_and_a_copy_of_the_teacher_is_stationary(tiny_model, tiny_data):
    x, y = tiny_data[0][:64], tiny_data[1][:64]
    with torch.no_grad():
        z = tiny_model(x)
    assert torch.allclose(chapter.DistillationLoss(1.0)(tiny_model, x, y), F.cross_entropy(z, y))
    assert torch.allclose(chapter.DistillationLoss(100.0)(tiny_model, x, y), F.cross_entropy(z / 100, y))
    # the student's loss is smallest where its tempered softmax equals the teacher's: zero gradient there
    student = copy.deepcopy(tiny_model)
    chapter.DistillationLoss(100.0, teacher=tiny_model)(student, x, y).backward()
    assert max(p.grad.abs().max() for p in student.parameters()) < 1e-6
    with torch.no_grad():
        student.net[1].bias[0] += 1.0  # another teacher: another cache key
    specs = [chapter.DistillationLoss(100.0, teacher=t).spec for t in (tiny_model, student)]
    assert specs[0]["teacher"] != specs[1]["teacher"] and chapter.DistillationLoss(100.0).spec["teacher"] is None
    with pytest.raises(ValueError, match="temperature"):
        chapter.DistillationLoss(0.0)


def test_pass_counts_of_each_objective():
    g = torch.Generator().manual_seed(0)
    data = ArrayDataset("mnist", "train", torch.rand(32, 1, 28, 28, generator=g),
                        torch.randint(0, 10, (32,), generator=g), "random images")
    torch.manual_seed(0)
    teacher = build_model("lenet_like", "mnist").eval()
    config = TrainConfig(epochs=1, batch_size=8)
    expected = {"normal": (cross_entropy, 1, 1), "superimposition": (SuperimpositionLoss(), 2, 2),
                "distillation": (chapter.DistillationLoss(100.0, teacher), 2, 1),  # the teacher: forward only
                "fgsm_at": (AdversarialLoss("fgsm", eps=0.3, mix=0.5), 3, 3),  # attack, then clean + adversarial
                "pgd_at": (AdversarialLoss("pgd_linf", eps=0.3, steps=3, mix=1.0), 5, 4)}  # 3 steps, judge, train
    for name, (loss, forward, backward) in expected.items():
        cost = chapter.training_cost(loss, "lenet_like", "mnist", data, config, batches=2)
        assert (cost["forward"], cost["backward"]) == (forward, backward), name
        assert cost["seconds_per_step"] > 0


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("given, message", [
    ({"second_arch": {"mnist": "lenet_like"}}, "zoo architecture"),
    ({"second_arch": {"mnist": "convnet"}}, "built for"),
    ({"seeds": {"mnist": [0, 0]}}, "repeats a seed"),
    ({"seeds": {"mnist": [0]}, "second_seeds": {"mnist": [0]}}, "at least 3"),
    ({"generators": ["pgd", "mi_fgsm"]}, "must contain 'fgsm'"),
    ({"generators": ["fgsm", "pgd"], "set_generator": "mi_fgsm"}, "set_generator"),
    ({"generators": ["fgsm", "pgd", "fancy"]}, "generators"),
    ({"defenses": ["normal", "fgsm_at"]}, "must contain 'superimposition'"),
    ({"diversity": 1.5}, "diversity"),
    ({"fixed_a": 2.0}, "fixed_a"),
    ({"n_adaptive": {"mnist": 10_000}}, "n_adaptive"),
    ({"n_transfer": {"mnist": 100_000}}, "n_transfer"),
    ({"n_set": {"cifar10": 20_000}}, "n_set"),
    ({"eps": {"mnist": 1.5}}, "eps"),
    ({"white_radii": [0.25, 0.5]}, "white_radii.*must contain 1"),
    ({"white_radii": [0.5, 1.0, 2.0]}, "white_radii"),
    ({"premise_fixed_step": 0.0}, "premise_fixed_step"),
])
def test_bad_parameters_fail_before_any_work(given, message, monkeypatch):
    def no_data(*args, **kwargs):
        raise AssertionError("a data set was loaded before the parameters were checked")

    monkeypatch.setattr(chapter, "load_dataset", no_data)
    with pytest.raises(ValueError, match=message):
        resolve(chapter.SPEC, "smoke", **given)


def test_pool_shares_the_zoo_model_and_keeps_the_reference_out_of_the_surrogates():
    cfg = resolve(chapter.SPEC, "laptop")
    recipes = chapter.pool_recipes(cfg, "mnist")
    assert list(recipes) == ["lenet_like-seed0", "lenet_like-seed1", "lenet_like-seed2", "mlp-seed0"]
    assert zoo.find(**recipes["lenet_like-seed0"]).name == "lenet_like-mnist"  # the shared model
    assert zoo.find(**recipes["lenet_like-seed1"]) is None
    assert chapter.surrogate_names(cfg, dict.fromkeys(recipes), "mnist") == list(recipes)[1:]
    assert chapter.pool_recipes(cfg, "cifar10")["convnet-seed1"]["config"].lr == cfg.second_lr["cifar10"]


# --------------------------------------------------------------------------- the verdict on hand-made records

CFG = {"chapter": "transferable_adversaries", "profile": "laptop", "seed": 0}
D, MODELS = "mnist", ("A", "B", "C")


def _transfer(fgsm=0.6, pgd=0.3, best=0.9, best_gen="ensemble_mi_fgsm_di", n=1000) -> list[dict]:
    """Fooling-rate cells of a pool of three: FGSM and PGD from every source to every other target, the best
    generator's leave-one-out ensemble on every target, and the adversary set made by it."""
    def cell(gen, source, target, value):
        return record(CFG, dataset=D, model=target, attack=gen, threat_model="linf", eps=0.3,
                      metric="fooling_rate", value=value, n=n, interval=wilson_interval(round(value * n), n),
                      group="transfer", source=source, split="val")

    out = [cell(g, s, t, v) for g, v in (("fgsm", fgsm), ("pgd", pgd)) for s in MODELS for t in MODELS if s != t]
    out += [cell(best_gen, "others", t, best) for t in MODELS]
    out.append(record(CFG, dataset=D, model="B+C", attack=best_gen, threat_model="linf", eps=0.3,
                      metric="set_images", value=n, group="set", set="transferable-mnist-laptop"))
    return out


MEMBERS = ("pgd_ce", "pgd_margin", "square")


def _mask(value, n):
    """The first round(value · n) of ``n`` images right: masks of several networks nest (a paired comparison then
    has every discordant image in one direction)."""
    return torch.arange(n) < round(value * n)


def _defenses(set_acc=None, worst=None, clean=None, aa=None, n=10000, n_adaptive=500, per_image=True) -> list[dict]:
    """Per defense: clean accuracy, accuracy on the adversary set, the worst case (its members: PGD on the margin
    loss fools every image it removes), AutoAttack on its survivors and the pass counts; with per-image outcomes
    (packed masks) unless ``per_image`` is False (a results file written before they were recorded)."""
    clean = {**dict.fromkeys(("normal", "fgsm_at", "distillation", "superimposition", "superimposition_fixed",
                              "pgd_at"), 0.98), **(clean or {})}
    # a worst case is one value (at the threat radius 0.3) or a curve {eps: value}
    set_acc = {"normal": 0.30, "fgsm_at": 0.705, "distillation": 0.35, "superimposition": 0.70,
               "superimposition_fixed": 0.5, "pgd_at": 0.9, **(set_acc or {})}
    worst = {"normal": 0.0, "fgsm_at": 0.01, "distillation": 0.0, "superimposition": 0.01,
             "superimposition_fixed": 0.0, "pgd_at": 0.6, **(worst or {})}
    aa = {**worst, **(aa or {})}
    passes = {"normal": (1, 1), "fgsm_at": (3, 3), "distillation": (2, 1), "superimposition": (2, 2),
              "superimposition_fixed": (2, 2), "pgd_at": (7, 6)}

    def bits(value, size, key=kit.PER_IMAGE):
        return {key: pack_mask(_mask(value, size))} if per_image else {}

    out = []
    for k in set_acc:
        kw = dict(dataset=D, model="lenet_like", defense="none" if k == "normal" else k, group="chapter")
        out += [record(CFG, metric="accuracy", value=clean[k], n=n, split="test", **bits(clean[k], n), **kw),
                record(CFG, metric="accuracy", attack="adversary_set", value=set_acc[k], n=n,
                       **bits(set_acc[k], n), threat_model="linf", eps=0.3, **kw)]
        curve = worst[k] if isinstance(worst[k], dict) else {0.3: worst[k]}
        confirmed = aa[k] if isinstance(aa[k], dict) else {0.3: aa[k]}
        for eps, value in curve.items():
            at = dict(threat_model="linf", eps=eps, **kw)
            robust = _mask(value, n_adaptive)
            fooled = _mask(clean[k], n_adaptive) & ~robust
            fooled_by = torch.where(robust, -1, torch.where(fooled, MEMBERS.index("pgd_margin"), -2))
            out.append(record(CFG, metric="accuracy", attack="worst_case", value=value, n=n_adaptive,
                              members="+".join(MEMBERS), **bits(value, n_adaptive),
                              **({kit.FOOLED_BY: kit.pack_fooled_by(fooled_by)} if per_image else {}), **at))
            for i, m in enumerate(MEMBERS):
                out.append(record(CFG, metric="images_fooled", attack=m, value=int(fooled.sum())
                                  if m == "pgd_margin" else 0, n=n_adaptive, order=i, within="worst_case", **at))
            if k in chapter.CONFIRMED:
                c = confirmed.get(eps, value)
                out.append(record(CFG, metric="accuracy", attack="autoattack", value=c, n=n_adaptive,
                                  on="worst_case_survivors", flags="", **bits(c, n_adaptive), **at))
        out += [record(CFG, metric=f"{m}_passes", value=v, n=256, **kw) for m, v in zip(("forward", "backward"),
                                                                                      passes[k])]
    return out


def _results(records, health=()):
    return {"records": list(records), "health": list(health), "profile": "laptop"}


def test_verdict_premise_and_a_generator_that_beats_fgsm_everywhere():
    t = chapter.verdict_summary(_results(_transfer()))[D]["transfer"]
    assert t["multi_step_worse"] and (t["pgd_worse_pairs"], t["pairs"]) == (6, 6)
    assert t["category"] == "beats_fgsm" and t["generator"] == "ensemble_mi_fgsm_di" and len(t["above"]) == 3
    assert "claim (i) holds" in chapter.verdict(_results(_transfer()))


def test_verdict_compares_intervals_not_points():
    # 2 points on 1,000 images each: inside the noise, both for the premise and for the claim
    t = chapter.verdict_summary(_results(_transfer(pgd=0.58, best=0.62)))[D]["transfer"]
    assert not t["multi_step_worse"] and t["pgd_worse_pairs"] == 0 and t["category"] == "matches_fgsm"
    t = chapter.verdict_summary(_results(_transfer(best=0.4)))[D]["transfer"]
    assert t["category"] == "below_fgsm" and len(t["below"]) == 3


def test_best_generator_is_chosen_by_pooled_fooling_rate():
    recs = [r for r in _transfer(fgsm=0.6, pgd=0.3, best=0.5) if r["setting"]["group"] == "transfer"]
    assert chapter.best_generator(recs, D) == "fgsm"
    assert chapter.verdict_summary(_results(recs))[D]["transfer"]["category"] == "fgsm"
    assert chapter.best_generator(_transfer(best=0.7), D) == "ensemble_mi_fgsm_di"


def _claims(records, health=()):
    return chapter.verdict_summary(_results(_transfer() + records, health))[D]["defenses"]["claims"]


def test_verdict_at_the_floor_is_inconclusive_not_transfer_only():
    # rewritten: normal training at 0% in the white box (the threat radius on MNIST) against 1% used to be called
    # "transfer only"; at the floor no white-box gain can show, so the white box is inconclusive (floor), and the
    # transfer claim is judged in its own threat model
    summary = chapter.verdict_summary(_results(_transfer() + _defenses()))[D]
    v = summary["defenses"]
    white, on_set = v["claims"]["white_box"], v["claims"]["set"]
    assert (white["outcome"], white["reason"], white["mechanism"]) == ("inconclusive", "floor", None)
    assert on_set["outcome"] == "holds" and on_set["reason"] is None and "on the same 10000 images" in on_set["detail"]
    assert (summary["outcome"], summary["category"]) == ("holds", "holds")
    assert v["claims"]["comparable"]["outcome"] == "holds" and v["best_established"] == "fgsm_at"
    assert v["claims"]["fixed_set"]["outcome"] == "holds" and v["extra_forward"] == 1
    text = chapter.verdict(_results(_transfer() + _defenses()))
    assert "transfer success is not robustness" not in text and "transfer-only" not in text
    assert "**inconclusive** (at the floor" in text and "no AutoAttack flag fired" in text


def test_verdict_holds_in_the_white_box_when_autoattack_confirms_it():
    c = _claims(_defenses(worst={"normal": 0.3, "superimposition": 0.6}))
    assert c["white_box"]["outcome"] == "holds" and c["white_box"]["mechanism"] is None
    # AutoAttack on the survivors brings superimposition back to normal training: the positive is withdrawn
    c = _claims(_defenses(worst={"normal": 0.3, "superimposition": 0.6}, aa={"superimposition": 0.3}))
    assert c["white_box"]["outcome"] != "holds" and "AutoAttack on the survivors removed the gain" in \
        c["white_box"]["detail"]


def test_verdict_names_transfer_only_with_evidence_that_the_white_box_removed_the_gain():
    # the set and the white box on the same 500 images: superimposition right on 350 of them on the set, normal
    # training on 150 (a gain the set showed), 150 survive the white box: PGD on the margin removed the other 200
    recs = _defenses(worst={"normal": 0.3, "superimposition": 0.3}, n=500)
    c = _claims(recs)
    assert c["set"]["outcome"] == "holds" and c["white_box"]["outcome"] == "does not hold"
    assert c["white_box"]["mechanism"].startswith("transfer-only") and "pgd_margin" in c["white_box"]["mechanism"]
    assert "40.0 points" in c["white_box"]["mechanism"]
    assert "removed by pgd_margin (200 of the 200 images)" in c["white_box"]["mechanism"]
    assert "Mechanism: transfer-only" in chapter.verdict(_results(_transfer() + recs))
    # the set's gain holds on its 10,000 images but not on the 500 the white box ran on (nested masks: both
    # networks are right on all 500 there), so the white box removed nothing the set showed: no mechanism
    c = _claims(_defenses(worst={"normal": 0.3, "superimposition": 0.3}))
    assert c["set"]["outcome"] == "holds" and c["white_box"]["mechanism"] is None
    # no set gain: no mechanism, whatever the white box removed
    c = _claims(_defenses(set_acc={"superimposition": 0.3}, worst={"normal": 0.3, "superimposition": 0.3}))
    assert c["set"]["outcome"] == "does not hold" and c["white_box"]["mechanism"] is None


# the white box over radii: normal training off the floor at 0.15, at 0% at the threat radius 0.3
OFF, AT = 0.15, 0.3


def test_white_box_holds_where_normal_training_is_off_the_floor_and_is_reported_at_the_floor():
    c = _claims(_defenses(worst={"normal": {OFF: 0.3, AT: 0.0}, "superimposition": {OFF: 0.6, AT: 0.01},
                                 "superimposition_fixed": {OFF: 0.3, AT: 0.0}}))
    white = c["white_box"]
    assert white["outcome"] == "holds" and [r["eps"] for r in white["radii"]] == [OFF, AT]
    at = {r["eps"]: r for r in white["radii"]}
    assert at[OFF]["outcome"] == "holds" and (at[AT]["outcome"], at[AT]["reason"]) == ("inconclusive", "floor")
    assert "at ε = 0.15 **holds**" in white["detail"] and "at ε = 0.3 **inconclusive** (at the floor" in white["detail"]
    # Holm over variants and radii: 150 discordant images leave p tiny, so the family does not change the outcome
    assert at[OFF]["test"]["a_only"] == 150 and c["set"]["outcome"] == "holds"


def test_white_box_gain_at_one_radius_and_a_significant_loss_at_another_does_not_hold():
    # superimposition 30 points above normal training at 0.15 and 20 below at 0.3 (both off the floor): "more
    # robust in the white box" is refuted at 0.3, whatever 0.15 shows; both radii stay on the page
    c = _claims(_defenses(worst={"normal": {OFF: 0.3, AT: 0.4}, "superimposition": {OFF: 0.6, AT: 0.2}}))
    white = c["white_box"]
    at = {r["eps"]: r for r in white["radii"]}
    assert at[OFF]["outcome"] == "holds" and at[AT]["outcome"] == "does not hold"
    assert white["outcome"] == "does not hold"
    assert white["detail"].startswith("significantly below normal training at ε = 0.3 although above it at ε = 0.15")


def test_white_box_does_not_hold_where_judged_and_names_transfer_only_with_evidence():
    # the set on the white box's 500 images, so that the set's gain shows on the images the white box ran on
    c = _claims(_defenses(worst={"normal": {OFF: 0.3, AT: 0.0}, "superimposition": {OFF: 0.3, AT: 0.0}}, n=500))
    white = c["white_box"]
    assert white["outcome"] == "does not hold" and white["reason"] is None
    assert {r["eps"]: r["outcome"] for r in white["radii"]} == {OFF: "does not hold", AT: "inconclusive"}
    # the set gain holds, and at the set's radius the worst case removed it (pgd_margin, on the same images)
    assert c["set"]["outcome"] == "holds" and white["mechanism"].startswith("transfer-only")
    assert "at ε = 0.3" in white["mechanism"] and "pgd_margin" in white["mechanism"]


def test_no_transfer_only_where_the_white_box_gain_held_at_one_radius():
    # the set gain holds and the white box removes it at the set's radius (evidence exists), but superimposition was
    # significantly above normal training at 0.15: a white-box gain that showed is not "transfer-only"
    records = _defenses(worst={"normal": {OFF: 0.3, AT: 0.4}, "superimposition": {OFF: 0.6, AT: 0.2}}, n=500)
    c = _claims(records)
    white = c["white_box"]
    assert c["set"]["outcome"] == "holds" and white["outcome"] == "does not hold"
    assert any(r["outcome"] == "holds" for r in white["radii"])
    assert chapter._mechanism(records, "mnist", "superimposition") is not None  # the evidence alone is there
    assert white["mechanism"] is None


def test_white_box_at_the_floor_at_every_radius_is_inconclusive():
    c = _claims(_defenses(worst={"normal": {OFF: 0.0, AT: 0.0}, "superimposition": {OFF: 0.002, AT: 0.0}}))
    white = c["white_box"]
    assert (white["outcome"], white["reason"], white["mechanism"]) == ("inconclusive", "floor", None)
    assert white["detail"].startswith("normal training is at the floor at every radius measured")
    # a gain that shows through the floor is judged like any other
    c = _claims(_defenses(worst={"normal": {OFF: 0.0, AT: 0.0}, "superimposition": {OFF: 0.2, AT: 0.1}}))
    assert c["white_box"]["outcome"] == "holds"


def test_white_box_underpowered_and_holm_over_the_radii():
    c = _claims(_defenses(set_acc={"superimposition": 0.4}, worst={"normal": {OFF: 0.3, AT: 0.0},
                                                                   "superimposition": {OFF: 0.4, AT: 0.0}},
                          n=40, n_adaptive=40))
    assert (c["white_box"]["outcome"], c["white_box"]["reason"]) == ("inconclusive", "underpowered")
    # 6 more images of 500 right at one radius: p = 0.031 alone, 0.125 after Holm over the family (two variants ×
    # two radii); no positive, and a 5-point gain is excluded
    c = _claims(_defenses(worst={"normal": {OFF: 0.3, AT: 0.0}, "superimposition": {OFF: 0.312, AT: 0.0},
                                 "superimposition_fixed": {OFF: 0.3, AT: 0.0}}))
    off = c["white_box"]["radii"][0]
    assert off["test"]["p"] < 0.05 and off["outcome"] == "does not hold" and "McNemar p = 0.12" in off["detail"]


def test_white_box_positive_must_survive_autoattack_at_its_radius():
    worst = {"normal": {OFF: 0.3, AT: 0.0}, "superimposition": {OFF: 0.6, AT: 0.01}}
    c = _claims(_defenses(worst=worst, aa={"superimposition": {OFF: 0.3}}))
    off = c["white_box"]["radii"][0]
    assert off["outcome"] != "holds" and "AutoAttack on the survivors removed the gain" in off["detail"]
    assert c["white_box"]["outcome"] == "does not hold"


def test_comparable_claims_hold_fail_and_are_inconclusive():
    assert _claims(_defenses())["comparable"]["outcome"] == "holds"  # 70.0% against FGSM training's 70.5%
    assert _claims(_defenses(set_acc={"fgsm_at": 0.9}))["comparable"]["outcome"] == "does not hold"
    few = _claims(_defenses(set_acc={"fgsm_at": 0.72}, n=100, n_adaptive=100))["comparable"]
    assert (few["outcome"], few["reason"]) == ("inconclusive", "underpowered")
    vs_pgd = _claims(_defenses(worst={"superimposition": 0.6}))["versus_pgd_at"]
    assert vs_pgd["outcome"] == "holds"
    floor = _claims(_defenses(worst={"pgd_at": 0.0}))["versus_pgd_at"]
    assert (floor["outcome"], floor["reason"]) == ("inconclusive", "floor")


def test_health_rows_of_the_established_defenses_are_named_and_do_not_gate_claim_iii():
    health = [{"dataset": D, "defense": "superimposition", "id": "gradient_free", "passed": True},
              {"dataset": D, "defense": "distillation", "id": "gradient_free", "passed": False},
              {"dataset": D, "defense": "fgsm_at", "id": "transfer", "passed": True}]
    results = _results(_transfer() + _defenses(), health)
    s = chapter.verdict_summary(results)[D]["defenses"]
    assert s["failed"] == {"superimposition": [], "distillation": ["gradient_free"], "fgsm_at": []}
    assert s["claims"]["set"]["outcome"] == "holds"  # distillation's white-box health says nothing of the set claim
    assert "Health checks failed: gradient_free (defensive distillation)." in chapter.verdict(results)
    ok = _results(_transfer() + _defenses(), [dict(h, passed=True) for h in health])
    assert ("Every health check passed (superimposition + KL (a resampled), defensive distillation, FGSM adversarial "
            "training).") in chapter.verdict(ok)


def test_verdict_says_claim_iii_is_untested_where_no_defenses_were_trained():
    assert "No defenses were trained on mnist in this run" in chapter.verdict(_results(_transfer()))
    assert "No defenses were trained" not in chapter.verdict(_results(_transfer() + _defenses()))


def test_verdict_underpowered_names_the_smallest_detectable_difference():
    c = _claims(_defenses(set_acc={"superimposition": 0.4}, worst={"normal": 0.3, "superimposition": 0.4},
                          n=40, n_adaptive=40))
    for key in ("set", "white_box"):  # 4 discordant images of 40: p = 0.125
        assert (c[key]["outcome"], c[key]["reason"]) == ("inconclusive", "underpowered")
        assert "40 images cannot show a gain below 15.0 points" in c[key]["detail"]  # 6 of 40 discordant at least


def test_verdict_holm_adjusts_the_comparisons_of_one_claim():
    # 6 more images of 10,000 right, for each variant: p = 0.031 alone, 0.062 after Holm over the two variants
    c = _claims(_defenses(set_acc={"superimposition": 0.3006, "superimposition_fixed": 0.3006}))
    assert c["set"]["test"]["p"] < 0.05 and c["set"]["outcome"] != "holds" and c["fixed_set"]["outcome"] != "holds"


def test_verdict_a_failed_gating_health_check_makes_a_positive_inconclusive():
    health = [{"dataset": D, "defense": "superimposition", "id": "gradient_free", "passed": False}]
    recs = _defenses(worst={"normal": 0.3, "superimposition": 0.6})
    c = _claims(recs, health)
    for key in ("set", "white_box"):
        assert (c[key]["outcome"], c[key]["reason"]) == ("inconclusive", "unhealthy")
        assert "failed health checks: gradient_free" in c[key]["detail"]
    assert c["fixed_set"]["outcome"] == "holds"  # the rows checked the resampled variant only
    assert "Health checks failed: gradient_free (superimposition + KL (a resampled))." in \
        chapter.verdict(_results(_transfer() + recs, health))


def test_verdict_on_results_without_per_image_outcomes_says_rerun():
    results = _results(_transfer() + _defenses(per_image=False))
    v = chapter.verdict_summary(results)[D]
    assert v["defenses"]["claims"]["set"]["detail"] == kit.NO_PER_IMAGE_NOTE
    assert v["defenses"]["claims"]["white_box"]["mechanism"] is None
    assert "rerun the chapter to get paired tests" in chapter.verdict(results)


def test_verdict_on_defenses_no_gain_and_not_comparable():
    none = _claims(_defenses(set_acc={"superimposition": 0.30}))
    assert none["set"]["outcome"] == "does not hold" and "a gain of 5.0 points is excluded" in none["set"]["detail"]
    below = _claims(_defenses(set_acc={"fgsm_at": 0.9}))
    assert below["comparable"]["outcome"] == "does not hold"
    # PGD training, the white-box reference, is 59 points above: superimposition is not comparable to it
    assert _claims(_defenses())["versus_pgd_at"]["outcome"] == "does not hold"
    assert chapter.verdict_summary(_results(_transfer()))[D]["defenses"] is None  # no defenses trained here


def test_verdict_does_not_interpret_a_broken_defended_network():
    # 10 classes: 19% clean on 10,000 images has its interval's upper end below chance + 10 points
    results = _results(_transfer() + _defenses(clean={"superimposition": 0.19}, worst={"superimposition": 0.3}))
    v = chapter.verdict_summary(results)[D]
    assert v["defenses"]["category"] == "broken" and v["category"] == "broken"
    assert all(v["defenses"]["claims"][k]["reason"] == "broken" for k in ("set", "white_box", "comparable",
                                                                          "versus_pgd_at"))
    text = chapter.verdict(results)
    assert "near chance" in text and kit.BROKEN_RULE in text
    # the interval decides, not the point: 21.5% on 200 images reaches above 20%
    ok = chapter.verdict_summary(_results(_transfer() + _defenses(clean={"superimposition": 0.215}, n=200)))
    assert ok[D]["defenses"]["category"] != "broken"
    # without defenses the category is claim (i)'s, and the rule is not stated
    assert chapter.verdict_summary(_results(_transfer()))[D]["category"] == "beats_fgsm"
    assert kit.BROKEN_RULE not in chapter.verdict(_results(_transfer()))


def _premise(fgsm, pgd, by_steps, white=0.99, n=1000, pair="same_arch", source="B", fixed=None) -> list[dict]:
    """Premise-sweep records of one pair: FGSM and PGD transfer rates per radius (``{eps: rate}``), PGD's transfer
    rate per iteration count at the threat radius with the scaled step (``by_steps``) and with the fixed step
    (``fixed``), and a constant white-box rate."""
    def cell(gen, eps, value, sweep, box, **knobs):
        return record(CFG, dataset=D, model="A" if box == "transfer" else source, attack=gen, threat_model="linf",
                      eps=eps, metric="fooling_rate", value=value, n=n, interval=wilson_interval(round(value * n), n),
                      group="premise", pair=pair, sweep=sweep, box=box, source=source, split="val", **knobs)

    out = [cell("fgsm", e, v, "radius", "transfer") for e, v in fgsm.items()]
    out += [cell("pgd", e, v, "radius", "transfer", steps=10) for e, v in pgd.items()]
    for rule, rates in (("scaled", by_steps), ("fixed", fixed or {})):
        for steps, v in rates.items():
            out += [cell("pgd", 0.3, v, "steps", "transfer", steps=steps, step=rule),
                    cell("pgd", 0.3, white, "steps", "white", steps=steps, step=rule)]
    return out


def test_premise_sweep_finds_the_radii_and_iterations_where_multi_step_transfers_worse():
    recs = _premise(fgsm={0.1: 0.40, 0.3: 0.60}, pgd={0.1: 0.20, 0.3: 0.61}, by_steps={1: 0.5, 16: 0.7, 64: 0.45})
    p = chapter.verdict_summary(_results(_transfer() + recs))[D]["premise"]["same_arch"]
    assert p["pgd_worse_at"] == [0.1] and p["pgd_better_at"] == [] and p["pgd_alike_at"] == [0.3]  # 61% vs 60%
    assert p["pair"] == ("B", "A")
    assert p["more_steps_worse"] == {"scaled": True} and list(p["steps"]["scaled"]) == [1, 16, 64]
    text = chapter.verdict(_results(_transfer() + recs))
    assert ("Premise sweep, same architecture (B → A): PGD transfers clearly worse than FGSM at ε = 0.1, clearly "
            "better at no radius") in text
    assert "50.0% → 45.0%" in text and "clearly lower transfer" in text
    flat = _premise(fgsm={0.3: 0.6}, pgd={0.3: 0.9}, by_steps={1: 0.5, 64: 0.52})
    p = chapter.verdict_summary(_results(_transfer() + flat))[D]["premise"]["same_arch"]
    assert p["pgd_better_at"] == [0.3] and not p["more_steps_worse"]["scaled"]
    assert chapter.verdict_summary(_results(_transfer()))[D]["premise"] is None  # no sweep, no sentence


def test_premise_sweep_reads_each_pair_and_each_step_rule_on_its_own():
    # same architecture: the scaled step's decline with more iterations is real (70% → 45%); with the fixed step
    # it is not (70% → 69%). Across architectures PGD transfers worse at the threat radius, same architecture not.
    same = _premise(fgsm={0.3: 0.60}, pgd={0.3: 0.61}, by_steps={1: 0.7, 64: 0.45}, fixed={1: 0.3, 64: 0.69})
    cross = _premise(fgsm={0.3: 0.40}, pgd={0.3: 0.20}, by_steps={1: 0.3, 64: 0.29}, pair="cross_arch", source="M")
    p = chapter.verdict_summary(_results(_transfer() + same + cross))[D]["premise"]
    assert list(p) == ["same_arch", "cross_arch"] and p["cross_arch"]["pair"] == ("M", "A")
    assert p["same_arch"]["more_steps_worse"] == {"scaled": True, "fixed": False}
    assert p["same_arch"]["pgd_alike_at"] == [0.3] and p["cross_arch"]["pgd_worse_at"] == [0.3]
    assert p["cross_arch"]["more_steps_worse"] == {"scaled": False}
    text = chapter.verdict(_results(_transfer() + same + cross))
    assert "Premise sweep, across architectures (M → A): PGD transfers clearly worse than FGSM at ε = 0.3" in text
    assert ("With PGD's fixed step, from 1 to 64 iterations at the threat radius its transfer rate goes 30.0% → "
            "69.0% (on the source itself: 99.0% → 99.0%): more iterations do not clearly lower transfer.") in text


def test_premise_pairs_put_the_reference_model_last_and_cross_the_architectures():
    cfg = resolve(chapter.SPEC, "laptop")
    pool = dict.fromkeys(chapter.pool_recipes(cfg, "mnist"))
    assert chapter.premise_pairs(cfg, pool, "mnist") == {"same_arch": ("lenet_like-seed1", "lenet_like-seed0"),
                                                         "cross_arch": ("mlp-seed0", "lenet_like-seed0")}
    cfg = resolve(chapter.SPEC, "smoke")  # CIFAR-10 at smoke: one AlexLike only, so no same-architecture pair
    pool = dict.fromkeys(chapter.pool_recipes(cfg, "cifar10"))
    assert chapter.premise_pairs(cfg, pool, "cifar10") == {"cross_arch": ("convnet-seed0", "alex_like-seed0")}


def test_a_fixed_step_changes_pgd_and_the_default_is_the_scaled_step(pool, tiny_data):
    x, y = tiny_data[0][:40], tiny_data[1][:40]
    src = [pool["tiny-seed0"]]
    scaled = chapter.craft("pgd", src, x, y, eps=0.3, steps=4, seed=1)
    assert torch.equal(scaled, chapter.craft("pgd", src, x, y, eps=0.3, steps=4, seed=1, step_size=2.5 * 0.3 / 4))
    fixed = chapter.craft("pgd", src, x, y, eps=0.3, steps=4, seed=1, step_size=0.03)
    assert not torch.equal(fixed, scaled) and (fixed - x).abs().max() <= 0.3 + 1e-6


def test_the_threat_radius_is_a_parameter_per_data_set():
    for profile in chapter.PROFILES:
        assert chapter.PROFILES[profile]["eps"] == {d: threat_eps(d) for d in DATASETS}
        cfg = resolve(chapter.SPEC, profile)
        assert cfg.eps == {d: threat_eps(d) for d in cfg.datasets}
    cfg = resolve(chapter.SPEC, "smoke", eps={"mnist": 0.1})
    assert cfg.eps == {"mnist": 0.1, "cifar10": threat_eps("cifar10")}
    assert chapter.set_recipe(cfg, {}, "mnist", "pgd")["eps"] == 0.1  # another radius: another adversary set
    assert chapter.defense_loss(cfg, "mnist", "fgsm_at").eps == 0.1
    resolve(chapter.SPEC, "smoke", premise_radii=[3.0], eps={"mnist": 0.2})  # 3 × 0.2 stays in the image range


def test_premise_parameters_are_checked_before_any_work():
    with pytest.raises(ValueError, match="premise_radii"):
        resolve(chapter.SPEC, "smoke", premise_radii=[0.5, 0.0])
    with pytest.raises(ValueError, match="exceeds 1"):
        resolve(chapter.SPEC, "smoke", premise_radii=[4.0])  # 4 × 0.3 on MNIST
    with pytest.raises(ValueError, match="premise_steps"):
        resolve(chapter.SPEC, "smoke", premise_steps=[0, 5])


def test_verdict_reports_failed_health_checks():
    health = [{"dataset": D, "id": "transfer", "check": "transfer no stronger than white-box", "passed": False},
              {"dataset": "cifar10", "id": "monotone", "check": "accuracy never rises with eps", "passed": False}]
    assert "Health checks failed: transfer." in chapter.verdict(_results(_transfer(), health))


# --------------------------------------------------------------------------- the other chapters' networks


def test_other_chapters_networks_load_from_their_results_and_are_refused_when_altered(tmp_path, monkeypatch):
    from robustness_book.chapters import deep_defense, entropic_retraining
    from robustness_book.results import write_results
    from robustness_book.train import export_entry, save_checkpoint, state_hash

    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    cfg = resolve(chapter.SPEC, "smoke")
    found, notes = chapter.exported_models(cfg)
    assert found == [] and len(notes) == 2
    assert all("no smoke results yet" in n and "python -m robustness_book run" in n for n in notes)

    torch.manual_seed(3)
    net = build_model("lenet_like", "mnist")
    path = tmp_path / "dd.pt"
    meta = {"path": str(path), "sha256": save_checkpoint(net, path, {})}
    entries = [export_entry(meta, "Deep Defense", "mnist", "lenet_like", lam=15.0),
               export_entry(meta, "Deep Defense", "fashion_mnist", "lenet_like", lam=15.0)]
    write_results(resolve(deep_defense.SPEC, "smoke"), [], extra={"models": entries})
    write_results(resolve(entropic_retraining.SPEC, "smoke"), [])  # results from before the exports
    found, notes = chapter.exported_models(cfg)
    assert [(k, e["dataset"], e["setting"]) for k, e, _ in found] == [("deep_defense", "mnist", {"lam": 15.0})]
    assert state_hash(found[0][2]) == state_hash(net)  # the very weights, not a retrained network
    assert len(notes) == 1 and "entropic_retraining" in notes[0] and "older version" in notes[0]

    path.write_bytes(path.read_bytes()[:-8] + bytes(8))  # an altered checkpoint is never scored
    found, notes = chapter.exported_models(cfg)
    assert found == [] and any("corrupted" in n for n in notes)


def test_book_defenses_use_the_other_chapters_choices_else_a_labelled_default(tmp_path, monkeypatch):
    from robustness_book.chapters import fragile_neurons, jumprelu
    from robustness_book.results import write_results

    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    cfg = resolve(chapter.SPEC, "smoke")
    chosen = chapter.book_settings(cfg, "mnist")
    assert chosen["jumprelu"]["value"] == cfg.jumprelu_kappa["mnist"]
    assert chosen["compress_amplify"]["value"] == cfg.rescale_strength
    assert all(c["source"].startswith("labelled default") for c in chosen.values())
    assert "python -m robustness_book run jumprelu --profile smoke" in chosen["jumprelu"]["note"]
    assert "python -m robustness_book run fragile_neurons --profile smoke" in chosen["compress_amplify"]["note"]

    jcfg, fcfg = resolve(jumprelu.SPEC, "smoke"), resolve(fragile_neurons.SPEC, "smoke")
    write_results(jcfg, [record(jcfg, dataset="mnist", model="lenet_like-baseline", defense="jumprelu",
                                metric="chosen_kappa", value=0.5),
                         record(jcfg, dataset="mnist", model="lenet_like-robust", defense="jumprelu",
                                metric="chosen_kappa", value=2.0)])  # another network's choice: not this one's
    write_results(fcfg, [record(fcfg, dataset="cifar10", model="alex_like", defense="compress_amplify",
                                metric="chosen_strength", value=0.0)])  # chosen for CIFAR-10 only
    chosen = chapter.book_settings(cfg, "mnist")
    assert chosen["jumprelu"] == {"value": 0.5, "note": None,
                                  "source": "chosen on held-out data by the jumprelu chapter (smoke)"}
    assert chosen["compress_amplify"]["source"].startswith("labelled default") and \
        "hold no chosen_strength record for mnist" in chosen["compress_amplify"]["note"]
    assert chapter.book_settings(cfg, "cifar10")["compress_amplify"]["value"] == 0.0  # a choice of 0 is a choice
    by_hand = chapter.book_settings(resolve(chapter.SPEC, "smoke", jumprelu_kappa=3.0), "mnist")
    assert by_hand["jumprelu"] == {"value": 3.0, "source": "set by hand (jumprelu_kappa)", "note": None}


def test_score_table_names_another_chapters_network_as_that_chapter_exported_it():
    kw = dict(dataset=D, model="entropic_cnn", defense="entropic", group="other", label="plain fine-tuning (kept)",
              lam=0.0)
    recs = [record(CFG, metric="accuracy", value=0.99, n=100, split="test", **kw)]
    recs += [record(CFG, metric="accuracy", attack=a, threat_model="linf", eps=0.3, value=v, n=100, **kw)
             for a, v in (("adversary_set", 0.2), ("worst_case", 0.0))]
    table = chapter.score_table(_results(recs))
    assert "| entropic_cnn | plain fine-tuning (kept), λ = 0 | 99.0%" in table


# --------------------------------------------------------------------------- the smoke run


@pytest.mark.notebook
def test_smoke_run_writes_its_results_and_a_second_run_reuses_the_adversary_set(isolated_outputs, monkeypatch):
    from robustness_book.results import FIELDS, load_results
    from robustness_book.runner import run_chapter

    monkeypatch.setenv("ROBUSTNESS_ADVERSARIES", str(isolated_outputs / "adversaries"))
    runs = []
    for _ in range(2):
        assert run_chapter("transferable_adversaries", "smoke", output_dir=isolated_outputs / "executed").exists()
        runs.append(load_results("transferable_adversaries", "smoke"))
    first, second = runs
    recs, p = first["records"], first["parameters"]
    assert all(tuple(r) == FIELDS for r in recs)
    cells = [r for r in recs if r["setting"].get("group") == "transfer"]
    assert cells and all(r["setting"]["source"] != r["model"] for r in cells)
    sets = {(s["dataset"], s["split"]): s["status"] for s in first["timings"]["adversary_sets"].values()}
    assert sets == dict.fromkeys([(d, split) for d in p["datasets"] for split in ("test", "train")], "written")
    assert {s["status"] for s in second["timings"]["adversary_sets"].values()} == {"loaded"}
    from robustness_book.data import load_dataset
    train_set = load_dataset("adversary:transferable-mnist-smoke-train", "train")
    clean = load_dataset("mnist", "train").first(p["n_set_train"]["mnist"])
    assert torch.equal(train_set.y, clean.y) and (train_set.x - clean.x).abs().max() <= 0.3 + 1e-6
    assert second["records"] == recs  # same parameters and seed: identical records, the set read back included
    assert chapter.verdict_summary(first).keys() == set(p["datasets"])
    assert {h["dataset"] for h in first["health"]} == {d for d in p["datasets"] if p["train_defenses"][d]}
