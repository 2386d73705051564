"""Wall-clock timing that counts GPU work: the one place the book measures seconds.

CUDA kernels run asynchronously, so a clock read right after a call on the GPU measures only the launch. Every
helper here synchronizes CUDA before it starts and before it stops the clock (on the CPU this costs nothing).

- :func:`timed` — ``(result, seconds)`` of one call.
- :func:`calls_per_second` — throughput of a repeated call, after warm-up calls.
- :class:`StageTimer` — seconds per named stage of a run (``with timer("train"): ...``), for the results file.

A low-level utility: imports nothing from the package, so every layer may use it.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch

__all__ = ["StageTimer", "calls_per_second", "synchronize", "timed"]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for the GPU's queued work: on ``device`` if it is a CUDA device, on the current one if ``device`` is
    None and CUDA is available; a no-op on the CPU."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[..., Any], *args, **kwargs) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds)`` of one call, synchronizing CUDA so GPU time is counted (every keyword
    argument goes to ``fn``)."""
    synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    synchronize()
    return out, time.perf_counter() - start


def calls_per_second(fn: Callable[[], Any], repeats: int, device: torch.device | str | None = None,
                     warmup: int = 1) -> float:
    """Calls per second of ``fn()`` over ``repeats`` back-to-back calls, after ``warmup`` untimed calls
    (CUDA synchronized before and after the timed calls)."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats!r} must be a positive integer")
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return repeats / (time.perf_counter() - start)


class StageTimer:
    """Wall-clock seconds per named stage: ``with timer("train"): ...`` adds the stage's seconds (CUDA
    synchronized) to ``timer.seconds[stage]``; ``timer.total`` is the seconds since the timer was made."""

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start
