"""Device choice, seeding and cache folders: the few run-time facts every module needs."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so reruns give identical numbers on CPU."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cache_root() -> Path:
    """Per-user cache folder of the book (data, checkpoints): ``$XDG_CACHE_HOME/robustness-book``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "robustness-book"


def checkpoint_dir() -> Path:
    """Where trained models are cached: ``$ROBUSTNESS_CHECKPOINTS``, else ``<cache>/checkpoints``."""
    env = os.environ.get("ROBUSTNESS_CHECKPOINTS")
    return Path(env) if env else cache_root() / "checkpoints"


def progress_disabled() -> bool | None:
    """tqdm's ``disable``: ``True`` when ``ROBUSTNESS_PROGRESS=0`` (the runner sets it for the notebooks it
    executes, whose pages should not carry hundreds of frozen progress bars), else ``None`` (tqdm's own rule:
    shown on a terminal or in Jupyter, quiet when output is not a terminal)."""
    return True if os.environ.get("ROBUSTNESS_PROGRESS") == "0" else None


THREADS_ENV = "ROBUSTNESS_THREADS"


def thread_count() -> int:
    """Torch's CPU threads for a run: ``$ROBUSTNESS_THREADS``, else every core.

    Two runs that each use every core of a small machine slow each other down about tenfold (the threads fight
    for the cores); two runs with ``ROBUSTNESS_THREADS=1`` on a 2-core machine each keep their own core.
    A value that is not a positive integer raises ``ValueError`` naming the variable.
    """
    text = os.environ.get(THREADS_ENV)
    if text is None or text == "":
        return os.cpu_count() or 1
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{THREADS_ENV}={text!r} is invalid: expected a positive integer (threads per run)")
    return int(text)
