"""JumpReLU: the activation, the retrofit, its BPDA surrogate, the FGSM-mix loss and the chapter's smoke run."""
import json

import pytest
import torch
from torch import nn

from conftest import TinyNet
from robustness import attacks, evaluate
from robustness.chapters.jumprelu import SPEC
from robustness.config import resolve
from robustness.defenses import AdversarialLoss, JumpReLU, bpda_relu, retrofit
from robustness.defenses.jumprelu import (ADAPTIVE_ATTACKS, SmoothJump, adaptive_sweep, bpda_smooth, choose_kappa,
                                          kappa_sweep, relu_count)
from robustness.models import build_model


def test_jumprelu_values_below_at_and_above_kappa():
    act = JumpReLU(0.5)
    x = torch.tensor([-1.0, 0.0, 0.2, 0.5, 0.5001, 0.7, 3.0])
    assert torch.equal(act(x), torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5001, 0.7, 3.0]))
    # kappa = 0 is exactly the ReLU, including at 0
    z = torch.randn(1000)
    assert torch.equal(JumpReLU(0.0)(z), torch.relu(z))
    with pytest.raises(ValueError, match="kappa"):
        JumpReLU(-0.1)


def test_jumprelu_gradient_is_the_indicator_above_kappa():
    x = torch.tensor([-1.0, 0.3, 0.5, 0.6, 2.0], requires_grad=True)
    JumpReLU(0.5)(x).sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0]))


@pytest.mark.parametrize("arch,dataset,shape,n_relu", [("lenet_like", "mnist", (1, 28, 28), 4),
                                                ("alex_like", "cifar10", (3, 32, 32), 6)])
def test_retrofit_zero_is_identical_and_original_untouched(arch, dataset, shape, n_relu):
    torch.manual_seed(0)
    net = build_model(arch, dataset).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.rand(16, *shape)
    out = net(x)
    same = retrofit(net, 0.0)
    assert torch.equal(same(x), out)
    jumped = retrofit(net, 0.5)
    assert relu_count(jumped) == 0 and sum(isinstance(m, JumpReLU) for m in jumped.modules()) == relu_count(net)
    assert not torch.allclose(jumped(x), out)  # a large kappa does change the function
    # the original keeps its ReLUs, weights and outputs
    assert relu_count(net) == n_relu and all(not isinstance(m, JumpReLU) for m in net.modules())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert torch.equal(net(x), out)


def test_retrofit_per_layer_kappas_and_nested_modules():
    net = TinyNet()  # ReLUs inside a nested nn.Sequential
    out = retrofit(net, [0.1, 0.7])
    assert [m.kappa for m in out.modules() if isinstance(m, JumpReLU)] == [0.1, 0.7]
    with pytest.raises(ValueError, match="2 ReLU"):
        retrofit(net, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no nn.ReLU"):
        retrofit(nn.Linear(3, 3), 0.1)


def test_bpda_forward_is_jumprelu_and_gradient_is_relus(tiny_model, tiny_data):
    x, y = tiny_data[0][:64], tiny_data[1][:64]
    jump = retrofit(tiny_model, 0.4)
    surrogate = bpda_relu(jump)
    assert torch.equal(surrogate(x), jump(x))
    # the surrogate's gradient is not autograd's 1[x > kappa] one
    g_bpda = attacks.input_gradient(surrogate, x, y)
    g_jump = attacks.input_gradient(jump, x, y)
    assert not torch.allclose(g_bpda, g_jump)
    # on the kappa = 0 retrofit there is nothing to approximate: BPDA's gradient is exactly the ReLU network's
    g0 = attacks.input_gradient(bpda_relu(retrofit(tiny_model, 0.0)), x, y)
    assert torch.allclose(g0, attacks.input_gradient(tiny_model, x, y), atol=1e-6)


def test_bpda_single_layer_gradient_equals_relu():
    layer = nn.Sequential(JumpReLU(0.5))
    surrogate = bpda_relu(layer)
    x = torch.tensor([-1.0, 0.2, 0.4, 0.6, 2.0], requires_grad=True)
    out = surrogate(x)
    assert torch.equal(out.detach(), JumpReLU(0.5)(x.detach()))
    out.sum().backward()
    assert torch.equal(x.grad, (x.detach() > 0).float())  # ReLU's gradient, not 1[x > 0.5]


def test_fgsm_mix_replaces_the_head_of_the_batch(tiny_model, tiny_data):
    x, y = tiny_data[0][:10], tiny_data[1][:10]
    loss = AdversarialLoss("fgsm", 0.1, mix=0.3, replace=True)
    tiny_model.train()
    mixed = loss.mixed_batch(tiny_model, x, y)
    assert tiny_model.training  # the crafting restored train mode
    tiny_model.eval()
    assert torch.equal(mixed[3:], x[3:]) and not torch.equal(mixed[:3], x[:3])
    assert torch.allclose(mixed[:3], attacks.fgsm(tiny_model, x[:3], y[:3], eps=0.1))
    assert (mixed - x).abs().max() <= 0.1 + 1e-6
    assert loss(tiny_model, x, y) > nn.functional.cross_entropy(tiny_model(x), y)
    assert all(p.grad is None for p in tiny_model.parameters())
    assert loss.spec == {"name": "adversarial", "attack": "fgsm", "mix": 0.3, "eps": 0.1, "replace": True}
    with pytest.raises(ValueError, match="mix"):
        AdversarialLoss("fgsm", 0.1, mix=1.5, replace=True)


def test_sweep_choice_and_adaptive_on_a_tiny_model(tiny_model, tiny_data):
    x, y = tiny_data[0][:80], tiny_data[1][:80]
    sweep = kappa_sweep(tiny_model, [0.0, 0.3], x, y, ifgsm_step=0.05, ifgsm_steps=5, deepfool_iter=5,
                        deepfool_classes=4, n_deepfool=40, batch_size=32)
    assert set(sweep) == {"0", "0.3"}
    s0 = sweep["0"]
    assert s0["clean"] == pytest.approx(evaluate.accuracy(tiny_model, x, y))
    # at kappa = 0 white- and gray-box are the same attack on the same model
    assert s0["white_box"] == s0["gray_box"]
    assert 0 < s0["white_box"]["deepfool_l2_rho"] < 1
    choice = choose_kappa(sweep, budget=1.0)
    assert choice["admissible"] == [0.0, 0.3]
    strict = {k: {**v, "clean": (v["clean"] if k == "0" else v["clean"] - 0.5)} for k, v in sweep.items()}
    assert choose_kappa(strict, budget=0.01)["kappa"] == 0.0
    with pytest.raises(ValueError, match="contain 0"):
        choose_kappa({"0.3": sweep["0.3"]}, 0.1)


def test_adaptive_sweep_is_a_per_image_worst_case(tiny_model, tiny_data):
    x, y = tiny_data[0][:80], tiny_data[1][:80]
    res = adaptive_sweep(tiny_model, [0.3], x, y, [0.0, 0.1, 0.3, 1.0], steps=10, restarts=1,
                         smooth_temperature=0.05, ddn_steps=10, batch_size=32)
    assert set(res) == {"0", "0.3"}
    for k, r in res.items():
        assert r["clean"] == pytest.approx(evaluate.accuracy(retrofit(tiny_model, float(k)), x, y))
        e = r["eps"]
        assert e["0"]["worst_case"] == pytest.approx(r["clean"])  # eps = 0 attacks nothing
        for row in e.values():
            # an image is robust only if it survives every member, so no member can be below the worst case
            assert row["worst_case"] <= min(row["transfer"], row["pgd_bpda"]) + 1e-9
            assert set(row["fooled_only_by"]) == set(ADAPTIVE_ATTACKS)
        wc = [e[f"{v:g}"]["worst_case"] for v in (0.0, 0.1, 0.3, 1.0)]
        assert wc == sorted(wc, reverse=True)  # nested balls: never rises with eps
        assert wc[-1] <= 0.1  # eps = 1 allows any image
        assert "rho_median" in r["ddn_bpda"]
    # at kappa = 0 the BPDA gradient is exact: transfer is the same attack, and white-box is not re-run
    assert all(v["transfer"] == v["pgd_bpda"] and v["extra_fooled"]["pgd_white"] is None
               for v in res["0"]["eps"].values())
    assert isinstance(res["0.3"]["eps"]["0.1"]["extra_fooled"]["pgd_smooth"], int)


def test_smooth_surrogate_sees_the_jump():
    act = SmoothJump(0.5, 0.05)
    x = torch.tensor([-1.0, 0.2, 0.5, 0.8, 3.0], requires_grad=True)
    far = torch.tensor([-1.0, 0.1, 1.0, 3.0])  # away from the threshold the two agree
    assert torch.allclose(act(far), JumpReLU(0.5)(far), atol=1e-3)
    act(x).sum().backward()
    # slope at the threshold is about kappa / (4 T) + 1/2: the jump, which ReLU's gradient (1) ignores
    assert x.grad[2] == pytest.approx(0.5 + 0.5 / (4 * 0.05), rel=1e-4)
    assert abs(x.grad[0]) < 1e-6 and x.grad[4] == pytest.approx(1.0, abs=1e-6)
    surrogate = bpda_smooth(nn.Sequential(JumpReLU(0.5)), 0.05)
    z = torch.tensor([0.2, 0.5, 0.8])
    assert torch.equal(surrogate(z), JumpReLU(0.5)(z))  # forward stays exact
    with pytest.raises(ValueError, match="temperature"):
        SmoothJump(0.5, 0.0)


def test_bad_parameters_fail_in_resolve():
    with pytest.raises(ValueError, match="mnist_kappas"):
        resolve(SPEC, "smoke", mnist_kappas=[0.5, 1.0])
    with pytest.raises(ValueError, match="cifar_n_val"):
        resolve(SPEC, "smoke", cifar_n_val=5000)
    with pytest.raises(ValueError, match="mnist_adv_ratio"):
        resolve(SPEC, "smoke", mnist_adv_ratio=1.5)
    cfg = resolve(SPEC, "laptop")
    assert cfg.mnist_kappas == [0.0, 0.5, 1.0, 1.5] and cfg.mnist_iter == 40 and cfg.cifar_iter == 7
    # the adaptive ensemble's minimum strength and a radius beyond the threat model, in every profile
    for profile in ("smoke", "laptop", "paper"):
        c = resolve(SPEC, profile)
        assert c.restarts >= 2 and max(c.mnist_pgd_eps) > 0.3 and (profile == "smoke" or c.pgd_steps >= 100)
    assert max(cfg.cifar_pgd_eps) > 8 / 255


def _saved_one_model(white_k: float, worst_k: float, gray_k: float, clean_k: float = 0.98) -> dict:
    """A results file as ``load_results`` returns it, for one MNIST model with kappa grid {0, 1}: kappa = 0
    has white-box IFGSM accuracy 5% and adaptive worst case 0%; kappa = 1 gets the values passed."""
    def sweep_row(clean, white, gray, rho):
        return {"clean": clean, "white_box": {"ifgsm_acc": white, "deepfool_l2_rho": rho},
                "gray_box": {"ifgsm_acc": gray}}

    def adaptive_row(clean, worst):
        eps = {e: {"worst_case": w, "transfer": w, "pgd_bpda": w, "extra_fooled": {"pgd_white": 0, "pgd_smooth": 0}}
               for e, w in (("0.3", worst), ("0.4", 0.0))}
        return {"clean": clean, "n": 200, "eps": eps}

    key = "mnist_baseline"
    return {"profile": "laptop", "parameters": {"mnist_kappas": [0.0, 1.0], "mnist_iter": 40, "ifgsm_step": 0.01},
            "metrics": {"kappa_choice": {key: {"kappa": 1.0}},
                        "models": {key: {"kappa": {"0": sweep_row(0.99, 0.05, 0.05, 0.2),
                                                   "1": sweep_row(clean_k, white_k, gray_k, 0.3)}}},
                        "adaptive": {key: {"0": adaptive_row(0.99, 0.0), "1": adaptive_row(clean_k, worst_k)}}},
            "health": {f"{key} κ=1": [{"check": "accuracy falls to ~0 at a large eps", "passed": True}]}}


def test_verdict_is_computed_from_the_numbers():
    from robustness.chapters.jumprelu import verdict

    # a 55-point IFGSM gain of which the adaptive ensemble leaves nothing, with a large gray-box advantage
    masked = verdict(_saved_one_model(white_k=0.60, worst_k=0.0, gray_k=0.90))
    assert "0% of the IFGSM gain survives" in masked and "essentially none" in masked
    assert "most of it is gone under adaptive attack" in masked
    assert "gray-box setting measures how badly" in masked
    # the same gain, all of it surviving: the verdict must say so instead
    real = verdict(_saved_one_model(white_k=0.60, worst_k=0.55, gray_k=0.60))
    assert "100% of the IFGSM gain survives" in real and "substantial part of the gain survives" in real
    # no gain under the paper's own attack: nothing to test
    assert "no meaningful robustness gain" in verdict(_saved_one_model(white_k=0.05, worst_k=0.0, gray_k=0.05))
    # a retrofit at chance accuracy is not counted as robust
    assert "Not counted (mnist_baseline)" in verdict(_saved_one_model(0.9, 0.9, 0.9, clean_k=0.1))


@pytest.mark.notebook
def test_jumprelu_smoke_run_writes_its_results(isolated_outputs):
    from robustness.runner import run_chapter

    tmp_path = isolated_outputs
    notebook = run_chapter("jumprelu", "smoke", output_dir=tmp_path / "executed")
    assert notebook.exists()
    saved = json.loads((tmp_path / "results" / "smoke" / "jumprelu.json").read_text())
    assert saved["chapter"] == "jumprelu" and saved["profile"] == "smoke"
    m = saved["metrics"]
    keys = {"mnist_baseline", "mnist_robust", "cifar_baseline", "cifar_robust"}
    assert set(m["models"]) == keys and set(m["adaptive"]) == keys and set(m["kappa_choice"]) == keys
    for key in keys:
        grid = saved["parameters"][f"{key.split('_')[0]}_kappas"]
        per_k = m["models"][key]["kappa"]
        assert set(per_k) == {f"{k:g}" for k in grid}
        for row in per_k.values():
            assert 0 <= row["clean"] <= 1
            for setting in ("white_box", "gray_box"):
                assert {"ifgsm_acc", "deepfool_l2_rho", "deepfool_linf_rho"} <= set(row[setting])
        assert per_k["0"]["white_box"] == per_k["0"]["gray_box"]
        assert m["kappa_choice"][key]["kappa"] in grid
        assert set(m["adaptive"][key]) == {f"{k:g}" for k in grid}  # smoke attacks every kappa
        for r in m["adaptive"][key].values():
            assert set(r["eps"]) == {f"{e:g}" for e in saved["parameters"][f"{key.split('_')[0]}_pgd_eps"]}
            for row in r["eps"].values():
                assert row["worst_case"] <= min(row["transfer"], row["pgd_bpda"], r["clean"]) + 1e-9
            assert "rho_median" in r["ddn_bpda"]
    for key in keys:  # health at the chosen and at the largest kappa of every model
        grid = saved["parameters"][f"{key.split('_')[0]}_kappas"]
        for k in {m["kappa_choice"][key]["kappa"], max(grid)}:
            assert f"{key} κ={k:g}" in saved["health"]
    assert all({"check", "passed"} <= set(h) for rows in saved["health"].values() for h in rows)
