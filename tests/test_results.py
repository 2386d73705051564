"""Results JSON: atomic, complete, standard JSON."""
import json

import pytest

from robustness.results import StageTimer, load_results, write_results


def test_write_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    timer = StageTimer()
    with timer("stage"):
        pass
    cfg = {"chapter": "demo", "profile": "smoke", "requested_profile": "smoke", "device": "cpu", "seed": 3, "eps": 0.3}
    path = write_results(cfg, {"acc": 0.5, "rho": float("inf")}, [{"check": "c", "passed": True}], timer)
    assert path == tmp_path / "smoke" / "demo.json"
    saved = load_results("demo", "smoke")
    assert saved["parameters"]["eps"] == 0.3 and saved["metrics"]["rho"] == "inf"
    assert set(saved["provenance"]) >= {"git_commit", "versions", "device", "seed", "seconds"}
    assert "stage" in saved["provenance"]["seconds"]
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert [p.name for p in path.parent.iterdir()] == ["demo.json"]  # no temporary file left


def test_missing_results_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m robustness run demo --profile laptop"):
        load_results("demo", "laptop")
