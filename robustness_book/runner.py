"""Execute chapter notebooks: jupytext (py:percent) → papermill → ``book/executed/<chapter>.ipynb``.

Parameters are validated against the chapter's spec before the kernel starts,
so a typo fails in a second, not after training. The executed notebook is
written to a temporary file and renamed, so a failed run never leaves a
half-written page behind; papermill raises on any cell error. Before that
rename, the ``parameters`` cell and papermill's ``injected-parameters`` cell
are tagged ``remove-cell`` so the website never shows this bookkeeping.

A run with parameters set by hand writes its page beside its results file
(``results/<profile>/<chapter>--<hash>.ipynb``), never over the canonical page the
book is built from. A failure inside the notebook becomes one :class:`ChapterFailed`
line (the cell, the error); the full traceback and the kernel's own messages go to a
log file the line names. Every cell runs under a generous time limit, so a hang fails
with the cell's name instead of waiting forever; cells tagged ``skip-execution``
(live-only widgets) are not executed.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Mapping

from ._io import atomic_path, pid_alive, remove_stale_partials
from .chapters import CHAPTER_IDS, get_chapter
from .config import resolve
from .results import overrides_of, repo_root, results_dir, results_path
from .runtime import thread_count


#: Cells papermill uses for parameters; bookkeeping, not content, so they are hidden from the book.
BOOKKEEPING_TAGS = ("parameters", "injected-parameters")
#: Jupyter Book's tag that drops a cell (input and output) from the rendered page.
REMOVE_TAG = "remove-cell"
#: nbclient's tag for a cell it shows but does not execute: live-only widgets (an ``interact`` slider can hang
#: nbclient for good, jupyter/nbclient#312, and a static page shows nothing of it anyway).
SKIP_TAG = "skip-execution"
#: Seconds one cell may run before the run fails naming it. Generous: the longest laptop cell takes minutes; a
#: paper-profile training cell on a GPU can take hours. ``ROBUSTNESS_CELL_TIMEOUT`` overrides.
CELL_TIMEOUT_S = {"smoke": 900, "laptop": 2 * 3600, "paper": 24 * 3600}
#: Prefix of the staging folders in $TMPDIR (with the owner's pid, so a later run can remove a killed run's).
_STAGING_PREFIX = "robustness-run-"


class ChapterFailed(RuntimeError):
    """A chapter notebook failed while running: ``str()`` is the one line a reader needs; ``log`` the details."""

    def __init__(self, message: str, log: Path | None = None):
        super().__init__(message + (f" (full traceback: {log})" if log else ""))
        self.log = log


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


def logs_dir() -> Path:
    """Where each run's log goes (kernel messages, and the full traceback of a failure): ``<results>/logs``."""
    return results_dir() / "logs"


def cell_timeout(profile: str) -> int:
    """Per-cell time limit in seconds: ``$ROBUSTNESS_CELL_TIMEOUT``, else the profile's :data:`CELL_TIMEOUT_S`."""
    text = os.environ.get("ROBUSTNESS_CELL_TIMEOUT")
    if text is None:
        return CELL_TIMEOUT_S[profile]
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ValueError(f"ROBUSTNESS_CELL_TIMEOUT={text!r} is invalid: expected a whole number of seconds > 0")
    return seconds


#: The kernel inherits our environment. The inline backend: a non-interactive MPLBACKEND such as Agg, common in
#: CI, would silently drop every figure from the page. No progress bars: a page would keep them frozen.
_KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "ROBUSTNESS_PROGRESS": "0"}


@contextmanager
def _kernel_environment():
    # torch reads its thread count when the kernel imports it: the thread policy goes in through OpenMP's variable
    threads = str(thread_count())
    # The checkout first on the kernel's path: the kernel must run the code the CLI validated, not another copy
    # of the package that the interpreter happens to have installed (one virtualenv serving two checkouts).
    path = os.pathsep.join([str(repo_root()), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**_KERNEL_ENV, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONPATH": path}
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


@contextmanager
def _papermill_log_to(stream, enabled: bool):
    """Papermill's own log lines (e.g. "Timeout waiting for execute reply") go to the run's log, not the
    terminal, unless the reader asked to stream the notebook's output (--log-output)."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("papermill")
    handler = logging.StreamHandler(stream)
    old = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = old


def _kernel_manager(stderr_file):
    """A kernel manager whose kernel writes its own messages (IPKernelApp's log) to ``stderr_file``, not to the
    terminal: they are noise to a reader (a cell error is followed by "KeyboardInterrupt caught in kernel" when
    nbclient interrupts the kernel to shut it down), and the log keeps them."""
    from jupyter_client import AsyncKernelManager

    class _LoggedKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            kw["stderr"] = stderr_file
            return await super()._async_launch_kernel(kernel_cmd, **kw)

    return _LoggedKernelManager


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(source: str) -> str:
    lines = [ln.strip() for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    text = lines[0] if lines else "(empty)"
    return text if len(text) <= 70 else text[:67] + "..."


def _failure(chapter: str, err: BaseException, current: dict, log: Path, timeout: int) -> ChapterFailed:
    """One line for the reader (the cell, the error, what to do); the details appended to ``log``."""
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(err, PapermillExecutionError):
        where = f"cell In [{err.exec_count}] `{_first_line(err.source)}`"
        what = f"{err.ename}: {err.evalue}"
        details = f"cell source:\n{err.source}\n\n" + _ANSI.sub("", "\n".join(err.traceback))
    else:
        index, source = current.get("index"), current.get("source", "")
        where = f"cell {index} `{_first_line(source)}`" if index is not None else "a cell"
        details = f"cell source:\n{source}\n\n{type(err).__name__}: {err}"
        if isinstance(err, CellTimeoutError):
            what = (f"it ran longer than the {timeout} s limit per cell and was stopped (a hang?); give it more "
                    f"time with ROBUSTNESS_CELL_TIMEOUT=SECONDS")
        elif isinstance(err, DeadKernelError):
            what = ("the notebook's kernel died (killed from outside, most often for lack of memory: try a smaller "
                    "profile, batch_size or --threads, then rerun)")
        else:
            what = f"{type(err).__name__}: {err}"
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"\n[robustness] chapter {chapter} failed in {where}\n{details}\n")
    return ChapterFailed(f"chapter {chapter!r} failed in {where}: {what}", log)


def _remove_stale_staging() -> None:
    """Staging folders of runs that were killed (SIGKILL skips every cleanup) are removed by the next run."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_STAGING_PREFIX}*"):
        pid = folder.name[len(_STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def page_path(chapter: str, cfg: Mapping[str, Any], output_dir: Path | None = None) -> Path:
    """Where the executed page goes: ``output_dir`` if given; else the canonical ``book/executed/<chapter>.ipynb``
    for a profile's own run, and ``results/<profile>/<chapter>--<hash>.ipynb`` (beside its results file) for a run
    with values set by hand, so that it never replaces the page the book is built from."""
    if output_dir is not None:
        return Path(output_dir) / f"{chapter}.ipynb"
    overrides = overrides_of(cfg)
    if overrides:
        return results_path(chapter, cfg["profile"], overrides).with_suffix(".ipynb")
    return executed_dir() / f"{chapter}.ipynb"


def _writable_folder(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{what} {folder} cannot be used: {err.strerror or err}; give a writable folder") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{what} {folder} is not writable; give a writable folder")


def _check_profile_not_parameter(parameters: Mapping[str, Any]) -> None:
    if "profile" in parameters:
        raise ValueError("profile is chosen with --profile (python -m robustness_book run CHAPTER --profile laptop), "
                         "not among the parameters")


def run_chapter(chapter: str, profile: str = "auto", parameters: Mapping[str, Any] | None = None,
                output_dir: Path | None = None, log_output: bool = False) -> Path:
    """Execute one chapter notebook with papermill; returns the executed notebook's path.

    Raises ``ValueError`` for a wrong parameter or an unusable output folder (before the kernel starts) and
    :class:`ChapterFailed` when a cell fails, hangs past the time limit or the kernel dies.
    """
    import jupytext
    import nbformat
    import papermill

    spec = get_chapter(chapter)
    parameters = dict(parameters or {})
    _check_profile_not_parameter(parameters)
    cfg = resolve(spec, profile=profile, **parameters)  # fail early, before a kernel starts
    timeout = cell_timeout(cfg["profile"])
    source = repo_root() / spec.notebook
    if not source.exists():
        raise FileNotFoundError(f"notebook {source} for chapter {chapter!r} is missing")
    target = page_path(chapter, cfg, output_dir)
    _writable_folder(target.parent, "the output folder" if output_dir else "the folder of the page")
    log = logs_dir() / f"{target.stem}.log"
    _writable_folder(log.parent, "the log folder")
    for folder in {target.parent, executed_dir()}:
        if folder.is_dir():
            remove_stale_partials(folder)
    _remove_stale_staging()
    notebook = jupytext.read(source)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    with tempfile.TemporaryDirectory(prefix=f"{_STAGING_PREFIX}{os.getpid()}-") as staging, \
            _kernel_environment(), open(log, "w", encoding="utf-8") as log_fh:
        log_fh.write(f"[robustness] {chapter}, profile {cfg['profile']}, page {target}\n")
        log_fh.flush()
        staged_input = Path(staging) / f"{chapter}.ipynb"
        jupytext.write(notebook, staged_input, fmt="ipynb")
        current: dict = {}  # the cell being executed, for the message when a hang or a dead kernel stops the run

        def on_cell_start(cell, cell_index):
            current.update(index=cell_index, source=cell.source)

        with atomic_path(target, suffix=".ipynb") as tmp, _papermill_log_to(log_fh, not log_output):
            try:
                papermill.execute_notebook(
                    str(staged_input), str(tmp), parameters={"profile": profile, **parameters},
                    kernel_name="python3", cwd=str(source.parent), progress_bar=False, log_output=log_output,
                    execution_timeout=timeout, kernel_manager_class=_kernel_manager(log_fh),
                    on_cell_start=on_cell_start,
                )
            except Exception as err:  # noqa: BLE001 - every in-notebook failure becomes one line + the log
                log_fh.flush()
                raise _failure(chapter, err, current, log, timeout) from None
            executed = nbformat.read(tmp, as_version=4)
            hide_bookkeeping_cells(executed)
            nbformat.write(executed, tmp)
    return target


def run_chapters(chapters: list[str], profile: str = "auto", parameters: Mapping[str, Any] | None = None,
                 output_dir: Path | None = None, log_output: bool = False) -> list[Path]:
    """Validate every chapter's parameters first, then run them in order."""
    chapters = list(CHAPTER_IDS) if not chapters else chapters
    parameters = dict(parameters or {})
    thread_count()  # a bad ROBUSTNESS_THREADS fails here, before any kernel starts
    _check_profile_not_parameter(parameters)
    for chapter in chapters:
        cell_timeout(resolve(get_chapter(chapter), profile=profile, **parameters)["profile"])
    if output_dir is not None:
        _writable_folder(Path(output_dir), "the output folder")
    paths = []
    for chapter in chapters:
        start = time.perf_counter()
        print(f"[robustness] running {chapter} (profile {profile}) ...", flush=True)
        paths.append(run_chapter(chapter, profile, parameters, output_dir, log_output))
        print(f"[robustness] {chapter} done in {time.perf_counter() - start:.0f} s → {paths[-1]}", flush=True)
    return paths
