"""Adversarial training as a loss: cross-entropy on a mix of clean and adversarial examples.

``AdversarialLoss(attack, ...)`` crafts examples against the current weights with one of the
book's attacks (FGSM, FGSM with a random start, DeepFool-L2, PGD-L∞, PGD-L2) and returns
``(1 − mix)·CE(x) + mix·CE(x_adv)``; ``mix = 0.5`` is Goodfellow et al.'s 50/50 objective and
``mix = 1`` Madry et al.'s. With ``replace=True`` it instead replaces the first ``round(mix·B)``
images of each batch by adversarial ones and takes CE over the batch (JumpReLU's ``adv_ratio``
training). The examples are detached (no gradient through the attack), which is
what separates adversarial training from Deep Defense's regularizer.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attacks import deepfool, fgsm, pgd_l2, pgd_linf
from ..attacks.fgsm import Radius

ATTACKS = ("fgsm", "deepfool", "pgd_linf", "pgd_l2", "fgsm_rs")
#: FGSM with a random start's step, in units of the radius (Wong, Rice & Kolter, "Fast is better than free", ICLR
#: 2020: α = 1.25·ε).
FGSM_RS_STEP = 1.25


def fgsm_random_start(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Wong et al.'s training example: δ ~ U(−ε, ε) per pixel, cut so that ``x + δ`` stays in [0, 1] (as their
    code does), one signed-gradient step of size ``alpha`` on the cross-entropy at ``x + δ``, δ projected back onto
    the ε-ball, ``x + δ`` clipped to [0, 1]. One forward and one backward pass per image (the model runs in eval
    mode for the step, as the book's attacks and PGD training do)."""
    from ..attacks import eval_mode

    delta = (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    with eval_mode(model):
        loss = nn.functional.cross_entropy(model(x + delta), y)
        grad, = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


class AdversarialLoss:
    """A loss for :func:`robustness_book.train.train` that trains on attacked inputs.

    Args:
        attack: ``"fgsm"`` (L∞, radius ``eps``), ``"fgsm_rs"`` (L∞, radius ``eps``: :func:`fgsm_random_start`
            with step :data:`FGSM_RS_STEP` × ``eps``; Wong et al. train with ``mix = 1``), ``"deepfool"`` (L2,
            ``steps`` iterations, overshoot 0.02; no radius: it moves each image just across the boundary),
            ``"pgd_linf"`` or ``"pgd_l2"`` (radius ``eps``, ``steps`` steps, random start).
        eps: attack radius in [0, 1] pixel units (ignored by DeepFool). FGSM also takes a per-channel
            ``(C, 1, 1)`` tensor, e.g. ``data.normalized_to_pixels(name, 0.3)`` for a radius that an
            official code gives in normalized units; PGD takes a float.
        mix: weight of the adversarial term, in [0, 1] (with ``replace``: the fraction of each batch
            that is replaced).
        replace: replace the head of the batch instead of adding a weighted adversarial term.
        steps: PGD steps / DeepFool iterations.
        seed: PGD's random starts come from a generator seeded here (reproducible runs).
    """

    def __init__(self, attack: str = "fgsm", eps: Radius = 0.1, mix: float = 0.5, steps: int = 10, seed: int = 0,
                 replace: bool = False):
        if attack not in ATTACKS:
            raise ValueError(f"attack={attack!r} is invalid: expected one of {', '.join(ATTACKS)}")
        if not 0 <= mix <= 1:
            raise ValueError(f"mix={mix!r} must be in [0, 1]")
        if isinstance(eps, torch.Tensor):
            if attack.startswith("pgd") or attack == "fgsm_rs":
                raise ValueError(f"attack={attack!r} takes a float eps, not a per-channel tensor")
            eps = eps.detach().to(torch.float32).cpu()
            if not bool((eps >= 0).all()):
                raise ValueError(f"eps={eps.flatten().tolist()} must be ≥ 0")
            eps_spec = eps.flatten().tolist() if eps.numel() > 1 else float(eps)
        else:
            if not eps >= 0:
                raise ValueError(f"eps={eps!r} must be ≥ 0")
            eps = eps_spec = float(eps)
        if not (isinstance(steps, int) and steps > 0):
            raise ValueError(f"steps={steps!r} must be an integer > 0")
        self.attack, self.eps, self.mix, self.steps, self.replace = attack, eps, float(mix), steps, replace
        self._generator: torch.Generator | None = None
        self._seed = seed
        self.spec = {"name": "adversarial", "attack": attack, "mix": self.mix,
                     **({} if attack == "deepfool" else {"eps": eps_spec}),
                     **({} if attack.startswith("fgsm") else {"steps": steps}),
                     **({"seed": seed} if attack.startswith("pgd") or attack == "fgsm_rs" else {}),
                     **({"alpha": FGSM_RS_STEP} if attack == "fgsm_rs" else {}),
                     **({"replace": True} if replace else {})}

    def examples(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Adversarial examples for the current weights (detached, in [0, 1])."""
        if self.attack == "fgsm":
            return fgsm(model, x, y, eps=self.eps)
        if self.attack == "deepfool":
            return deepfool(model, x, y, norm=2, max_iter=self.steps).x_adv
        if self._generator is None or self._generator.device != x.device:
            self._generator = torch.Generator(x.device).manual_seed(self._seed)
        if self.attack == "fgsm_rs":
            return fgsm_random_start(model, x, y, self.eps, FGSM_RS_STEP * self.eps, self._generator)
        fn = pgd_linf if self.attack == "pgd_linf" else pgd_l2
        # full-strength PGD (every step on every image), not the evaluation's early stop at the boundary
        return fn(model, x, y, eps=self.eps, steps=self.steps, generator=self._generator, early_stop=False)

    def mixed_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``replace`` mode's batch: adversarial head (``round(mix·B)`` images), clean tail."""
        k = round(self.mix * len(x))
        return torch.cat([self.examples(model, x[:k], y[:k]).detach(), x[k:]]) if k else x

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.replace:
            return nn.functional.cross_entropy(model(self.mixed_batch(model, x, y)), y)
        x_adv = self.examples(model, x, y).detach()
        if self.mix == 1:
            return nn.functional.cross_entropy(model(x_adv), y)
        if self.mix == 0:
            return nn.functional.cross_entropy(model(x), y)
        # one forward over both halves: same cost as two, simpler graph
        logits = model(torch.cat([x, x_adv]))
        clean, adv = logits[:len(x)], logits[len(x):]
        return (1 - self.mix) * nn.functional.cross_entropy(clean, y) + self.mix * nn.functional.cross_entropy(adv, y)

    def __repr__(self) -> str:
        return f"AdversarialLoss({', '.join(f'{k}={v!r}' for k, v in self.spec.items() if k != 'name')})"
