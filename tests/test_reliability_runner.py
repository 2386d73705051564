"""The runner as a new user meets it (reliability review, ../shared/reviews/reliability-review.md): a hang fails
naming its cell, a failure is one line plus a log, the kernel runs this checkout, override pages stay beside their
results, a killed run's leftovers are cleaned, and the CLI's odd inputs get one clear line."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

from robustness_book import cli, runner
from robustness_book._io import atomic_path
from robustness_book.chapters import baselines
from robustness_book.config import ChapterSpec, Param, resolve, resolve_notebook
from robustness_book.results import repo_root

ROOT = repo_root()


def _fake_chapter(tmp_path: Path, body: str, monkeypatch) -> str:
    """A one-parameter chapter whose notebook is ``body`` after a parameters cell; returns its name."""
    source = tmp_path / "fake.py"
    source.write_text(
        "# %% tags=[\"parameters\"]\nprofile = \"auto\"\nwait = None  # seconds\n\n" + body, encoding="utf-8")
    profiles = {p: {"wait": 0.0} for p in ("smoke", "laptop", "paper")}
    spec = ChapterSpec(name="fake", title="Fake", notebook=str(source),
                       params={"wait": Param("nonneg_float", "seconds")}, profiles=profiles)
    monkeypatch.setattr(runner, "get_chapter", lambda name: spec)
    monkeypatch.setattr(runner, "executed_dir", lambda: tmp_path / "executed")
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    return "fake"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- BUG 5: the widget hang -----------------------------------------------------------------------------------

def test_widget_cells_are_not_executed_by_the_runner():
    """Every notebook cell that builds an ipywidgets control is tagged skip-execution (the kappa_slider hang)."""
    widget_calls = 0
    for path in sorted((ROOT / "notebooks").glob("*.py")):
        for cell in jupytext.read(path).cells:
            if cell.cell_type == "code" and ("_slider(" in cell.source or "interact(" in cell.source):
                widget_calls += 1
                assert runner.SKIP_TAG in cell.metadata.get("tags", []), f"{path.name}: {cell.source!r}"
    assert widget_calls >= 1  # the jumprelu slider is still there, and checked


def test_a_cell_over_the_time_limit_fails_naming_the_cell(tmp_path, monkeypatch):
    name = _fake_chapter(tmp_path, "# %%\n__import__('time').sleep(60)\n", monkeypatch)
    monkeypatch.setenv("ROBUSTNESS_CELL_TIMEOUT", "3")
    with pytest.raises(runner.ChapterFailed) as err:
        runner.run_chapter(name, "smoke")
    message = str(err.value)
    assert "sleep(60)" in message and "3 s limit" in message and "ROBUSTNESS_CELL_TIMEOUT" in message
    assert not (tmp_path / "executed" / "fake.ipynb").exists()


def test_cell_timeout_default_is_per_profile_and_checked(monkeypatch):
    monkeypatch.delenv("ROBUSTNESS_CELL_TIMEOUT", raising=False)
    assert runner.cell_timeout("smoke") < runner.cell_timeout("laptop") < runner.cell_timeout("paper")
    monkeypatch.setenv("ROBUSTNESS_CELL_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="ROBUSTNESS_CELL_TIMEOUT='soon'"):
        runner.cell_timeout("smoke")


# --- messages: one line, the traceback in a log -----------------------------------------------------------------

def test_a_failing_cell_is_one_line_and_the_traceback_goes_to_a_log(tmp_path, monkeypatch, capfd):
    name = _fake_chapter(tmp_path, "# %%\nx = 1\n\n# %%\nraise ValueError('bad thing; to fix: do that')\n",
                         monkeypatch)
    with pytest.raises(runner.ChapterFailed) as err:
        runner.run_chapter(name, "smoke")
    message = str(err.value)
    assert "\n" not in message
    assert "raise ValueError" in message and "ValueError: bad thing; to fix: do that" in message
    assert err.value.log is not None and str(err.value.log) in message
    log = err.value.log.read_text(encoding="utf-8")
    assert "Traceback" in log or "ValueError" in log
    assert "\x1b[" not in log  # no terminal colour codes in a file
    # the kernel's own "KeyboardInterrupt caught in kernel" (its shutdown) is not shown to the reader
    assert "KeyboardInterrupt" not in capfd.readouterr().err


def test_a_killed_kernel_is_reported_with_a_hint(tmp_path, monkeypatch):
    name = _fake_chapter(tmp_path, "# %%\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n", monkeypatch)
    with pytest.raises(runner.ChapterFailed, match="kernel died .*memory"):
        runner.run_chapter(name, "smoke")


def test_cli_prints_one_line_for_a_failed_chapter(tmp_path, monkeypatch, capsys):
    def fail(*args, **kwargs):
        raise runner.ChapterFailed("chapter 'baselines' failed in cell In [3] `x`: ValueError: no", tmp_path / "l.log")

    monkeypatch.setattr(runner, "run_chapters", fail)
    assert cli.main(["run", "baselines", "--profile", "smoke"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ValueError: no" in err and "l.log" in err


# --- BUG 8, the override page, and killed runs' leftovers ----------------------------------------------------------

def test_kernel_runs_this_checkout_and_override_page_goes_beside_its_results(tmp_path, monkeypatch):
    other = tmp_path / "other"  # another copy of the package the interpreter would find first
    (other / "robustness_book").mkdir(parents=True)
    (other / "robustness_book" / "__init__.py").write_text("WHICH = 'other checkout'\n")
    monkeypatch.setenv("PYTHONPATH", str(other))
    body = ("# %%\nimport pathlib, robustness_book\n"
            f"assert pathlib.Path(robustness_book.__file__).resolve().parents[1] == pathlib.Path({str(ROOT)!r}), "
            "robustness_book.__file__\n\n"
            "# %% tags=[\"skip-execution\"]\nraise RuntimeError('a skip-execution cell ran')\n")
    name = _fake_chapter(tmp_path, body, monkeypatch)
    executed = tmp_path / "executed"
    executed.mkdir()
    stale = executed / f".fake.ipynb.pid{_dead_pid()}.abc123.ipynb"
    live = executed / f".fake.ipynb.pid{__import__('os').getpid()}.def456.ipynb"
    stale.write_text("{}")
    live.write_text("{}")
    monkeypatch.setattr(runner.tempfile, "tempdir", str(tmp_path / "tmp"))
    staging = tmp_path / "tmp" / f"{runner._STAGING_PREFIX}{_dead_pid()}-xyz" / "fake.ipynb"
    staging.parent.mkdir(parents=True)
    staging.write_text("{}")

    page = runner.run_chapter(name, "smoke", {"wait": 1.0})

    assert page.parent == tmp_path / "results" / "smoke" and page.name.startswith("fake--")
    assert page.exists() and not (executed / "fake.ipynb").exists()
    assert not stale.exists() and not staging.parent.exists()
    assert live.exists()  # a concurrent run's file is left alone


def test_override_page_path_never_the_canonical_page(monkeypatch, tmp_path):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    canonical = runner.page_path("baselines", resolve(baselines.SPEC, "smoke"))
    override = runner.page_path("baselines", resolve(baselines.SPEC, "smoke", eps=0.2))
    assert canonical == runner.executed_dir() / "baselines.ipynb"
    assert override.parent == tmp_path / "smoke" and override.suffix == ".ipynb" and override != canonical


def test_atomic_path_names_its_owner_so_a_later_run_can_clean_it(tmp_path):
    with atomic_path(tmp_path / "page.ipynb", suffix=".ipynb") as tmp:
        assert f"pid{__import__('os').getpid()}" in tmp.name


# --- the CLI's odd inputs ------------------------------------------------------------------------------------

def test_profile_given_as_a_parameter(monkeypatch, capsys):
    seen, run_chapters = {}, runner.run_chapters
    monkeypatch.setattr(runner, "run_chapters", lambda chapters, profile, params, *a: seen.update(
        profile=profile, params=params))
    assert cli.main(["run", "baselines", "-p", "profile", "smoke", "-p", "eps", "0.2"]) == 0
    assert seen == {"profile": "smoke", "params": {"eps": 0.2}}
    assert cli.main(["run", "baselines", "--profile", "smoke", "-p", "profile", "laptop"]) == 2
    assert "disagree" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--profile"):
        run_chapters(["baselines"], "smoke", {"profile": "laptop"})


def test_unusable_output_dir_is_one_line(capsys):
    assert cli.main(["run", "baselines", "--profile", "smoke", "--output-dir", "/dev/null/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/null/x" in err


# --- papermill directly with an unknown name ---------------------------------------------------------------------

def test_resolve_notebook_refuses_a_name_papermill_injected():
    namespace = {name: None for name in baselines.SPEC.params}
    namespace.update(profile="smoke", In=["", "# Parameters\nprofile = \"smoke\"\nepoch = 3\n"], epoch=3)
    with pytest.raises(ValueError, match="unknown parameter.*epoch"):
        resolve_notebook(baselines.SPEC, namespace)
    # a live notebook with other plain values in it (cells rerun in any order) is never refused
    namespace.update(In=["", "records = []"], records=[], epoch=3)
    assert resolve_notebook(baselines.SPEC, namespace)["profile"] == "smoke"


def test_papermill_direct_with_unknown_name_stops_before_writing(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    notebook = tmp_path / "baselines.ipynb"
    jupytext.write(jupytext.read(ROOT / "notebooks" / "baselines.py"), notebook, fmt="ipynb")
    with pytest.raises(papermill.PapermillExecutionError, match="unknown parameter.*epoch"):
        papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name="python3",
                                   parameters={"profile": "smoke", "epoch": 3}, progress_bar=False,
                                   cwd=str(ROOT / "notebooks"))
    assert not (tmp_path / "results").exists()
