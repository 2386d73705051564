"""The benchmark's arithmetic and plumbing (``robustness_book.bench``), on hand-made timings and tiny models.

Ratios come out of hand-made timings exactly, budgets pass at their limits and fail just past them, ``--peers``
fails with one message that says how to get the peers, the chapter mode measures a subprocess tree's memory,
and the performance page is a pure function of the JSON files it is built from.
"""
from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from conftest import make_blobs, train_tiny
from robustness_book import bench, cli
from robustness_book.models import build_model
from robustness_book.results import repo_root


def timings(pgd_rate=9.0, train_rate=17.0, df_rows=8.0) -> dict:
    """Raw fwd+bwd 10 images/s and fwd+bwd+step 20 images/s; the attacks' rates as given."""
    return {"fwd_bwd": {"images": 10, "seconds": 1.0}, "fwd_bwd_step": {"images": 20, "seconds": 1.0},
            "pgd": {"images": 1, "steps": pgd_rate, "seconds": 1.0},
            "train": {"images": train_rate, "seconds": 1.0, "recipe": "batch 128"},
            "deepfool": {"images": 2, "rows": df_rows, "seconds": 1.0, "candidates": 9, "mean_iterations": 0.44,
                         "fooled": 1.0}}


def by_name(figures: dict) -> dict:
    return {r["name"]: r for r in figures["ratios"]}


# --------------------------------------------------------------------------- ratios


def test_ratios_from_hand_made_timings():
    t = {"fwd_bwd": {"images": 256, "seconds": 0.02}, "fwd_bwd_step": {"images": 128, "seconds": 0.04},
         "pgd": {"images": 256, "steps": 40, "seconds": 1.0}, "train": {"images": 5120, "seconds": 2.0},
         "deepfool": {"images": 256, "rows": 256 * 9 * 3, "seconds": 0.8}}
    f = bench.speed_ratios(t)
    assert f["limit"] == {"fwd_bwd_images_per_s": 12800.0, "fwd_bwd_ball_images_per_s": 12800.0,
                          "fwd_bwd_step_images_per_s": 3200.0}
    r = by_name(f)
    assert r["pgd"]["rate"] == pytest.approx(10240.0) and r["pgd"]["value"] == pytest.approx(0.8)
    assert r["train"]["rate"] == pytest.approx(2560.0) and r["train"]["value"] == pytest.approx(0.8)
    assert r["deepfool"]["rate"] == pytest.approx(8640.0) and r["deepfool"]["value"] == pytest.approx(0.675)
    assert [r[k]["pass"] for k in ("pgd", "train", "deepfool")] == [False, False, False]
    assert f["attack_images_per_s"] == {"pgd": pytest.approx(256.0), "deepfool": pytest.approx(320.0)}
    assert {r[k]["goal"] for k in r} == {0.9, 0.85, 0.8}


def test_pgd_is_divided_by_the_limit_in_the_eps_ball():
    t = timings()
    t["fwd_bwd_ball"] = {"images": 9, "seconds": 1.0}  # noisy inputs: 9 images/s instead of 10
    f = bench.speed_ratios(t)
    assert f["limit"]["fwd_bwd_ball_images_per_s"] == 9.0 and f["limit"]["fwd_bwd_images_per_s"] == 10.0
    r = by_name(f)
    assert r["pgd"]["value"] == 1.0 and r["pgd"]["limit"] == 9.0
    assert r["deepfool"]["value"] == 0.8 and r["deepfool"]["limit"] == 10.0  # DeepFool starts at the images


def test_ratios_pass_at_their_goals_and_fail_just_below():
    r = by_name(bench.speed_ratios(timings()))  # exactly 0.9, 0.85, 0.8
    assert r["pgd"]["value"] == 0.9 and r["train"]["value"] == 0.85 and r["deepfool"]["value"] == 0.8
    assert all(x["pass"] for x in r.values())
    r = by_name(bench.speed_ratios(timings(pgd_rate=8.99, train_rate=16.99, df_rows=7.99)))
    assert not any(x["pass"] for x in r.values())


# --------------------------------------------------------------------------- budgets


@pytest.mark.parametrize("cached,uncached,rss,ok", [
    (900, 2100, 4e9, True),  # every limit met exactly
    (900.5, 2100, 4e9, False),  # > 15 min with the cache
    (600, 1800.5, 4e9, False),  # training > 20 min
    (600, 1800, 4e9 + 1, False),  # > 4 GB
    (None, 1800, 1e9, False),  # a failed run
])
def test_laptop_budget_at_the_boundaries(cached, uncached, rss, ok):
    result = bench.budget_checks("laptop", uncached, cached, rss)
    assert result["pass"] is ok
    assert [c["limit"] for c in result["checks"]] == [900, 1200, 4e9]


def test_smoke_budget_is_two_minutes_per_run():
    assert bench.budget_checks("smoke", 120, 120, 1e9)["pass"] is True
    assert bench.budget_checks("smoke", 120.1, 30, 1e9)["pass"] is False
    assert bench.budget_checks("smoke", 100, 120.1, 1e9)["pass"] is False
    assert bench.budget_checks("paper", 1e6, 1e6, 1e12) == {"checks": [], "pass": None}


# --------------------------------------------------------------------------- peers


def test_peers_missing_is_one_clear_message(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # `import torchattacks` raises ImportError
    monkeypatch.setitem(sys.modules, "foolbox", None)
    with pytest.raises(bench.PeersMissing, match="run make bench-peers"):
        bench.import_peers()
    assert cli.main(["bench", "--peers"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run make bench-peers" in err and "Traceback" not in err
    assert err.count("\n") == 1  # one line


def test_bench_modes_exclude_each_other():
    with pytest.raises(SystemExit):
        cli.main(["bench", "--peers", "--page"])
    with pytest.raises(SystemExit):
        cli.main(["bench", "--chapters", "nonexistent"])
    with pytest.raises(SystemExit):  # a BPDA copy exists only for the JumpReLU retrofit
        cli.main(["bench", "--worst-case", "--bpda", "margin"])


def test_worst_case_bench_runs_given_members_first_and_times_each(monkeypatch):
    from robustness_book.bench.worst_case import worst_case_vs_autoattack
    from robustness_book import evaluate

    monkeypatch.setattr(evaluate, "autoattack_accuracy", lambda *a, **k: {
        "robust": 0.5, "interval": [0.3, 0.7], "seconds": 1.0})
    x, y = make_blobs(40)
    model = train_tiny(x, y)
    (row,) = worst_case_vs_autoattack(model, x, y, [0.3], steps=2, queries=5, members=["square"],
                                      first=[evaluate.members.pgd("margin", steps=2, name="first_pgd")])
    assert list(row["member_seconds"]) == ["first_pgd", "square"] == row["worst_case"]["members"]
    assert all(v >= 0 for v in row["member_seconds"].values())


# --------------------------------------------------------------------------- measuring, on tiny models


def test_measure_speed_on_a_tiny_model():
    torch.set_num_threads(1)
    case = bench.SpeedCase("lenet_like", "mnist", batch_size=8, pgd_steps=2, train_batches=2)
    torch.manual_seed(0)
    model = build_model("lenet_like", "mnist").eval()
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = bench.measure_speed(model, x, y, case, min_seconds=0.01, rounds=1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the attacked model is untouched
    assert t["pgd"] == {"images": 8, "steps": 2, "seconds": t["pgd"]["seconds"]} and t["pgd"]["seconds"] > 0
    batch = bench.train_config(case).batch_size  # the zoo's laptop recipe of MNIST
    assert t["train"]["images"] == 2 * batch and t["fwd_bwd_step"]["images"] == batch
    assert t["train"]["config"]["epochs"] == 1 and t["train"]["recipe"].startswith("SGD")
    df = t["deepfool"]
    assert df["candidates"] == 9 and df["rows"] == round(df["mean_iterations"] * 8) * 9
    entry = bench.speed_entry(case, "random", "cpu", t)
    assert {r["name"] for r in entry["ratios"]} == {"pgd", "train", "deepfool"}
    json.dumps(entry)  # JSON-ready


def test_measure_run_counts_the_whole_process_tree(monkeypatch, tmp_path):
    # a child whose own child (like the notebook kernel) holds ~200 MB: the peak must see the grandchild
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = b\"x\" * (200 * 2**20); time.sleep(0.5)'], check=True)")
    monkeypatch.setattr(bench.budgets, "_CHILD", code)
    r = bench.measure_run("baselines", "smoke", dict(__import__("os").environ), tmp_path / "out",
                          tmp_path / "log", sample_every=0.05)
    assert r["returncode"] == 0 and r["seconds"] >= 0.5
    assert r["peak_rss_single_process_bytes"] >= 200 * 2**20
    assert r["peak_rss_bytes"] >= r["peak_rss_single_process_bytes"]
    monkeypatch.setattr(bench.budgets, "_CHILD", "import sys; sys.exit(3)")
    assert bench.measure_run("baselines", "smoke", {}, tmp_path / "out", tmp_path / "log2")["returncode"] == 3


def test_chapter_budgets_assemble_rows_and_report_failures(monkeypatch):
    seconds = {("baselines", "uncached"): 100.0, ("baselines", "cached"): 60.0,
               ("jumprelu", "uncached"): 130.0, ("jumprelu", "cached"): 50.0}
    env_seen = []

    def fake_run(chapter, profile, env, output_dir, log, sample_every=0.5):
        label = output_dir.name
        env_seen.append((env["ROBUSTNESS_CHECKPOINTS"], env["ROBUSTNESS_RESULTS"]))
        code = 1 if (chapter, label) == ("deep_defense", "cached") else 0
        return {"seconds": seconds.get((chapter, label), 10.0), "returncode": code, "peak_rss_bytes": 2e9,
                "peak_rss_single_process_bytes": 2e9, "peak_rss_tree_sampled_bytes": None}

    monkeypatch.setattr(bench.budgets, "measure_run", fake_run)  # where run_chapter_budgets looks it up
    partial = []
    content = bench.run_chapter_budgets(["baselines", "jumprelu", "deep_defense"], "smoke", on_row=partial.append)
    # after each chapter the content so far, complete only at the end (a cut-off run keeps what it measured)
    assert [len(p["chapters"]) for p in partial] == [1, 2, 3] and [p["complete"] for p in partial] == [
        False, False, True]
    assert content["complete"] is True
    rows = {r["chapter"]: r for r in content["chapters"]}
    assert rows["baselines"]["pass"] is True and rows["baselines"]["training_s"] == 40.0
    assert rows["jumprelu"]["pass"] is False  # 130 s without the cache > 2 min
    assert rows["deep_defense"]["pass"] is False and rows["deep_defense"]["cached_s"] is None
    assert content["pass"] is False
    # both runs of a chapter share one temporary cache; chapters do not share theirs; nothing lands in the repo
    assert env_seen[0] == env_seen[1] and env_seen[0] != env_seen[2]
    assert not any(str(repo_root()) in path for pair in env_seen for path in pair)
    json.dumps(content)


# --------------------------------------------------------------------------- the page


def hand_made_jsons() -> dict:
    prov = {"git_commit": "0123456789abcdef", "versions": {"torch": "2.13.0+cpu"}, "device": "cpu (2 cores)",
            "threads": 2, "cpu": "Test CPU", "cores": 2, "date": "2026-01-02 03:04 UTC"}
    case = bench.SpeedCase("lenet_like", "mnist", 256, 40, 40)
    speed = {"kind": "speed", "profile": "smoke", "settings": {}, "provenance": prov,
             "models": [bench.speed_entry(case, "chapter 1", "cpu", timings())]}
    interval = [0.5, 0.7]
    worst = {"kind": "worst_case", "profile": "smoke", "model": "lenet_like", "dataset": "mnist", "n": 300,
             "norm": "linf", "provenance": prov,
             "rows": [{"eps": 0.1, "clean": 0.98, "worst_case": {"robust": 0.6, "interval": interval},
                       "worst_case_seconds": 12.5, "autoattack": {"robust": 0.61, "interval": interval,
                                                                  "seconds": 40.0}}]}
    peers = {"kind": "peers", "profile": "smoke", "model": "lenet_like", "dataset": "mnist", "n": 300,
             "clean_accuracy": 0.97, "peer_versions": {"torchattacks": "3.5.1", "foolbox": "3.3.4"},
             "provenance": prov,
             "pgd": {"eps": 0.3, "steps": 40, "step_size": 0.01875,
                     "rows": [{"library": "toolkit", "images_per_s": 1500.0, "robust_accuracy": 0.05},
                              {"library": "toolkit, no early stop", "images_per_s": 900.0, "robust_accuracy": 0.05},
                              {"library": "torchattacks.PGD", "images_per_s": 1000.0, "robust_accuracy": 0.07},
                              {"library": "foolbox LinfPGD", "images_per_s": 700.0, "robust_accuracy": 0.07}],
                     "speedup_vs_torchattacks": 1.5, "speedup_vs_torchattacks_without_early_stop": 0.9,
                     "goal": 1.2, "pass": True},
             "deepfool": {"overshoot": 0.02, "max_iter": 50, "goal": "median ρ ≤ torchattacks", "pass": True,
                          "correct": 290, "both_fooled": 280,
                          "rows": [{"library": "toolkit", "images_per_s": 800.0, "fooled": 1.0, "median_rho": 0.1234,
                                    "median_rho_both_fooled": 0.1200},
                                   {"library": "torchattacks.DeepFool", "images_per_s": 20.0, "fooled": 0.97,
                                    "median_rho": 0.1301, "median_rho_both_fooled": 0.1290}]}}
    chapters = {"kind": "chapters", "profile": "laptop", "budget": None, "provenance": prov, "pass": False,
                "chapters": [{"chapter": "baselines", "uncached_s": 1500.0, "cached_s": 600.0,
                              "peak_rss_bytes": 2.5e9, **bench.budget_checks("laptop", 1500.0, 600.0, 2.5e9)},
                             {"chapter": "jumprelu", "uncached_s": 3000.0, "cached_s": 950.0,
                              "peak_rss_bytes": 3e9, **bench.budget_checks("laptop", 3000.0, 950.0, 3e9)}]}
    return {"speed": speed, "worst_case": worst, "peers": peers, "chapters": chapters}


def write_jsons(folder, contents: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind, content in contents.items():
        (folder / bench.JSON_FILES[kind]).write_text(json.dumps(content))


def test_page_is_a_pure_function_of_the_json(tmp_path):
    contents = hand_made_jsons()
    write_jsons(tmp_path / "a", contents)
    write_jsons(tmp_path / "b", contents)
    page = bench.render_page(tmp_path / "a")
    assert page == bench.render_page(tmp_path / "b")  # the folder's name and the clock do not enter
    assert page.startswith("# Performance\n") and "No measurements yet" not in page
    for text in ("`reference/bench/speed.json`: commit `0123456789`, torch 2.13.0+cpu, 2 thread(s), Test CPU (2 cores), "
                 "2026-01-02 03:04 UTC.",
                 "| lenet_like | mnist | chapter 1 | 256 | 10 | 10 | 20 | batch 128 |", "0.90", "≥ 0.85", "**pass**",
                 "`reference/bench/worst_case.json`", "60.0% [50.0%, 70.0%]", "`reference/bench/peers.json`",
                 "**1.50×**", "0.1234", "0.1301", "| 0.1200 |", "280 images both fooled", "`reference/bench/chapters.json`", "**FAIL** (with cache; training (without − with cache))",
                 "25.0 min"):
        assert text in page, text
    contents["speed"]["models"][0]["timings"]["pgd"]["steps"] = 8.5  # a different JSON, a different page
    contents["speed"]["models"][0].update(bench.speed_ratios(contents["speed"]["models"][0]["timings"]))
    write_jsons(tmp_path / "c", contents)
    changed = bench.render_page(tmp_path / "c")
    assert changed != page and "0.85 | ≥ 0.90 | **FAIL**" in changed
    out = bench.write_page(tmp_path / "a", tmp_path / "performance.md")
    assert out.read_text() == page
    # a worst case measured with its per-member seconds says where its time went, member by member
    assert "Where the worst case's time goes" not in page
    row = contents["worst_case"]["rows"][0]
    contents["worst_case"]["members"] = ["apgd_ce", "square"]
    row["worst_case"]["added"], row["member_seconds"] = {"apgd_ce": 90, "square": 7}, {"apgd_ce": 4.5, "square": 8.0}
    write_jsons(tmp_path / "d", contents)
    split = bench.render_page(tmp_path / "d")
    assert "| eps | apgd_ce | square |" in split and "| 0.1 | +90 in 4.5 s | +7 in 8.0 s |" in split


def test_a_missing_json_leaves_its_section_saying_how_to_make_it(tmp_path):
    page = bench.render_page(tmp_path)  # no JSON at all
    assert page.count("No measurements yet") == 5  # limit, ratios, worst case, peers, chapters
    for command in ("python -m robustness_book bench --json reference/bench/speed.json",
                    "python -m robustness_book bench --worst-case --json reference/bench/worst_case.json",
                    "make bench-peers", "python -m robustness_book bench --chapters --json reference/bench/chapters.json"):
        assert f"`{command}`" in page, command
    contents = hand_made_jsons()
    write_jsons(tmp_path, {"speed": contents["speed"]})
    page = bench.render_page(tmp_path)
    assert page.count("No measurements yet") == 3 and "`make bench-peers`" in page


def test_the_committed_page_matches_the_committed_json(tmp_path):
    root = repo_root()
    if not (root / bench.PAGE).exists():
        pytest.skip("no book/performance.md yet")
    # render from a copy, so the check is of the JSON content, not of where it lies
    (tmp_path / "bench").mkdir()
    for path in (root / bench.BENCH_DIR).glob("*.json"):
        shutil.copy(path, tmp_path / "bench" / path.name)
    for path in (root / bench.BENCH_DIR).parent.glob("*/provenance.json"):  # the reference runs' timings
        (tmp_path / path.parent.name).mkdir()
        shutil.copy(path, tmp_path / path.parent.name / path.name)
    assert (root / bench.PAGE).read_text() == bench.render_page(tmp_path / "bench"), \
        "book/performance.md is stale: rebuild it with python -m robustness_book bench --page"


def test_chapters_measured_on_another_occasion_get_their_own_table(tmp_path):
    contents = hand_made_jsons()
    write_jsons(tmp_path, contents)
    later = {**contents["chapters"], "note": "alone on the machine",
             "chapters": [{"chapter": "transferable_adversaries", "uncached_s": 1500.0, "cached_s": 540.0,
                           "peak_rss_bytes": 2e9, **bench.budget_checks("laptop", 1500.0, 540.0, 2e9)}]}
    (tmp_path / "chapters-transferable.json").write_text(json.dumps(later))
    page = bench.render_page(tmp_path)
    assert page.count("## Chapter budgets") == 1 and "### Measured separately: `chapters-transferable.json`" in page
    section = page[page.index("### Measured separately"):]
    assert "| transferable_adversaries | 25.0 min | 9.0 min | 2.00 GB | **pass** |" in section
    assert "Conditions of this run: alone on the machine" in section and "baselines" not in section


def test_the_reference_runs_timings_are_listed_with_their_sum_against_the_budget(tmp_path):
    assert "No reference run yet" in bench.render_page(tmp_path / "bench")
    entry = {"seconds": 1500.0, "peak_rss_bytes": 2e9, "git_commit": "abcdef0123456789", "date": "2026-12-07",
             "device": "cpu (2 cores)"}
    (tmp_path / "laptop").mkdir()
    (tmp_path / "laptop" / "provenance.json").write_text(json.dumps(
        {"profile": "laptop", "chapters": {"baselines": entry, "jumprelu": {**entry, "seconds": 2400.0}}}))
    page = bench.render_page(tmp_path / "bench")
    assert "| baselines | 25.0 min | 2.00 GB | not recorded | `abcdef0123` |" in page and "| jumprelu | 40.0 min |" in page
    assert "All 2 chapters: 65.0 min (budget of a whole run from an empty cache: 90.0 min, **pass**)" in page
    (tmp_path / "laptop" / "provenance.json").write_text(json.dumps(
        {"profile": "laptop", "chapters": {"baselines": {**entry, "seconds": 6000.0}}}))
    assert "**FAIL**" in bench.render_page(tmp_path / "bench").split("## Reference runs")[1]
    # a run whose first chapter found trained networks in the cache is not judged against the empty-cache budget;
    # a later chapter finding the earlier one's networks is how a whole run works
    chapters = {"baselines": {**entry, "checkpoints_at_start": 0},
                "jumprelu": {**entry, "date": "2026-12-08", "checkpoints_at_start": 3}}
    (tmp_path / "laptop" / "provenance.json").write_text(json.dumps({"profile": "laptop", "chapters": chapters}))
    page = bench.render_page(tmp_path / "bench")
    assert "| jumprelu | 25.0 min | 2.00 GB | 3 |" in page and "50.0 min (budget of a whole run" in page
    chapters["baselines"]["checkpoints_at_start"] = 5
    (tmp_path / "laptop" / "provenance.json").write_text(json.dumps({"profile": "laptop", "chapters": chapters}))
    page = bench.render_page(tmp_path / "bench")
    assert "is not judged: the run's first chapter found 5 trained networks" in page and "**pass**" not in \
        page.split("## Reference runs")[1]
