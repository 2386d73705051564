"""Execute chapter notebooks: jupytext (py:percent) → papermill → ``book/executed/<chapter>.ipynb``.

Parameters are validated against the chapter's spec before the kernel starts,
so a typo fails in a second, not after training. The executed notebook is
written to a temporary file and renamed, so a failed run never leaves a
half-written page behind; papermill raises on any cell error. Before that
rename, the ``parameters`` cell and papermill's ``injected-parameters`` cell
are tagged ``remove-cell`` so the website never shows this bookkeeping.
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

from ._io import atomic_path
from .chapters import CHAPTER_IDS, get_chapter
from .config import resolve
from .results import repo_root
from .runtime import thread_count


#: Cells papermill uses for parameters; bookkeeping, not content, so they are hidden from the book.
BOOKKEEPING_TAGS = ("parameters", "injected-parameters")
#: Jupyter Book's tag that drops a cell (input and output) from the rendered page.
REMOVE_TAG = "remove-cell"


def hide_bookkeeping_cells(notebook) -> int:
    """Tag the ``parameters`` and ``injected-parameters`` cells ``remove-cell`` (in place).

    Returns how many cells were tagged; cells that already carry the tag are left as they are.
    """
    tagged = 0
    for cell in notebook.cells:
        tags = list(cell.get("metadata", {}).get("tags", []))
        if any(tag in tags for tag in BOOKKEEPING_TAGS) and REMOVE_TAG not in tags:
            cell.setdefault("metadata", {})["tags"] = tags + [REMOVE_TAG]
            tagged += 1
    return tagged


def executed_dir() -> Path:
    """Where executed notebooks go (``_toc.yml`` points there): ``<repo>/book/executed``."""
    return repo_root() / "book" / "executed"


#: The kernel inherits our environment. The inline backend: a non-interactive MPLBACKEND such as Agg, common in
#: CI, would silently drop every figure from the page. No progress bars: a page would keep them frozen.
_KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "ROBUSTNESS_PROGRESS": "0"}


@contextmanager
def _kernel_environment():
    # torch reads its thread count when the kernel imports it: the thread policy goes in through OpenMP's variable
    threads = str(thread_count())
    env = {**_KERNEL_ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def run_chapter(chapter: str, profile: str = "auto", parameters: Mapping[str, Any] | None = None,
                output_dir: Path | None = None, log_output: bool = False) -> Path:
    """Execute one chapter notebook with papermill; returns the executed notebook's path."""
    import jupytext
    import nbformat
    import papermill

    spec = get_chapter(chapter)
    parameters = dict(parameters or {})
    resolve(spec, profile=profile, **parameters)  # fail early, before a kernel starts
    source = repo_root() / spec.notebook
    if not source.exists():
        raise FileNotFoundError(f"notebook {source} for chapter {chapter!r} is missing")
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    target = Path(output_dir or executed_dir()) / f"{chapter}.ipynb"
    with tempfile.TemporaryDirectory() as staging, _kernel_environment():
        staged_input = Path(staging) / f"{chapter}.ipynb"
        jupytext.write(notebook, staged_input, fmt="ipynb")
        with atomic_path(target, suffix=".ipynb") as tmp:
            papermill.execute_notebook(
                str(staged_input), str(tmp), parameters={"profile": profile, **parameters},
                kernel_name="python3", cwd=str(source.parent), progress_bar=False, log_output=log_output,
            )
            executed = nbformat.read(tmp, as_version=4)
            hide_bookkeeping_cells(executed)
            nbformat.write(executed, tmp)
    return target


def run_chapters(chapters: list[str], profile: str = "auto", parameters: Mapping[str, Any] | None = None,
                 output_dir: Path | None = None, log_output: bool = False) -> list[Path]:
    """Validate every chapter's parameters first, then run them in order."""
    chapters = list(CHAPTER_IDS) if not chapters else chapters
    thread_count()  # a bad ROBUSTNESS_THREADS fails here, before any kernel starts
    for chapter in chapters:
        resolve(get_chapter(chapter), profile=profile, **dict(parameters or {}))
    paths = []
    for chapter in chapters:
        start = time.perf_counter()
        print(f"[robustness] running {chapter} (profile {profile}) ...", flush=True)
        paths.append(run_chapter(chapter, profile, parameters, output_dir, log_output))
        print(f"[robustness] {chapter} done in {time.perf_counter() - start:.0f} s → {paths[-1]}", flush=True)
    return paths
