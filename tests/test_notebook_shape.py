"""Notebooks read as prose (d2l / QuantEcon): the code lives in the library, the page holds text and short calls.

Measured on the jupytext sources: no ``def`` or ``class``; no code cell over 15 lines (the parameters cell, a
declaration list hidden on the website, excepted); code characters at most equal to prose characters, counting
non-blank lines of Markdown cells against non-blank, non-comment lines of code cells, stripped.
"""
import jupytext
import pytest

from robustness_book.chapters import CHAPTER_IDS, get_chapter
from robustness_book.results import repo_root

MAX_CELL_LINES = 15
MAX_CODE_PER_PROSE = 1.0


def shape(path) -> dict:
    """Per notebook: code and prose characters, each code cell's line count, and ``def``/``class`` lines."""
    notebook = jupytext.read(path)
    out = {"code_chars": 0, "prose_chars": 0, "cells": [], "defs": []}
    for i, cell in enumerate(notebook.cells):
        lines = [line.strip() for line in cell.source.splitlines() if line.strip()]
        if cell.cell_type == "markdown":
            out["prose_chars"] += sum(map(len, lines))
            continue
        code = [line for line in lines if not line.startswith("#")]
        out["code_chars"] += sum(map(len, code))
        if "parameters" not in cell.metadata.get("tags", []):
            out["cells"].append((i, len(code)))
        out["defs"] += [line for line in code if line.startswith(("def ", "class ", "async def ", "lambda"))]
    return out


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_notebook_is_text_first_with_short_cells(chapter):
    s = shape(repo_root() / get_chapter(chapter).notebook)
    assert not s["defs"], f"{chapter}: move these into robustness_book/chapters/{chapter}.py: {s['defs']}"
    long = [(i, n) for i, n in s["cells"] if n > MAX_CELL_LINES]
    assert not long, f"{chapter}: code cells (index, lines) over {MAX_CELL_LINES} lines: {long}"
    ratio = s["code_chars"] / max(s["prose_chars"], 1)
    assert ratio <= MAX_CODE_PER_PROSE, f"{chapter}: code/prose = {ratio:.2f} > {MAX_CODE_PER_PROSE}"


def test_the_measure_counts_what_it_should(tmp_path):
    nb = tmp_path / "nb.py"
    nb.write_text('# %% [markdown]\n# Four\n\n# %% tags=["parameters"]\nx = None  # help\n\n'
                  '# %%\n# a comment\ndef f():\n    return 1\n')
    s = shape(nb)
    assert s["prose_chars"] == len("Four") and s["defs"] == ["def f():"]
    assert s["cells"] == [(2, 2)] and s["code_chars"] == len("x = None  # help") + len("def f():return 1")
