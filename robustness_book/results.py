"""One JSON per chapter run, RobustBench-style: the single source of every table, test and comparison.

The heart of a results file is ``records``: a flat list of measurements that all chapters share, one dict per
number with the fields of :data:`FIELDS` (chapter, data set, model, defense, attack, threat model, eps, metric,
value, n, interval, profile, seed, and ``setting`` for the method's own knobs such as kappa or lambda). Beside
them: ``parameters``, ``overridden``, ``provenance``, ``health`` (rows of the health checks), ``timings``
(everything that depends on the machine's speed, so that two runs with the same parameters and seed have
identical records) and ``extra`` (non-tabular data a figure needs). Non-finite values are written as the strings
``"inf"``, ``"-inf"``, ``"nan"`` (JSON has none) and read back as floats.

``results/<profile>/<chapter>.json`` is the profile's canonical run; a run with parameters set by hand goes to
``<chapter>--<hash of those values>.json`` beside it, never over it. Files are written atomically.
The papers' own published numbers live once per paper in ``robustness_book/anchors/<paper>.json`` in the same
record shape (:func:`anchors`).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from . import __version__
from ._io import atomic_write_text
from .timing import StageTimer  # also importable as results.StageTimer


def repo_root() -> Path:
    """The book's repository root (where ``_toc.yml`` is), else the current folder."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "_toc.yml").exists() else Path.cwd()


def results_dir() -> Path:
    """``$ROBUSTNESS_RESULTS``, else ``<repo>/results``."""
    env = os.environ.get("ROBUSTNESS_RESULTS")
    return Path(env) if env else repo_root() / "results"


def run_id(overrides: dict | None) -> str:
    """``""`` for the profile's canonical run, else a short hash of the values set by hand."""
    if not overrides:
        return ""
    text = json.dumps(_clean(overrides), sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def results_path(chapter: str, profile: str, overrides: dict | None = None) -> Path:
    """Where a run's results go: ``<chapter>.json``, or ``<chapter>--<hash>.json`` for a run with overrides."""
    rid = run_id(overrides)
    return results_dir() / profile / (f"{chapter}--{rid}.json" if rid else f"{chapter}.json")


def overrides_of(cfg: dict) -> dict:
    """The parameters a reader set by hand, with their resolved values."""
    return {name: cfg[name] for name in cfg.get("overridden", [])}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _installed_version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def provenance(cfg: dict, timer: StageTimer | None = None) -> dict:
    """Where a number came from: commit, versions, device, seed and time per stage."""
    import numpy
    import torch

    from ._torchvision import import_torchvision

    device = cfg.get("device", "cpu")
    return {
        "git_commit": git_commit(),
        "versions": {"robustness_book": __version__, "torch": torch.__version__,
                     "torchvision": import_torchvision().__version__, "numpy": numpy.__version__,
                     "pyautoattack": _installed_version("pyautoattack"), "python": platform.python_version()},
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "seed": cfg.get("seed"),
        "seconds": {k: round(v, 3) for k, v in (timer.seconds if timer else {}).items()},
        "total_seconds": round(timer.total, 3) if timer else None,
    }


#: The fields of a record, in order. ``setting`` holds the method's own knobs (``{"kappa": 0.5}``).
FIELDS = ("chapter", "dataset", "model", "defense", "attack", "threat_model", "eps", "metric", "value", "n",
          "interval", "profile", "seed", "setting")
THREAT_MODELS = ("none", "linf", "l2", "linf_normalized")
_NON_FINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def record(cfg: dict, *, dataset: str, model: str, metric: str, value: float, defense: str = "none",
           attack: str = "none", threat_model: str = "none", eps: float | None = None, n: int | None = None,
           interval: tuple[float, float] | None = None, seed: int | None = None, **setting: Any) -> dict:
    """One measurement in the shared schema; ``chapter``, ``profile`` and ``seed`` come from ``cfg``.

    ``attack="none"`` with ``threat_model="none"`` is a clean measurement. An accuracy with ``n`` and no interval
    gets its 95% Wilson interval. Extra keyword arguments go to ``setting`` (numbers, strings or booleans).
    """
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r}: expected one of {', '.join(THREAT_MODELS)}")
    if metric == "accuracy" and n and interval is None and math.isfinite(value):
        from .evaluate.stats import wilson_interval

        interval = wilson_interval(round(value * n), n)
    for key, v in setting.items():
        if not isinstance(v, (int, float, str, bool)) and v is not None:
            raise TypeError(f"setting {key}={v!r}: a record's setting holds numbers, strings or booleans")
    return {"chapter": cfg["chapter"], "dataset": dataset, "model": model, "defense": defense, "attack": attack,
            "threat_model": threat_model, "eps": None if eps is None else float(eps), "metric": metric,
            "value": float(value), "n": None if n is None else int(n),
            "interval": None if interval is None else [float(interval[0]), float(interval[1])],
            "profile": cfg["profile"], "seed": cfg.get("seed") if seed is None else seed, "setting": dict(setting)}


_MISSING = object()


def _matches(rec: dict, key: str, want: Any) -> bool:
    have = rec[key] if key in FIELDS else rec["setting"].get(key, _MISSING)
    if isinstance(want, float) and isinstance(have, (int, float)) and not isinstance(have, bool):
        return math.isclose(have, want, rel_tol=1e-9, abs_tol=1e-12)
    return have == want


def select(records: list[dict], **match: Any) -> list[dict]:
    """The records whose fields (or ``setting`` entries) equal every given value (floats compared closely)."""
    return [r for r in records if all(_matches(r, k, v) for k, v in match.items())]


def first(records: list[dict], **match: Any) -> dict | None:
    """The first record matching ``match``, or ``None`` when there is none."""
    return next((r for r in records if all(_matches(r, k, v) for k, v in match.items())), None)


def one(records: list[dict], **match: Any) -> dict:
    """The single record matching ``match``; an error lists what does exist when there is none or several."""
    found = select(records, **match)
    if len(found) != 1:
        near = sorted({(r["dataset"], r["model"], r["attack"], r["metric"]) for r in records})[:12]
        raise KeyError(f"{len(found)} records match {match}; (dataset, model, attack, metric) present: {near}")
    return found[0]


def value(records: list[dict], **match: Any) -> float:
    """``one(records, **match)["value"]``."""
    return one(records, **match)["value"]


def _clean(value: Any) -> Any:
    """JSON has no NaN or ∞: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _restore(value: Any) -> Any:
    """Undo :func:`_clean`: ``"inf"``, ``"-inf"`` and ``"nan"`` become floats again."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if isinstance(value, dict):
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def check_records(records: list[dict]) -> None:
    """Every record has exactly the schema's fields; raises ``ValueError`` naming the first that does not."""
    for i, rec in enumerate(records):
        if tuple(rec) != FIELDS:
            raise ValueError(f"record {i} has fields {tuple(rec)}; the schema is {FIELDS} (use results.record)")


def write_results(cfg: dict, records: list[dict], health: list | None = None, timer: StageTimer | None = None,
                  timings: dict | None = None, extra: dict | None = None) -> Path:
    """Write the chapter's results JSON atomically and return its path.

    ``records`` must be deterministic given the parameters and seed; wall-clock measurements (attack cost,
    training seconds) belong in ``timings``. A run with parameters set by hand is written beside the canonical
    file (:func:`results_path`).
    """
    check_records(records)
    params = {k: v for k, v in cfg.items() if k not in ("chapter", "profile")}
    content = {"chapter": cfg["chapter"], "profile": cfg["profile"], "parameters": params,
               "overridden": overrides_of(cfg), "provenance": provenance(cfg, timer), "records": records,
               "health": health or [], "timings": timings or {}, "extra": extra or {}}
    path = results_path(cfg["chapter"], cfg["profile"], overrides_of(cfg))
    atomic_write_text(path, json.dumps(_clean(content), indent=1, ensure_ascii=False))
    return path


class ResultsFileError(ValueError):
    """A results file exists but is not one: cut short, not UTF-8, not JSON, or not the shape write_results
    writes. The message names the file, what is wrong and the command that rewrites it."""


def _problem(content: Any) -> str | None:
    """What keeps parsed JSON from being a results file (``None``: nothing). Only what readers rely on."""
    if not isinstance(content, dict):
        kind = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}
        return f"it holds {kind.get(type(content), 'null')}, not a JSON object"
    records = content.get("records")
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        return "its records are missing or not a list of objects"
    for key in ("overridden", "provenance", "extra"):
        if key in content and not isinstance(content[key], dict):
            return f"its {key} is not an object"
    for key in ("chapter", "profile"):
        if key in content and not isinstance(content[key], str):
            return f"its {key} is not a string"
    return None


def _read(path: Path) -> tuple[dict | None, str | None]:
    """``(content, None)``, or ``(None, what is wrong)`` for a file that is not a results file; OSError raises."""
    try:
        content = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"not UTF-8 text ({err})"
    except json.JSONDecodeError as err:
        return None, f"not valid JSON, perhaps cut short ({err})"
    problem = _problem(content)
    return (None, problem) if problem else (content, None)


def _run_command(chapter: str, profile: str, overrides: dict | None = None) -> str:
    import shlex

    extra = "".join(f" -p {name} {shlex.quote(repr(v))}" for name, v in (overrides or {}).items())
    return f"python -m robustness_book run {chapter} --profile {profile}{extra}"


def load_results(chapter: str, profile: str, overrides: dict | None = None) -> dict:
    """Read a chapter's results (non-finite values restored); a missing file names the command that makes it, a
    damaged one raises :class:`ResultsFileError` naming the file and the command that rewrites it."""
    path = results_path(chapter, profile, overrides)
    if not path.exists():
        raise FileNotFoundError(f"no results for chapter {chapter!r} with profile {profile!r} at {path}; "
                                f"make them with: {_run_command(chapter, profile, overrides)}")
    content, problem = _read(path)
    if problem:
        raise ResultsFileError(f"{path} cannot be read as a results file: {problem}; rewrite it with: "
                               f"{_run_command(chapter, profile, overrides)}")
    return _restore(content)


def list_results() -> list[dict]:
    """One row per results file: profile, chapter, what was set by hand, number of records, commit, path. A file
    that cannot be read as one is listed with its problem in ``error``, never hiding the others."""
    rows = []
    for path in sorted(results_dir().glob("*/*.json")):
        try:
            content, problem = _read(path)
        except OSError as err:
            content, problem = None, f"unreadable ({err})"
        if problem:
            rows.append({"profile": path.parent.name, "chapter": path.stem, "overridden": {}, "records": None,
                         "commit": None, "path": str(path), "error": f"not a results file: {problem}"})
            continue
        commit = content.get("provenance", {}).get("git_commit")
        rows.append({"profile": content.get("profile", path.parent.name),
                     "chapter": content.get("chapter", path.stem),
                     "overridden": content.get("overridden", {}), "records": len(content["records"]),
                     "commit": commit[:10] if isinstance(commit, str) else "", "path": str(path)})
    return rows


def anchors(paper: str) -> list[dict]:
    """The paper's published numbers (``robustness_book/anchors/<paper>.json``), as records with a ``source``."""
    path = Path(__file__).with_name("anchors") / f"{paper}.json"
    if not path.exists():
        known = sorted(p.stem for p in path.parent.glob("*.json"))
        raise FileNotFoundError(f"no anchors for paper {paper!r} at {path}; known: {', '.join(known)}")
    return _restore(json.loads(path.read_text()))["records"]
