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
    with pytest.raises(ValueError, match="rho_reference"):
        DeepDefenseLoss(rho_reference="raw")
    with pytest.raises(ValueError, match="max_iter"):
        DeepDefenseLoss(max_iter=0)
    with pytest.raises(ValueError, match="attack"):
        AdversarialLoss("cw")
    assert DeepDefenseLoss(lam=3).spec != DeepDefenseLoss(lam=4).spec  # distinct cache keys


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
            assert 0 <= row["clean"] <= 1 and set(row["fgsm_acc"]) == {"0.2", "0.5", "1"}
        assert len(rows["deep_defense"]["rho_per_epoch"]) == saved["parameters"]["ft_epochs"] + 1
    assert [s["lam"] for s in m["lambda_sweep"]] == saved["parameters"]["lambda_sweep"]
    assert all(c["Deep Defense"]["ratio_to_plain"] > 1 for c in saved["timings"]["cost"].values())
    assert set(saved["health"]) == {"mlp", "lenet", "convnet"}


@pytest.mark.notebook
def test_deep_defense_bad_parameter_fails_first(isolated_outputs):
    from robustness.runner import run_chapter

    tmp_path = isolated_outputs
    with pytest.raises(ValueError, match="n_epoch_eval"):
        run_chapter("deep_defense", "smoke", {"n_epoch_eval": 10**6}, output_dir=tmp_path / "executed")
    with pytest.raises(ValueError, match="rho_reference"):
        run_chapter("deep_defense", "smoke", {"rho_reference": "raw"}, output_dir=tmp_path / "executed")
