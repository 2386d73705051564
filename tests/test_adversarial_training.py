"""FGSM with a random start (Wong et al. 2020) as the adversarial-training loss builds it: the ε-ball and the
pixel range are respected, the step is the signed gradient at the random start, and a seed fixes the example."""
import torch
from torch import nn

from robustness_book.defenses import AdversarialLoss
from robustness_book.defenses.adversarial_training import FGSM_RS_STEP, fgsm_random_start


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_the_example_stays_in_the_ball_and_the_pixel_range():
    model, eps = _linear(), 0.3
    x = torch.rand(64, 1, 4, 4)
    x[:8] = 0.0  # at the range's edges the random start is cut, as in Wong et al.'s code
    x[8:16] = 1.0
    y = torch.randint(0, 3, (64,))
    adv = AdversarialLoss("fgsm_rs", eps=eps, mix=1.0, seed=3).examples(model, x, y)
    assert float((adv - x).abs().max()) <= eps + 1e-6 and float(adv.min()) >= 0 and float(adv.max()) <= 1


def test_the_step_is_the_signed_gradient_at_the_random_start_by_hand():
    model, eps = _linear(1), 0.1
    x, y = torch.full((5, 1, 4, 4), 0.5), torch.tensor([0, 1, 2, 0, 1])
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(7)) * 2 - 1) * eps
    weight = model[1].weight.detach()  # CE's gradient for a linear model: Wᵀ(softmax − onehot)
    probs = torch.softmax(model(x + start), 1).detach()
    grad = ((probs - nn.functional.one_hot(y, 3)) @ weight).view_as(x)
    expected = x + (start + FGSM_RS_STEP * eps * grad.sign()).clamp(-eps, eps)
    got = fgsm_random_start(model, x, y, eps, FGSM_RS_STEP * eps, torch.Generator().manual_seed(7))
    assert torch.allclose(got, expected, atol=1e-6)


def test_a_seed_fixes_the_example_and_the_spec_names_the_recipe():
    model, x, y = _linear(), torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    first = AdversarialLoss("fgsm_rs", eps=0.2, mix=1.0, seed=5)
    assert torch.equal(first.examples(model, x, y), AdversarialLoss("fgsm_rs", eps=0.2, mix=1.0, seed=5).examples(
        model, x, y))
    assert first.spec == {"name": "adversarial", "attack": "fgsm_rs", "mix": 1.0, "eps": 0.2, "seed": 5,
                          "alpha": FGSM_RS_STEP}
