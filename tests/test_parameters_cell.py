"""Each notebook's papermill parameters cell matches its chapter's SPEC, name for name, with inline help."""
import jupytext
import papermill
import pytest

from robustness_book.chapters import CHAPTER_IDS, get_chapter
from robustness_book.results import repo_root


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_parameters_cell_agrees_with_the_spec_and_carries_help(chapter, tmp_path):
    spec = get_chapter(chapter)
    notebook = jupytext.read(repo_root() / spec.notebook)
    path = tmp_path / f"{chapter}.ipynb"
    jupytext.write(notebook, path, fmt="ipynb")
    # what `papermill --help-notebook` shows: every parameter parsed, in order, each with its help text
    params = papermill.inspect_notebook(str(path))
    assert list(params) == ["profile", *spec.params]
    for name, p in spec.params.items():
        assert params[name]["default"] == "None"  # the value comes from the profile unless set
        assert params[name]["help"].startswith(p.help), name
