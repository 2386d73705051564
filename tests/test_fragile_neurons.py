"""robustness_book.defenses.fragile_neurons: nodal dropout, fragility, targeting, compress/amplify (tiny models, seconds)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from robustness_book.defenses.fragile_neurons import (channel_count, compress_amplify, compress_amplify_scales,
                                                 drop_channel, first_conv_name, fragility, scale_channels, targeting)
from robustness_book.models import build_model


def one_channel_classifier(channels: int = 4, decisive: int = 2) -> nn.Sequential:
    """A 2-class model on 1x6x6 images whose decision runs through first-layer channel ``decisive`` only: that
    channel computes the image's mean brightness minus 0.5; the others compute a constant (zero weights, bias
    0.3) that the linear head ignores, so dropping them changes nothing."""
    conv = nn.Conv2d(1, channels, 6)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.fill_(0.3)
        conv.weight[decisive].fill_(1 / 36)
        conv.bias[decisive] = -0.5
    head = nn.Linear(channels, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1, decisive] = 10.0
        head.weight[0, decisive] = -10.0
    return nn.Sequential(conv, nn.Flatten(), head).eval()


def bright_dark_images(n: int = 200, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    level = torch.where(y == 1, 0.65, 0.35).view(-1, 1, 1, 1)
    x = (level + 0.05 * torch.randn(n, 1, 6, 6, generator=g)).clamp(0, 1)
    return x, y


def test_first_conv_is_found_in_sequential_and_resnet():
    assert first_conv_name(build_model("lenet_like", "mnist")) == "1"
    assert first_conv_name(build_model("resnet18", "mnist")) == "1.conv1"
    assert channel_count(build_model("alex_like", "cifar10")) == 64
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        first_conv_name(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_dropping_no_channel_and_strength_zero_leave_outputs_identical():
    torch.manual_seed(0)
    model = build_model("lenet_like", "mnist").eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(drop_channel(model, None)(x), ref)
        assert torch.equal(compress_amplify(model, torch.rand(10), 0.0)(x), ref)
        assert torch.equal(scale_channels(model, torch.ones(10))(x), ref)


def test_a_view_leaves_the_original_untouched_and_zeroes_the_channel():
    torch.manual_seed(0)
    model = build_model("lenet_like", "mnist").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 28, 28)
    view = drop_channel(model, 3)
    captured = []
    view[1].register_forward_hook(lambda m, i, o: captured.append(o))  # the conv and its scale, wrapped
    with torch.no_grad():
        view(x)
    assert torch.all(captured[0][:, 3] == 0) and captured[0][:, 2].abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(model[1], nn.Conv2d)  # the original's layer was not wrapped


def test_the_decisive_channel_is_ranked_most_fragile():
    model = one_channel_classifier(channels=4, decisive=2)
    x, y = bright_dark_images()
    r = fragility(model, x, y, eps=0.05)
    assert r["clean_base"] == 1.0
    assert int(torch.argmax(r["clean_drop"])) == 2
    assert r["clean_drop"][2] >= 0.4  # without it the model answers one class: about half wrong
    assert torch.all(r["clean_drop"][[0, 1, 3]] == 0)  # the others change nothing
    # FGSM at 0.05 cannot move the mean brightness across 0.5 for these images (margin 0.15)
    assert r["fgsm_base"] == 1.0 and int(torch.argmax(r["fgsm_drop"])) == 2


def test_targeting_finds_the_only_channel_the_perturbation_reaches():
    model = one_channel_classifier(channels=4, decisive=1)
    x, y = bright_dark_images(n=50)
    r = targeting(model, x, y, eps=0.1)
    assert int(r["top"][1]) == 50 and int(r["top"].sum()) == 50
    assert r["change"][1] > 0 and torch.all(r["change"][[0, 2, 3]] == 0)
    # the change of a linear filter is exact: |mean of an eps-sign pattern| = eps for every image
    assert r["change"][1].item() == pytest.approx(0.1, abs=1e-5)


def test_compress_amplify_scales_in_proportion():
    s = compress_amplify_scales([0.0, 0.1, 0.2, 0.5], 0.5)
    # centred scores (-0.2, -0.1, 0, 0.3), divided by 0.3, times 0.5, plus 1
    assert torch.allclose(s, torch.tensor([1 - 1 / 3, 1 - 1 / 6, 1.0, 1.5]), atol=1e-6)
    assert torch.equal(compress_amplify_scales([0.2, 0.2, 0.2], 3.0), torch.ones(3))
    assert compress_amplify_scales([0.0, 1.0], 2.0).min() == 0  # clamped: a scale never turns negative
    with pytest.raises(ValueError, match="strength"):
        compress_amplify_scales([0.0, 1.0], -1.0)


def test_bad_scales_fail_naming_the_layer():
    model = build_model("lenet_like", "mnist")
    with pytest.raises(ValueError, match="10 channels"):
        scale_channels(model, torch.ones(3))
    with pytest.raises(ValueError, match="≥ 0"):
        scale_channels(model, -torch.ones(10))
    with pytest.raises(ValueError, match="out of range"):
        drop_channel(model, 10)


# --------------------------------------------------------------------------- the chapter: rule, verdict, smoke run

from robustness_book.chapters import fragile_neurons as chapter  # noqa: E402
from robustness_book.chapters import kit  # noqa: E402
from robustness_book.evaluate.stats import pack_mask  # noqa: E402
from robustness_book.results import record  # noqa: E402

CFG = {"chapter": "fragile_neurons", "profile": "laptop", "seed": 0}
D, MODEL = "mnist", "lenet_like"


AUTHORS_PX = round(0.38 * 0.3081, 6)  # the authors' MNIST radius in pixels: where the survival claim is judged


def _mask(p: float, n: int, seq: int = 0) -> torch.Tensor:
    """``round(p·n)``-ish correct images spread evenly over ``n`` (a low-discrepancy sequence): masks of the same
    ``seq`` are nested (a higher accuracy is right on a superset of images, as a real gain with no losses), masks
    of different ``seq`` are unrelated (discordant both ways), and any first-k slice has about accuracy ``p``."""
    step = (0.6180339887, 0.7548776662, 0.5698402910)[seq]
    return torch.tensor([(i * step) % 1.0 < p for i in range(n)])


def _acc(mask: torch.Tensor, **kw) -> dict:
    return record(CFG, dataset=D, model=MODEL, metric="accuracy", value=float(mask.float().mean()), n=len(mask),
                  correct=pack_mask(mask), **kw)


def _saved(*, dropped=(0.98, 0.60, 0.98, 0.98), base=0.98, dropped_seq=(0, 0, 0, 0), n_fragility=None,
           change=(0.1, 0.9, 0.2, 0.05), rho_p=0.01, excess=(0.8, 0.01, 4), fgsm=(0.40, 0.70),
           clipped=(0.30, 0.70), sweep=((0.35, 0.60), (0.10, 0.20)), worst=(0.30, 0.60), threat_worst=(0.0, 0.0),
           chosen=1.0, n=2000, n_adaptive=500, clean=(0.98, 0.98), eps=0.3, fgsm_seq=(0, 0), autoattack=None,
           remover="square", health=(), seed_rho=None):
    """Hand-made results of one data set with per-image outcomes: held-out fragility (``n_fragility`` images,
    default ``n``; channel ``j`` dropped is right on ``_mask(dropped[j], ·, dropped_seq[j])``, so seq 0 loses
    images only), the targeting correlations (raw change and ``excess`` = (ρ, p, channels)), test clean accuracy,
    the authors' FGSM at strength 0 and at the chosen strength (``n`` images) at their radius and (``sweep``) at
    ×0.5 and ×2 of it, the clipped FGSM at the authors' radius in pixels (``clipped``: at strength 0 and at the
    chosen strength), and the
    worst case of both models (the first ``n_adaptive`` images) at that radius and at the threat radius ``eps``.
    The rescaled model's worst case says, per image, which member fooled it (``remover`` most)."""
    def rec(**kw):
        return record(CFG, dataset=D, model=MODEL, **kw)

    nf = n if n_fragility is None else n_fragility
    out = [_acc(_mask(base, nf), split="val", channel=None),
           rec(metric="accuracy", value=0.5, n=nf, split="val", channel=None, attack="fgsm",
               threat_model="linf_normalized", eps=0.38, clip=False)]
    for j, (acc, q) in enumerate(zip(dropped, dropped_seq)):
        out.append(_acc(_mask(acc, nf, q), split="val", channel=j, defense="nodal_dropout"))
        out.append(rec(metric="accuracy", value=0.5 - (base - acc) / 2, n=nf, split="val", channel=j,
                       defense="nodal_dropout", attack="fgsm", threat_model="linf_normalized", eps=0.38, clip=False))
        out.append(rec(metric="targeting_change", value=change[j], channel=j, attack="fgsm",
                       threat_model="linf_normalized", eps=0.38, n=nf, split="val"))
    out.append(rec(metric="rank_correlation", value=0.8, n=len(dropped), x="targeting_change", y="fragility_clean",
                   p=rho_p, permutations=10000))
    if excess is not None:
        out.append(rec(metric="rank_correlation", value=excess[0], n=excess[2], x="targeting_excess",
                       y="fragility_clean", p=excess[1], permutations=10000))
    if seed_rho is not None:
        out.append(rec(metric="rank_correlation", value=seed_rho, n=len(dropped), x="fragility_clean_seed2",
                       y="fragility_clean", p=0.5, permutations=10000, matched="filter cosine similarity",
                       similarity=0.9))
    for i, (s, f, c, q) in enumerate(list(zip((0.0, chosen), fgsm, clean, fgsm_seq))[:2 if chosen > 0 else 1]):
        kw = dict(defense="compress_amplify", strength=s, score="clean", split="test")
        out += [_acc(_mask(c, n), **kw),
                _acc(_mask(f, n, q), attack="fgsm", threat_model="linf_normalized", eps=0.38, clip=False,
                     factor=1.0, **kw)]
        out += [_acc(_mask(acc[i], n, q), attack="fgsm", threat_model="linf_normalized", eps=0.38 * factor,
                     clip=False, factor=factor, **kw) for factor, acc in zip((0.5, 2.0), sweep)]
        if clipped is not None:
            out.append(_acc(_mask(clipped[i], n), attack="fgsm", threat_model="linf", eps=AUTHORS_PX, clip=True,
                            **kw))
    out.append(rec(metric="chosen_strength", value=chosen, defense="compress_amplify", budget=0.01, score="clean"))
    labels = ("none", "compress_amplify") if chosen > 0 else ("none",)
    members = ["pgd_ce", "pgd_margin", "square"]
    for lab, w, tw in zip(labels, worst, threat_worst):
        standing = _mask(w, n_adaptive)
        fooled_by = kit.pack_fooled_by(torch.tensor([-1 if ok else members.index(remover) if i % 4 else 0
                                                     for i, ok in enumerate(standing.tolist())]))
        for e, m in ((AUTHORS_PX, standing), (eps, _mask(tw, n_adaptive))):
            out.append(_acc(m, attack="worst_case", defense=lab, threat_model="linf", eps=e, members="+".join(members),
                            strength=0.0 if lab == "none" else chosen, **{kit.FOOLED_BY: fooled_by}))
    if autoattack is not None:
        out.append(_acc(autoattack, attack="autoattack", defense="compress_amplify", threat_model="linf",
                        eps=AUTHORS_PX, on="worst_case_survivors", flags="", strength=chosen))
    return {"records": out, "health": list(health), "profile": "laptop",
            "parameters": {"datasets": [D], "eps": {D: eps}, "authors_eps": {D: 0.38}}}


def test_verdict_gain_that_survives_holds_and_is_confirmed_by_autoattack():
    saved = _saved(autoattack=_mask(0.60, 500))
    v = chapter.verdict_summary(saved)[D]
    assert v["neurons"]["outcome"] == "holds" and v["fragile"] == [1] and v["targeting"]["outcome"] == "holds"
    assert v["fgsm_gain"]["outcome"] == "holds" and v["adaptive_gain"]["outcome"] == "holds"
    assert v["judged_eps"] == pytest.approx(AUTHORS_PX) and v["category"] == "real"
    assert v["adaptive_gain"]["mechanism"] is None and v["min_effect"] == chapter.MIN_EFFECT
    text = chapter.verdict(saved)
    assert "No AutoAttack flag fired" in text and "artefact" not in text
    # the threat radius is reported beside, not judged
    assert v["threat"]["eps"] == 0.3 and "reported, not judged" in text


def test_autoattack_that_removes_the_gain_turns_holds_into_does_not_hold():
    v = chapter.verdict_summary(_saved(autoattack=_mask(0.30, 500)))[D]
    assert v["adaptive_gain"]["outcome"] != "holds" and "AutoAttack" in v["adaptive_gain"]["detail"]


def test_autoattack_flags_are_shown():
    saved = _saved(autoattack=_mask(0.60, 500))
    next(r for r in saved["records"] if r["attack"] == "autoattack")["setting"]["flags"] = "randomized"
    assert "AutoAttack flagged mnist/lenet_like/compress_amplify" in chapter.verdict(saved)


def test_verdict_fgsm_gain_removed_by_the_worst_case_is_an_artefact_only_with_evidence():
    # off the floor (30% unmodified), the FGSM gain holds, the worst case shows none, and on the same images the
    # rescaled network's worst case (30%) is far below its own FGSM accuracy (70%): square removed it
    saved = _saved(worst=(0.30, 0.30))
    v = chapter.verdict_summary(saved)[D]
    assert v["fgsm_gain"]["outcome"] == "holds" and v["adaptive_gain"]["outcome"] == "does not hold"
    assert v["adaptive_gain"]["mechanism"].startswith("an FGSM artefact: the gain was removed by square")
    assert v["adaptive_gain"]["evidence"]["member"] == "square" and v["category"] == "fgsm_only"
    assert "FGSM artefact" in chapter.verdict(saved) and "square" in chapter.verdict(saved)


def test_verdict_at_the_floor_is_inconclusive_not_an_artefact():
    # rewritten: 0% → 0.2% (one image) where the unmodified network is at the floor used to print "an FGSM
    # artefact"; no gain showed there, so the survival claim is inconclusive (floor) and no mechanism is named
    saved = _saved(worst=(0.0, 0.002))
    v = chapter.verdict_summary(saved)[D]
    assert v["fgsm_gain"]["outcome"] == "holds"
    assert v["adaptive_gain"]["outcome"] == "inconclusive" and v["adaptive_gain"]["reason"] == "floor"
    assert v["adaptive_gain"]["mechanism"] is None and v["category"] == "inconclusive"
    text = chapter.verdict(saved)
    assert "artefact" not in text and "at the floor" in text


def test_verdict_underpowered_names_the_smallest_detectable_difference():
    saved = _saved(worst=(0.50, 0.55), n_adaptive=40)
    v = chapter.verdict_summary(saved)[D]["adaptive_gain"]
    assert v["outcome"] == "inconclusive" and v["reason"] == "underpowered"
    assert "40 images cannot show a gain below" in v["detail"] and v["mechanism"] is None


def test_a_failed_gating_health_row_makes_a_positive_inconclusive():
    row = {"id": "gradient_free", "check": "square adds little", "measured": "x", "expected": "y", "passed": False,
           "dataset": D, "model": MODEL, "strength": 1.0}
    v = chapter.verdict_summary(_saved(autoattack=_mask(0.60, 500), health=[row]))[D]
    assert v["adaptive_gain"]["outcome"] == "inconclusive" and v["adaptive_gain"]["reason"] == "unhealthy"
    assert "gradient_free" in v["adaptive_gain"]["detail"] and v["category"] == "inconclusive"


def test_verdict_compares_the_same_images_and_p_values_not_points():
    # a 2-point FGSM gain on 2,000 images with discordant images both ways is inside the noise
    v = chapter.verdict_summary(_saved(fgsm=(0.40, 0.42), fgsm_seq=(0, 1)))[D]
    assert v["fgsm_gain"]["outcome"] != "holds" and v["fgsm_gain"]["test"]["a_only"] > 0
    # no gain at all on 2,000 images: the interval excludes the smallest gain that would matter
    v = chapter.verdict_summary(_saved(fgsm=(0.40, 0.40)))[D]["fgsm_gain"]
    assert v["outcome"] == "does not hold" and "is excluded" in v["detail"]
    # the paper's claim at the floor (strength 0 at 0% under their FGSM) is inconclusive, not "does not hold"
    v = chapter.verdict_summary(_saved(fgsm=(0.0, 0.0005)))[D]["fgsm_gain"]
    assert v["outcome"] == "inconclusive" and v["reason"] == "floor"
    # ... unless a gain shows through the floor: 20 of the same 2,000 images, none the other way
    assert chapter.verdict_summary(_saved(fgsm=(0.0, 0.01)))[D]["fgsm_gain"]["outcome"] == "holds"


# --------------------------------------------------------------------------- F3: fragile, robust, undetermined


def test_neurons_hold_with_a_paired_fragile_channel_and_equivalent_robust_ones():
    v = chapter.verdict_summary(_saved())[D]
    assert v["neurons"]["outcome"] == "holds"
    assert v["fragile"] == [1] and v["robust"] == [0, 2, 3] and v["undetermined"] == []
    # a 1-point loss on the same 2,000 images (20 images, all one way) is fragile even after Holm over 4 channels
    v = chapter.verdict_summary(_saved(dropped=(0.98, 0.60, 0.97, 0.98)))[D]
    assert v["fragile"] == [1, 2] and v["neurons"]["outcome"] == "holds"


def test_neurons_do_not_hold_when_every_channel_is_shown_robust():
    v = chapter.verdict_summary(_saved(dropped=(0.98, 0.98, 0.98, 0.98)))[D]
    assert v["neurons"]["outcome"] == "does not hold" and v["robust"] == [0, 1, 2, 3]
    assert "every channel is robust" in v["neurons"]["detail"]


def test_neurons_are_inconclusive_when_no_loss_is_shown_and_none_is_excluded():
    # 0.4-point losses on 500 images: 2 discordant images cannot reach Holm's level, and the interval of each
    # loss reaches beyond ±0.5 points, so neither fragile nor robust: absence of evidence is not "robust"
    v = chapter.verdict_summary(_saved(dropped=(0.976, 0.976, 0.976, 0.976), n_fragility=500))[D]
    assert v["neurons"]["outcome"] == "inconclusive" and v["neurons"]["reason"] == "underpowered"
    assert v["fragile"] == [] and v["robust"] == [] and v["undetermined"] == [0, 1, 2, 3]
    assert "the smallest loss one channel can show on these images: 1.6 points" in v["neurons"]["detail"]
    # the smallest detectable loss is that of Holm's strictest level (0.05 / 4): 8 discordant images of 500
    from robustness_book.evaluate.stats import min_discordant_for
    assert v["detectable"] == pytest.approx(min_discordant_for(chapter.ALPHA / 4) / 500)


def test_two_marginal_intervals_that_overlap_do_not_make_a_channel_robust():
    # 2000 images, 97.5% against 98%: the marginal Wilson intervals overlap (the old rule said "robust"), but the
    # 10 images lost are all one way: the paired test calls the channel fragile
    s = chapter.fragility_summary(_saved(dropped=(0.975, 0.60, 0.98, 0.98))["records"], D)
    assert 0 in s["fragile"] and s["p_adjusted"][0] < chapter.ALPHA


# --------------------------------------------------------------------------- F2: targeting against a random control


def test_targeting_holds_only_on_the_excess_over_random_signs():
    v = chapter.verdict_summary(_saved(excess=(0.8, 0.001, 64)))[D]
    assert v["targeting"]["outcome"] == "holds" and "random-sign" in v["targeting"]["detail"]


def test_a_raw_correlation_explained_by_filter_norm_does_not_hold():
    # the raw change correlates strongly (p = 0.001), but FGSM's excess over random signs does not (64 channels,
    # ρ = −0.05): the interval of ρ excludes the smallest correlation that would matter
    v = chapter.verdict_summary(_saved(rho_p=0.001, excess=(-0.05, 0.7, 64)))[D]
    assert v["targeting"]["outcome"] == "does not hold"
    assert f"a correlation of {chapter.MIN_RHO:g} is excluded" in v["targeting"]["detail"]
    # a significantly negative excess correlation does not hold either
    assert chapter.verdict_summary(_saved(excess=(-0.5, 0.001, 64)))[D]["targeting"]["outcome"] == "does not hold"


def test_targeting_is_inconclusive_with_too_few_channels():
    v = chapter.verdict_summary(_saved(excess=(0.3, 0.4, 10)))[D]
    assert v["targeting"]["outcome"] == "inconclusive" and v["targeting"]["reason"] == "underpowered"
    # a file without the excess is not judged on the raw change
    v = chapter.verdict_summary(_saved(rho_p=0.001, excess=None))[D]
    assert v["targeting"]["outcome"] == "inconclusive" and v["targeting"]["reason"] == "not_measured"


def test_the_excess_does_not_grow_with_the_filter_norm_while_the_raw_change_does():
    torch.manual_seed(0)
    model = build_model("lenet_like", "mnist").eval()
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = targeting(model, x, y, eps=0.1, seed=3)
    # a copy whose filter 0 is three times larger
    bigger = build_model("lenet_like", "mnist").eval()
    bigger.load_state_dict(model.state_dict())
    with torch.no_grad():
        conv = bigger.get_submodule(first_conv_name(bigger))
        conv.weight[0] *= 3
        conv.bias[0] *= 3
    after = targeting(bigger, x, y, eps=0.1, seed=3)
    # the FGSM direction may change with the network, so compare the random control (same signs: same seed)
    assert after["random_change"][0].item() == pytest.approx(3 * before["random_change"][0].item(), rel=1e-4)
    assert torch.allclose(after["random_change"][1:], before["random_change"][1:], rtol=1e-5)
    # the excess is a ratio of two changes of the same filter (scale-free); FGSM moves the one channel the
    # decision runs through more than random signs do, and the channels nothing reaches have no excess
    t = targeting(one_channel_classifier(channels=4, decisive=1), *bright_dark_images(n=50), eps=0.1)
    assert t["excess"][1] > 0 and torch.all(t["excess"][[0, 2, 3]] == 0)
    assert t["excess"][1].item() == pytest.approx(t["change"][1].item() / t["random_change"][1].item() - 1)


# --------------------------------------------------------------------------- F5: seeds matched before correlating


def test_channel_matching_recovers_a_permutation_and_is_optimal():
    import itertools

    g = torch.Generator().manual_seed(1)
    w = torch.randn(6, 9, generator=g)
    perm = [3, 0, 5, 1, 4, 2]
    a, b = nn.Conv2d(1, 6, 3), nn.Conv2d(1, 6, 3)
    with torch.no_grad():
        a.weight.copy_(w.view(6, 1, 3, 3))
        b.weight.copy_(w[perm].view(6, 1, 3, 3))
    match = chapter.match_channels(chapter.filter_similarity(a, b))
    assert [perm[m] for m in match] == list(range(6))  # channel i of a is channel match[i] of b
    sim = torch.randn(5, 5, generator=g)
    best = max(itertools.permutations(range(5)), key=lambda q: float(sum(sim[i, q[i]] for i in range(5))))
    got = chapter.match_channels(sim)
    assert float(sum(sim[i, got[i]] for i in range(5))) == pytest.approx(float(sum(sim[i, best[i]] for i in range(5))))


def test_an_unmatched_seed_correlation_is_not_reported():
    saved = _saved(seed_rho=0.4)
    assert "channels matched by their filters" in chapter.verdict(saved)
    for r in saved["records"]:
        r["setting"].pop("matched", None)
    assert chapter.verdict_summary(saved)[D]["seed_rho"] is None


# --------------------------------------------------------------------------- F1: radii


def test_the_artefact_evidence_is_the_clipped_fgsm_at_the_judged_radius():
    # the authors' unclipped FGSM shows 70%, the worst case 30%; but at the same radius in the same box the
    # book's clipped FGSM is also 30%: nothing was removed, so no mechanism is named
    v = chapter.verdict_summary(_saved(worst=(0.30, 0.30), clipped=(0.30, 0.30)))[D]
    assert v["adaptive_gain"]["outcome"] == "does not hold" and v["adaptive_gain"]["mechanism"] is None
    assert v["category"] == "no_gain"
    # the worst case removes 40 points of the rescaled network's clipped FGSM accuracy, but that FGSM showed no
    # gain over strength 0 at this radius (69% against its 70%): nothing of the defense's was removed, no mechanism
    v = chapter.verdict_summary(_saved(worst=(0.30, 0.30), clipped=(0.70, 0.69)))[D]
    assert v["adaptive_gain"]["outcome"] == "does not hold" and v["adaptive_gain"]["mechanism"] is None
    # an older file without that clipped FGSM record: no evidence, no mechanism word
    assert chapter.verdict_summary(_saved(worst=(0.30, 0.30), clipped=None))[D]["adaptive_gain"]["mechanism"] is None


def test_the_sweep_reports_each_multiple_of_the_authors_radius_with_holm():
    saved = _saved(sweep=((0.35, 0.60), (0.0, 0.0005)))  # at ×2 strength 0 at 0%, one image above: no gain showed
    v = chapter.verdict_summary(saved)[D]["sweep"]
    assert sorted(v) == [0.5, 1.0, 2.0]
    assert v[0.5]["outcome"] == "holds" and v[2.0]["outcome"] == "inconclusive" and v[2.0]["reason"] == "floor"
    raw = v[0.5]["test"]["p"]
    assert v[0.5]["p_adjusted"] >= raw and v[0.5]["p_adjusted"] <= min(1.0, 3 * raw)
    text = chapter.verdict(saved)
    assert "×0.5 (0.19 normalized)" in text and "reused for" in text


def test_clipped_fgsm_grid_contains_the_authors_radius_and_factors_must_contain_one():
    from robustness_book.config import resolve

    cfg = resolve(chapter.SPEC, "smoke")
    for d in cfg.datasets:
        radii = chapter.clipped_fgsm_radii(cfg, d)
        assert round(chapter.authors_eps_pixels(cfg, d), 6) in radii
        # the clipped FGSM and the worst case share the authors' radius (rounded alike): same radius, same images
        assert round(chapter.authors_eps_pixels(cfg, d), 6) in set(radii) & set(chapter.adaptive_radii(cfg, d))
    with pytest.raises(ValueError, match="authors_factors"):
        resolve(chapter.SPEC, "smoke", authors_factors=[0.5, 2.0])
    with pytest.raises(ValueError, match="authors_factors"):
        resolve(chapter.SPEC, "smoke", authors_factors=[0.0, 1.0])


def test_fragility_by_epoch_is_keyed_without_a_path():
    cb = chapter.FragilityByEpoch(torch.zeros(3, 1, 28, 28), torch.zeros(3, dtype=torch.long), 1, 1, 10,
                                  chapter.held_out_images("mnist", 55000, 3))
    assert cb.spec["images"] == "mnist training images 55001-55003" and "/" not in str(cb.spec)


def test_holm_adjusts_the_claim_over_the_data_sets():
    one_set = _saved(worst=(0.30, 0.36))
    two = _saved(worst=(0.30, 0.36))
    for r in two["records"]:
        r["dataset"] = "fashion_mnist"
    both = {**one_set, "records": one_set["records"] + two["records"],
            "parameters": {"datasets": [D, "fashion_mnist"], "eps": {D: 0.3, "fashion_mnist": 0.3},
                           "authors_eps": {D: 0.38, "fashion_mnist": 0.38}}}
    alone = chapter.verdict_summary(one_set)[D]["adaptive_gain"]
    v = chapter.verdict_summary(both)[D]["adaptive_gain"]
    assert v["p_adjusted"] == pytest.approx(min(1.0, 2 * alone["test"]["p"]))


def test_old_results_without_per_image_outcomes_get_a_note_not_a_crash():
    from robustness_book.chapters import kit

    saved = _saved()
    for r in saved["records"]:
        r["setting"].pop("correct", None)
    v = chapter.verdict_summary(saved)[D]
    assert v["adaptive_gain"]["outcome"] == "inconclusive" and v["note"] == kit.NO_PER_IMAGE_NOTE
    assert v["neurons"]["outcome"] == "inconclusive" and v["neurons"]["reason"] == "not_measured"
    assert kit.NO_PER_IMAGE_NOTE in chapter.verdict(saved)


def test_verdict_when_validation_kept_strength_zero():
    saved = _saved(chosen=0.0, fgsm=(0.40, 0.40))
    v = chapter.verdict_summary(saved)[D]
    assert v["strength"] == 0 and v["category"] == "no_gain" and v["fgsm_gain"]["outcome"] == "does not hold"
    text = chapter.verdict(saved)
    assert "kept the unmodified model" in text and "no strength above 0 was chosen" in text


def test_a_broken_network_gets_no_robustness_verdict_by_the_interval_rule():
    from robustness_book.chapters import kit

    # the rescaled network is near chance on clean test images (10 classes): its FGSM "gain" is not interpreted
    saved = _saved(clean=(0.98, 0.15))
    v = chapter.verdict_summary(saved)[D]
    assert v["broken"] and v["category"] == "broken" and v["fgsm_gain"]["reason"] == "broken"
    text = chapter.verdict(saved)
    assert "is broken" in text and kit.BROKEN_RULE in text
    # the interval, not the point: 19% of 2,000 is below chance + 10 points, but its interval reaches above
    assert not chapter.verdict_summary(_saved(clean=(0.98, 0.19)))[D]["broken"]
    # with strength 0 the unmodified network is the one judged
    assert chapter.verdict_summary(_saved(chosen=0.0, fgsm=(0.4, 0.4), clean=(0.12, 0.12)))[D]["broken"]


def test_verdict_judges_at_the_authors_radius_and_reports_the_run_s_threat_radius():
    v = chapter.verdict_summary(_saved(eps=0.2, threat_worst=(0.0, 0.10)))[D]
    assert v["judged_eps"] == pytest.approx(AUTHORS_PX) and v["worst"]["none"]["eps"] == pytest.approx(AUTHORS_PX)
    assert v["threat"]["eps"] == 0.2 and v["threat"]["test"]["difference"] == pytest.approx(0.10)
    assert v["category"] == "real"


def test_threat_radius_is_a_per_dataset_parameter_defaulting_to_the_standard_one():
    from robustness_book.config import resolve
    from robustness_book.data import threat_eps

    cfg = resolve(chapter.SPEC, "smoke")
    assert cfg.eps == {d: threat_eps(d) for d in cfg.datasets}
    cfg = resolve(chapter.SPEC, "smoke", eps={"mnist": 0.2})
    assert cfg.eps == {"mnist": 0.2, "cifar10": threat_eps("cifar10")}
    assert chapter.adaptive_radii(cfg, "mnist") == sorted({round(0.38 * 0.3081, 6), 0.2})
    with pytest.raises(ValueError, match="eps"):
        resolve(chapter.SPEC, "smoke", eps=0.0)


def test_health_tables_name_the_data_set_network_and_strength():
    rows = [{"id": "monotone", "check": "accuracy never rises with eps", "measured": "ok", "expected": "ok",
             "passed": True, "dataset": d, "model": m, "strength": s}
            for d, m, s in (("mnist", "lenet_like", 1.0), ("cifar10", "alex_like", 0.0))]
    text = chapter.health_tables({"health": rows})
    assert "dataset `mnist` · model `lenet_like` · strength `1.0`" in text
    assert "dataset `cifar10` · model `alex_like` · strength `0.0`" in text


def test_strength_rule_respects_the_clean_budget_and_prefers_the_smaller_strength():
    def rec(s, clean, fgsm_acc):
        kw = dict(dataset=D, model=MODEL, defense="compress_amplify", strength=s, split="val", n=1000)
        return [record(CFG, metric="accuracy", value=clean, **kw),
                record(CFG, metric="accuracy", value=fgsm_acc, attack="fgsm", threat_model="linf_normalized",
                       eps=0.38, clip=False, **kw)]

    recs = rec(0.0, 0.99, 0.50) + rec(0.5, 0.985, 0.60) + rec(1.0, 0.95, 0.90) + rec(2.0, 0.985, 0.60)
    # strength 1 is best under FGSM but costs 4 points of clean accuracy; 0.5 and 2 tie: the smaller wins
    assert chapter.choose_strength(recs, D, budget=0.01)["strength"] == 0.5
    assert chapter.choose_strength(recs, D, budget=0.05)["strength"] == 1.0
    assert chapter.choose_strength(rec(0.0, 0.99, 0.5) + rec(1.0, 0.99, 0.5), D, 0.01)["strength"] == 0.0


def test_bad_parameters_fail_before_any_work():
    from robustness_book.config import resolve

    with pytest.raises(ValueError, match="must contain 0"):
        resolve(chapter.SPEC, "smoke", strengths=[0.5, 1.0])
    with pytest.raises(ValueError, match="n_fragility"):
        resolve(chapter.SPEC, "smoke", n_fragility=10**5)
    with pytest.raises(ValueError, match="recipe\\['mnist'\\]='zoo'"):
        resolve(chapter.SPEC, "smoke", model={"mnist": "lenet", "cifar10": "alex_like"})
    with pytest.raises(ValueError, match="exceed"):
        resolve(chapter.SPEC, "smoke", train_size=59_900)
    with pytest.raises(ValueError, match="score"):
        resolve(chapter.SPEC, "smoke", score="entropy")


def test_authors_radius_is_converted_with_their_normalization():
    cfg = {"authors_eps": {"mnist": 0.38, "cifar10": 0.015}}
    assert chapter.authors_eps_pixels(cfg, "mnist") == pytest.approx(0.38 * 0.3081)
    assert chapter.authors_eps_pixels(cfg, "cifar10") == pytest.approx(0.0075)


def test_paper_profile_is_the_authors_recipe():
    from robustness_book.config import resolve

    cfg = resolve(chapter.SPEC, "paper")
    kw = chapter.train_recipe(cfg, "cifar10")
    assert kw["model"] == "resnet18" and kw["config"].optimizer == "adam" and kw["config"].lr == 1e-3
    assert kw["config"].batch_size == 100 and kw["config"].weight_decay == 0


@pytest.mark.notebook
def test_fragile_neurons_smoke_run_writes_its_results(isolated_outputs):
    from robustness_book.results import FIELDS, load_results
    from robustness_book.runner import run_chapter

    notebook = run_chapter("fragile_neurons", "smoke", output_dir=isolated_outputs / "executed")
    assert notebook.exists()
    saved = load_results("fragile_neurons", "smoke")
    recs, p = saved["records"], saved["parameters"]
    assert all(tuple(r) == FIELDS for r in recs)
    for d in p["datasets"]:
        channels = {"mnist": 10, "cifar10": 64}[d]
        dropped = [r for r in recs if r["dataset"] == d and r["defense"] == "nodal_dropout"
                   and r["setting"].get("epoch") is None]
        assert len(dropped) == 2 * channels  # clean and FGSM per channel
        assert len([r for r in recs if r["dataset"] == d and r["metric"] == "targeting_share"]) == channels
        assert sum(r["value"] for r in recs if r["dataset"] == d and r["metric"] == "targeting_share") \
            == pytest.approx(1.0)
        assert any(r["dataset"] == d and r["attack"] == "worst_case" for r in recs)
        fooled = [r for r in recs if r["dataset"] == d and r["metric"] == "images_fooled"]
        assert fooled and all(r["setting"]["within"] == "worst_case" and "order" in r["setting"] for r in fooled)
    assert {h["dataset"] for h in saved["health"]} == set(p["datasets"])
    assert chapter.verdict_summary(saved).keys() == set(p["datasets"])
