"""robustness_book.evaluate.rho: ρ in each paper's units, against hand computations."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from robustness_book.attacks import deepfool
from robustness_book.evaluate import rho as R

SHARED = Path("/work/shared/data")


def _cifar_like(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64)
    delta = 0.05 * torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)
    return x, x + delta, delta


def test_pixel_rho_by_hand():
    x = torch.tensor([[[[3.0, 4.0]]], [[[1.0, 0.0]]]])
    x_adv = x + torch.tensor([[[[0.3, 0.4]]], [[[0.0, -0.5]]]])
    assert torch.allclose(R.pixel_rho(x, x_adv), torch.tensor([0.1, 0.5]))
    assert torch.allclose(R.pixel_rho(x, x_adv, math.inf), torch.tensor([0.4 / 4, 0.5 / 1]))
    with pytest.raises(ValueError, match="p=1"):
        R.pixel_rho(x, x_adv, 1)


def test_jumprelu_normalized_rho_by_hand():
    x, x_adv, delta = _cifar_like()
    mu = torch.tensor([0.4914, 0.4822, 0.4465], dtype=torch.float64).view(1, 3, 1, 1)
    sd = torch.tensor([0.2023, 0.1994, 0.2010], dtype=torch.float64).view(1, 3, 1, 1)
    xn, dn = ((x - mu) / sd).flatten(1), (delta / sd).flatten(1)
    l2 = dn.norm(dim=1) / xn.norm(dim=1)
    linf = dn.abs().max(1).values / xn.abs().max(1).values
    assert torch.allclose(R.normalized_rho(x, x_adv, "cifar10"), l2, rtol=1e-6)
    assert torch.allclose(R.normalized_rho(x, x_adv, "cifar10", math.inf), linf, rtol=1e-6)
    assert torch.allclose(R.relative_perturbation(x, x_adv, "normalized", "cifar10"), l2, rtol=1e-6)


def test_jumprelu_rho_averages_over_all_images_with_untouched_ones_at_zero():
    x, x_adv, _ = _cifar_like(n=5)
    x_adv[1] = x[1]  # misclassified before the attack: never attacked, ρ = 0, still in the mean
    out = R.jumprelu_rho(x, x_adv, "cifar10", p=2)
    per = R.normalized_rho(x, x_adv, "cifar10")
    assert out["n"] == 5 and out["per_image"][1] == 0
    assert out["mean"] == pytest.approx(float(per.sum() / 5))
    assert out["max"] == pytest.approx(float(per.max()))
    assert out["mean"] < float(per[per > 0].mean())  # not the mean over attacked images only
    assert R.jumprelu_rho(x, x_adv, "cifar10", p=math.inf)["p"] == "inf"


def test_mean_image_rho_by_hand():
    x, x_adv, delta = _cifar_like()
    m = torch.full((3, 4, 4), 0.25, dtype=torch.float64)
    m[0, 0, 0] = 0.9
    expected = delta.flatten(1).norm(dim=1) / (x - m).flatten(1).norm(dim=1)
    assert torch.allclose(R.mean_image_rho(x, x_adv, mean=m), expected)
    # the scale of the data cancels: 0-255 images (as matconvnet's) give the same ρ
    assert torch.allclose(R.mean_image_rho(255 * x, 255 * x_adv, mean=255 * m), expected)
    with pytest.raises(ValueError, match="space"):
        R.relative_perturbation(x, x_adv, "whitened", "cifar10")
    with pytest.raises(ValueError, match="p=2 only"):
        R.relative_perturbation(x, x_adv, "mean_image", "cifar10", p=math.inf)


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 2)).double().eval()


def test_deep_defense_rho_is_the_official_test_average():
    # Two classes, f = Wx + b: DeepFool from the *predicted* label fools every image in one step with
    # Δx = 1.02 (|f|+1e-4) w/‖w‖², w = W[other] − W[pred]; ρ = ‖Δx‖ / ‖x − m‖, averaged over all images.
    model = _linear()
    x = torch.rand(10, 1, 1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.long)
    m = torch.full((1, 1, 6), 0.3, dtype=torch.float64)
    out = R.deep_defense_rho(model, x, y=y, mean=m)
    with torch.no_grad():
        logits = model(x)
    W = model[1].weight.detach()
    gap = (logits[:, 1] - logits[:, 0]).abs()
    rho = 1.02 * (gap + 1e-4) / (W[1] - W[0]).norm() / (x - m).flatten(1).norm(dim=1)
    assert torch.allclose(out["per_image"], rho, rtol=1e-9)
    assert out["rho"] == pytest.approx(float(rho.mean()), rel=1e-9)
    assert out["interval"] == pytest.approx(R.mean_interval(rho))
    assert out["success"] == 1.0 and out["n"] == 10
    assert out["clean"] == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert out["rho_pixels"] == pytest.approx(float((rho * (x - m).flatten(1).norm(dim=1)
                                                     / x.flatten(1).norm(dim=1)).mean()), rel=1e-9)


def test_deep_defense_rho_keeps_failures_in_the_mean(tiny_model, tiny_data):
    x = tiny_data[0][:40]
    m = x.mean(0)
    out = R.deep_defense_rho(tiny_model, x, mean=m, max_iter=1)
    res = deepfool(tiny_model, x, None, max_iter=1, clip=False, linearize_at="sum")
    assert 0 < out["success"] < 1  # one step fools some images, not all
    per = res.perturbation.flatten(1).norm(dim=1) / (x - m).flatten(1).norm(dim=1)
    assert torch.allclose(out["per_image"], per, rtol=1e-5)
    assert out["rho"] == pytest.approx(float(per.mean()), rel=1e-5)  # failures count with their partial δ
    assert torch.equal(out["fooled"], res.fooled)
    clipped = R.deep_defense_rho(tiny_model, x, mean=m, max_iter=1, clip=True)
    assert clipped["settings"]["clip"] and not out["settings"]["clip"]


def _quadratic_model():
    """Two logits (0, g(x)) with g(x) = a·x − 0.9·Σx² − 0.2: concave, so each linear step falls short and
    the linearization point of the next one matters."""
    class Quad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.tensor([0.8, -0.3, 0.5, 0.1], dtype=torch.float64))

        def forward(self, x):
            z = x.flatten(1)
            g = z @ self.a - 0.9 * (z ** 2).sum(1) - 0.2
            return torch.stack([torch.zeros_like(g), g], 1)

    return Quad().eval()


def _deepfool_by_hand(model, x, at, steps, overshoot=0.02):
    """Two-class DeepFool for one image, linearizing at x + r (``at='sum'``) or x + 1.02 r (``'overshot'``)."""
    r = torch.zeros_like(x)
    for _ in range(steps):
        if model(x + (1 + overshoot) * r).argmax(1).item() != 0:
            break
        point = (x + (r if at == "sum" else (1 + overshoot) * r)).requires_grad_(True)
        f = model(point)
        gap = f[0, 1] - f[0, 0]
        (w,) = torch.autograd.grad(gap, point)
        r = r + (gap.detach().abs() + 1e-4) / w.norm() ** 2 * w
    return (1 + overshoot) * r


def test_deepfool_linearizes_where_asked():
    model = _quadratic_model()
    x = torch.tensor([[[[-0.4, 0.3, -0.2, 0.1]]]], dtype=torch.float64)
    assert model(x).argmax(1).item() == 0
    results = {}
    for at in ("sum", "overshot"):
        res = deepfool(model, x, None, max_iter=4, clip=False, linearize_at=at)
        expected = _deepfool_by_hand(model, x, at, 4)
        assert torch.allclose(res.perturbation, expected, rtol=1e-10, atol=1e-12), at
        assert res.iterations.item() >= 2  # the second step is where the two conventions part
        results[at] = res.perturbation
    assert not torch.allclose(results["sum"], results["overshot"])
    with pytest.raises(ValueError, match="linearize_at"):
        deepfool(model, x, None, linearize_at="x")


def test_mean_interval_by_hand():
    v = torch.tensor([1.0, 2.0, 3.0, 4.0])
    half = 1.96 * math.sqrt(5 / 3) / 2  # sample std sqrt(5/3), n = 4
    assert R.mean_interval(v) == pytest.approx([2.5 - half, 2.5 + half])
    assert all(math.isnan(b) for b in R.mean_interval(torch.tensor([1.0])))


def test_mean_subtraction_factor_by_hand():
    x = torch.tensor([[[[3.0, 4.0]]], [[[0.0, 2.0]]]])
    m = torch.tensor([[[0.0, 1.0]]])
    assert R.mean_subtraction_factor(x, mean=m) == pytest.approx((5 / math.hypot(3, 3) + 2 / 1) / 2)
    with pytest.raises(ValueError, match="reference"):
        R.mean_subtraction_factor(x, "mnist", reference="zca")


@pytest.mark.skipif(not (SHARED / "MNIST" / "raw").is_dir(), reason="offline MNIST mirror not present")
def test_mnist_scale_factors_match_the_review(tmp_path):
    # The review's measured values on the 10k MNIST test images: ‖x‖/‖x − μ_pixel(train)‖ = 1.285 (matconvnet,
    # so Deep Defense's ρ scale) and ‖x‖/‖x − 0.1307‖ = 1.077 (a per-channel mean). Validates mean_image.
    from robustness_book import data

    root = tmp_path / "root"
    try:
        test = data.load_dataset("mnist", "test", root=root, mirror=SHARED)
        mean = data.mean_image("mnist", "train", root=root, mirror=SHARED)
        assert mean.shape == (1, 28, 28) and float(mean.mean()) == pytest.approx(0.1307, abs=1e-3)
        assert R.mean_subtraction_factor(test.x, mean=mean) == pytest.approx(1.285, abs=0.01)
        assert R.mean_subtraction_factor(test.x, "mnist", "channel_mean") == pytest.approx(1.077, abs=0.01)
    finally:
        data.clear_cache()


def _deepfool_resorting_by_hand(model, x, y, num_classes, steps, overshoot=0.02):
    """Per image: at every iterate the candidates are the top ``num_classes`` classes there (the JumpReLU code)."""
    out = []
    for xi, yi in zip(x, y):
        xi, r = xi[None], torch.zeros_like(xi[None])
        for _ in range(steps):
            point = (xi + (1 + overshoot) * r).requires_grad_(True)
            f = model(point)[0]
            if f.argmax().item() != yi.item():
                break
            best = None
            for k in f.detach().argsort(descending=True)[:num_classes].tolist():
                if k == yi.item():
                    continue
                gap = f[k] - f[yi]
                (w,) = torch.autograd.grad(gap, point, retain_graph=True)
                dist = gap.detach().abs() / w.norm()
                if best is None or dist < best[0]:
                    best = (dist, gap.detach().abs(), w)
            _, gap, w = best
            r = r + (gap + 1e-4) / w.norm() ** 2 * w
        out.append((1 + overshoot) * r)
    return torch.cat(out)


def test_deepfool_can_resort_its_candidates_at_every_iterate():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 8)).double().eval()
    with torch.no_grad():
        model[1].weight.mul_(4)  # a strongly curved net: the runner-up class changes along the path
    x = torch.rand(30, 1, 1, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    for k in (2, 3):
        res = deepfool(model, x, y, max_iter=6, num_classes=k, clip=False, resort=True)
        expected = _deepfool_resorting_by_hand(model, x, y, num_classes=k, steps=6)
        assert torch.allclose(res.perturbation, expected, rtol=1e-8, atol=1e-10), k
    res = deepfool(model, x, y, max_iter=6, num_classes=2, clip=False, resort=True)
    fixed = deepfool(model, x, y, max_iter=6, num_classes=2, clip=False)
    assert not torch.allclose(fixed.perturbation, res.perturbation)  # on this net the choice matters
    with pytest.raises(ValueError, match="resort"):
        deepfool(model, x, y, resort=True, toward=y)
