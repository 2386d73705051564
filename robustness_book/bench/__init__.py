"""Benchmarks (``python -m robustness_book bench``): speed near the machine's limit, peers, chapter budgets, the page.

Default mode, **speed near the limit**: for the chapter-1 model (LeNetLike on MNIST test images) and for AlexLike
(CIFAR-10 shape, random inputs and weights: speed does not depend on them) it measures this machine's limit, the
raw forward+backward images/s (input gradient only, model in eval mode, as an attack does) and the raw
forward+backward+optimizer-step images/s (train mode, SGD as :class:`~robustness_book.train.TrainConfig`), and prints
three ratios to those limits, each with its goal (:data:`GOALS`): PGD (gradient steps per second ÷ raw
fwd+bwd), the training loop :func:`robustness_book.train.train` on in-memory random data (images/s ÷ raw
fwd+bwd+step) and DeepFool (gradient rows per second ÷ raw fwd+bwd; an iteration on ``k`` candidate classes
computes ``k`` rows per image). A ratio of 1.0 means no overhead beyond the model's own arithmetic.

``--worst-case`` compares, on the first ``--n`` test images and at each ``--eps``, the toolkit's adaptive worst
case (PGD-CE, PGD-margin, Square) with AutoAttack (standard): robust accuracy, 95% Wilson interval, seconds.

``--peers`` (in ``.venv-peers``, made by ``make bench-peers``) runs PGD L∞ beside ``torchattacks.PGD`` and
foolbox's ``LinfPGD`` at equal eps, steps and step size, and DeepFool L2 beside ``torchattacks.DeepFool``, on the
same model and images: images/s, robust accuracy, median ρ.

``--chapters [CHAPTER ...]`` runs each chapter's profile twice through :func:`robustness_book.runner.run_chapter`,
in a subprocess per run, with a fresh empty checkpoint cache (models train) and then with that cache filled,
into temporary folders (the book's pages and results are not touched): wall time of each run, peak RSS of the
run's process tree (notebook kernel included) and the budget check of :data:`BUDGETS`.

``--json PATH`` writes any mode's figures with provenance; ``--page`` turns the JSON files under
``reference/bench/`` into ``book/performance.md`` (:func:`render_page`, a pure function of those files).

Layering: like ``cli`` and ``runner``, this is an entry point above the chapters (it reads chapter 1's SPEC to
load the same model the chapter trains); timings come from :mod:`robustness_book.timing`.

One file per mode; this package's :func:`main` (the command) dispatches on the flags and re-exports each mode's
public names, so ``from robustness_book.bench import speed_ratios`` works as before:

* :mod:`~robustness_book.bench.speed`: the default mode (the machine's limit and the ratios to it);
* :mod:`~robustness_book.bench.worst_case`: ``--worst-case``;
* :mod:`~robustness_book.bench.peers`: ``--peers``;
* :mod:`~robustness_book.bench.budgets`: ``--chapters`` (chapter budgets);
* :mod:`~robustness_book.bench.page`: ``--page``;
* :mod:`~robustness_book.bench._common`: what the modes share (provenance, JSON writing, the pass/FAIL label).
"""
from __future__ import annotations

import sys
from dataclasses import replace

import torch

from ..evaluate.members import DEFAULT_TARGETS
from ..runtime import thread_count
from ._common import provenance, verdict, write_json
from .budgets import BUDGETS, GB, Budget, budget_checks, measure_run, run_chapter_budgets
from .page import BENCH_DIR, JSON_FILES, PAGE, render_page, write_page
from .peers import PEER_SPEEDUP_GOAL, PEERS_HINT, PeersMissing, import_peers, run_peers
from .speed import (GOALS, RATIO_HELP, SPEED_CASES, SpeedCase, _peak_memory_mb, measure_speed, run_speed,
                    seconds_per_call, speed_entry, speed_ratios, train_config)
from .worst_case import run_worst_case, worst_case_vs_autoattack

__all__ = [
    "main",
    # what the modes share
    "provenance", "verdict", "write_json",
    # the default mode: speed near the limit
    "GOALS", "RATIO_HELP", "SPEED_CASES", "SpeedCase", "measure_speed", "run_speed", "seconds_per_call",
    "speed_entry", "speed_ratios", "train_config",
    # --worst-case
    "run_worst_case", "worst_case_vs_autoattack",
    # --peers
    "PEER_SPEEDUP_GOAL", "PEERS_HINT", "PeersMissing", "import_peers", "run_peers",
    # --chapters
    "BUDGETS", "GB", "Budget", "budget_checks", "measure_run", "run_chapter_budgets",
    # --page
    "BENCH_DIR", "JSON_FILES", "PAGE", "render_page", "write_page",
]


def main(batch_size: int = 256, profile: str | None = None, worst_case: bool = False, n: int = 300,
         eps: list[float] | None = None, norm: str = "linf", steps: int = 100, queries: int = 5000,
         chapters: list[str] | None = None, peers: bool = False, page: bool = False, json_path: str | None = None,
         min_seconds: float = 2.0, note: str | None = None, members: list[str] | None = None,
         targets: int = DEFAULT_TARGETS, jumprelu: float | None = None, bpda: str | None = None) -> int:
    """The ``bench`` command; returns the exit status. ``chapters`` (a list, empty for all) selects the budget
    mode, whose ``profile`` defaults to laptop; the other modes load chapter 1's model of ``profile`` (default
    smoke)."""
    if page:
        write_page()
        return 0
    if chapters is not None:
        run_chapter_budgets(chapters, profile or "laptop", note=note,
                            on_row=(lambda content: write_json(json_path, content)) if json_path else None)
        return 0
    profile = profile or "smoke"
    if peers:
        try:
            content = run_peers(profile, n=n, batch_size=batch_size)
        except PeersMissing as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if json_path:
            write_json(json_path, content)
        return 0
    torch.set_num_threads(thread_count())
    if worst_case:
        content = run_worst_case(profile, n=n, eps=eps, norm=norm, steps=steps, queries=queries,
                                 batch_size=batch_size, members=members, targets=targets,
                                 jumprelu=jumprelu, bpda=bpda)
        if json_path:
            write_json(json_path, content)
        return 0
    cases = tuple(replace(c, batch_size=batch_size) if c.model == "lenet_like" else c for c in SPEED_CASES)
    content = run_speed(profile, min_seconds=min_seconds, cases=cases)
    device = torch.device(content["models"][0]["device"])
    print(f"\npeak memory: {_peak_memory_mb(device):.0f} MiB "
          f"({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")
    if json_path:
        write_json(json_path, content)
    return 0
