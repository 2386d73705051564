"""Results JSON: one flat record schema for every chapter, atomic, standard JSON, overrides beside the canonical."""
import json
import math

import pytest

from robustness_book import results
from robustness_book.results import (FIELDS, StageTimer, anchors, list_results, load_results, one, record,
                                results_path, select, value, write_results)

CFG = {"chapter": "demo", "profile": "smoke", "requested_profile": "smoke", "device": "cpu", "seed": 3,
       "eps": 0.3, "overridden": []}


def _records():
    return [record(CFG, dataset="mnist", model="lenet_like", metric="accuracy", value=0.5, n=100),
            record(CFG, dataset="mnist", model="lenet_like", defense="jumprelu", attack="pgd_linf",
                   threat_model="linf", eps=0.3, metric="accuracy", value=0.25, n=100, kappa=1.0, steps=40),
            record(CFG, dataset="mnist", model="lenet_like", attack="deepfool", threat_model="l2", metric="rho",
                   value=float("inf"), n=10)]


def test_records_round_trip_with_non_finite_values(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    timer = StageTimer()
    with timer("stage"):
        pass
    recs = _records() + [record(CFG, dataset="mnist", model="m", metric="rho", value=float("nan"))]
    path = write_results(CFG, recs, [{"id": "c", "check": "c", "passed": True}], timer)
    assert path == tmp_path / "smoke" / "demo.json"
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    saved = load_results("demo", "smoke")
    assert saved["records"][:3] == recs[:3]  # inf comes back as a float, not a string
    assert math.isinf(saved["records"][2]["value"]) and math.isnan(saved["records"][3]["value"])
    assert all(tuple(r) == FIELDS for r in saved["records"])
    assert saved["parameters"]["eps"] == 0.3 and saved["overridden"] == {}
    assert "stage" in saved["provenance"]["seconds"]
    assert [p.name for p in path.parent.iterdir()] == ["demo.json"]  # no temporary file left


def test_accuracy_records_carry_a_wilson_interval():
    rec = record(CFG, dataset="mnist", model="m", metric="accuracy", value=0.5, n=100)
    lo, hi = rec["interval"]
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.192, abs=0.005)  # ±1.96·sqrt(.25/100) ≈ ±0.098


def test_select_one_and_value_read_fields_and_settings():
    recs = _records()
    assert value(recs, attack="pgd_linf", eps=0.3) == 0.25
    assert one(recs, kappa=1.0)["defense"] == "jumprelu"
    assert select(recs, eps=0.1 + 0.2) == [recs[1]]  # float equality is tolerant
    with pytest.raises(KeyError, match="2 records match"):
        one(recs, metric="accuracy")
    with pytest.raises(KeyError, match="0 records match"):
        one(recs, attack="square")


def test_bad_records_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    with pytest.raises(ValueError, match="threat_model"):
        record(CFG, dataset="mnist", model="m", metric="accuracy", value=0.5, threat_model="Linf")
    with pytest.raises(ValueError, match="schema"):
        write_results(CFG, [{"accuracy": 0.5}])
    assert not (tmp_path / "smoke").exists()


def test_an_overridden_run_is_written_beside_the_canonical_file(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    canonical = write_results(CFG, _records())
    cfg = {**CFG, "eps": 0.2, "overridden": ["eps"]}
    other = write_results(cfg, _records()[:1])
    assert canonical.name == "demo.json" and other.name.startswith("demo--") and other != canonical
    assert other == results_path("demo", "smoke", {"eps": 0.2})
    assert len(load_results("demo", "smoke")["records"]) == 3  # the canonical file is untouched
    assert load_results("demo", "smoke", {"eps": 0.2})["overridden"] == {"eps": 0.2}
    rows = {r["path"].rsplit("/", 1)[1]: r for r in list_results()}
    assert rows["demo.json"]["overridden"] == {} and rows[other.name]["overridden"] == {"eps": 0.2}


def test_missing_results_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="python -m robustness_book run demo --profile laptop"):
        load_results("demo", "laptop")


def test_every_anchor_file_is_in_the_record_shape():
    folder = results.Path(results.__file__).with_name("anchors")
    papers = sorted(p.stem for p in folder.glob("*.json"))
    for paper in papers:
        for rec in anchors(paper):
            assert {"dataset", "model", "defense", "attack", "threat_model", "eps", "metric", "value",
                    "source"} <= set(rec), (paper, rec)
            assert rec["threat_model"] in results.THREAT_MODELS
    with pytest.raises(FileNotFoundError, match="no anchors for paper 'nope'"):
        anchors("nope")
