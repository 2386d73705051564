"""JumpReLU: the activation, the retrofit, its BPDA surrogate, the FGSM-mix loss and the chapter's smoke run."""
import json

import pytest
import torch
from torch import nn

from conftest import TinyNet
from robustness import attacks, evaluate
from robustness.chapters.jumprelu import SPEC, adaptive_evaluation, choose_kappa, kappa_sweep, verdict, verdict_summary
from robustness.config import resolve
from robustness.defenses import AdversarialLoss, JumpReLU, bpda_relu, retrofit
from robustness.defenses.jumprelu import SmoothJump, bpda_smooth, relu_count
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
    sweep = kappa_sweep(tiny_model, [0.0, 0.3], x, y, ifgsm_step=0.05, ifgsm_steps=5, dataset="mnist",
                        deepfool_iter=5, deepfool_classes=4, n_deepfool=40, batch_size=32)
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


def test_adaptive_evaluation_is_a_per_image_worst_case(tiny_model, tiny_data):
    x, y = tiny_data[0][:80], tiny_data[1][:80]
    cfg = resolve(SPEC, "smoke", pgd_steps=10, square_queries=50, seeds=[0, 1], batch_size=32)
    res = adaptive_evaluation(tiny_model, [0.3], x, y, [0.05, 0.1, 0.3, 1.0], 0.1, cfg, ddn_steps=10)
    assert set(res) == {"0", "0.3"}
    for k, r in res.items():
        net = retrofit(tiny_model, float(k))
        assert r["clean"]["value"] == pytest.approx(evaluate.accuracy(net, x, y))
        wc = [c["robust"] for c in r["curve"]]
        assert wc == sorted(wc, reverse=True) and wc[0] <= r["clean"]["value"]  # nested balls: never rises
        assert wc[-1] <= 0.1  # eps = 1 allows any image
        for c in r["curve"]:
            lo, hi = c["interval"]
            assert lo <= c["robust"] <= hi
        # the threat-radius rows: one per seed, the paper's gradient first
        assert set(r["threat"]["seeds"]) == {"0", "1"} and r["threat"]["members"][0] == "pgd_true"
        assert "rho_median" in r["min_norm"]
    # at kappa = 0 the BPDA and transfer members would repeat pgd_true and do not run
    assert res["0"]["threat"]["members"] == ["pgd_true", "pgd_bpda_margin", "square"]
    assert "transfer" in res["0.3"]["threat"]["members"]


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
    # a member name that does not exist, or an ensemble that does not start with the paper's gradient
    with pytest.raises(ValueError, match="members=.*'pgd_true', 'transfer'"):
        resolve(SPEC, "smoke", members=["pgd_true", "fgsm_magic"])
    with pytest.raises(ValueError, match="must start with 'pgd_true'"):
        resolve(SPEC, "smoke", members=["square", "pgd_true"])
    with pytest.raises(ValueError, match="datasets=.*'mnist', 'cifar'"):
        resolve(SPEC, "smoke", datasets=["imagenet"])
    cfg = resolve(SPEC, "laptop")
    assert cfg.mnist_kappas == [0.0, 0.5, 1.0, 1.5] and cfg.mnist_iter == 40 and cfg.cifar_iter == 7
    # the adaptive ensemble's minimum strength and a radius beyond the threat model, in every profile
    for profile in ("smoke", "laptop", "paper"):
        c = resolve(SPEC, profile)
        assert c.restarts >= 2 and max(c.mnist_pgd_eps) > 0.3 and (profile == "smoke" or c.pgd_steps >= 100)
    assert max(cfg.cifar_pgd_eps) > 8 / 255


def _record(value, n=200):
    from robustness.evaluate.stats import wilson_interval

    return {"value": value, "n": n, "interval": list(wilson_interval(round(value * n), n))}


def _saved_one_model(paper_k: float, worst_k: float, clean_k: float = 0.98, n: int = 200,
                     constant: bool = False) -> dict:
    """A results file as ``load_results`` returns it, for one MNIST model with kappa grid {0, 1}: at the threat
    radius kappa = 0 keeps 10% under the paper's gradient and 2% under the ensemble; kappa = 1 gets the values
    passed (``paper_k``: accuracy under pgd_true alone, ``worst_k``: after every member)."""
    def adaptive_row(clean, paper, worst):
        added = {"pgd_true": round((clean - paper) * n), "transfer": round((paper - worst) * n), "square": 0}
        rec = {"eps": 0.3, "norm": "linf", "n": n, "robust": worst, "interval": _record(worst, n)["interval"],
               "added": added}
        return {"clean": _record(clean, n), "n": n, "curve": [rec],
                "threat": {"eps": 0.3, "members": list(added), "seeds": {"0": rec, "1": {**rec, "robust": worst}}}}

    key = "mnist_baseline"
    health = [{"check": "not a near-constant classifier", "passed": not constant},
              {"check": "accuracy reaches chance at a large eps", "passed": True}]
    return {"profile": "laptop", "parameters": {"mnist_kappas": [0.0, 1.0], "seeds": [0, 1]},
            "metrics": {"kappa_choice": {key: {"kappa": 1.0}},
                        "adaptive": {key: {"0": adaptive_row(0.99, 0.10, 0.02),
                                           "1": adaptive_row(clean_k, paper_k, worst_k)}}},
            "health": {f"{key} κ=1": health}}


def test_verdict_is_computed_from_the_numbers():
    # a 50-point gain under the paper's gradient that the adaptive ensemble takes back: masked
    masked = _saved_one_model(paper_k=0.60, worst_k=0.03)
    assert verdict_summary(masked)["mnist_baseline"]["category"] == "masked"
    assert "claim does not hold" in verdict(masked)
    # the same gain, most of it surviving: real
    real = _saved_one_model(paper_k=0.60, worst_k=0.45)
    assert verdict_summary(real)["mnist_baseline"]["category"] == "survives"
    assert "holds in part" in verdict(real)
    # no gain under the paper's own gradient: nothing to test
    assert verdict_summary(_saved_one_model(paper_k=0.11, worst_k=0.02))["mnist_baseline"]["category"] == "no_gain"
    # a retrofit at chance accuracy, or flagged near-constant, is broken however robust it looks
    assert verdict_summary(_saved_one_model(0.15, 0.15, clean_k=0.15))["mnist_baseline"]["category"] == "broken"
    assert verdict_summary(_saved_one_model(0.6, 0.5, constant=True))["mnist_baseline"]["category"] == "broken"


def test_verdict_compares_intervals_not_points():
    # a 3-point worst-case gain on 200 images is inside the noise: the intervals overlap, so not "survives"
    small = _saved_one_model(paper_k=0.60, worst_k=0.05)
    assert verdict_summary(small)["mnist_baseline"]["category"] == "masked"
    # the same gain on 20,000 images separates the intervals
    big = _saved_one_model(paper_k=0.60, worst_k=0.05, n=20000)
    assert verdict_summary(big)["mnist_baseline"]["category"] == "survives"


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
                assert {"ifgsm_acc", "deepfool_l2_rho", "deepfool_l2_rho_paper", "deepfool_linf_rho_paper"} <= set(
                row[setting])
        assert per_k["0"]["white_box"] == per_k["0"]["gray_box"]
        assert m["kappa_choice"][key]["kappa"] in grid
        assert set(m["adaptive"][key]) == {f"{k:g}" for k in grid}  # smoke attacks every kappa
        for r in m["adaptive"][key].values():
            eps = [c["eps"] for c in r["curve"]]
            assert eps == sorted(saved["parameters"][f"{key.split('_')[0]}_pgd_eps"])
            worst = [c["robust"] for c in r["curve"]]
            assert worst == sorted(worst, reverse=True) and worst[0] <= r["clean"]["value"] + 1e-9
            assert set(r["threat"]["seeds"]) == {str(s) for s in saved["parameters"]["seeds"]}
            assert "rho_median" in r["min_norm"] and "converged" in r["min_norm"]
    for key in keys:  # health at the judged (chosen, else largest) and at the largest kappa of every model
        grid = saved["parameters"][f"{key.split('_')[0]}_kappas"]
        judged = m["kappa_choice"][key]["kappa"] or max(grid)
        for k in {judged, max(grid)}:
            assert f"{key} κ={k:g}" in saved["health"]
    assert all({"check", "passed"} <= set(h) for rows in saved["health"].values() for h in rows)
