"""The recipe study refuses, before any training, a budget it cannot meet and an unknown recipe."""
import pytest

from robustness_book import recipe_study


def test_a_budget_that_cannot_hold_one_epoch_is_refused_before_work(monkeypatch):
    ran = []
    monkeypatch.setattr(recipe_study, "run_candidate", lambda *a, **k: ran.append(a))
    with pytest.raises(ValueError, match="cannot be met"):
        recipe_study.run_study(["official-step"], budget_s=10)  # 50,000 images at 300/s need ~167 s
    with pytest.raises(ValueError, match="> 0"):
        recipe_study.run_study(["official-step"], budget_s=0)
    with pytest.raises(ValueError, match="unknown recipe.*nope"):
        recipe_study.run_study(["official-step", "nope"], budget_s=600)
    assert ran == []


def test_epochs_fill_the_budget():
    assert recipe_study._epochs_for(600, 800, 50_000) == 9  # 480,000 images in 600 s
    assert recipe_study._epochs_for(170, 300, 50_000) == 1
