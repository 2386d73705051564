"""Reference runs (``python -m robustness_book reference make``) and the site staged from them: the SHA-256 check, the
profile check, the swap that keeps the previous reference when a chapter fails, absolute paths stripped, the stale
rule, and the page header. Chapter execution is faked (monkeypatch) except in one smoke-profile end-to-end run."""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest
import yaml

from robustness_book import reference
from robustness_book.results import repo_root, results_path
from robustness_book.runner import ChapterFailed

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256))).decode()


def _notebook(chapter: str, marker: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}}}
    code = nbformat.v4.new_code_cell("print('hi')")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stdout",
                               text=f"{marker}: data in {os.environ['ROBUSTNESS_DATA']}/MNIST, code in "
                                    f"{repo_root()}/robustness, home {os.environ['HOME']}/x\n"),
        nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={reference.WIDGET_MIME: {"model_id": "abc"},
                                                     "text/plain": "slider"}),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# Chapter {chapter}\n\nIntro."), code]
    return nb


@pytest.fixture()
def fake_runs(tmp_path, monkeypatch):
    """``execute_chapter`` replaced by a fake that writes a notebook and a results file in a second; chapters named
    in ``fail`` fail. ``marker`` ends up in every notebook written, to tell runs apart."""
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("ROBUSTNESS_DATA", str(tmp_path / "data-folder"))
    state = {"fail": set(), "marker": "run1", "calls": []}

    def fake(chapter, profile, staging):
        state["calls"].append(chapter)
        if chapter in state["fail"]:
            return {"seconds": 1.0, "peak_rss_bytes": 1, "notebook": None, "results": None,
                    "error": f"cell In [3] failed: RuntimeError: boom ({chapter})"}
        nbformat.write(_notebook(chapter, state["marker"]), Path(staging) / f"{chapter}.ipynb")
        path = results_path(chapter, profile)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"chapter": chapter, "profile": profile, "overridden": {}, "records": [],
                                    "provenance": {"device": "cpu (2 cores)", "versions": {"torch": "x"},
                                                   "where": f"{repo_root()}/results"}}))
        return {"seconds": 750.0, "peak_rss_bytes": 2**30, "checkpoints_at_start": 2,
                "notebook": Path(staging) / f"{chapter}.ipynb", "results": path, "error": None}

    monkeypatch.setattr(reference, "execute_chapter", fake)
    return state


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_make_writes_results_notebook_and_provenance_with_checksums(tmp_path, fake_runs):
    out = tmp_path / "ref"
    folder = reference.make_reference("smoke", ["baselines", "jumprelu"], out=out)
    assert folder == out / "smoke"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["baselines.ipynb", "baselines.json", "jumprelu.ipynb", "jumprelu.json", "provenance.json"])
    prov = reference.read_provenance(folder)
    assert prov["profile"] == "smoke" and list(prov["chapters"]) == ["baselines", "jumprelu"]
    assert prov["files"]["baselines.ipynb"] == reference.sha256(folder / "baselines.ipynb")
    entry = prov["chapters"]["baselines"]
    assert entry["seconds"] == 750.0 and entry["peak_rss_bytes"] == 2**30 and entry["device"] == "cpu (2 cores)"
    assert entry["checkpoints_at_start"] == 2
    assert "pyautoattack" in prov["versions"] and prov["machine"]["cores"] == os.cpu_count()
    assert [p.name for p in out.iterdir()] == ["smoke"]  # no staging folder left behind


def test_altered_or_missing_file_is_refused_naming_it(tmp_path, fake_runs):
    folder = reference.make_reference("smoke", ["baselines"], out=tmp_path / "ref")
    nb = folder / "baselines.ipynb"
    nb.write_text(nb.read_text().replace("run1", "run9"))
    with pytest.raises(reference.ReferenceError, match=r"baselines\.ipynb was altered.*make reference PROFILE=smoke"):
        reference.read_provenance(folder)
    nb.unlink()
    with pytest.raises(reference.ReferenceError, match=r"baselines\.ipynb is missing.*make reference PROFILE=smoke"):
        reference.read_provenance(folder)
    # the site is refused before anything is staged
    stage = tmp_path / "stage"
    with pytest.raises(reference.ReferenceError, match="baselines.ipynb is missing"):
        reference.stage_site(stage, tmp_path / "ref")
    assert not stage.exists()
    (folder / "provenance.json").unlink()
    with pytest.raises(reference.ReferenceError, match=r"provenance\.json is missing"):
        reference.read_provenance(folder)


def test_unlisted_file_is_refused(tmp_path, fake_runs):
    folder = reference.make_reference("smoke", ["baselines"], out=tmp_path / "ref")
    (folder / "extra.ipynb").write_text("{}")
    with pytest.raises(reference.ReferenceError, match="extra.ipynb"):
        reference.read_provenance(folder)


def test_a_reference_of_another_profile_is_refused(tmp_path, fake_runs):
    folder = reference.make_reference("smoke", ["baselines"], out=tmp_path / "ref")
    laptop = folder.with_name("laptop")
    shutil.copytree(folder, laptop)
    with pytest.raises(reference.ReferenceError, match=r"profile 'smoke'.*not 'laptop'.*PROFILE=laptop"):
        reference.read_provenance(laptop)
    # relabelled provenance and re-hashed, but the results file still says smoke
    prov = json.loads((laptop / "provenance.json").read_text())
    prov["profile"] = "laptop"
    (laptop / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(reference.ReferenceError, match=r"baselines\.json.*profile 'smoke'.*refused"):
        reference.read_provenance(laptop)


def test_a_failed_chapter_leaves_the_previous_reference_intact(tmp_path, fake_runs):
    out = tmp_path / "ref"
    folder = reference.make_reference("smoke", ["baselines", "jumprelu"], out=out)
    before = _snapshot(folder)
    fake_runs.update(marker="run2", fail={"jumprelu"})
    with pytest.raises(ChapterFailed, match=r"jumprelu failed.*boom.*nothing under .*smoke was changed"):
        reference.make_reference("smoke", ["baselines", "jumprelu"], out=out)
    assert _snapshot(folder) == before
    assert [p.name for p in out.iterdir()] == ["smoke"]
    # and a run that succeeds does replace it (the check above is not vacuous)
    fake_runs["fail"] = set()
    reference.make_reference("smoke", ["baselines", "jumprelu"], out=out)
    assert "run2" in (folder / "jumprelu.ipynb").read_text() and _snapshot(folder) != before


def test_a_subset_keeps_the_other_chapters_of_the_previous_reference(tmp_path, fake_runs):
    out = tmp_path / "ref"
    folder = reference.make_reference("smoke", ["baselines", "jumprelu"], out=out)
    kept = (folder / "baselines.ipynb").read_bytes()
    fake_runs.update(marker="run2", calls=[])
    reference.make_reference("smoke", ["jumprelu"], out=out)
    assert fake_runs["calls"] == ["jumprelu"]
    assert (folder / "baselines.ipynb").read_bytes() == kept and "run2" in (folder / "jumprelu.ipynb").read_text()
    assert list(reference.read_provenance(folder)["chapters"]) == ["baselines", "jumprelu"]


def test_a_damaged_previous_reference_is_refused_before_any_run(tmp_path, fake_runs):
    folder = reference.make_reference("smoke", ["baselines"], out=tmp_path / "ref")
    (folder / "baselines.json").write_text("{}")
    fake_runs["calls"] = []
    with pytest.raises(reference.ReferenceError, match="baselines.json was altered"):
        reference.make_reference("smoke", ["jumprelu"], out=tmp_path / "ref")
    assert fake_runs["calls"] == []


def test_absolute_paths_and_widget_state_are_stripped_figures_kept(tmp_path, fake_runs):
    folder = reference.make_reference("smoke", ["baselines"], out=tmp_path / "ref")
    text = (folder / "baselines.ipynb").read_text() + (folder / "baselines.json").read_text()
    for path in (str(repo_root()), os.environ["HOME"], os.environ["ROBUSTNESS_DATA"]):
        assert path not in text
    assert "<ROBUSTNESS_DATA>/MNIST" in text and "<repo>/robustness" in text
    nb = nbformat.read(folder / "baselines.ipynb", as_version=4)
    assert "widgets" not in nb.metadata
    outputs = nb.cells[1].outputs
    assert outputs[1]["data"]["image/png"] == PNG
    assert all(reference.WIDGET_MIME not in o.get("data", {}) for o in outputs)


def test_placeholders_are_longest_first_and_never_root():
    pairs = reference.path_placeholders({"HOME": "/home/u", "ROBUSTNESS_DATA": "/home/u/data", "ROBUSTNESS_RESULTS": "/"})
    assert reference.strip_paths("/home/u/data/x and /home/u/y", pairs) == "<ROBUSTNESS_DATA>/x and ~/y"
    assert all(path != "" and path != "/" for path, _ in pairs)


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True, env=env).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_stale_rule_on_a_tiny_repository(tmp_path):
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "robustness_book").mkdir()
    _git(repo, "init", "-q")
    paths = ["notebooks/ch.py", "robustness_book/ch.py"]
    for p in paths:
        (repo / p).write_text("a\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "chapter")
    made = _git(repo, "rev-parse", "HEAD")
    assert reference.stale_since(made, paths, repo) is None  # the reference's own commit
    (repo / "README").write_text("x\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "unrelated")
    later = _git(repo, "rev-parse", "HEAD")
    assert reference.stale_since(made, paths, repo) is None  # nothing of the chapter changed since
    assert reference.stale_since(later, paths, repo) is None  # made after the chapter's last change
    (repo / "robustness_book/ch.py").write_text("b\n")
    _git(repo, "commit", "-qam", "chapter code changed")
    changed = _git(repo, "rev-parse", "HEAD")
    assert reference.stale_since(made, paths, repo) == changed
    assert reference.stale_since(later, paths, repo) == changed
    assert reference.stale_since(changed, paths, repo) is None
    # git cannot tell: say nothing rather than fail
    assert reference.stale_since("0" * 40, paths, repo) is None
    assert reference.stale_since(None, paths, repo) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    assert reference.stale_since(made, paths, plain) is None


def test_chapter_paths_include_the_notebook_module_and_defenses():
    paths = reference.chapter_paths("jumprelu")
    assert paths[:3] == ["notebooks/jumprelu.py", "robustness_book/chapters/jumprelu.py", reference.VERDICT_RULES]
    assert "robustness_book/defenses/jumprelu.py" in paths
    assert all((repo_root() / p).is_file() for p in paths)


def _prov(**chapter) -> dict:
    entry = {"results": "baselines.json", "notebook": "baselines.ipynb", "seconds": 750.0, "peak_rss_bytes": 2**30,
             "device": "cpu (2 cores)", "versions": {"torch": "2.13.0", "pyautoattack": "0.2"},
             "date": "2026-12-01 10:00 UTC", "git_commit": "0123456789abcdef", "uncommitted_changes": False, **chapter}
    return {"profile": "laptop", "machine": {"cpu": "Some CPU 9000", "cores": 2, "threads": 2},
            "chapters": {"baselines": entry}, "files": {}}


def test_page_header_lists_profile_commit_machine_date_minutes():
    text = reference.page_header("baselines", "laptop", _prov(), None, "../downloads/baselines-laptop.ipynb")
    for part in ("**laptop**", "`0123456789`", "Some CPU 9000", "2026-12-01 10:00 UTC", "12.5 minutes",
                 "pyautoattack 0.2", "make reference PROFILE=laptop",
                 "{download}`Download this notebook with its outputs (.ipynb) <../downloads/baselines-laptop.ipynb>`"):
        assert part in text, part
    assert "Stale" not in text and "uncommitted" not in text
    stale = reference.page_header("baselines", "laptop", _prov(uncommitted_changes=True), "fedcba9876543210", None)
    assert "**Stale**" in stale and "`fedcba9876`" in stale and "with uncommitted changes" in stale
    assert "python -m robustness_book reference make baselines --profile laptop" in stale


def test_site_pages_from_references_missing_ones_and_paper_beside(tmp_path, fake_runs, monkeypatch):
    out = tmp_path / "ref"
    reference.make_reference("laptop", ["baselines", "jumprelu"], out=out)
    reference.make_reference("paper", ["baselines"], out=out)
    monkeypatch.setattr(reference, "stale_since", lambda commit, paths, root=None: None)
    stage = tmp_path / "stage"
    toc = reference.stage_site(stage, out)
    executed = stage / "book" / "executed"
    page = nbformat.read(executed / "baselines.ipynb", as_version=4)
    assert page.cells[0].source == "# Chapter baselines"  # the header follows the title at once
    header = page.cells[1].source
    assert page.cells[2].source == "Intro."  # the rest of the title's cell, after the header
    assert "**laptop**" in header and "baselines_paper" in header and "--profile smoke" in header
    assert (stage / "book" / "downloads" / "baselines-laptop.ipynb").read_bytes() == (
        out / "laptop" / "baselines.ipynb").read_bytes()
    paper_page = nbformat.read(executed / "baselines_paper.ipynb", as_version=4)
    assert paper_page.cells[0].source == "# Chapter baselines (paper profile)" and "**paper**" in paper_page.cells[1].source
    assert "No paper-scale run exists yet" in nbformat.read(executed / "jumprelu.ipynb", as_version=4).cells[1].source
    missing = (executed / "deep_defense.md").read_text()
    assert missing.startswith("# ") and "No reference run" in missing and "make reference PROFILE=laptop" in missing
    assert "book/executed/baselines_paper" in toc.read_text()
    # the glance page, right after the introduction; these fake results hold no records, so it names them
    first_part = yaml.safe_load(toc.read_text())["parts"][0]["chapters"]
    assert first_part[0] == {"file": reference.GLANCE_FILE.with_suffix("").as_posix()}
    glance = (stage / reference.GLANCE_FILE).read_text()
    assert glance.startswith(f"# {reference.GLANCE_TITLE}") and "baselines (laptop)" in glance
    assert "jumprelu (laptop)" in glance and "baselines (paper)" in glance and "No reference run yet" not in glance
    assert "execute_notebooks: 'off'" in (stage / "_config.yml").read_text()


def test_cli_names_the_bad_file(tmp_path, fake_runs, capsys):
    from robustness_book.cli import main

    folder = reference.make_reference("smoke", ["baselines"], out=tmp_path / "ref")
    (folder / "baselines.json").unlink()
    assert main(["reference", "site", "--out", str(tmp_path / "ref"), "--stage", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "baselines.json is missing" in err and "make reference PROFILE=smoke" in err


@pytest.mark.skipif(not (Path(os.environ.get("ROBUSTNESS_DATA_MIRROR", "/nonexistent")) / "MNIST").is_dir(),
                    reason="needs ROBUSTNESS_DATA_MIRROR with MNIST (offline end-to-end run)")
def test_smoke_reference_end_to_end(tmp_path, monkeypatch):
    """One real chapter at the smoke profile through the runner, into a temporary reference folder."""
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("ROBUSTNESS_THREADS", "1")
    folder = reference.make_reference("smoke", ["baselines"], out=tmp_path / "ref")
    prov = reference.read_provenance(folder)
    entry = prov["chapters"]["baselines"]
    assert entry["seconds"] > 0 and entry["peak_rss_bytes"] > 0
    nb = nbformat.read(folder / "baselines.ipynb", as_version=4)
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert str(repo_root()) not in (folder / "baselines.ipynb").read_text()
    assert json.loads((folder / "baselines.json").read_text())["profile"] == "smoke"


def test_chapters_may_follow_the_options_on_the_command_line(tmp_path, fake_runs):
    from robustness_book.cli import main

    assert main(["reference", "make", "--profile", "smoke", "--out", str(tmp_path / "ref"), "baselines"]) == 0
    assert list(reference.read_provenance(tmp_path / "ref" / "smoke")["chapters"]) == ["baselines"]
    with pytest.raises(SystemExit):
        main(["reference", "check", "--bogus"])
