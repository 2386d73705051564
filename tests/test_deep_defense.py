"""Deep Defense: the regularizer against a hand computation, its gradient, and the chapter's smoke run."""
import json

import pytest
import torch
from torch import nn

from robustness.defenses import AdversarialLoss, DeepDefenseLoss, relative_norm
from robustness.models import Normalize


def _linear(d: int = 6, classes: int = 2, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, classes)).double()


def test_regularizer_equals_closed_form_on_a_linear_two_class_model():
    # Two classes, f = Wx + b: DeepFool's first step r = (|f|+1e-4)/‖w‖² · w lands past the boundary,
    # so Δx = 1.02 r and ρ = 1.02 (|f|+1e-4) / ‖w‖ / ‖x‖, with w = W[other] − W[pred].
    model = _linear()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(16, 1, 1, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(1)
    y = pred.clone()
    y[::3] = 1 - y[::3]  # a third of the samples are misclassified
    lam, c, d = 15.0, 25.0, 5.0
    loss = DeepDefenseLoss(lam=lam, c=c, d=d, rho_reference="pixels")
    out = loss.regularizer(model, x, y)

    W = model[1].weight.detach()
    w = W[1] - W[0]
    f_gap = (logits[:, 1] - logits[:, 0]).abs()
    rho = 1.02 * (f_gap + 1e-4) / w.norm() / x.flatten(1).norm(dim=1)
    correct = pred == y
    expected = lam / len(x) * torch.where(correct, torch.exp(-c * rho), torch.exp(d * rho)).sum()
    assert torch.equal(out["correct"], correct) and (~correct).sum() == 6
    assert torch.allclose(out["rho"], rho, rtol=1e-9)
    assert float(out["reg"].detach()) == pytest.approx(float(expected), rel=1e-9)
    # the full loss is cross-entropy plus that term
    ce = nn.functional.cross_entropy(logits, y)
    assert float(loss(model, x, y).detach()) == pytest.approx(float(ce + expected), rel=1e-9)


def test_misclassified_samples_are_pushed_toward_the_true_label_with_three_classes():
    model = _linear(classes=3, seed=2)
    x = torch.rand(60, 1, 1, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        pred = model(x).argmax(1)
    y = (pred + 1) % 3  # every sample wrong
    out = DeepDefenseLoss(rho_reference="pixels", max_iter=10).regularizer(model, x, y)
    with torch.no_grad():
        reached = model(x + out["perturbation"]).argmax(1)
    assert not out["correct"].any()
    assert (reached == y).float().mean() > 0.95  # DeepFool toward y, not merely away from pred


def test_mean_image_reference_subtracts_the_per_pixel_mean():
    # matconvnet's input: x − m, m the per-pixel training mean; ρ = ‖Δx‖ / ‖x − m‖ (Deep Defense's scale)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(5, 1, 2, 2)
    delta = 0.01 * torch.randn(5, 1, 2, 2)
    m = torch.tensor([[[0.1, 0.2], [0.3, 0.4]]])
    rho = relative_norm(model, x, delta, "mean_image", mean=m)
    assert torch.allclose(rho, delta.flatten(1).norm(dim=1) / (x - m).flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="mean image"):
        relative_norm(model, x, delta, "mean_image")


def test_the_loss_uses_the_data_sets_mean_image(monkeypatch):
    import robustness.defenses.deep_defense as dd_mod

    m = torch.full((1, 1, 6), 0.25, dtype=torch.float64)
    monkeypatch.setattr(dd_mod, "mean_image", lambda name: m if name == "mnist" else None)
    model = _linear()
    x = torch.rand(8, 1, 1, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    loss = DeepDefenseLoss(dataset="mnist")
    out = loss.regularizer(model, x, y)
    px = DeepDefenseLoss(rho_reference="pixels").regularizer(model, x, y)
    expected = px["rho"] * x.flatten(1).norm(dim=1) / (x - m).flatten(1).norm(dim=1)
    assert torch.allclose(out["rho"], expected, rtol=1e-9)
    assert loss.spec["rho_reference"] == "mean_image" and loss.spec["dataset"] == "mnist"


def test_normalized_reference_measures_rho_after_the_normalize_layer():
    norm = Normalize([0.5], [0.25])
    model = nn.Sequential(norm, nn.Flatten(), nn.Linear(4, 2))
    x = torch.rand(5, 1, 2, 2)
    delta = 0.01 * torch.randn(5, 1, 2, 2)
    px = relative_norm(model, x, delta, "pixels")
    nz = relative_norm(model, x, delta, "normalized")
    assert torch.allclose(px, delta.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1))
    assert torch.allclose(nz, delta.flatten(1).norm(dim=1) / (x - 0.5).flatten(1).norm(dim=1))
    with pytest.raises(ValueError, match="rho_reference"):
        relative_norm(model, x, delta, "raw")
    with pytest.raises(ValueError, match="Normalize"):
        relative_norm(_linear(), x, delta, "normalized")


def _tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).double()


def test_regularizer_gradient_flows_through_deepfool_and_matches_finite_differences():
    model = _tiny_mlp()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 1, 1, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 4
    loss = DeepDefenseLoss(lam=1.0, c=5.0, d=2.0, rho_reference="pixels")
    reg = loss.regularizer(model, x, y)["reg"]
    params = list(model.parameters())
    grads = torch.autograd.grad(reg, params)
    # with pixel-space ρ the regularizer depends on the weights only through Δx
    assert all(gr.abs().sum() > 0 for gr in grads)
    g2 = torch.Generator().manual_seed(5)
    direction = [torch.randn(p.shape, generator=g2, dtype=torch.float64) for p in params]
    analytic = sum((gr * v).sum() for gr, v in zip(grads, direction))
    h = 1e-6

    def reg_at(t):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(t * v)
        value = float(loss.regularizer(model, x, y)["reg"].detach())
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.sub_(t * v)
        return value

    numeric = (reg_at(h) - reg_at(-h)) / (2 * h)
    assert float(analytic) == pytest.approx(numeric, rel=1e-4, abs=1e-8)


def test_gradient_differs_from_the_detached_perturbation():
    # Back-propagating through the DeepFool steps (not only through ‖x‖) is the method: the gradient of
    # exp(-cρ) with Δx detached would be exactly zero with pixel-space ρ.
    model = _tiny_mlp(1)
    x = torch.rand(8, 1, 1, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    out = DeepDefenseLoss(rho_reference="pixels").regularizer(model, x, y)
    assert out["perturbation"].requires_grad and out["reg"].requires_grad


def test_regularizer_runs_in_eval_mode_and_restores_each_flag():
    # Frozen-BN fine-tuning: the model is in train mode with its BatchNorm deliberately in eval mode.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4)).double()
    model.train()
    model[2].eval()
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    x = torch.rand(6, 1, 1, 8, dtype=torch.float64)
    out = DeepDefenseLoss(rho_reference="pixels").regularizer(model, x, torch.zeros(6, dtype=torch.long))
    assert out["reg"].requires_grad  # eval mode does not stop the gradient
    assert seen and not any(seen)
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True]


def test_every_profile_uses_the_official_fine_tuning_lr():
    from robustness.chapters.deep_defense import PROFILES

    assert {p["ft_lr"] for p in PROFILES.values()} == {5e-4}
    assert PROFILES["paper"]["ft_epochs"] == 5


def test_bad_settings_fail_with_the_name():
    with pytest.raises(ValueError, match="rho_reference") as info:
        DeepDefenseLoss(rho_reference="raw")
    assert "mean_image, normalized, pixels" in str(info.value)
    with pytest.raises(ValueError, match="dataset"):
        DeepDefenseLoss()  # the mean image of which data set?
    with pytest.raises(ValueError, match="max_iter"):
        DeepDefenseLoss(max_iter=0, dataset="mnist")
    with pytest.raises(ValueError, match="linearize_at"):
        DeepDefenseLoss(dataset="mnist", linearize_at="x")
    with pytest.raises(ValueError, match="attack"):
        AdversarialLoss("cw")
    # distinct cache keys
    assert DeepDefenseLoss(lam=3, dataset="mnist").spec != DeepDefenseLoss(lam=4, dataset="mnist").spec
    assert DeepDefenseLoss(dataset="mnist").spec != DeepDefenseLoss(dataset="cifar10").spec
    assert DeepDefenseLoss(dataset="mnist").spec != DeepDefenseLoss(dataset="mnist", linearize_at="overshot").spec


def test_adversarial_loss_trains_on_worse_examples(tiny_model, tiny_data):
    x, y = tiny_data[0][:64], tiny_data[1][:64]
    clean = float(nn.functional.cross_entropy(tiny_model(x), y).detach())
    for attack in ("fgsm", "deepfool", "pgd_l2"):
        adv_only = float(AdversarialLoss(attack, eps=0.3 if attack != "pgd_l2" else 1.0, mix=1.0, steps=5)(
            tiny_model, x, y).detach())
        assert adv_only > clean, attack


def test_a_descent_step_on_the_regularizer_lowers_it_and_raises_rho(tiny_model, tiny_data):
    # The method's mechanism: following -∇reg (through the unrolled DeepFool) moves the boundary away
    # from the batch's correctly classified points, i.e. raises their ρ.
    import copy

    x, y = tiny_data[0][:100], tiny_data[1][:100]
    # ρ is ~0.3 on these blobs (vs ~0.1-0.2 on MNIST), so c is scaled down to keep exp(-cρ) from vanishing
    loss = DeepDefenseLoss(lam=15, c=5, d=5, rho_reference="pixels")
    net = copy.deepcopy(tiny_model)
    before = loss.regularizer(net, x, y)
    assert before["correct"].all()
    grads = torch.autograd.grad(before["reg"], list(net.parameters()))
    with torch.no_grad():
        for p, g in zip(net.parameters(), grads):
            p.sub_(1e-3 * g)
    after = loss.regularizer(net, x, y)
    assert float(after["reg"].detach()) < float(before["reg"].detach()) - 1e-4
    assert float(after["rho"].detach().mean()) > float(before["rho"].detach().mean())


@pytest.mark.notebook
def test_deep_defense_smoke_run_writes_its_results(isolated_outputs):
    from robustness.runner import run_chapter

    tmp_path = isolated_outputs
    notebook = run_chapter("deep_defense", "smoke", output_dir=tmp_path / "executed")
    assert notebook.exists()
    saved = json.loads((tmp_path / "results" / "smoke" / "deep_defense.json").read_text())
    m = saved["metrics"]
    assert set(m["models"]) == {"mlp", "lenet", "convnet"}
    for rows in m["models"].values():
        assert set(rows) == {"reference", "fine-tune", "adversarial", "deep_defense"}
        for row in rows.values():
            assert 0 <= row["clean"]["value"] <= 1 and len(row["clean"]["interval"]) == 2
            assert set(row["fgsm"]) == {"0.2", "0.5", "1"} and 0 <= row["rho_paper"]["success"] <= 1
            assert len(row["worst_case"]) >= 1 and all("interval" in p for p in row["worst_case"])
        assert len(rows["deep_defense"]["rho_per_epoch"]) == saved["parameters"]["ft_epochs"] + 1
        assert "transfer_from_control" in rows["deep_defense"]["worst_case"][0]["members"]
    assert [s["lam"] for s in m["lambda_sweep"]] == saved["parameters"]["lambda_sweep"]
    assert all(c["Deep Defense"]["ratio_to_plain"] > 1 for c in saved["timings"]["cost"].values())
    assert set(saved["health"]) == {"mlp", "lenet", "convnet"}
    assert all(any(h["id"] == "transfer" for h in rows) for rows in saved["health"].values())


@pytest.mark.notebook
def test_deep_defense_bad_parameter_fails_first(isolated_outputs):
    from robustness.runner import run_chapter

    tmp_path = isolated_outputs
    with pytest.raises(ValueError, match="n_epoch_eval"):
        run_chapter("deep_defense", "smoke", {"n_epoch_eval": 10**6}, output_dir=tmp_path / "executed")
    with pytest.raises(ValueError, match="rho_reference"):
        run_chapter("deep_defense", "smoke", {"rho_reference": "raw"}, output_dir=tmp_path / "executed")


# --------------------------------------------------------------------------- the chapter's recipe and verdict


def test_official_lr_schedule_halves_only_at_a_whole_epoch():
    # deepdefense.py: `if epoch_idx == 0.8 * args.epochs` (0-based): epoch 4 of 5, never for 1 or 2 epochs
    from robustness.chapters.deep_defense import official_milestones

    assert official_milestones(5) == (4,) and official_milestones(10) == (8,)
    assert official_milestones(1) == () and official_milestones(2) == () and official_milestones(3) == ()


def test_flip_augmentation_flips_about_half_the_images_and_is_seeded():
    from robustness.chapters.deep_defense import FlipAugmented

    seen = []
    loss = FlipAugmented(lambda model, x, y: seen.append(x.clone()) or torch.zeros(()), seed=3)
    x = torch.rand(400, 3, 4, 4)
    loss(None, x, torch.zeros(400, dtype=torch.long))
    flipped = (seen[0] == x.flip(3)).flatten(1).all(1)
    kept = (seen[0] == x).flatten(1).all(1)
    assert bool((flipped | kept).all()) and 150 < int(flipped.sum()) < 250
    again = []
    FlipAugmented(lambda model, x, y: again.append(x.clone()) or torch.zeros(()), seed=3)(None, x, None)
    assert torch.equal(seen[0], again[0])
    assert loss.spec["name"] == "flip_augmented" and loss.spec["p"] == 0.5


def test_a_bad_rho_reference_fails_at_parameter_resolution():
    from robustness.chapters.deep_defense import SPEC
    from robustness.config import resolve

    with pytest.raises(ValueError, match="rho_reference") as info:
        resolve(SPEC, profile="smoke", rho_reference="raw")
    assert "mean_image" in str(info.value) and "pixels" in str(info.value)
    with pytest.raises(ValueError, match="pgd_eps_mnist"):
        resolve(SPEC, profile="smoke", pgd_eps_mnist=0.7)  # not on the worst-case grid


def _acc(k, n=200):
    from robustness.evaluate.stats import accuracy_record

    return accuracy_record(k, n)


def _rho(mean, half=0.02):
    return {"mean": mean, "interval": [mean - half, mean + half], "n": 200, "success": 0.9}


def _variant(clean_k, rho, worst_ks, eps=(0.5, 1.0)):
    return {"clean": _acc(clean_k), "rho_paper": _rho(rho),
            "worst_case": [{"eps": e, **{k: v for k, v in _acc(w).items() if k != "value"}, "robust": w / 200}
                           for e, w in zip(eps, worst_ks)]}


def _results(**models):
    return {"profile": "laptop", "metrics": {"models": models}}


def test_verdict_calls_a_deepfool_only_gain_masked():
    from robustness.chapters.deep_defense import verdict, verdict_summary

    # ρ clearly up; the worst case a little higher as point values but the intervals overlap at every radius
    saved = _results(mlp={"fine-tune": _variant(196, 0.20, [120, 60]),
                          "deep_defense": _variant(195, 0.30, [128, 68]),
                          "adversarial": _variant(194, 0.22, [125, 66])})
    v = verdict_summary(saved)["mlp"]
    assert v["category"] == "masked" and v["rho"] == "higher" and v["worst_up_at"] == []
    assert v["clean"] == "overlap" and v["vs_adversarial"] == "is indistinguishable from"
    assert "not matched by the adaptive worst case" in verdict(saved)


def test_verdict_calls_a_gain_that_survives_the_worst_case_real():
    from robustness.chapters.deep_defense import verdict_summary

    saved = _results(lenet={"fine-tune": _variant(196, 0.20, [120, 60]),
                            "deep_defense": _variant(195, 0.30, [170, 110])})
    v = verdict_summary(saved)["lenet"]
    assert v["category"] == "real" and v["worst_up_at"] == [0.5, 1.0] and v["vs_adversarial"] is None


def test_verdict_calls_a_near_chance_classifier_broken():
    from robustness.chapters.deep_defense import verdict, verdict_summary

    saved = _results(convnet={"fine-tune": _variant(140, 0.02, [30]),
                              "deep_defense": _variant(24, 0.50, [24], eps=(0.25,))})
    assert verdict_summary(saved)["convnet"]["category"] == "broken"
    assert "near chance" in verdict(saved)


def test_verdict_without_a_clear_rho_gain_is_no_gain_even_if_the_point_is_higher():
    from robustness.chapters.deep_defense import verdict_summary

    saved = _results(mlp={"fine-tune": _variant(196, 0.200, [120, 60]),
                          "deep_defense": _variant(196, 0.215, [170, 110])})
    assert verdict_summary(saved)["mlp"]["category"] == "no_gain"


def test_verdict_reads_results_with_non_finite_numbers_written_as_strings():
    from robustness.chapters.deep_defense import verdict_summary

    dd = _variant(195, 0.30, [170, 110])
    dd["rho_paper"]["interval"] = ["nan", "nan"]  # fewer than two images: no interval
    saved = _results(mlp={"fine-tune": _variant(196, 0.20, [120, 60]), "deep_defense": dd})
    assert verdict_summary(saved)["mlp"]["category"] == "no_gain"  # no interval, no claim


def test_the_evaluation_protocol_runs_on_a_tiny_model(tiny_model, tiny_data, monkeypatch):
    # Every step of the chapter's evaluation on a tiny model (seconds): paper-unit ρ clipped and unclipped,
    # DDN, FGSM, the L2 worst case with a transfer member, the health table in L2, and the verdict on the result.
    import copy

    import robustness.evaluate.rho as rho_mod
    from robustness.chapters import deep_defense as dd
    from robustness.config import resolve
    from robustness.data import ArrayDataset

    x, y = tiny_data
    monkeypatch.setattr(rho_mod, "mean_image", lambda name, split="train": x.mean(0))
    cfg = resolve(dd.SPEC, profile="smoke")
    ds = ArrayDataset("mnist", "test", x[:24], y[:24], "blobs")
    data = {"eval": ds, "epoch_eval": ds.first(8), "adaptive": ds.first(12), "health": ds.first(12)}
    control = copy.deepcopy(tiny_model)
    with torch.no_grad():
        control.net[-1].bias.add_(0.01)  # a different model that computes almost the same function
    nets = {"reference": tiny_model, "fine-tune": control, "deep_defense": tiny_model}
    rows = dd.evaluate_variants(cfg, "mlp", "mnist", nets, data, 0.1, {"deep_defense": [{"rho_paper": 0.2}]})
    row = rows["deep_defense"]
    assert row["clean"]["n"] == 24 and len(row["clean"]["interval"]) == 2
    assert row["rho_paper"]["n"] == 24 and 0 < row["rho_paper"]["mean"]
    assert "rho_paper_converged" in rows["reference"] and "rho_paper_converged" not in row
    assert [p["eps"] for p in row["worst_case"]] == [0.5, 1.0]
    assert "transfer_from_control" in row["worst_case"][0]["members"]
    assert "transfer_from_control" not in rows["fine-tune"]["worst_case"][0]["members"]
    assert set(row["fgsm"]) == {"0.2", "0.5", "1"} and len(row["rho_per_epoch"]) == 2
    checks = dd.health(cfg, tiny_model, control, data, "mnist", dd.worst_at(row, 1.0))
    assert {"transfer", "gradient_free"} <= {c["id"] for c in checks}
    results = {"metrics": {"models": {"mlp": rows}}, "health": {"mlp": checks}}
    assert dd.verdict_summary(results)["mlp"]["category"] == "no_gain"  # the same network: no gain
    assert "Box-constrained minimum norm" in dd.verdict(results)
    assert dd.model_table({"models": {"mlp": rows}}, "mlp").count("\n") == 1 + len(rows)  # header, rule, rows
    assert dd.worst_case_table({"models": {"mlp": rows}}, "mlp").count("\n") == 1 + 2 * len(rows)
