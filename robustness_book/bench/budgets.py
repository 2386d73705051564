"""``--chapters [CHAPTER ...]``: each chapter's profile run twice through :func:`robustness_book.runner.run_chapter`,
in a subprocess per run, with a fresh empty checkpoint cache (models train) and then with that cache filled, into
temporary folders (the book's pages and results are not touched): wall time of each run, peak RSS of the run's
process tree (notebook kernel included) and the budget check of :data:`BUDGETS` (:func:`budget_checks`, pure)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from ..chapters import CHAPTER_IDS, get_chapter
from ..config import resolve
from ..results import repo_root
from ..runtime import thread_count
from ._common import provenance, verdict


@dataclass(frozen=True)
class Budget:
    """A profile's per-chapter budget: wall seconds with a filled checkpoint cache (``cached_s``), with an empty
    one (``uncached_s``, absolute) and/or its excess over the cached run (``extra_s``, the training), and the
    peak RSS of the run's process tree (bytes). ``None``: not budgeted."""

    cached_s: float | None
    uncached_s: float | None
    extra_s: float | None
    rss_bytes: float | None


GB = 1e9
#: laptop: ≤ 15 min with the cache, ≤ 20 min more without it, ≤ 4 GB; smoke: ≤ 2 min per run. (paper: none.)
BUDGETS = {
    "laptop": Budget(cached_s=15 * 60, uncached_s=None, extra_s=20 * 60, rss_bytes=4 * GB),
    "smoke": Budget(cached_s=2 * 60, uncached_s=2 * 60, extra_s=None, rss_bytes=4 * GB),
}

#: A whole reference run (``make reference PROFILE=…``, every chapter one after the other, one checkpoint cache):
#: laptop ≤ 90 min from an empty cache on the 2-core machine (the model zoo is shared between chapters).
REFERENCE_BUDGET_S = {"laptop": 90 * 60}


def budget_checks(profile: str, uncached_s: float | None, cached_s: float | None,
                  peak_rss_bytes: float | None) -> dict:
    """Each limit of ``profile``'s budget against a chapter's measurements (a limit is met at equality; a
    missing measurement, e.g. from a failed run, fails its check). Returns ``{"checks": [{"what", "value",
    "limit", "pass"}], "pass"}``; ``pass`` is ``None`` for a profile without a budget."""
    budget = BUDGETS.get(profile)
    if budget is None:
        return {"checks": [], "pass": None}
    extra = None if uncached_s is None or cached_s is None else uncached_s - cached_s
    rows = [("with cache", "s", cached_s, budget.cached_s), ("without cache", "s", uncached_s, budget.uncached_s),
            ("training (without − with cache)", "s", extra, budget.extra_s),
            ("peak RSS", "bytes", peak_rss_bytes, budget.rss_bytes)]
    checks = [{"what": what, "unit": unit, "value": value, "limit": limit,
               "pass": value is not None and value <= limit}
              for what, unit, value, limit in rows if limit is not None]
    return {"checks": checks, "pass": all(c["pass"] for c in checks)}



_CHILD = ("import sys; from pathlib import Path; from robustness_book.runner import run_chapter; "
          "run_chapter(sys.argv[1], sys.argv[2], output_dir=Path(sys.argv[3]))")


def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of process ``pid`` and its descendants now (0 if psutil is missing or it is gone)."""
    try:
        import psutil
    except ImportError:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure_run(chapter: str, profile: str, env: dict, output_dir: Path, log: Path,
                sample_every: float = 0.5) -> dict:
    """One chapter run in a subprocess: wall seconds, peak RSS and exit status.

    Peak RSS is the larger of two figures: ``os.wait4``'s ``ru_maxrss`` (exact, the largest single process of the
    run's tree that was waited for: the notebook kernel) and the summed RSS of the whole tree sampled every
    ``sample_every`` seconds with psutil when it is installed (the driver and the kernel together)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, chapter, profile, str(output_dir)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=repo_root())
        tree_peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, _tree_rss(proc.pid))
            time.sleep(sample_every)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    seconds = time.perf_counter() - start
    single_peak = usage.ru_maxrss * 1024  # Linux: KiB
    return {"seconds": seconds, "returncode": proc.returncode, "peak_rss_bytes": max(single_peak, tree_peak),
            "peak_rss_single_process_bytes": single_peak, "peak_rss_tree_sampled_bytes": tree_peak or None}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_chapter_budgets(chapters: list[str], profile: str = "laptop",
                        on_row: Callable[[dict], None] | None = None, note: str | None = None) -> dict:
    """Each chapter twice (empty, then filled checkpoint cache) in temporary folders; printed and returned.
    ``on_row(content so far)`` is called after each chapter (the command writes its JSON then, so a run cut off
    keeps the chapters it measured, marked ``"complete": false``). ``note``: the conditions of the run in words
    (e.g. what else shared the machine), shown on the page."""
    chapters = list(chapters) or list(CHAPTER_IDS)
    for chapter in chapters:
        resolve(get_chapter(chapter), profile=profile)  # a bad chapter or profile fails before any run
    budget = BUDGETS.get(profile)
    print(f"chapters {', '.join(chapters)}, profile {profile}, threads {thread_count()}; budget: "
          f"{_budget_text(budget)}")
    rows = []
    started = provenance("cpu")  # the code that runs is the code at the start (the tree may change meanwhile)
    for chapter in chapters:
        with tempfile.TemporaryDirectory(prefix=f"bench-{chapter}-") as tmp:
            tmp = Path(tmp)
            # nothing the chapter may reuse comes from the user's folders: checkpoints, results, adversary sets
            env = {**os.environ, "ROBUSTNESS_CHECKPOINTS": str(tmp / "checkpoints"),
                   "ROBUSTNESS_RESULTS": str(tmp / "results"), "ROBUSTNESS_ADVERSARIES": str(tmp / "adversaries")}
            runs = {}
            for label in ("uncached", "cached"):
                print(f"[bench] {chapter}: run {'with an empty' if label == 'uncached' else 'with the filled'} "
                      f"checkpoint cache ...", flush=True)
                log = tmp / f"{label}.log"
                runs[label] = measure_run(chapter, profile, env, tmp / label, log)
                if runs[label]["returncode"] != 0:
                    runs[label]["error"] = _tail(log)
                    print(f"[bench] {chapter} failed (exit {runs[label]['returncode']}):\n{runs[label]['error']}",
                          flush=True)
        ok = {k: r["returncode"] == 0 for k, r in runs.items()}
        uncached = runs["uncached"]["seconds"] if ok["uncached"] else None
        cached = runs["cached"]["seconds"] if ok["cached"] else None
        peak = max(r["peak_rss_bytes"] for r in runs.values())
        checks = budget_checks(profile, uncached, cached, peak)
        row = {"chapter": chapter, "uncached_s": uncached, "cached_s": cached,
               "training_s": None if uncached is None or cached is None else uncached - cached,
               "peak_rss_bytes": peak, "runs": runs, **checks}
        rows.append(row)
        _print_budget_row(row)
        if on_row is not None:
            on_row(_budget_content(profile, budget, list(rows), len(rows) == len(chapters), started, note))
    return _budget_content(profile, budget, rows, True, started, note)


def _budget_content(profile: str, budget: Budget | None, rows: list[dict], complete: bool, started: dict,
                    note: str | None) -> dict:
    return {"kind": "chapters", "profile": profile, "budget": None if budget is None else asdict(budget),
            "chapters": rows, "complete": complete,
            "pass": None if budget is None else all(r["pass"] for r in rows), "provenance": started,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **({"note": note} if note else {})}


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def _budget_text(budget: Budget | None) -> str:
    if budget is None:
        return "none for this profile"
    parts = []
    if budget.cached_s is not None:
        parts.append(f"≤ {_minutes(budget.cached_s)} with the cache")
    if budget.uncached_s is not None:
        parts.append(f"≤ {_minutes(budget.uncached_s)} without it")
    if budget.extra_s is not None:
        parts.append(f"≤ {_minutes(budget.extra_s)} more without it")
    if budget.rss_bytes is not None:
        parts.append(f"peak RSS ≤ {budget.rss_bytes / GB:g} GB")
    return ", ".join(parts)


def _print_budget_row(row: dict) -> None:
    failed = [c["what"] for c in row["checks"] if not c["pass"]]
    status = verdict(row["pass"]) + (f" ({'; '.join(failed)})" if failed else "")
    print(f"{row['chapter']:<14} without cache {_minutes(row['uncached_s']):>10}  with cache "
          f"{_minutes(row['cached_s']):>10}  peak RSS {row['peak_rss_bytes'] / GB:5.2f} GB  budget {status}",
          flush=True)
