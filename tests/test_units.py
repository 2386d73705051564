"""Units: radii and steps that official codes give in normalized units, applied in pixel space.

The JumpReLU code runs IFGSM and FGSM training on normalized inputs ``(x − μ_c) / σ_c``. Our models
normalize inside and attacks work on [0, 1] pixels; with a per-channel step ``0.01 × σ_c``
(:func:`robustness_book.data.normalized_to_pixels`) one pixel-space step must equal one normalized-space step
computed by hand: normalize, step ``sign(grad) × 0.01``, clamp to the normalized image of [0, 1], de-normalize.
"""
import pytest
import torch
from torch import nn

from robustness_book.attacks import fgsm, ifgsm
from robustness_book.data import dataset_info, normalized_to_pixels, threat_eps
from robustness_book.defenses import AdversarialLoss
from robustness_book.models import Normalize

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


def _body(c: int, side: int, classes: int = 10) -> nn.Sequential:
    """The layers after normalization (they see normalized inputs)."""
    return nn.Sequential(nn.Conv2d(c, 4, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * ((side - 4) // 2) ** 2, classes))


def _setup(name: str, n: int = 24, seed: int = 0):
    torch.manual_seed(seed)
    c, h, _ = SHAPES[name]
    info = dataset_info(name)
    body = _body(c, h).double().eval()
    model = nn.Sequential(Normalize(info.mean, info.std), body).double().eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, h, generator=g, dtype=torch.float64)
    x[:, :, :3] = 0.0  # saturated pixels, so the clamp matters on both sides
    x[:, :, -3:] = 1.0
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10  # a quarter misclassified: IFGSM leaves them alone
    # μ and σ as the Normalize layer holds them (float32 values, like the steps of normalized_to_pixels)
    mu, sd = model[0].mean.clone(), model[0].std.clone()
    return model, body, x, y, mu, sd


def _normalized_fgsm_step(body, xn, y, size, mu, sd):
    """The official step on normalized tensors: sign of the CE gradient w.r.t. the *normalized* input."""
    xn = xn.clone().requires_grad_(True)
    loss = nn.functional.cross_entropy(body(xn), y)
    (grad,) = torch.autograd.grad(loss, xn)
    lo, hi = (0 - mu) / sd, (1 - mu) / sd  # the normalized image of [0, 1], per channel
    return torch.max(torch.min(xn.detach() + size * grad.sign(), hi), lo)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_one_ifgsm_step_equals_the_official_normalized_space_step(name):
    model, body, x, y, mu, sd = _setup(name)
    step = normalized_to_pixels(name, 0.01)
    assert step.shape == (SHAPES[name][0], 1, 1)
    ours = ifgsm(model, x, y, step=step, steps=1)

    xn = (x - mu) / sd
    correct = body(xn).argmax(1) == y
    stepped = _normalized_fgsm_step(body, xn[correct], y[correct], 0.01, mu, sd)
    expected_n = xn.clone()
    expected_n[correct] = stepped
    expected = expected_n * sd + mu
    assert (~correct).sum() >= 6 and correct.sum() >= 6
    assert torch.allclose(ours, expected, atol=1e-9, rtol=0)  # float32 steps, float64 images
    assert torch.equal(ours[~correct], x[~correct])  # misclassified images are not stepped
    # in pixels the step is 0.01·σ_c, e.g. 0.003081 on MNIST, not 0.01
    moved = (ours - x)[correct].abs().amax(dim=(0, 2, 3))
    assert torch.allclose(moved, 0.01 * sd.flatten(), rtol=1e-6)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_float_step_is_in_pixels_and_larger_than_the_official_one(name):
    model, _, x, y, _, sd = _setup(name)
    ours = ifgsm(model, x, y, step=0.01, steps=1)
    official = ifgsm(model, x, y, step=normalized_to_pixels(name, 0.01), steps=1)
    assert float((ours - x).abs().max()) == pytest.approx(0.01)
    assert float((official - x).abs().max()) == pytest.approx(0.01 * float(sd.max()))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_one_fgsm_training_batch_equals_the_official_normalized_space_batch(name):
    # JumpReLU's robust training: the first adv_ratio of each batch is replaced by FGSM examples at eps in
    # normalized units (MNIST 0.3, CIFAR 0.031), crafted in eval mode; CE over the whole batch.
    eps_n = {"mnist": 0.3, "cifar10": 0.031}[name]
    model, body, x, y, mu, sd = _setup(name, n=20, seed=1)
    loss = AdversarialLoss("fgsm", eps=normalized_to_pixels(name, eps_n), mix=0.3, replace=True)
    batch = loss.mixed_batch(model, x, y)
    value = loss(model, x, y)

    xn = (x - mu) / sd
    k = round(0.3 * len(x))
    head = _normalized_fgsm_step(body, xn[:k], y[:k], eps_n, mu, sd)  # official fgsm: mean CE, same sign
    expected_n = torch.cat([head, xn[k:]])
    assert torch.allclose(batch, expected_n * sd + mu, atol=1e-9, rtol=0)  # float32 steps, float64 images
    expected_loss = nn.functional.cross_entropy(body(expected_n), y)
    assert float(value.detach()) == pytest.approx(float(expected_loss.detach()), rel=1e-7)
    # a per-channel radius changes the cache key, and a one-channel tensor keys like its float
    assert loss.spec["eps"] != AdversarialLoss("fgsm", eps=eps_n, mix=0.3, replace=True).spec["eps"]
    if name == "mnist":
        assert loss.spec == AdversarialLoss("fgsm", eps=float(normalized_to_pixels(name, eps_n)), mix=0.3,
                                            replace=True).spec


def test_fgsm_per_channel_radius_and_zero():
    model, _, x, y, _, _ = _setup("cifar10", n=8)
    eps = torch.tensor([0.01, 0.0, 0.03]).view(3, 1, 1)
    out = fgsm(model, x, y, eps=eps)
    moved = (out - x).abs().amax(dim=(0, 2, 3))
    assert torch.allclose(moved, torch.tensor([0.01, 0.0, 0.03], dtype=torch.float64), atol=1e-7)
    assert torch.equal(fgsm(model, x, y, eps=torch.zeros(3, 1, 1)), x)


def test_bad_radii_fail_with_the_name():
    model, _, x, y, _, _ = _setup("cifar10", n=4)
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, eps=torch.ones(2, 1, 1))  # 2 channels for 3-channel images
    with pytest.raises(ValueError, match="step"):
        ifgsm(model, x, y, step=-0.1 * torch.ones(3, 1, 1), steps=1)
    with pytest.raises(ValueError, match="eps"):
        AdversarialLoss("pgd_linf", eps=torch.ones(3, 1, 1))
    with pytest.raises(ValueError, match="value"):
        normalized_to_pixels("mnist", -1)
    with pytest.raises(ValueError, match="allowed"):
        normalized_to_pixels("svhn", 0.01)


def test_per_data_set_facts():
    assert threat_eps("mnist") == 0.3 and threat_eps("cifar10") == pytest.approx(8 / 255)
    assert torch.allclose(normalized_to_pixels("mnist", 0.01), torch.tensor([[[0.003081]]]))
    assert torch.allclose(normalized_to_pixels("cifar10", 1.0).flatten(), torch.tensor([0.2023, 0.1994, 0.2010]))
