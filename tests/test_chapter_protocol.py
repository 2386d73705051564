"""Six chapters, one shape: every chapter module and notebook follow the kit's protocol (issue 22).

- the notebook makes ``run = <chapter>.Run(cfg)``, a :class:`robustness_book.chapters.kit.Run`;
- every call the notebook makes with ``run`` alone is a step ``step(run)``; every call with ``run.results()`` is a
  table, figure or verdict ``f(results, ...)``;
- one name per role: ``health_tables``, ``verdict_summary``, ``verdict`` exist in every chapter;
- no chapter module imports another chapter (only the kit).
"""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

from robustness_book.chapters import CHAPTER_IDS, kit

ROOT = Path(__file__).resolve().parents[1]


def _notebook_calls(chapter: str):
    """(alias of the chapter module, [(function name, argument source)]) from the chapter's notebook."""
    tree = ast.parse((ROOT / "notebooks" / f"{chapter}.py").read_text(encoding="utf-8"))
    alias = None
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "robustness_book.chapters":
            for a in node.names:
                if a.name == chapter:
                    alias = a.asname or a.name
    calls = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == alias):
            calls.append((node.func.attr, [ast.unparse(a) for a in node.args]))
    return alias, calls


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_notebook_builds_a_kit_run(chapter):
    module = importlib.import_module(f"robustness_book.chapters.{chapter}")
    alias, calls = _notebook_calls(chapter)
    assert alias is not None, f"notebooks/{chapter}.py does not import robustness_book.chapters.{chapter}"
    assert ("Run", ["cfg"]) in calls, f"notebooks/{chapter}.py: expected run = {alias}.Run(cfg)"
    assert issubclass(module.Run, kit.Run)


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_steps_take_the_run_and_tables_take_the_results(chapter):
    module = importlib.import_module(f"robustness_book.chapters.{chapter}")
    _, calls = _notebook_calls(chapter)
    steps = {name for name, args in calls if args == ["run"]}
    readers = {name for name, args in calls if args[:1] == ["run.results()"]}
    assert steps and readers, f"notebooks/{chapter}.py: no step(run) or table(run.results()) call"
    for name in steps:
        params = list(inspect.signature(getattr(module, name)).parameters)
        assert params[:1] == ["run"] and all(
            p.default is not inspect.Parameter.empty for p in list(inspect.signature(
                getattr(module, name)).parameters.values())[1:]), f"{chapter}.{name}{params}: a step is step(run)"
    for name in readers:
        params = list(inspect.signature(getattr(module, name)).parameters)
        assert params[:1] == ["results"], f"{chapter}.{name}{params}: tables and figures take the results first"


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_one_name_per_role(chapter):
    module = importlib.import_module(f"robustness_book.chapters.{chapter}")
    for role in ("health_tables", "verdict_summary", "verdict"):
        fn = getattr(module, role, None)
        assert callable(fn), f"{chapter} has no {role}"
        assert list(inspect.signature(fn).parameters)[:1] == ["results"], f"{chapter}.{role} takes results first"


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_no_chapter_imports_another(chapter):
    tree = ast.parse((ROOT / "robustness_book" / "chapters" / f"{chapter}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names = {a.name for a in node.names}
            if node.level == 1 and node.module is None:  # from . import x
                assert names <= {"kit"}, f"{chapter}.py:{node.lineno} imports {names}"
            if node.level == 1 and node.module:
                assert node.module == "kit", f"{chapter}.py:{node.lineno} imports .{node.module}"
