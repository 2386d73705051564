"""JumpReLU: the activation, the retrofit, its BPDA surrogates, the robust recipe's loss, the chapter's protocol
steps as records, its parameters, its tables against the paper's anchors, its verdict, and its smoke run."""
import json

import pytest
import torch
from torch import nn

from conftest import TinyNet
from robustness_book import attacks, evaluate
from robustness_book.chapters import jumprelu as chapter
from robustness_book.chapters import kit
from robustness_book.chapters.jumprelu import (MEMBERS_AT_ZERO, SPEC, adaptive_evaluation, choose_kappa, kappa_sweep,
                                          verdict, verdict_summary)
from robustness_book.config import resolve
from robustness_book.data import DATASETS, threat_eps
from robustness_book.defenses import AdversarialLoss, JumpReLU, bpda_relu, retrofit
from robustness_book.defenses.jumprelu import SmoothJump, bpda_smooth, relu_count
from robustness_book.models import build_model
from robustness_book.results import anchors, check_records, one, record, select


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


def test_robust_recipe_loss_replaces_the_head_of_each_batch_with_fgsm_examples(tiny_model, tiny_data):
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



def test_kappa_sweep_records_and_the_validation_rule_on_a_tiny_model(tiny_model, tiny_data):
    x, y = tiny_data[0][:80], tiny_data[1][:80]
    cfg = resolve(SPEC, "smoke")
    sweep = kappa_sweep(cfg, tiny_model, [0.0, 0.3], x, y, dataset="mnist", model_name="tiny", protocol="paper",
                        ifgsm_steps=5, deepfool_iter=5, deepfool_classes=4, n_deepfool=40,
                        batch_size=32)
    check_records(sweep)
    assert {r["setting"]["kappa"] for r in sweep} == {0.0, 0.3}
    assert all(r["defense"] == "jumprelu" and r["setting"]["protocol"] == "paper" for r in sweep)
    assert one(sweep, kappa=0.0, attack="none")["value"] == pytest.approx(evaluate.accuracy(tiny_model, x, y))
    # at kappa = 0 white- and gray-box are the same attack on the same model
    white = select(sweep, kappa=0.0, box="white")
    gray = select(sweep, kappa=0.0, box="gray")
    assert len(white) == len(gray) == 1 + 2 * 4  # IFGSM, and per norm: accuracy, ρ in two units, success rate
    assert [(r["attack"], r["metric"], r["value"]) for r in white] == [(r["attack"], r["metric"], r["value"])
                                                                       for r in gray]
    pixel = one(sweep, kappa=0.0, box="white", attack="deepfool", threat_model="l2", metric="rho", units="pixel")
    assert 0 < pixel["value"] < 1 and pixel["n"] <= 40
    official = one(sweep, kappa=0.0, box="white", attack="deepfool", threat_model="l2", metric="rho",
                   units="normalized")
    assert official["n"] == 40 and official["interval"][0] <= official["value"] <= official["interval"][1]
    # the validation rule, on the sweep's records
    assert choose_kappa(sweep, budget=1.0)["admissible"] == [0.0, 0.3]
    hurt = [{**r, "value": r["value"] - 0.5} if r["attack"] == "none" and r["setting"]["kappa"] == 0.3 else r
            for r in sweep]
    assert choose_kappa(hurt, budget=0.01)["kappa"] == 0.0
    with pytest.raises(ValueError, match="contain 0"):
        choose_kappa(select(sweep, kappa=0.3), 0.1)


def test_the_validation_rule_takes_the_best_admissible_kappa_and_the_smaller_on_ties():
    cfg = resolve(SPEC, "smoke")

    def sweep(clean, ifgsm):
        out = []
        for k in clean:
            out += [record(cfg, dataset="mnist", model="m", defense="jumprelu", metric="accuracy", value=clean[k],
                           kappa=k),
                    record(cfg, dataset="mnist", model="m", defense="jumprelu", attack="ifgsm", metric="accuracy",
                           value=ifgsm[k], kappa=k, box="white")]
        return out

    c = choose_kappa(sweep({0.0: 0.99, 0.5: 0.985, 1.0: 0.95}, {0.0: 0.1, 0.5: 0.4, 1.0: 0.9}), budget=0.01)
    assert c["kappa"] == 0.5 and c["admissible"] == [0.0, 0.5] and c["clean_drop"] == pytest.approx(0.005)
    assert choose_kappa(sweep({0.0: 0.99, 0.5: 0.99, 1.0: 0.99}, {0.0: 0.1, 0.5: 0.4, 1.0: 0.4}), 0.01)["kappa"] == 0.5


def test_adaptive_evaluation_is_a_per_image_worst_case(tiny_model, tiny_data):
    x, y = tiny_data[0][:80], tiny_data[1][:80]
    cfg = resolve(SPEC, "smoke", pgd_steps=10, square_queries=50, seeds=[0, 1], batch_size=32,
                  pgd_eps={"mnist": [0.05, 0.1, 0.3, 1.0]}, eps={"mnist": 0.1}, ddn_steps={"mnist": 10})
    run = chapter.Run(cfg)
    adaptive_evaluation(run, tiny_model, [0.3], x, y, dataset="mnist", model_name="tiny")
    res = run.records
    check_records(res)
    assert {r["setting"]["kappa"] for r in res} == {0.0, 0.3}
    for k in (0.0, 0.3):
        net = retrofit(tiny_model, k)
        clean = one(res, kappa=k, attack="none")
        assert clean["value"] == pytest.approx(evaluate.accuracy(net, x, y))
        curve = select(res, kappa=k, attack="worst_case", nested=True)
        assert [r["eps"] for r in curve] == [0.05, 0.1, 0.3, 1.0]
        wc = [r["value"] for r in curve]
        assert wc == sorted(wc, reverse=True) and wc[0] <= clean["value"]  # nested balls: never rises
        assert wc[-1] <= 0.1  # eps = 1 allows any image
        assert all(r["interval"][0] <= r["value"] <= r["interval"][1] for r in curve)
        # the threat radius: one worst case per seed, the paper's gradient first and alone below the clean count
        threat = select(res, kappa=k, attack="worst_case", nested=False, eps=0.1)
        assert [r["seed"] for r in threat] == [0, 1]
        # where the claim is judged (10 IFGSM steps reach 0.031: 0.05 is the nearest radius), the other seed reruns,
        # and an image is robust there only if both seeds left it standing
        assert chapter.paper_radii(cfg, "mnist") == [0.05]
        rerun = one(res, kappa=k, attack="worst_case", nested=False, eps=0.05)
        assert rerun["seed"] == 1 and rerun["n"] == 80
        judged = run.judged_worst("mnist", "tiny", k, 0.05)
        point = run.raw["mnist", "tiny", k, "curve"][0]
        assert torch.equal(judged["robust_mask"], point["robust_mask"] & run.raw["mnist", "tiny", k, 1, 0.05][
            "robust_mask"])
        back = chapter.worst_at(res, "mnist", "tiny", k, 0.05)
        assert torch.equal(back["robust_mask"], judged["robust_mask"]) and back["seeds"] == [0, 1]
        added = select(res, kappa=k, metric="images_fooled", nested=False, seed=0, eps=0.1)
        assert added[0]["attack"] == "pgd_true" and [r["setting"]["order"] for r in added] == list(range(len(added)))
        alone = one(res, kappa=k, attack="pgd_true", metric="accuracy", seed=0, alone=True)
        assert threat[0]["value"] <= alone["value"] <= clean["value"]
        assert alone["value"] == pytest.approx(clean["value"] - added[0]["value"] / 80)
        # the min-norm attack at its steps and at twice them, converged as evaluate.min_norm decides it
        assert [r["setting"]["steps"] for r in select(res, kappa=k, attack="ddn_bpda", metric="rho",
                                                      statistic="median")] == [10, 20]
        assert one(res, kappa=k, metric="converged")["setting"]["steps_double"] == 20
        # every worst case is kept with its per-image outcome: the threat radius's robust images are its own
        raw = run.raw["mnist", "tiny", k, 0]
        assert int(raw["robust_mask"].sum()) == round(threat[0]["value"] * 80)
        assert evaluate.member_robust_masks(raw)["pgd_true"].sum() == round(alone["value"] * 80)
        assert [r["eps"] for r in run.raw["mnist", "tiny", k, "curve"]] == [0.05, 0.1, 0.3, 1.0]
        # which member fooled each image is written once, by the kit, and read back as the run had it
        for rec_, point in zip(curve, run.raw["mnist", "tiny", k, "curve"]):
            back = kit.worst_from_record(rec_)
            assert torch.equal(back["fooled_by"], point["fooled_by"].to(torch.int16))
            assert back["members"] == point["members"]
    # at kappa = 0 the BPDA and transfer members would repeat pgd_true and do not run
    assert [r["attack"] for r in select(res, kappa=0.0, metric="images_fooled", nested=False, seed=0, eps=0.1)] == list(
        MEMBERS_AT_ZERO)
    assert select(res, kappa=0.3, attack="transfer", metric="images_fooled")


def test_train_all_holds_the_validation_images_out_of_training(monkeypatch, tiny_model):
    from conftest import make_blobs
    from robustness_book.data import ArrayDataset

    x, y = make_blobs(n=100)
    fake = lambda name, split: ArrayDataset(name, split, x, y, "synthetic")  # noqa: E731
    monkeypatch.setattr(kit, "load_dataset", fake)
    monkeypatch.setattr(chapter, "load_dataset", fake)
    for kind in chapter.KINDS:
        monkeypatch.setitem(chapter.RECIPES, kind, lambda cfg, d: (tiny_model, {"train_seconds": 1.0, "cached": True}))
    cfg = resolve(SPEC, "smoke", datasets=["mnist"], train_size={"mnist": 80}, n_val={"mnist": 30},
                  n_attack={"mnist": 20}, n_clean={"mnist": 100}, n_deepfool={"mnist": 20}, n_adaptive={"mnist": 20},
                  n_autoattack={"mnist": 0})
    run = chapter.Run(cfg)
    chapter.train_all(run)
    # the networks train on the first train_size - n_val images; the n_val after them only choose kappa
    assert chapter.train_arguments(cfg, "mnist")["train_size"] == 50
    assert torch.equal(run.data["mnist"]["val"].x, x[50:80]) and run.data["mnist"]["val"].split == "val"
    assert [r["model"] for r in select(run.records, protocol="training")] == [
        chapter.model_id("mnist", k) for k in chapter.KINDS]
    assert run.timings["train"]["mnist/lenet_like-baseline"] == {"seconds": 1.0, "cached": True}


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
    with pytest.raises(ValueError, match=r"kappas\['mnist'\]=\[0.5, 1.0\] must contain 0"):
        resolve(SPEC, "smoke", kappas={"mnist": [0.5, 1.0]})
    with pytest.raises(ValueError, match=r"n_val\['cifar10'\]"):
        resolve(SPEC, "smoke", n_val={"cifar10": 5000})
    with pytest.raises(ValueError, match=r"adv_ratio\['mnist'\]"):
        resolve(SPEC, "smoke", adv_ratio={"mnist": 1.5})
    # sizes are checked against the data set's official split sizes
    with pytest.raises(ValueError, match=r"train_size\['mnist'\]=70000 exceeds the 60,000"):
        resolve(SPEC, "smoke", train_size={"mnist": 70000})
    with pytest.raises(ValueError, match=r"train_size\['cifar10'\]=60000 exceeds the 50,000"):
        resolve(SPEC, "smoke", train_size={"cifar10": 60000})
    with pytest.raises(ValueError, match=r"n_clean\['fashion_mnist'\]=20000 exceeds the 10,000"):
        resolve(SPEC, "smoke", datasets=["fashion_mnist"], n_clean=20000)
    # data-set ids, never prefixes
    with pytest.raises(ValueError, match="unknown data set"):
        resolve(SPEC, "smoke", epochs={"cifar": 2})
    with pytest.raises(ValueError, match="datasets=.*'mnist', 'fashion_mnist', 'cifar10'"):
        resolve(SPEC, "smoke", datasets=["cifar"])
    # a member name that does not exist, or an ensemble that does not start with the paper's gradient
    with pytest.raises(ValueError, match="members=.*'pgd_true', 'transfer'"):
        resolve(SPEC, "smoke", members=["pgd_true", "fgsm_magic"])
    with pytest.raises(ValueError, match="must start with 'pgd_true'"):
        resolve(SPEC, "smoke", members=["square", "pgd_true"])


def test_profiles_give_every_data_set_its_values():
    assert set(chapter.ARCH) == set(DATASETS) and chapter.ARCH["fashion_mnist"] == chapter.ARCH["mnist"]
    cfg = resolve(SPEC, "laptop")
    assert cfg.datasets == ["mnist", "cifar10"]
    assert cfg.kappas["mnist"] == [0.0, 0.5, 1.0, 1.5] and cfg.attack_iter == {"mnist": 40, "cifar10": 7}
    # one value for all data sets, or a partial mapping over the profile's
    assert resolve(SPEC, "smoke", epochs=2).epochs == {"mnist": 2, "cifar10": 2}
    assert resolve(SPEC, "smoke", epochs={"cifar10": 2}).epochs == {"mnist": 1, "cifar10": 2}
    for profile in ("smoke", "laptop", "paper"):
        c = resolve(SPEC, profile, datasets=list(DATASETS))
        assert c.kappas["fashion_mnist"] == c.kappas["mnist"] and c.augment["fashion_mnist"] is False
        # the adaptive ensemble's minimum strength, and a radius beyond each threat model (smoke CIFAR-10 aside)
        assert c.restarts >= 2 and (profile == "smoke" or c.pgd_steps >= 100)
        for d in DATASETS:
            assert c.eps[d] == threat_eps(d)  # the threat radius is the data set's standard one unless set
            assert profile == "smoke" and d == "cifar10" or max(c.pgd_eps[d]) > c.eps[d], (profile, d)
    # a reader may move the threat radius per data set; it stays an L∞ radius on [0, 1] pixels
    assert resolve(SPEC, "smoke", eps={"mnist": 0.2}).eps == {"mnist": 0.2, "cifar10": threat_eps("cifar10")}
    with pytest.raises(ValueError, match=r"eps"):
        resolve(SPEC, "smoke", eps=1.5)


# ---------------------------------------------------------------------------
# The verdict and the tables, on hand-made records

CFG = {"chapter": "jumprelu", "profile": "laptop", "seed": 0}
MEMBERS3 = ("pgd_true", "transfer", "square")


def _first(n: int, k: int) -> torch.Tensor:
    """A per-image outcome: the first ``k`` of ``n`` images right."""
    return torch.arange(n) < k


def _saved_one_model(ifgsm_k: int = 120, ifgsm_0: int = 20, worst_k=100, worst_0=20, *, n: int = 200,
                     clean_k: float = 0.98, remover: str = "square", autoattack: int | None = None,
                     failed: str | None = None, constant: bool = False, chosen: float = 1.0, grid=(0.0, 1.0),
                     m: str = "lenet_like-baseline", seed1_fools: int = 0) -> dict:
    """A results file as ``load_results`` returns it, for one MNIST network, with per-image outcomes: ``ifgsm_*``
    and ``worst_*`` are the numbers of images (the first ones) right under white-box IFGSM and under the adaptive
    worst case (``worst_k`` one number, or ``{eps: number}``) at the radii where the claim is judged (0.1 and
    0.125 with these parameters: the MNIST reach is 0.123), at the judged kappa and at kappa = 0; the images IFGSM
    left standing and the worst case fooled were fooled by ``remover``; the threat radius (0.3) has the outcomes of
    0.125. The second attack seed reruns the judged radii and fools ``seed1_fools`` more of the images the curve
    left standing at the judged kappa. ``autoattack``: AutoAttack on the survivors leaves that many."""
    d, radii = "mnist", (0.1, 0.125)
    judged = chosen if chosen > 0 else max(grid)
    records = [record(CFG, dataset=d, model=m, defense="jumprelu", attack="ifgsm", threat_model="linf_normalized",
                      metric="chosen_kappa", value=chosen, protocol="validation", budget=0.01)]

    def pack(mask):
        return {kit.PER_IMAGE: evaluate.pack_mask(mask)}

    def at_eps(value, eps):
        return value[eps] if isinstance(value, dict) else value

    for kappa, ifgsm, worst, clean in ((0.0, ifgsm_0, worst_0, 0.99), (judged, ifgsm_k, worst_k, clean_k)):
        at = dict(dataset=d, model=m, defense="jumprelu", kappa=kappa)
        for box in ("white", "gray"):
            records.append(record(CFG, attack="ifgsm", threat_model="linf_normalized", metric="accuracy",
                                  value=ifgsm / n, n=n, box=box, protocol="paper", **at, **pack(_first(n, ifgsm))))
        records.append(record(CFG, metric="accuracy", value=clean, n=n, protocol="adaptive", **at))
        runs = [(eps, True, 0, 0) for eps in (*radii, 0.2, 0.3)] + [(0.3, False, s, 0) for s in (0, 1)]
        runs += [(eps, False, 1, seed1_fools if kappa == judged else 0) for eps in radii]
        for eps, nested, seed, more in runs:
            standing = at_eps(worst, min(eps, 0.125))
            fooled_by = torch.zeros(n, dtype=torch.int16)  # pgd_true fooled the rest ...
            fooled_by[standing - more:max(standing, ifgsm)] = MEMBERS3.index(remover)  # ... remover what IFGSM left
            fooled_by[:standing - more] = -1
            added = {name: int((fooled_by == i).sum()) for i, name in enumerate(MEMBERS3)}
            where = dict(threat_model="linf", eps=eps, n=n, nested=nested, seed=seed, protocol="adaptive", **at)
            records.append(record(CFG, metric="accuracy", attack="worst_case", value=(standing - more) / n,
                                  members="+".join(MEMBERS3), **where, **pack(_first(n, standing - more)),
                                  **{kit.FOOLED_BY: kit.pack_fooled_by(fooled_by)}))
            records += [record(CFG, metric="images_fooled", attack=name, value=added[name], order=i,
                               within="worst_case", **where) for i, name in enumerate(MEMBERS3)]
    if autoattack is not None:
        for eps in radii:
            records.append(record(CFG, dataset=d, model=m, defense="jumprelu", attack="autoattack",
                                  threat_model="linf", eps=eps, metric="accuracy", value=autoattack / n, n=n,
                                  kappa=judged, protocol="autoattack_survivors", on="worst_case_survivors", flags="",
                                  **pack(_first(n, autoattack))))
    health = [{"dataset": d, "model": m, "kappa": judged, "id": "near_constant",
               "check": "classifier is not near-constant", "passed": not constant},
              {"dataset": d, "model": m, "kappa": judged, "id": "chance", "check": "near chance at eps = 0.5",
               "passed": True},
              {"dataset": d, "model": m, "kappa": judged, "id": "gradient_free",
               "check": "gradient-free attack adds nothing", "passed": failed != "gradient_free"}]
    parameters = {"kappas": {d: list(grid)}, "seeds": [0, 1], "eps": {d: 0.3}, "pgd_eps": {d: [0.1, 0.125, 0.2, 0.3]},
                  "attack_iter": {d: 40}, "ifgsm_step": 0.01, "n_adaptive": {d: n}}
    return {"profile": "laptop", "parameters": parameters, "records": records, "health": health}


def _finding(saved) -> dict:
    (finding,) = verdict_summary(saved).values()
    return finding


def _two(saved: dict, other: dict) -> dict:
    return {**saved, "records": saved["records"] + other["records"], "health": saved["health"] + other["health"]}


def test_the_claim_is_judged_on_either_side_of_the_paper_reach():
    # 40 IFGSM steps of 0.01 normalized reach 0.123 on MNIST pixels, 7 on CIFAR-10 3.6/255: the nearest measured
    # radius on each side, within a factor of two of the reach
    mnist = {"attack_iter": {"mnist": 40, "cifar10": 7}, "ifgsm_step": 0.01}
    assert chapter.ifgsm_reach(mnist, "mnist") == pytest.approx(40 * 0.01 * 0.3081)
    assert chapter.paper_radii({**mnist, "pgd_eps": {"mnist": [0.4, 0.1, 0.2, 0.3, 0.125]}}, "mnist") == [0.1, 0.125]
    assert chapter.paper_radii({**mnist, "pgd_eps": {"mnist": [0.1, 0.4]}}, "mnist") == [0.1]  # 0.4: 3× the reach
    assert chapter.paper_radii({**mnist, "pgd_eps": {"mnist": [0.3, 0.4]}}, "mnist") == [0.3]  # none near: nearest
    laptop = resolve(SPEC, "laptop")
    assert chapter.paper_radii(laptop, "cifar10") == pytest.approx([2 / 255, 4 / 255])
    assert chapter.paper_radii(laptop, "mnist") == [0.1, 0.125]
    assert chapter.paper_radii({**mnist, "pgd_eps": {"cifar10": [8 / 255, 16 / 255]}}, "cifar10") == [8 / 255]
    f = _finding(_saved_one_model())
    assert f["eps"] == [0.1, 0.125] and [r["eps"] for r in f["radii"]] == [0.1, 0.125]


def test_a_real_gain_holds_and_autoattack_confirms_it():
    f = _finding(_saved_one_model(autoattack=95))
    assert (f["outcome"], f["reason"], f["mechanism"], f["category"]) == ("holds", None, None, "survives")
    assert f["reproduction"]["outcome"] == "holds" and "on the same 200 images" in f["detail"]
    text = verdict(_saved_one_model(autoattack=95))
    assert "**Verdict: holds on MNIST lenet_like-baseline.**" in text and "No AutoAttack flag fired." in text
    assert "robust only if it survived attack seeds 0, 1" in text
    # AutoAttack on the survivors takes the gain back: not a positive
    f = _finding(_saved_one_model(autoattack=20))
    assert f["outcome"] != "holds" and "AutoAttack on the survivors removed the gain" in f["detail"]


def test_an_image_is_robust_only_if_it_survives_every_attack_seed():
    # the curve (seed 0) leaves 100 against 20; the second seed fools 80 of those 100: 20 against 20
    f = _finding(_saved_one_model(seed1_fools=80, ifgsm_k=22))
    assert [r["worst"]["value"] for r in f["radii"]] == [0.1, 0.1] and f["outcome"] == "does not hold"
    assert _finding(_saved_one_model(ifgsm_k=22))["outcome"] == "holds"  # seed 0 alone would have said so
    # the member that fooled an image counts from the seed that fooled it
    worst = chapter.worst_at(_saved_one_model(seed1_fools=80)["records"], "mnist", "lenet_like-baseline", 1.0, 0.1)
    assert int(worst["robust_mask"].sum()) == 20 and int((worst["fooled_by"] == 2).sum()) == 100
    assert worst["seeds"] == [0, 1]


def test_the_reproduction_holds_does_not_hold_or_is_inconclusive():
    # white-box IFGSM at the judged kappa against kappa = 0 on the same images
    assert _finding(_saved_one_model(ifgsm_k=120, ifgsm_0=20))["reproduction"]["outcome"] == "holds"
    no = _finding(_saved_one_model(ifgsm_k=22, ifgsm_0=20))["reproduction"]
    assert no["outcome"] == "does not hold" and "a gain of 5.0 points is excluded" in no["detail"]
    floor = _finding(_saved_one_model(ifgsm_k=1, ifgsm_0=0))["reproduction"]  # no gain showed at the floor
    assert (floor["outcome"], floor["reason"]) == ("inconclusive", "floor")
    assert _finding(_saved_one_model(ifgsm_k=30, ifgsm_0=0))["reproduction"]["outcome"] == "holds"  # one showed
    few = _finding(_saved_one_model(ifgsm_k=25, ifgsm_0=20))["reproduction"]
    assert (few["outcome"], few["reason"]) == ("inconclusive", "underpowered")


def test_a_gain_removed_by_a_stronger_attack_does_not_hold_and_names_the_member():
    # IFGSM keeps 120 images right at kappa = 1 against 20 at kappa = 0 (the paper's gain, reproduced); the
    # adaptive worst case leaves 22 against 20: the gain's interval excludes 5 points, and square removed it
    f = _finding(_saved_one_model(worst_k=22, remover="square"))
    assert f["reproduction"]["outcome"] == "holds"
    assert (f["outcome"], f["category"]) == ("does not hold", "masked")
    assert f["mechanism"].startswith("the gain was removed by square (98 images)")
    assert "gradients the retrofit masks" in verdict(_saved_one_model(worst_k=22, remover="square"))
    # removed by the paper's own gradient run longer: evidence of a short attack, not of masking
    f = _finding(_saved_one_model(worst_k=22, remover="pgd_true"))
    assert (f["outcome"], f["category"]) == ("does not hold", "no_gain") and "pgd_true" in f["mechanism"]
    assert "the paper's attack was short" in verdict(_saved_one_model(worst_k=22, remover="pgd_true"))
    # no gain under the paper's attack: nothing was removed, so no mechanism is named
    f = _finding(_saved_one_model(ifgsm_k=22, worst_k=22))
    assert f["mechanism"] is None and f["category"] == "no_gain"


def test_reproduced_then_removed_at_the_floor_does_not_hold():
    # kappa = 0 at 0% under the worst case, and the retrofit too: alone that is the floor, but the paper's attack
    # showed a gain (120 against 20) that PGD with the same, true gradient removed on the same images at 0.1, inside
    # the IFGSM reach (0.123); at 0.125 the worst case had more room than IFGSM, so removal there is no evidence
    saved = _saved_one_model(worst_k=2, worst_0=0, remover="pgd_true")
    f = _finding(saved)
    assert (f["outcome"], f["reason"], f["category"]) == ("does not hold", None, "no_gain")
    at_01, at_0125 = f["radii"]
    assert at_01["detail"].startswith("reproduced under the paper's attack, removed by pgd_true")
    assert (at_0125["outcome"], at_0125["reason"], at_0125["mechanism"]) == ("inconclusive", "floor", None)
    text = verdict(saved)
    assert "**Verdict: does not hold on MNIST lenet_like-baseline.**" in text and "nothing to confirm" not in text
    # removed only beyond the reach: no mechanism, the floor stands there (0.1 decides, on its own paired test)
    f = _finding(_saved_one_model(worst_k={0.1: 120, 0.125: 2}, worst_0={0.1: 118, 0.125: 0}, remover="pgd_true"))
    assert [r["mechanism"] for r in f["radii"]] == [None, None]
    assert [(r["outcome"], r["reason"]) for r in f["radii"]] == [("does not hold", None), ("inconclusive", "floor")]


def test_the_floor_is_inconclusive():
    # kappa = 0 at 0% under the worst case and no gain under the paper's attack: no gain can show
    f = _finding(_saved_one_model(ifgsm_k=3, ifgsm_0=0, worst_k=2, worst_0=0))
    assert (f["outcome"], f["reason"], f["mechanism"]) == ("inconclusive", "floor", None)
    assert f["reproduction"]["reason"] == "floor"
    assert "at the floor" in verdict(_saved_one_model(ifgsm_k=3, ifgsm_0=0, worst_k=2, worst_0=0))
    # one radius at the floor does not decide: the other one does
    f = _finding(_saved_one_model(worst_k={0.1: 100, 0.125: 2}, worst_0={0.1: 20, 0.125: 0}, ifgsm_k=3, ifgsm_0=0))
    assert [r["reason"] for r in f["radii"]] == [None, "floor"] and f["outcome"] == "holds"


def test_too_few_images_is_inconclusive_at_this_scale_unless_the_numbers_separate():
    f = _finding(_saved_one_model(ifgsm_k=8, ifgsm_0=4, worst_k=8, worst_0=4, n=40))
    assert (f["outcome"], f["reason"], f["reduced_scale"]) == ("inconclusive", "underpowered", True)
    assert "inconclusive at this scale (40 adaptive images cannot show a gain below 15.0 points" in f["detail"]
    assert "At this scale MNIST (40 adaptive images) cannot show" in verdict(
        _saved_one_model(ifgsm_k=8, ifgsm_0=4, worst_k=8, worst_0=4, n=40))
    # the numbers separate: a gain of 20 images in 80 holds at this scale too
    f = _finding(_saved_one_model(ifgsm_k=40, ifgsm_0=10, worst_k=30, worst_0=10, n=80))
    assert (f["outcome"], f["reduced_scale"]) == ("holds", True)
    # 200 images can show 5 points: not reduced
    assert not _finding(_saved_one_model())["reduced_scale"]


def test_a_failed_gating_health_check_makes_a_positive_inconclusive():
    f = _finding(_saved_one_model(failed="gradient_free"))
    assert (f["outcome"], f["reason"]) == ("inconclusive", "unhealthy") and "gradient_free" in f["detail"]
    assert "Failed health checks: gradient-free attack adds nothing." in verdict(_saved_one_model(
        failed="gradient_free"))


def test_the_verdict_compares_the_same_images_not_two_intervals():
    # 30 against 20 of 200 with every discordant image one way: the marginal intervals overlap (the old rule said
    # "masked"), the paired test is clear
    saved = _saved_one_model(worst_k=30, worst_0=20)
    lo30, _ = evaluate.accuracy_record(_first(200, 30))["interval"]
    _, hi20 = evaluate.accuracy_record(_first(200, 20))["interval"]
    assert lo30 < hi20 and _finding(saved)["outcome"] == "holds"


def test_holm_across_networks_and_radii():
    # 7 discordant images one way: p = 0.016 alone, 0.031 once Holm-adjusted over two radii, 0.062 over two
    # networks' two radii
    one_net = _saved_one_model(worst_k=27, worst_0=20, ifgsm_k=27)
    assert _finding(one_net)["outcome"] == "holds"
    both = _two(one_net, _saved_one_model(worst_k=27, worst_0=20, ifgsm_k=27, m="lenet_like-robust"))
    assert {v["outcome"] for v in verdict_summary(both).values()} == {"inconclusive"}


def test_old_results_without_per_image_outcomes_are_read_with_a_note():
    saved = _saved_one_model()
    for r in saved["records"]:
        r["setting"].pop(kit.PER_IMAGE, None)
        r["setting"].pop(kit.FOOLED_BY, None)
    f = _finding(saved)
    assert f["outcome"] == "inconclusive" and f["mechanism"] is None
    assert kit.NO_PER_IMAGE_NOTE in verdict(saved)


def test_broken_retrofits_are_not_interpreted():
    assert _finding(_saved_one_model(clean_k=0.12))["category"] == "broken"
    broken = _saved_one_model(constant=True)
    f = _finding(broken)
    assert (f["category"], f["outcome"], f["reason"]) == ("broken", "inconclusive", "broken")
    assert "classifier is not near-constant" in verdict(broken)
    assert kit.BROKEN_RULE in verdict(broken)  # the page states the rule it applied


def test_broken_is_the_interval_rule_not_the_point_value():
    # 19% clean on 200 images: the point is within chance + 10 points, but its interval reaches above: not broken
    # (the old point rule called it broken); on 20,000 images the whole interval is within: broken
    assert _finding(_saved_one_model(clean_k=0.19))["category"] != "broken"
    assert _finding(_saved_one_model(clean_k=0.19, n=20000))["category"] == "broken"


def test_verdict_judges_the_largest_kappa_when_validation_chose_zero():
    saved = _saved_one_model(worst_k=22, chosen=0.0, grid=(0.0, 0.5, 1.5))
    f = _finding(saved)
    assert f["kappa"] == 1.5 and not f["chosen"] and f["category"] == "masked"
    assert "validation chose κ = 0; the largest κ = 1.5 stands in" in verdict(saved)


def test_the_threat_radius_is_reported_over_every_seed_and_not_judged():
    f = _finding(_saved_one_model(worst_k={0.1: 100, 0.125: 2}))
    t = f["threat"]
    assert t["n"] == 200 and t["a_only"] == 0 and t["b_only"] == 18  # 0.3 has 0.125's outcomes, both seeds
    assert "Reported beside it, not judged: at the threat radius ε = 0.3, an image robust only if it survived " \
           "all 2 attack seeds" in verdict(_saved_one_model())


def test_paper_comparison_reads_the_anchors_and_matches_like_with_like():
    paper = anchors("jumprelu")
    assert {a["dataset"] for a in paper} == {"cifar10"}
    d, m = chapter.PAPER_NETWORK
    mine = [record(CFG, dataset=d, model=m, defense="jumprelu", attack="ifgsm", threat_model="linf_normalized",
                   metric="chosen_kappa", value=0.4, protocol="validation", budget=0.03)]
    for k in (0.0, 0.4):
        def rec(**kw):
            return record(CFG, dataset=d, model=m, defense="jumprelu", kappa=k, protocol="paper", **kw)

        mine += [rec(metric="accuracy", value=0.5 + k, n=100),
                 rec(attack="ifgsm", threat_model="linf_normalized", metric="accuracy", value=0.1 + k, n=100,
                     box="white"),
                 rec(attack="ifgsm", threat_model="linf_normalized", metric="accuracy", value=0.3, n=100, box="gray")]
        mine += [rec(attack="deepfool", threat_model=t, metric="rho", value=0.05 + k, units=u, box=b)
                 for t in ("l2", "linf") for u in ("normalized", "pixel") for b in ("white", "gray")]
    rows = chapter.paper_comparison(mine, paper)
    assert [r["anchor"] for r in rows] == paper and all(r["kappa"] == 0.4 for r in rows)
    ours = {(r["anchor"]["attack"], r["anchor"]["threat_model"]): r["ours"] for r in rows}
    assert ours["none", "none"]["value"] == pytest.approx(0.9)
    assert ours["ifgsm", "linf_normalized"]["value"] == pytest.approx(0.5)
    assert ours["deepfool", "l2"]["setting"]["units"] == "normalized" and ours["deepfool", "l2"]["setting"]["box"] \
        == "white" and ours["deepfool", "l2"]["value"] == pytest.approx(0.45)
    assert ours["trust_region", "none"] is None  # not implemented here
    def results(**given):
        cfg = resolve(SPEC, "smoke", **given)
        return {"profile": "smoke", "parameters": dict(cfg), "records": mine}

    table = chapter.paper_comparison_table(results())
    assert f"| {100 * one(paper, attack='none')['value']:.2f}% |" in table and "not run" in table
    assert "no comparison" in chapter.paper_comparison_table(results(datasets=["mnist"]))


def test_worst_case_and_health_tables_render_hand_made_records():
    saved = _saved_one_model(worst_k=6, worst_0=4)
    table = chapter.worst_case_table(saved)
    assert "+ transfer" in table and "| 1 ← | 0.3 |" in table and "| 0 | 0.1 |" in table
    # the health rows grouped by data set, network and kappa, each group named
    assert "**dataset `mnist` · model `lenet_like-baseline` · kappa `1.0`**" in chapter.health_tables(saved)
    # AutoAttack's reference number beside the worst case over both seeds, on the same (first 100) images
    saved["records"].append(record(CFG, dataset="mnist", model="lenet_like-baseline", defense="jumprelu",
                                   attack="autoattack", threat_model="linf", eps=0.3, metric="accuracy", value=0.05,
                                   n=100, kappa=1.0, protocol="autoattack", version="standard",
                                   **{kit.PER_IMAGE: evaluate.pack_mask(_first(100, 5))}))
    saved["records"].append(record(CFG, dataset="mnist", model="lenet_like-baseline", defense="jumprelu",
                                   attack="autoattack", threat_model="linf", eps=0.1, metric="accuracy", value=0.02,
                                   n=200, kappa=1.0, protocol="autoattack_survivors", flags="fab_t_failed"))
    same = chapter.autoattack_reference(saved["records"], select(saved["records"], protocol="autoattack")[0])
    assert same["n"] == 100 and same["worst"] == pytest.approx(0.06) and same["autoattack"] == pytest.approx(0.05)
    assert (same["test"]["a_only"], same["test"]["b_only"]) == (0, 1)
    table = chapter.autoattack_table(saved)
    assert "| MNIST lenet_like-baseline | 1 | 0.3 | 5.0% [" in table and "5.0% vs 6.0% on the first 100" in table
    assert "then AutoAttack" in table
    assert "fab_t_failed" in table and "fab_t_failed" in verdict(saved)  # AutoAttack's flags are shown


@pytest.mark.notebook
def test_jumprelu_smoke_run_writes_its_results(isolated_outputs):
    from robustness_book.runner import run_chapter

    tmp_path = isolated_outputs
    notebook = run_chapter("jumprelu", "smoke", output_dir=tmp_path / "executed")
    assert notebook.exists()
    saved = json.loads((tmp_path / "results" / "smoke" / "jumprelu.json").read_text())
    assert saved["chapter"] == "jumprelu" and saved["profile"] == "smoke"
    recs, P = saved["records"], saved["parameters"]
    check_records(recs)
    nets = {(d, chapter.model_id(d, kind)) for d in ("mnist", "cifar10") for kind in chapter.KINDS}
    assert {(r["dataset"], r["model"]) for r in recs} == nets
    for d, m in nets:
        grid = P["kappas"][d]
        mine = select(recs, dataset=d, model=m)
        assert 0 <= one(mine, protocol="training")["value"] <= 1
        paper = select(mine, protocol="paper")
        assert {r["setting"]["kappa"] for r in paper} == set(grid)
        for k in grid:
            assert 0 <= one(paper, kappa=k, attack="none")["value"] <= 1
            for box in ("white", "gray"):
                one(paper, kappa=k, attack="ifgsm", box=box)
                one(paper, kappa=k, attack="deepfool", box=box, threat_model="l2", metric="rho", units="pixel")
                one(paper, kappa=k, attack="deepfool", box=box, threat_model="linf", metric="rho", units="normalized")
        assert [r["value"] for r in select(paper, kappa=0.0, box="white")] == [
            r["value"] for r in select(paper, kappa=0.0, box="gray")]
        chosen = one(mine, metric="chosen_kappa")["value"]
        assert chosen in grid
        adaptive = select(mine, protocol="adaptive")
        assert {r["setting"]["kappa"] for r in adaptive} == set(grid)  # smoke attacks every kappa
        for k in grid:
            curve = select(adaptive, kappa=k, attack="worst_case", nested=True)
            assert [r["eps"] for r in curve] == sorted(P["pgd_eps"][d])
            worst = [r["value"] for r in curve]
            assert worst == sorted(worst, reverse=True)
            assert worst[0] <= one(adaptive, kappa=k, attack="none")["value"] + 1e-9
            threat = select(adaptive, kappa=k, attack="worst_case", nested=False, eps=P["eps"][d])
            assert [r["seed"] for r in threat] == P["seeds"]
            # where the claim is judged, every attack seed ran
            for e in chapter.paper_radii(P, d):
                assert chapter.worst_at(recs, d, m, k, e)["seeds"] == sorted(P["seeds"])
            assert one(adaptive, kappa=k, attack="ddn_bpda", metric="converged")["value"] in (0.0, 1.0)
            # the kit's vocabulary: per member the images it fooled, in order, at the threat radius eps
            fooled = select(adaptive, kappa=k, metric="images_fooled", nested=False, seed=P["seeds"][0],
                            eps=P["eps"][d])
            assert fooled[0]["attack"] == "pgd_true" and all(r["eps"] == P["eps"][d] for r in fooled)
        # health at the judged (chosen, else largest) and at the largest kappa of every network
        judged = chosen or max(grid)
        assert {h["kappa"] for h in saved["health"] if (h["dataset"], h["model"]) == (d, m)} == {judged, max(grid)}
    reference = select(recs, attack="autoattack", protocol="autoattack")
    assert len(reference) == 2  # smoke: MNIST only
    assert {r["eps"] for r in reference} == {P["eps"]["mnist"]} == {threat_eps("mnist")}
    # the verdict's confirmation: AutoAttack on the worst case's survivors at the paper's radius, flags recorded
    for r in select(recs, attack="autoattack", protocol="autoattack_survivors"):
        assert r["eps"] in chapter.paper_radii(P, r["dataset"]) and "flags" in r["setting"]
    for f in verdict_summary(saved).values():
        assert f["outcome"] in ("holds", "does not hold", "inconclusive")
    assert not select(recs, metric="added")
    assert all({"check", "passed"} <= set(h) for h in saved["health"])
    assert saved["timings"]["train"] and "train" not in saved["extra"]
