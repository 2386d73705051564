"""One JSON per chapter run: the single source of truth for pages, tests and comparisons.

``results/<profile>/<chapter>.json`` holds ``chapter``, ``profile``,
``parameters``, ``provenance``, ``metrics``, ``health`` and ``timings``; it is
written atomically so a crashed run never leaves half a file. Everything that
depends on the machine's speed goes to ``timings`` (and ``provenance``), so two
runs with the same parameters and seed have identical ``metrics``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from ._io import atomic_write_text


def repo_root() -> Path:
    """The book's repository root (where ``_toc.yml`` is), else the current folder."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "_toc.yml").exists() else Path.cwd()


def results_dir() -> Path:
    """``$ROBUSTNESS_RESULTS``, else ``<repo>/results``."""
    env = os.environ.get("ROBUSTNESS_RESULTS")
    return Path(env) if env else repo_root() / "results"


def results_path(chapter: str, profile: str) -> Path:
    return results_dir() / profile / f"{chapter}.json"


class StageTimer:
    """Wall-clock seconds per named stage: ``with timer("train"): ...``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_root(), capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(cfg: dict, timer: StageTimer | None = None) -> dict:
    """Where a number came from: commit, versions, device, seed and time per stage."""
    import numpy
    import torch

    from ._torchvision import import_torchvision

    device = cfg.get("device", "cpu")
    return {
        "git_commit": _git_commit(),
        "versions": {"robustness": __version__, "torch": torch.__version__,
                     "torchvision": import_torchvision().__version__, "numpy": numpy.__version__,
                     "python": platform.python_version()},
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
        "seed": cfg.get("seed"),
        "seconds": {k: round(v, 3) for k, v in (timer.seconds if timer else {}).items()},
        "total_seconds": round(timer.total, 3) if timer else None,
    }


def _clean(value: Any) -> Any:
    """JSON has no NaN or ∞: write them as strings so the file stays standard JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_results(cfg: dict, metrics: dict, health: dict | list | None = None,
                  timer: StageTimer | None = None, timings: dict | None = None) -> Path:
    """Write the chapter's results JSON atomically and return its path.

    ``metrics`` must be deterministic given the parameters and seed; wall-clock
    measurements (attack cost, training seconds) belong in ``timings``.
    """
    params = {k: v for k, v in cfg.items() if k not in ("chapter", "profile")}
    record = {"chapter": cfg["chapter"], "profile": cfg["profile"], "parameters": params,
              "provenance": provenance(cfg, timer), "metrics": metrics, "health": health or {},
              "timings": timings or {}}
    path = results_path(cfg["chapter"], cfg["profile"])
    atomic_write_text(path, json.dumps(_clean(record), indent=1, ensure_ascii=False))
    return path


def load_results(chapter: str, profile: str) -> dict:
    """Read a chapter's results; a missing file names the command that makes it."""
    path = results_path(chapter, profile)
    if not path.exists():
        raise FileNotFoundError(f"no results for chapter {chapter!r} with profile {profile!r} at {path}; "
                                f"make them with: python -m robustness run {chapter} --profile {profile}")
    return json.loads(path.read_text())
