"""robustness_book.timing: the one home of the book's (CUDA-synchronized) timing helpers."""
import time

import pytest

from robustness_book import evaluate, results, timing


def test_timed_returns_the_result_and_the_seconds():
    out, seconds = timing.timed(lambda a, b=0: a + b, 2, b=3)
    assert out == 5 and 0 <= seconds < 1
    _, slept = timing.timed(time.sleep, 0.02)
    assert slept >= 0.02


def test_calls_per_second_counts_the_timed_calls_only():
    calls = []
    rate = timing.calls_per_second(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and rate > 0
    assert timing.calls_per_second(lambda: time.sleep(0.01), repeats=3, device="cpu") <= 100
    with pytest.raises(ValueError, match="repeats"):
        timing.calls_per_second(lambda: None, repeats=0)


def test_stage_timer_adds_up_each_stage():
    timer = timing.StageTimer()
    for _ in range(2):
        with timer("sleep"):
            time.sleep(0.01)
    with pytest.raises(RuntimeError):
        with timer("fails"):
            raise RuntimeError("the stage is timed even when it fails")
    assert set(timer.seconds) == {"sleep", "fails"} and timer.seconds["sleep"] >= 0.02
    assert timer.total >= timer.seconds["sleep"]


def test_timing_lives_once():
    """The older homes re-export the same objects, so chapters and notebooks keep working."""
    assert evaluate.timed is timing.timed
    assert results.StageTimer is timing.StageTimer
    timing.synchronize()  # a no-op without a GPU
    timing.synchronize("cpu")
