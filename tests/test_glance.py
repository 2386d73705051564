"""The "Results at a glance" page: each chapter's ``glance_rows(results)`` on the hand-made results of its own
tests (the row vocabulary, the outcome its verdict prints), and the page ``robustness_book.reference`` renders
from them: every percentage, interval bound and n on it is found in the results records it came from, every
row links to a chapter section that exists, and without a reference the page says so."""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest
from docutils.nodes import make_id

import test_baselines as tb
import test_deep_defense as td
import test_defenses_compared as tdc
import test_entropic_retraining as te
import test_fragile_neurons as tf
import test_jumprelu as tj
import test_transferable_adversaries as tt
from robustness_book import reference
from robustness_book.chapters import CHAPTER_IDS, get_chapter, kit
from robustness_book.evaluate.outcome import REASONS, Outcome
from robustness_book.results import anchors, repo_root

ROOT = repo_root()

#: Per chapter, hand-made results from that chapter's own tests: one where the claim holds, one where it does not
#: or is inconclusive; and how to read the judged claim's outcome from its ``verdict_summary`` entry.
CASES = {
    "baselines": [lambda: tb.make_results(), lambda: tb.make_results(worst=0.6, n=1000),
                  lambda: tb.make_results(worst=0.08, n=100, flags="apgd_ce_unreliable")],
    "jumprelu": [lambda: tj._saved_one_model(autoattack=95),
                 lambda: tj._saved_one_model(ifgsm_k=3, ifgsm_0=0, worst_k=2, worst_0=0)],
    "deep_defense": [lambda: td._results(*td._GAIN, td._autoattack("mnist", "lenet", 1.0, td._mask(200, 110),
                                                                   flags="apgd_ce_unreliable")),
                     lambda: td._results(td._variant("mnist", "mlp", "fine_tune", 196, 0.20, [10, 0]),
                                         td._variant("mnist", "mlp", "deep_defense", 195, 0.30, [20, 8]))],
    "fragile_neurons": [lambda: tf._saved(autoattack=tf._mask(0.60, 500)), lambda: tf._saved(worst=(0.0, 0.03))],
    "entropic_retraining": [lambda: te._saved(),
                            lambda: te._saved(normal=(160, 5, 0), control=(156, 5, 0), entropic=(154, 6, 1),
                                              adversarial=(130, 3, 0))],
    "transferable_adversaries": [lambda: tt._results(tt._transfer() + tt._defenses()),
                                 lambda: tt._results(tt._transfer() + tt._defenses(set_acc={"superimposition": 0.30}))],
    "defenses_compared": [lambda: tdc._results()],
}
JUDGED = {
    "baselines": lambda v: [v],
    "jumprelu": lambda v: [v],
    "deep_defense": lambda v: [v],
    "fragile_neurons": lambda v: [v["adaptive_gain"]],
    "entropic_retraining": lambda v: list(v["readings"].values()),
    "transferable_adversaries": lambda v: [v["defenses"]["claims"]["set"]] if v["defenses"] else [],
    "defenses_compared": lambda v: [c["vs_baseline"] for c in v["defenses"].values() if "vs_baseline" in c],
}
CASE_IDS = [(c, i) for c in CHAPTER_IDS for i in range(len(CASES[c]))]


def module(chapter: str):
    return importlib.import_module(f"robustness_book.chapters.{chapter}")


def test_every_chapter_has_cases():
    assert set(CASES) == set(CHAPTER_IDS) == set(JUDGED)
    assert all(hasattr(module(c), "glance_rows") for c in CHAPTER_IDS)


@pytest.mark.parametrize("chapter, case", CASE_IDS)
def test_glance_rows_have_the_vocabulary_and_the_outcome_the_verdict_prints(chapter, case):
    results = CASES[chapter][case]()
    m = module(chapter)
    rows = m.glance_rows(results)
    claims = [c for v in m.verdict_summary(results).values() for c in JUDGED[chapter](v)]
    assert rows and len(rows) == len(claims)
    text = m.verdict(results)
    for row, claim in zip(rows, claims):
        assert tuple(row) == kit.GLANCE_KEYS
        assert row["outcome"] == claim["outcome"] and row["profile"] == results["profile"]
        printed = Outcome(claim["outcome"], claim["reason"] if claim["outcome"] == "inconclusive" else None).text()
        assert printed in text, f"{chapter}: the verdict does not print {printed!r}"
        if row["outcome"] == "inconclusive":
            assert row["reason"] in REASONS
        for key in kit.GLANCE_MEASURES:
            assert row[key] is None or set(row[key]) == {"value", "interval", "n"}
        assert isinstance(row["flags"], list) and row["section"].startswith(chapter + "#")
    # every measure is a record of the results, copied
    measured = [kit.glance_measure(r) for r in results["records"]]
    for row in rows:
        for key in kit.GLANCE_MEASURES:
            assert row[key] is None or row[key] in measured, (chapter, key)


def test_the_rows_cover_both_outcomes_and_show_flags():
    outcomes = {r["outcome"] for c, i in CASE_IDS for r in module(c).glance_rows(CASES[c][i]())}
    assert outcomes == {"holds", "does not hold", "inconclusive"}
    flagged = module("deep_defense").glance_rows(CASES["deep_defense"][0]())
    assert flagged[0]["flags"] == ["apgd_ce_unreliable"]


def test_paper_reported_comes_from_the_anchors_file():
    (row, *_) = module("entropic_retraining").glance_rows(te._saved())
    anchor = next(a for a in anchors("entropic_retraining") if a["attack"] == "autoattack"
                  and a["threat_model"] == "linf")
    assert row["paper_reported"] == {"value": anchor["value"], "source": anchor["source"]}


# --------------------------------------------------------------------------------------------------------------
# The rendered page

MEASURE = re.compile(r"(?P<value>\d+\.\d)% \[(?P<lo>\d+\.\d)%, (?P<hi>\d+\.\d)%\] \(n = (?P<n>[\d,]+)\)")
PAPER = re.compile(r"(?P<value>\d+\.\d)% \((?P<note>[a-z])\)")
LINK = re.compile(r'<a href="\.\./executed/(?P<page>\w+)\.html#(?P<anchor>[\w-]+)">(?P<chapter>\w+)</a>')
HEADING = re.compile(r"^## (?P<dataset>\w+), .*?(?:ε = (?P<eps>[\d.e-]+))?$")


def close(shown: str, value: float) -> bool:
    """A page's percentage (one decimal) is ``value`` rounded."""
    return abs(float(shown) - 100 * value) <= 0.05 + 1e-9


def numbers_not_in_records(page: str, results_by_chapter: dict[str, dict]) -> list[str]:
    """Every number of the page's tables that is not in the records its row links to: each measure ("x% [lo%,
    hi%] (n = N)") against the chapter's results records, each paper number against the chapter's anchors, each
    table's ε against the records' radii; and every "%" of a row must belong to one of those."""
    problems, eps = [], None
    for line in page.splitlines():
        heading = HEADING.match(line)
        if heading:
            eps = heading["eps"]
            continue
        if not line.startswith("| ") or line.startswith("| network"):
            continue
        link = LINK.search(line)
        if link is None:
            problems.append(f"no chapter link: {line}")
            continue
        records = results_by_chapter[link["chapter"]]["records"]
        measures, papers = list(MEASURE.finditer(line)), list(PAPER.finditer(line))
        if line.count("%") != 3 * len(measures) + len(papers):
            problems.append(f"a percentage outside a measure or paper cell: {line}")
        for m in measures:
            n = int(m["n"].replace(",", ""))
            if not any(r.get("interval") and r.get("n") == n and close(m["value"], r["value"])
                       and close(m["lo"], r["interval"][0]) and close(m["hi"], r["interval"][1]) for r in records):
                problems.append(f"{m.group(0)} is not a record of {link['chapter']}")
        for p in papers:
            if not any(close(p["value"], a["value"]) for a in anchors(link["chapter"])):
                problems.append(f"{p.group(0)} is not in the anchors of {link['chapter']}")
        if eps is not None and not any(r["eps"] is not None and f"{r['eps']:.4g}" == eps for r in records):
            problems.append(f"ε = {eps} is not a radius of {link['chapter']}'s records")
    return problems


def results_by_chapter(case: int = 0) -> dict[str, dict]:
    return {c: CASES[c][min(case, len(CASES[c]) - 1)]() for c in CHAPTER_IDS}


@pytest.mark.parametrize("case", [0, 1])
def test_every_number_on_the_page_is_in_the_records_it_came_from(case):
    results = results_by_chapter(case)
    page = reference.render_glance(reference.glance_rows(results))
    assert numbers_not_in_records(page, results) == []
    assert len(MEASURE.findall(page)) >= len(CHAPTER_IDS) * 3  # the check has something to check


def test_a_number_not_in_the_results_fails_the_check():
    results = results_by_chapter()
    rows = reference.glance_rows(results)
    shifted = json.loads(json.dumps(rows))
    shifted[0]["worst_case"]["value"] += 0.02
    assert len(numbers_not_in_records(reference.render_glance(shifted), results)) == 1
    shifted = json.loads(json.dumps(rows))
    shifted[0]["clean"]["n"] += 1
    assert len(numbers_not_in_records(reference.render_glance(shifted), results)) == 1


def test_the_page_has_one_table_per_data_set_and_threat_model_with_the_paper_sources():
    results = results_by_chapter()
    rows = reference.glance_rows(results)
    page = reference.render_glance(rows)
    groups = {(r["dataset"], r["threat_model"]) for r in rows}
    assert page.count("\n## ") == len(groups)
    assert sum(1 for line in page.splitlines() if LINK.search(line)) == len(rows)
    for row in rows:
        if row["paper_reported"]:
            assert row["paper_reported"]["source"] in page


def notebook_anchors(chapter: str) -> set[str]:
    """The ids Sphinx gives the headings of the chapter's notebook (its Markdown cells' ``#`` lines)."""
    text = (ROOT / get_chapter(chapter).notebook).read_text(encoding="utf-8")
    return {make_id(m) for m in re.findall(r"^# #+ (.+)$", text, flags=re.M)}


def test_rows_link_to_chapter_sections_that_exist():
    results = results_by_chapter()
    page = reference.render_glance(reference.glance_rows(results))
    links = list(LINK.finditer(page))
    assert {link["chapter"] for link in links} == set(CHAPTER_IDS)
    for link in links:
        assert link["page"] == link["chapter"] and link["anchor"] in notebook_anchors(link["chapter"]), link.group(0)


def test_a_paper_profile_row_is_marked_and_links_to_the_paper_page():
    results = {"baselines": {**tb.make_results(), "profile": "paper"}}
    page = reference.render_glance(reference.glance_rows(results))
    assert "| paper | " in page and 'href="../executed/baselines_paper.html#results-and-verdict"' in page
    # a site built from the paper profile has the paper pages as its chapter pages
    page = reference.render_glance(reference.glance_rows(results), site_profile="paper")
    assert 'href="../executed/baselines.html#results-and-verdict"' in page


def test_without_a_reference_the_page_says_so_and_names_the_command(tmp_path):
    page = reference.glance_page(tmp_path)
    assert page.startswith(f"# {reference.GLANCE_TITLE}") and "No reference run yet" in page
    assert "make reference PROFILE=laptop" in page and "|" not in page


def test_the_page_reads_the_results_files_of_a_reference_folder(tmp_path):
    results = results_by_chapter()
    for profile in ("laptop", "paper"):
        (tmp_path / profile).mkdir()
    for chapter, content in results.items():
        (tmp_path / "laptop" / f"{chapter}.json").write_text(json.dumps({**content, "chapter": chapter}, default=str))
    (tmp_path / "paper" / "baselines.json").write_text(json.dumps({**results["baselines"], "profile": "paper"},
                                                                  default=str))
    page = reference.glance_page(tmp_path)
    assert "No reference run yet" not in page
    assert page.count("| laptop | ") == len(reference.glance_rows(results)) and page.count("| paper | ") == 1
    assert numbers_not_in_records(page.replace("baselines_paper", "baselines"), results) == []


def test_make_books_page_reads_this_checkouts_results_of_its_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    out = tmp_path / "book" / "_generated" / "results.md"
    page = reference.book_glance("smoke", out).read_text()
    assert "No results yet" in page and "make book PROFILE=smoke" in page and "|" not in page
    results = results_by_chapter()
    (tmp_path / "results" / "smoke").mkdir(parents=True)
    for chapter, content in results.items():
        (tmp_path / "results" / "smoke" / f"{chapter}.json").write_text(
            json.dumps({**content, "chapter": chapter, "profile": "smoke"}, default=str))
    page = reference.book_glance("smoke", out).read_text()
    assert "No results yet" not in page and page.count("| smoke | ") == len(reference.glance_rows(results))


def test_the_paper_table_beside_the_laptop_one_matches_rows_and_copies_numbers():
    laptop = {"baselines": {**tb.make_results(), "profile": "laptop"}}
    paper = {"baselines": {**tb.make_results(), "profile": "paper"}}
    rows = {"laptop": reference.glance_rows(laptop), "paper": reference.glance_rows(paper)[:-1]}
    table = reference.beside_table(rows).splitlines()
    assert "clean (laptop)" in table[0] and "verdict (paper)" in table[0]
    assert len(table) == 2 + len(rows["laptop"])  # one line per row, matched across the profiles
    assert table[-1].endswith("| – " * (len(reference.BESIDE_MEASURES) + 1) + "|")  # the row the paper run lacks
    link = '<a href="../executed/baselines.html#x">baselines</a>'  # the table's rows are all this chapter's
    assert numbers_not_in_records("\n".join(f"{row} {link}" for row in table[2:]), laptop) == []
