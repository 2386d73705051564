"""Chapter 1 (``baselines``): the recipe, the tables and the verdict on hand-made records, and the smoke run of the
notebook end to end (marked ``notebook``)."""
import inspect
import json

import matplotlib
import pytest
import torch

from conftest import TinyNet, make_blobs
from robustness_book.chapters import baselines as chapter, kit
from robustness_book.config import resolve
from robustness_book.data import ArrayDataset
from robustness_book.evaluate import pack_mask
from robustness_book.results import FIELDS, check_records, load_results, overrides_of, record, results_path, select
from robustness_book.runner import run_chapter
from robustness_book.train import TrainConfig, trained_model

CFG = {"chapter": "baselines", "profile": "laptop", "seed": 0}
HEALTH_IDS = ("eps_zero", "monotone", "chance", "single_step", "step_doubling", "gradients", "near_constant",
              "gradient_free", "transfer")


def _rec(**kw):
    return record(CFG, dataset="mnist", model="lenet_like", **kw)


def _mask(k, n):
    return pack_mask(torch.arange(n) < round(k))


def _worst_case(*, clean, alone, worst, n, eps, role, aa=None, flags=""):
    """The worst case's records at ``eps`` as ``kit.worst_case_records`` writes them, per-image outcomes made by
    hand (the first images are the ones standing): the robust accuracy, the first member alone, each member's
    images_fooled (PGD (margin loss) fooled what PGD alone left standing) and, with ``aa``, AutoAttack on the
    survivors."""
    ks = {name: round(v * n) for name, v in (("clean", clean), ("alone", alone), ("worst", worst))}
    at = {"threat_model": "linf", "eps": eps, "n": n}
    fooled_by = torch.tensor([-1 if i < ks["worst"] else 1 if i < ks["alone"] else 0 if i < ks["clean"] else -2
                              for i in range(n)])  # which member fooled each image, as the kit writes it
    recs = [_rec(metric="accuracy", attack="worst_case", value=ks["worst"] / n, members="pgd_ce+pgd_margin+square",
                 correct=_mask(ks["worst"], n), role=role, steps=40, restarts=1, queries=5000,
                 **{kit.FOOLED_BY: kit.pack_fooled_by(fooled_by)}, **at),
            _rec(metric="accuracy", attack="pgd_ce", value=ks["alone"] / n, alone=True,
                 correct=_mask(ks["alone"], n), **at)]
    added = [("pgd_ce", ks["clean"] - ks["alone"]), ("pgd_margin", ks["alone"] - ks["worst"]), ("square", 0)]
    recs += [_rec(metric="images_fooled", attack=name, value=count, order=i, within="worst_case", **at)
             for i, (name, count) in enumerate(added)]
    if aa is not None:
        recs.append(_rec(metric="accuracy", attack="autoattack", value=round(aa * n) / n, on="worst_case_survivors",
                         flags=flags, correct=_mask(aa * n, n), **at))
    return recs


def make_results(*, clean=0.98, pgd=0.01, worst=0.0, alone=None, aa=None, flags="", n=1000, eps=0.3,
                 grid=(0.0, 0.1, 0.2, 0.3), judged=None, failed=(), df_rho=0.25, ddn_rho=(0.21, 0.209),
                 profile="laptop") -> dict:
    """A results dict as ``load_results`` returns it, with every record the page writes (made by hand): DDN's
    ``converged`` record as ``evaluate.min_norm`` decides it (the doubled run moves the median by under 2%); the
    worst case with its first member alone (default: 3 images more than the worst case) and AutoAttack on its
    survivors (default: as the worst case), per-image outcomes included; ``judged=(eps, alone, worst)`` adds the
    worst case at a judged radius (``role="judged"``)."""
    pgd_knobs = {"steps": 40, "restarts": 1}
    recs = [_rec(metric="accuracy", value=clean, n=10 * n, subset="clean"),
            _rec(metric="accuracy", value=clean, n=n, subset="attacked")]
    for e in grid:
        drop = min(1.0, e / 0.3)
        recs.append(_rec(metric="accuracy", attack="fgsm", threat_model="linf", eps=e, value=clean * (1 - 0.8 * drop),
                         n=n, role="curve"))
        recs.append(_rec(metric="accuracy", attack="pgd_linf", threat_model="linf", eps=e, value=clean * (1 - drop),
                         n=n, role="curve", **pgd_knobs))
    for e in (0.0, 1.0, 2.0):
        recs.append(_rec(metric="accuracy", attack="pgd_l2", threat_model="l2", eps=e, value=clean * (1 - e / 3), n=n,
                         role="curve", **pgd_knobs))
    recs.append(_rec(metric="accuracy", attack="pgd_linf", threat_model="linf", eps=eps, value=pgd, n=n, role="threat",
                     **pgd_knobs))
    for attack, threat, rho, setting in [("deepfool_l2", "l2", df_rho, {"max_iter": 50}),
                                         ("deepfool_linf", "linf", 0.2, {"max_iter": 50}),
                                         ("ddn", "l2", ddn_rho[0], {"steps": 100}),
                                         ("ddn", "l2", ddn_rho[1], {"steps": 200})]:
        recs += [_rec(metric="success_rate", attack=attack, threat_model=threat, value=1.0, n=n, **setting),
                 _rec(metric="rho", attack=attack, threat_model=threat, value=rho, n=n, units="pixel",
                      statistic="median", **setting),
                 _rec(metric="rho", attack=attack, threat_model=threat, value=rho * 1.1, n=n, units="pixel",
                      statistic="mean", **setting),
                 _rec(metric="norm", attack=attack, threat_model=threat, value=rho * 9, n=n, statistic="median",
                      **setting)]
    change = abs(ddn_rho[1] - ddn_rho[0]) / ddn_rho[0]
    recs.append(_rec(metric="converged", attack="ddn", threat_model="l2", value=float(change < 0.02), n=n, steps=100,
                     steps_double=200, relative_change=change))
    alone = worst + 3 / n if alone is None else alone
    recs += _worst_case(clean=clean, alone=alone, worst=worst, n=n, eps=eps, role="threat",
                        aa=worst if aa is None else aa, flags=flags)
    if judged:
        recs += _worst_case(clean=clean, alone=judged[1], worst=judged[2], n=n, eps=judged[0], role="judged")
    health = [{"id": h, "check": f"check {h}", "measured": "m", "expected": "e", "passed": h not in failed,
               "dataset": "mnist", "model": "lenet_like"} for h in HEALTH_IDS]
    check_records(recs)
    timings = {"train": {"cached": True, "seconds": 12.0},
               "attack_cost": {"FGSM": {"seconds": 0.5, "images_per_second": 200.0}}}
    return {"chapter": "baselines", "profile": profile, "records": recs, "health": health, "timings": timings}


def summary(results: dict) -> dict:
    return chapter.verdict_summary(results)["mnist"]


# --------------------------------------------------------------------------- the recipe


def test_train_recipe_is_what_trained_model_takes():
    cfg = resolve(chapter.SPEC, "smoke")
    recipe = chapter.train_recipe(cfg)
    inspect.signature(trained_model).bind(**recipe)  # no missing or unknown argument
    assert recipe["model"] == cfg.model and recipe["dataset"] == cfg.dataset
    assert recipe["train_size"] == cfg.train_size
    assert isinstance(recipe["config"], TrainConfig)
    assert recipe["config"].epochs == cfg.epochs and recipe["config"].seed == cfg.seed
    assert not recipe["config"].augment
    assert chapter.train_recipe(cfg, seed=7)["config"].seed == 7
    cifar = chapter.train_recipe(resolve(chapter.SPEC, "smoke", dataset="cifar10"))
    assert cifar["config"].augment and cifar["model"] == "alex_like"


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10"])
def test_threat_radius_comes_from_the_data_facts(dataset):
    from robustness_book.data import threat_eps

    for profile in ("smoke", "laptop", "paper"):
        assert resolve(chapter.SPEC, profile, dataset=dataset).eps == threat_eps(dataset)


# --------------------------------------------------------------------------- the verdict on hand-made records


def test_verdict_sound_evaluation_of_a_non_robust_model():
    v = summary(make_results())
    assert v["category"] == "not_robust" and v["sound"] and v["failed_checks"] == [] and not v["broken"]
    assert v["headline"]["value"] == 0.01 and v["headline"]["eps"] == 0.3
    assert v["headline"]["setting"] == {"role": "threat", "steps": 40, "restarts": 1}
    assert v["images_fooled"] == {"pgd_ce": 977, "pgd_margin": 3, "square": 0}
    assert v["deepfool_ratio"] == pytest.approx(0.25 / 0.209) and v["ddn_converged"]
    assert v["ddn_change"] == pytest.approx(0.001 / 0.21)
    text = chapter.verdict(make_results())
    assert text.startswith("**Verdict: the undefended model is not robust")
    assert "All 9 health checks passed" in text and "over-states" in text and "smoke" not in text
    assert "the model is not broken: " + kit.BROKEN_RULE in text  # the page states the rule it applies


def test_verdict_reports_a_failed_health_check():
    v = summary(make_results(failed=("single_step",)))
    assert v["category"] == "not_robust" and not v["sound"]
    assert v["failed_checks"] == ["single_step"]
    assert "1 of 9 health checks failed** (check single_step)" in chapter.verdict(make_results(failed=("single_step",)))


def test_verdict_reads_the_threat_record_when_eps_is_not_on_the_grid():
    results = make_results(eps=0.25, pgd=0.03, grid=(0.0, 0.1, 0.2, 0.3))
    assert not select(results["records"], role="curve", attack="pgd_linf", eps=0.25)
    v = summary(results)
    assert v["headline"]["eps"] == 0.25 and v["headline"]["value"] == 0.03
    assert "ε = 0.25" in chapter.verdict(results).splitlines()[2]


def test_verdict_never_falls_back_to_the_grid():
    results = make_results()
    results["records"] = [r for r in results["records"] if r["setting"].get("role") != "threat"
                          or r["attack"] != "pgd_linf"]
    with pytest.raises(ValueError, match="threat radius"):
        chapter.verdict_summary(results)


@pytest.mark.parametrize("kwargs", [{"clean": 0.15}, {"failed": ("near_constant",)}])
def test_verdict_calls_a_broken_model_broken(kwargs):
    assert summary(make_results(**kwargs))["category"] == "broken"
    assert chapter.verdict(make_results(**kwargs)).startswith("**Verdict: the model is broken.**")


def test_broken_reads_the_clean_accuracy_interval_not_the_point():
    # 19% of 100 images: the point is within chance + 10 points, the interval's upper end (28%) is not
    v = summary(make_results(clean=0.19, n=10))
    assert not v["broken"] and v["category"] != "broken"
    assert v["clean"]["interval"][1] > 0.2 >= v["clean"]["value"]
    v = summary(make_results(clean=0.15))  # 15% of 10,000 images: the whole interval is
    assert v["broken"] and v["category"] == "broken"
    assert "the model is broken: " + kit.BROKEN_RULE in chapter.verdict(make_results(clean=0.15))


@pytest.mark.parametrize("worst, n, category, outcome, reason",
                         [(0.6, 1000, "resists", "does not hold", None), (0.08, 100, "unclear", "inconclusive",
                                                                           "underpowered"),
                          (0.08, 10000, "not_robust", "holds", None)])
def test_verdict_compares_the_strongest_interval_with_the_threshold(worst, n, category, outcome, reason):
    # claim 1 reads the strongest evaluation (AutoAttack on the worst case's survivors), not the PGD headline
    v = summary(make_results(pgd=0.01, worst=worst, n=n))
    assert (v["category"], v["outcome"], v["reason"]) == (category, outcome, reason)
    assert v["strongest"]["attack"] == "autoattack" and v["claims"]["not_robust"]["outcome"] == outcome


def test_not_robust_reads_autoattack_below_the_worst_case():
    v = summary(make_results(worst=0.6, aa=0.05))  # AutoAttack fooled what the worst case left standing
    assert v["category"] == "not_robust" and "5.0%" in v["detail"]


def test_an_unexpectedly_robust_model_with_a_failed_gating_check_is_inconclusive():
    v = summary(make_results(worst=0.6, failed=("gradient_free",)))
    assert (v["category"], v["outcome"], v["reason"]) == ("unclear", "inconclusive", "unhealthy")
    assert "gradient_free" in v["detail"]
    assert chapter.verdict(make_results(worst=0.6, failed=("gradient_free",))).startswith(
        "**Verdict: not settled.** Claim 1 is inconclusive: the evaluation is unhealthy.")


def claim2(**kwargs) -> dict:
    return summary(make_results(**kwargs))["claims"]["worst_case_beyond_pgd"]


def test_worst_case_beyond_pgd_holds_and_names_the_member_that_removed_pgd_alone():
    # PGD alone leaves 10% standing, the worst case 2%: 80 of the same 1,000 images fooled by the later members
    c = claim2(worst=0.02, alone=0.10)
    assert (c["outcome"], c["reason"], c["eps"], c["threat"]) == ("holds", None, 0.3, None)
    assert "gain 8.0 points" in c["detail"] and "80 right only when defended, 0 only without" in c["detail"]
    assert c["mechanism"] == "PGD alone's extra accuracy was removed by PGD (margin loss) (80 images)"
    assert c["mechanism"] in chapter.verdict(make_results(worst=0.02, alone=0.10))


def test_worst_case_beyond_pgd_does_not_hold_and_names_no_mechanism():
    # 2 images more on 1,000: the paired interval excludes the 5 points that would matter
    c = claim2(worst=0.02, alone=0.022)
    assert (c["outcome"], c["reason"], c["mechanism"]) == ("does not hold", None, None)
    assert "a gain of 5.0 points is excluded" in c["detail"]
    text = chapter.verdict(make_results(worst=0.02, alone=0.022))
    assert "removed by" not in text and "**does not hold**" in text


def test_worst_case_beyond_pgd_at_the_floor_is_inconclusive():
    c = claim2(worst=0.0, alone=0.001)  # the worst case at 0%, PGD alone one image above: no gain showed
    assert (c["outcome"], c["reason"], c["mechanism"]) == ("inconclusive", "floor", None)
    assert "at the floor" in chapter.verdict(make_results(worst=0.0, alone=0.001))
    # a gain that shows through the floor is judged: PGD alone at 5% where the worst case is at 0%
    assert claim2(worst=0.0, alone=0.05)["outcome"] == "holds"


def test_worst_case_beyond_pgd_is_judged_off_the_floor_and_reports_the_threat_radius_beside():
    c = claim2(worst=0.0, alone=0.0, judged=(0.2, 0.30, 0.20))
    assert (c["outcome"], c["eps"], c["role"]) == ("holds", 0.2, "judged")
    assert c["threat"]["outcome"] == "inconclusive" and c["threat"]["reason"] == "floor"
    text = chapter.verdict(make_results(worst=0.0, alone=0.0, judged=(0.2, 0.30, 0.20)))
    assert "judged at ε = 0.2, the radius of the PGD curve below the threat radius where PGD's accuracy is nearest" in text
    assert "At the threat radius (reported, not judged): **inconclusive** (at the floor" in text


def test_worst_case_beyond_pgd_underpowered_names_the_smallest_detectable_difference():
    c = claim2(worst=0.02, alone=0.05, n=100)  # 3 discordant images of 100
    assert (c["outcome"], c["reason"]) == ("inconclusive", "underpowered")
    assert "100 images cannot show a gain below 6.0 points" in c["detail"]


def test_worst_case_beyond_pgd_with_a_failed_gating_check_is_inconclusive():
    c = claim2(worst=0.02, alone=0.10, failed=("step_doubling",))
    assert (c["outcome"], c["reason"]) == ("inconclusive", "unhealthy")
    assert "failed health checks: step_doubling" in c["detail"]


def test_old_results_without_per_image_outcomes_read_with_a_note():
    results = make_results(worst=0.02, alone=0.10)
    for r in results["records"]:
        r["setting"].pop(kit.PER_IMAGE, None)
    c = summary(results)["claims"]["worst_case_beyond_pgd"]
    assert c["outcome"] == "inconclusive" and not c["per_image"] and c["mechanism"] is None
    assert kit.NO_PER_IMAGE_NOTE in chapter.verdict(results)
    results["records"] = [r for r in results["records"] if not r["setting"].get("alone")
                          and r["attack"] != "autoattack"]  # written before the first member alone was recorded
    assert kit.NO_PER_IMAGE_NOTE in chapter.verdict(results)


def test_autoattack_flags_are_shown():
    assert "No AutoAttack flag fired" in chapter.verdict(make_results())
    text = chapter.verdict(make_results(flags="zero_gradients"))
    assert "AutoAttack flagged mnist/lenet_like at ε = 0.3: zero_gradients (potentially unreliable)" in text


def test_verdict_minimum_norm_findings():
    v = summary(make_results(df_rho=0.2, ddn_rho=(0.25, 0.2)))
    assert v["deepfool_ratio"] == pytest.approx(1.0) and not v["ddn_converged"]
    assert v["ddn_change"] == pytest.approx(0.2)  # read from the converged record, never recomputed
    text = chapter.verdict(make_results(df_rho=0.2, ddn_rho=(0.25, 0.2)))
    assert "close to the stronger attack" in text and "not converged" in text


def test_verdict_marks_smoke_numbers_as_meaningless():
    assert chapter.verdict(make_results(profile="smoke")).endswith("- " + kit.smoke_note("smoke"))


# --------------------------------------------------------------------------- tables and figures of records


def test_curves_table_has_one_row_per_attack_and_one_column_per_radius():
    table = chapter.curves_table(make_results(), "linf").splitlines()
    assert table[0] == "| attack \\ L∞ radius ε | 0 | 0.1 | 0.2 | 0.3 |"
    assert table[2].startswith("| FGSM | 98.0% |") and table[3].startswith("| PGD-40 L∞ | 98.0% |")
    assert len(table) == 4  # the threat record is not a curve point
    assert chapter.curves_table(make_results(), "l2").splitlines()[2].startswith("| PGD-40 L2 |")


def test_worst_case_table_shows_clean_headline_worst_case_and_members():
    table = chapter.worst_case_table(make_results(eps=0.25, pgd=0.03))
    assert "at ε = 0.25" in table
    assert "| no attack | 98.0% [" in table and "| PGD-40 L∞, 1 restart | 3.0% [" in table
    assert "adaptive worst case (members: pgd_ce, pgd_margin, square) | 0.0% [0.0%," in table
    assert "PGD (cross-entropy) 977, PGD (margin loss) 3, Square 0" in table


def test_min_norm_table_and_clean_summary():
    results = make_results()
    lines = chapter.min_norm_table(results).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| DeepFool L2, ≤ 50 it.", "| DeepFool L∞, ≤ 50 it.",
                                                            "| DDN L2, 100 steps", "| DDN L2, 200 steps"]
    assert "| 100.0% | 0.25 | 0.275 | 2.25 |" in lines[2]
    text = chapter.clean_summary(results)
    assert text.startswith("Clean accuracy on the first 10,000 test images: **98.0% [")
    assert "loaded from the cache, 12 s" in text


def test_cost_table_formats_timings():
    table = chapter.cost_table(make_results())
    assert table.splitlines()[2] == "| FGSM | 0.50 | 200 |"


def test_curves_figure_marks_the_threat_radius():
    fig = chapter.curves_figure(make_results(eps=0.25))
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    left = fig.axes[0]
    assert any(list(line.get_xdata()) == [0.25, 0.25] for line in left.lines)  # the dashed threat line
    assert any(list(line.get_xdata()) == [0.25] and list(line.get_ydata()) == [0.01] for line in left.lines)
    assert {t.get_text() for t in left.get_legend().get_texts()} >= {"FGSM", "PGD-40 L∞", "chance"}


# --------------------------------------------------------------------------- the steps, on a tiny network


def test_steps_append_records_in_the_kit_vocabulary_and_keep_the_raw_worst_case():
    cfg = resolve(chapter.SPEC, "smoke", n_attack=20, pgd_steps=3, ddn_steps=5, deepfool_iter=3, square_queries=20)
    x, y = make_blobs(n=20, classes=10, side=28)
    run = chapter.Run(cfg)
    run.nets["model"] = TinyNet(side=28, classes=10)
    run.data["attacked"] = ArrayDataset("mnist", "test", x, y, "synthetic")
    chapter.min_norm_attacks(run)
    chapter.worst_case(run)
    records = run.results()["records"]
    check_records(records)
    converged = select(records, attack="ddn", metric="converged")
    assert len(converged) == 1 and converged[0]["setting"]["steps"] == 5
    assert converged[0]["setting"]["steps_double"] == 10
    assert {r["setting"]["steps"] for r in select(records, attack="ddn", metric="success_rate")} == {5, 10}
    worst = select(records, attack="worst_case")
    assert len(worst) == 1 and worst[0]["setting"]["role"] == "threat" and worst[0]["setting"]["queries"] == 20
    members = select(records, metric="images_fooled")
    assert [r["setting"] for r in members] == [{"order": i, "within": "worst_case"} for i in range(3)]
    assert "fooled_by" in run.raw["worst_case"] and set(run.timings) == {"worst_case", "autoattack"}
    alone = select(records, alone=True)
    assert len(alone) == 1 and kit.per_image(alone[0]) is not None and kit.per_image(worst[0]) is not None
    aa = select(records, attack="autoattack", on="worst_case_survivors")
    assert len(aa) == 1 and "flags" in aa[0]["setting"] and not (kit.per_image(aa[0]) & ~kit.per_image(worst[0])).any()
    # the worst case is at the floor here (the tiny net is right on few images): judged on the curve when measured
    assert ("worst_case_judged" in run.raw) == bool(select(records, role="judged"))


# --------------------------------------------------------------------------- the notebook, end to end


def _outputs(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    return [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.notebook
def test_smoke_run_writes_records_and_puts_banner_and_figures_on_the_page(isolated_outputs):
    notebook = run_chapter("baselines", "smoke", output_dir=isolated_outputs / "executed")
    saved = load_results("baselines", "smoke")
    assert saved["chapter"] == "baselines" and saved["profile"] == "smoke" and saved["overridden"] == {}
    check_records(saved["records"])
    assert all(tuple(r) == FIELDS and r["profile"] == "smoke" for r in saved["records"])
    head = chapter.verdict_summary(saved)["mnist"]["headline"]
    assert head["eps"] == saved["parameters"]["eps"] == 0.3 and head["n"] == 100
    assert head["setting"] == {"role": "threat", "steps": 10, "restarts": 1}
    pgd = {r["eps"]: r["value"] for r in select(saved["records"], attack="pgd_linf", role="curve")}
    fgsm = {r["eps"]: r["value"] for r in select(saved["records"], attack="fgsm", role="curve")}
    clean_attacked = select(saved["records"], subset="attacked")[0]["value"]
    assert pgd[0.0] == fgsm[0.0] == clean_attacked and all(pgd[e] <= fgsm[e] for e in pgd)
    assert {r["attack"] for r in select(saved["records"], metric="rho")} == {"deepfool_l2", "deepfool_linf", "ddn"}
    assert {h["id"] for h in saved["health"]} == set(HEALTH_IDS)
    assert all(h["dataset"] == "mnist" and h["model"] == "lenet_like" for h in saved["health"])
    assert len(select(saved["records"], attack="ddn", metric="converged", steps=30, steps_double=60)) == 1
    assert set(saved["timings"]) == {"train", "worst_case", "autoattack", "attack_cost"}
    outputs = _outputs(notebook)
    markdown = ["".join(o.get("data", {}).get("text/markdown", "")) for o in outputs]
    assert any("Profile `smoke`" in m for m in markdown)  # the banner, a MyST admonition
    assert any(m.startswith("**Verdict:") for m in markdown)
    # Figures reach the page even when the caller's MPLBACKEND is non-interactive (Agg, set by the fixture).
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2


@pytest.mark.notebook
def test_two_smoke_runs_with_the_same_overrides_give_identical_records(isolated_outputs, monkeypatch):
    overrides = {"n_attack": 50, "n_clean": 200, "eps": 0.25}  # 0.25 is not on the smoke grid
    expected_path = results_path("baselines", "smoke", overrides_of(resolve(chapter.SPEC, "smoke", **overrides)))
    saved = []
    for run in ("a", "b"):
        # Separate checkpoint caches, so both runs train from scratch.
        monkeypatch.setenv("ROBUSTNESS_CHECKPOINTS", str(isolated_outputs / f"checkpoints-{run}"))
        run_chapter("baselines", "smoke", overrides, output_dir=isolated_outputs / run)
        assert expected_path.exists() and expected_path.name.startswith("baselines--")
        saved.append(load_results("baselines", "smoke", overrides_of(resolve(chapter.SPEC, "smoke", **overrides))))
        expected_path.unlink()
    assert not saved[0]["timings"]["train"]["cached"] and not saved[1]["timings"]["train"]["cached"]
    assert saved[0]["records"] == saved[1]["records"]
    assert saved[0]["health"] == saved[1]["health"]
    head = chapter.verdict_summary(saved[0])["mnist"]["headline"]
    assert head["eps"] == 0.25 and head["n"] == 50
    assert not (isolated_outputs / "results" / "smoke" / "baselines.json").exists()  # the canonical run untouched


@pytest.mark.notebook
def test_bad_parameter_fails_before_the_kernel_starts(isolated_outputs):
    with pytest.raises(ValueError, match="n_attack"):
        run_chapter("baselines", "smoke", {"n_attack": -5}, output_dir=isolated_outputs / "executed")
    assert not (isolated_outputs / "executed" / "baselines.ipynb").exists()
