"""The book's chapters: each module defines ``SPEC`` (notebook, parameters, profiles)."""
from __future__ import annotations

import importlib

from ..config import ChapterSpec

#: Chapter ids in book order; each is a module ``robustness_book.chapters.<id>``.
CHAPTER_IDS = ("baselines", "jumprelu", "deep_defense", "fragile_neurons", "entropic_retraining",
               "transferable_adversaries", "defenses_compared")


def get_chapter(name: str) -> ChapterSpec:
    if name not in CHAPTER_IDS:
        raise ValueError(f"unknown chapter {name!r}; allowed: {', '.join(CHAPTER_IDS)}")
    return importlib.import_module(f"{__name__}.{name}").SPEC
