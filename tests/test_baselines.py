"""Chapter 1 (``baselines``): the recipe, the tables and the verdict on hand-made records, and the smoke run of the
notebook end to end (marked ``notebook``)."""
import inspect
import json

import matplotlib
import pytest

from conftest import TinyNet, make_blobs
from robustness.chapters import baselines as chapter, kit
from robustness.config import resolve
from robustness.data import ArrayDataset
from robustness.results import FIELDS, check_records, load_results, overrides_of, record, results_path, select
from robustness.runner import run_chapter
from robustness.train import TrainConfig, trained_model

CFG = {"chapter": "baselines", "profile": "laptop", "seed": 0}
HEALTH_IDS = ("eps_zero", "monotone", "chance", "single_step", "step_doubling", "gradients", "near_constant",
              "gradient_free", "transfer")


def _rec(**kw):
    return record(CFG, dataset="mnist", model="lenet_like", **kw)


def make_results(*, clean=0.98, pgd=0.01, worst=0.0, n=1000, eps=0.3, grid=(0.0, 0.1, 0.2, 0.3),
                 failed=(), df_rho=0.25, ddn_rho=(0.21, 0.209), profile="laptop") -> dict:
    """A results dict as ``load_results`` returns it, with every record the page writes (made by hand): DDN's
    ``converged`` record as ``evaluate.min_norm`` decides it (the doubled run moves the median by under 2%)."""
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
    recs.append(_rec(metric="accuracy", attack="worst_case", threat_model="linf", eps=eps, value=worst, n=n,
                     role="threat", members="pgd_ce+pgd_margin+square", steps=40, restarts=1, queries=5000))
    for i, (name, count) in enumerate([("pgd_ce", round((clean - pgd) * n)), ("pgd_margin", 3), ("square", 0)]):
        recs.append(_rec(metric="images_fooled", attack=name, threat_model="linf", eps=eps, value=count, n=n, order=i,
                         within="worst_case"))
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
    from robustness.data import threat_eps

    for profile in ("smoke", "laptop", "paper"):
        assert resolve(chapter.SPEC, profile, dataset=dataset).eps == threat_eps(dataset)


# --------------------------------------------------------------------------- the verdict on hand-made records


def test_verdict_sound_evaluation_of_a_non_robust_model():
    v = summary(make_results())
    assert v["category"] == "not_robust" and v["sound"] and v["failed_checks"] == [] and not v["broken"]
    assert v["headline"]["value"] == 0.01 and v["headline"]["eps"] == 0.3
    assert v["headline"]["setting"] == {"role": "threat", "steps": 40, "restarts": 1}
    assert v["images_fooled"] == {"pgd_ce": 970, "pgd_margin": 3, "square": 0}
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


@pytest.mark.parametrize("pgd, n, category", [(0.6, 1000, "resists"), (0.08, 100, "unclear"),
                                              (0.08, 10000, "not_robust")])
def test_verdict_compares_the_interval_with_the_threshold(pgd, n, category):
    assert summary(make_results(pgd=pgd, n=n))["category"] == category


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
    assert table[0] == "| attack \\ linf radius ε | 0 | 0.1 | 0.2 | 0.3 |"
    assert table[2].startswith("| FGSM | 98.0% |") and table[3].startswith("| PGD-40 L∞ | 98.0% |")
    assert len(table) == 4  # the threat record is not a curve point
    assert chapter.curves_table(make_results(), "l2").splitlines()[2].startswith("| PGD-40 L2 |")


def test_worst_case_table_shows_clean_headline_worst_case_and_members():
    table = chapter.worst_case_table(make_results(eps=0.25, pgd=0.03))
    assert "at ε = 0.25" in table
    assert "| no attack | 98.0% [" in table and "| PGD-40 L∞, 1 restart | 3.0% [" in table
    assert "adaptive worst case (members: pgd_ce, pgd_margin, square) | 0.0% [0.0%," in table
    assert "PGD (cross-entropy) 950, PGD (margin loss) 3, Square 0" in table


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
    assert "fooled_by" in run.raw["worst_case"] and set(run.timings) == {"worst_case"}


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
    assert set(saved["timings"]) == {"train", "worst_case", "attack_cost"}
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
