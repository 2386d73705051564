"""The defenses compared chapter: the verdict on hand-made records (a defense clearly above the baseline and below
adversarial training, one where the baseline is at the floor, one with an unhealthy row), a hyperparameter read from
another chapter's results file gives that chapter's very network (same checkpoint hash), and the cost counts equal
a hand count for one step of each recipe."""
from __future__ import annotations

import json

import pytest
import torch

from robustness_book import evaluate
from robustness_book.chapters import defenses_compared as dc
from robustness_book.config import resolve
from robustness_book.chapters import kit
from robustness_book.chapters import transferable_adversaries as ta
from robustness_book.defenses.deep_defense import DeepDefenseLoss
from robustness_book.defenses.entropic import EntropicLoss
from robustness_book.defenses.jumprelu import retrofit
from robustness_book.models import build_model
from robustness_book.results import record
from robustness_book.train import cross_entropy, recipe_key, state_hash, trained_model_recipe

CFG = {"chapter": dc.CHAPTER, "profile": "laptop", "seed": 0}
N = 200
RADII = (0.1, 0.3)


def _mask(k: int, n: int = N, start: int = 0) -> torch.Tensor:
    m = torch.zeros(n, dtype=torch.bool)
    m[start:start + k] = True
    return m


def _acc(mask: torch.Tensor, **fields) -> dict:
    r = evaluate.accuracy_record(mask)
    return record(CFG, metric="accuracy", value=r["value"], n=r["n"], interval=r["interval"],
                  **{kit.PER_IMAGE: evaluate.pack_mask(mask)}, **fields)


def _network(d: str, k: str, clean: int, robust: dict[float, int], cost: float, aa: dict | None = None) -> list:
    """One network's records: clean accuracy, the L∞ curve (nested masks: the first k images robust), the first
    member alone, AutoAttack on the survivors where given, the relative cost."""
    at = dict(dataset=d, model="lenet_like", defense=k)
    out = [_acc(_mask(clean), attack="none", split="test", kind="x", **at)]
    for e, k_robust in robust.items():
        out.append(_acc(_mask(k_robust), attack="worst_case", threat_model="linf", eps=e, **at))
        out.append(_acc(_mask(k_robust), attack="apgd_ce", threat_model="linf", eps=e, alone=True, **at))
    for e, k_robust in (aa or {}).items():
        out.append(_acc(_mask(k_robust), attack="autoattack", threat_model="linf", eps=e, flags="", **at))
    out.append(record(CFG, metric="relative_cost", value=cost, kind="x", images=1, epochs=1, **at))
    return out


def _health(d: str, k: str, failed: tuple = ()) -> list[dict]:
    return [{"id": i, "passed": i not in failed, "dataset": d, "model": "lenet_like", "defense": k}
            for i in ("gradient_free", "transfer", "step_doubling")]


def _results(profile: str = "laptop") -> dict:
    """MNIST: the baseline off the floor at 0.1 (40%), Deep Defense clearly above it (70%) and below PGD training
    (90%), superimposition as good as Deep Defense but with a failed gradient-free check. Fashion: the baseline at
    the floor everywhere."""
    recs = (_network("mnist", "none", 190, {0.1: 80, 0.3: 0}, 1.0)
            + _network("mnist", "pgd_at", 180, {0.1: 180, 0.3: 120}, 6.0, aa={0.1: 178, 0.3: 118})
            + _network("mnist", "deep_defense", 188, {0.1: 140, 0.3: 10}, 3.0, aa={0.1: 139, 0.3: 10})
            + _network("mnist", "superimposition", 188, {0.1: 140, 0.3: 10}, 2.0, aa={0.1: 139, 0.3: 10})
            + _network("fashion_mnist", "none", 190, {0.1: 0}, 1.0)
            + _network("fashion_mnist", "pgd_at", 180, {0.1: 100}, 6.0)
            + _network("fashion_mnist", "jumprelu", 190, {0.1: 0}, 1.0))
    health = (_health("mnist", "deep_defense") + _health("mnist", "superimposition", failed=("gradient_free",))
              + _health("mnist", "pgd_at"))
    return {"chapter": dc.CHAPTER, "profile": profile, "parameters": {}, "overridden": {}, "records": recs,
            "health": health, "timings": {}, "extra": {}}


def test_the_verdict_on_hand_made_records():
    v = dc.verdict_summary(_results())
    m = v["mnist"]
    assert m["judged_eps"] == 0.1  # the baseline is at 0% at 0.3
    dd = m["defenses"]["deep_defense"]
    assert dd["vs_baseline"]["outcome"] == "holds" and dd["vs_baseline"]["eps"] == 0.1
    assert dd["vs_at"]["outcome"] == "does not hold"  # clearly below PGD adversarial training
    si = m["defenses"]["superimposition"]
    assert (si["vs_baseline"]["outcome"], si["vs_baseline"]["reason"]) == ("inconclusive", "unhealthy")
    assert m["defenses"]["pgd_at"]["vs_baseline"]["outcome"] == "holds" and "vs_at" not in m["defenses"]["pgd_at"]
    assert m["pareto"] == ["none", "superimposition", "pgd_at"]
    f = v["fashion_mnist"]
    assert f["judged_eps"] is None
    assert {(c["vs_baseline"]["outcome"], c["vs_baseline"]["reason"]) for c in f["defenses"].values()} == {
        ("inconclusive", "floor")}
    text = dc.verdict(_results())
    assert "**holds**" in text and "**does not hold**" in text and "evaluation is unhealthy" in text
    assert "at the floor" in text


def test_smoke_verdicts_are_inconclusive_at_reduced_scale():
    v = dc.verdict_summary(_results("smoke"))
    claims = [c[key] for d in v.values() for c in d["defenses"].values() for key in ("vs_baseline", "vs_at")
              if key in c]
    assert claims and {(c["outcome"], c["reason"]) for c in claims} == {("inconclusive", "reduced_scale")}


def test_glance_rows_and_table():
    rows = dc.glance_rows(_results())
    assert len(rows) == 5 and all(tuple(r) == kit.GLANCE_KEYS for r in rows)
    assert {r["outcome"] for r in rows} == {"holds", "inconclusive"}
    assert "Deep Defense" in dc.robustbench_table(_results())


def _write(tmp_path, chapter: str, profile: str, parameters: dict, records: list) -> None:
    folder = tmp_path / "results" / profile
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{chapter}.json").write_text(json.dumps({
        "chapter": chapter, "profile": profile, "parameters": parameters, "overridden": {}, "provenance": {},
        "records": records, "health": [], "timings": {}, "extra": {}}))


def _cfg(profile: str = "smoke", **given):
    return resolve(dc.SPEC, profile, **given)


def test_a_hyperparameter_read_from_its_chapter_gives_that_chapters_network(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    cfg = _cfg()
    # missing files: labelled defaults, each naming the command that makes the choice
    missing = dc.settings(cfg, "mnist")
    assert missing["superimposition"]["value"] == cfg["superimposition_lam"]["mnist"]
    assert "python -m robustness_book run transferable_adversaries --profile smoke" in missing["superimposition"]["note"]
    # the transferable chapter ran with λ = 3: this chapter trains its very network (same checkpoint)
    tcfg = resolve(ta.SPEC, "smoke", lam=3.0)
    _write(tmp_path, "transferable_adversaries", "smoke", {"lam": 3.0}, [])
    jr = record({"chapter": "jumprelu", "profile": "smoke", "seed": 0}, dataset="mnist",
                model="lenet_like-baseline", defense="jumprelu", metric="chosen_kappa", value=0.5)
    _write(tmp_path, "jumprelu", "smoke", {}, [jr])
    got = dc.settings(cfg, "mnist")
    assert got["superimposition"]["value"] == 3.0 and got["superimposition"]["note"] is None
    ours, theirs = dc.scratch_recipe(cfg, "mnist"), ta.defense_recipe(tcfg, "mnist")
    key = lambda kw, loss: recipe_key(trained_model_recipe(kw["model"], "mnist", kw["config"], kw["train_size"],
                                                           loss=loss))
    assert key(ours, dc.scratch_loss(cfg, "mnist", "superimposition", got["superimposition"]["value"])) == \
        key(theirs, ta.defense_loss(tcfg, "mnist", "superimposition"))
    # JumpReLU: the κ the chapter chose, the same retrofit of the same weights
    assert got["jumprelu"]["value"] == 0.5 and "chosen on held-out data" in got["jumprelu"]["source"]
    torch.manual_seed(0)
    base = build_model("lenet_like", "mnist")
    assert state_hash(retrofit(base, got["jumprelu"]["value"])) == state_hash(retrofit(base, 0.5))


def _batch(n: int = 8):
    torch.manual_seed(0)
    return torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))


@pytest.mark.parametrize("defense, hand", [
    ("normal", (1, 1)),                    # one forward, one backward
    ("pgd_at", (2 + 2, 2 + 1)),            # PGD-k (k = 2 here): k steps and a judged last iterate, then training
    ("fgsm_rs", (2, 2)),                   # the random-start FGSM step, then the training pass
    ("superimposition", (2, 2)),           # two branches, neither detached
    ("entropic", (1, 1)),                  # the entropies come from the training forward pass
])
def test_the_cost_counts_equal_a_hand_count(defense, hand):
    cfg = _cfg(at_steps=2, at_mix=1.0)
    net = build_model("lenet_like", "mnist")
    x, y = _batch()
    if defense == "normal":
        loss = cross_entropy
    elif defense == "entropic":
        loss = EntropicLoss(lam=1.0, direction=dict.fromkeys(kit.candidate_layers(net, "dense"), -1))
    else:
        loss = dc.scratch_loss(cfg, "mnist", defense, 10.0)
    passes = kit.passes_per_image(net, loss, x, y)
    assert (passes["forward"], passes["backward"]) == hand


def test_deep_defenses_count_is_within_its_hand_bounds():
    """Deep Defense: the training forward, one forward judging the batch, then per unrolled DeepFool iteration a
    forward (and one judging it) and a gradient per candidate class, each counted again by the training backward
    through it (create_graph). DeepFool drops the images it has fooled, so the count is bounded, not fixed."""
    net, (x, y) = build_model("lenet_like", "mnist"), _batch()
    loss = DeepDefenseLoss(lam=15.0, rho_reference="pixels")  # the same passes as mean_image, no data
    passes = kit.passes_per_image(net, loss, x, y)
    classes = 10
    assert 3 <= passes["forward"] <= 2 + 2 * (loss.max_iter + 1)
    assert 1 < passes["backward"] <= 1 + 2 * loss.max_iter * (classes - 1)


def test_the_recipe_cost_relative_to_normal_training():
    base = {"kind": "normal", "images": 1000, "epochs": 2}
    assert dc.recipe_cost({"forward": 1, "backward": 1}, base, base) == 1
    assert dc.recipe_cost({"forward": 0, "backward": 0}, {"kind": "retrofit"}, base) == 1
    assert dc.recipe_cost({"forward": 6, "backward": 6}, {"kind": "scratch", "images": 500, "epochs": 2}, base) == 3
    assert dc.recipe_cost({"forward": 3, "backward": 3}, {"kind": "fine-tune", "images": 100, "epochs": 1},
                          base) == pytest.approx(1.15)
