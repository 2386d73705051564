"""Chapter notebooks run end to end through papermill with the smoke profile and write their results JSON."""
import json

import pytest

from robustness.runner import run_chapter


@pytest.mark.notebook
def test_baselines_smoke_run_writes_its_results(isolated_outputs):
    notebook = run_chapter("baselines", "smoke", output_dir=isolated_outputs / "executed")
    assert notebook.exists()
    saved = json.loads((isolated_outputs / "results" / "smoke" / "baselines.json").read_text())
    assert saved["chapter"] == "baselines" and saved["profile"] == "smoke"
    assert saved["parameters"]["eps"] == 0.3 and saved["provenance"]["seed"] == 0
    m = saved["metrics"]
    assert 0.0 <= m["clean_accuracy"] <= 1.0 and m["n_attack"] == 100
    pgd = m["curves_linf"]["PGD-10 L∞"]
    fgsm = m["curves_linf"]["FGSM"]
    assert pgd[0]["eps"] == 0 and pgd[0]["accuracy"] == pytest.approx(m["clean_accuracy_attack_subset"])
    assert all(p["accuracy"] <= f["accuracy"] for p, f in zip(pgd[1:], fgsm[1:]))
    assert set(m["min_norm"]) == {"DeepFool L2", "DeepFool L∞", "DDN L2"}
    assert {h["check"] for h in saved["health"]} >= {"eps = 0 gives clean accuracy", "input gradients non-zero"}
    # The page states its profile near the top.
    cells = json.loads(notebook.read_text())["cells"]
    first_outputs = [o for c in cells[:4] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert any("**Profile:** `smoke`" in "".join(o.get("data", {}).get("text/markdown", "")) for o in first_outputs)
    # Figures reach the page even when the caller's MPLBACKEND is non-interactive (set to Agg above).
    assert sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", [])) >= 3


@pytest.mark.notebook
def test_two_smoke_runs_give_identical_metrics(isolated_outputs, monkeypatch):
    saved = []
    for run in ("a", "b"):
        # Separate checkpoint caches, so both runs train from scratch.
        monkeypatch.setenv("ROBUSTNESS_CHECKPOINTS", str(isolated_outputs / f"checkpoints-{run}"))
        monkeypatch.setenv("ROBUSTNESS_RESULTS", str(isolated_outputs / f"results-{run}"))
        run_chapter("baselines", "smoke", {"n_attack": 50, "n_clean": 200}, output_dir=isolated_outputs / run)
        saved.append(json.loads((isolated_outputs / f"results-{run}" / "smoke" / "baselines.json").read_text()))
    assert not saved[0]["timings"]["train"]["cached"] and not saved[1]["timings"]["train"]["cached"]
    assert saved[0]["metrics"] == saved[1]["metrics"]
    assert saved[0]["health"] == saved[1]["health"]


@pytest.mark.notebook
def test_bad_parameter_fails_before_the_kernel_starts(isolated_outputs):
    with pytest.raises(ValueError, match="n_attack"):
        run_chapter("baselines", "smoke", {"n_attack": -5}, output_dir=isolated_outputs / "executed")
    assert not (isolated_outputs / "executed" / "baselines.ipynb").exists()
