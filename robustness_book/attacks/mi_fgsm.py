"""Momentum iterative FGSM (MI-FGSM), optionally on an ensemble and with input diversity (M-DI²-FGSM)."""
from __future__ import annotations

from typing import Optional

import torch

from ._core import _per_sample
from .ensemble_pgd import Models, checked_members, diversity_transform, ensemble_eval_mode, ensemble_gradient
from .pgd import _linf_stepper


def mi_fgsm(model: Models, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, steps: int = 10,
            step_size: Optional[float] = None, momentum: float = 1.0, combine: str = "logits", loss: str = "ce",
            diversity: float = 0.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """MI-FGSM, L-infinity (Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018), a transfer
    attack.

    From ``x``, ``steps`` iterations of ``g ← momentum · g + ∇ / ||∇||_1`` (per-sample L1 norm) and
    ``x_t ← clip(x_t + step_size · sign(g), eps-ball ∩ [0, 1])``; the last iterate is returned. The
    accumulated direction stabilises the steps, which is what makes the examples transfer. With
    ``momentum=0`` this is iterative FGSM with projection (Kurakin et al.'s BIM), i.e. :func:`ensemble_pgd`
    without random start. With ``diversity > 0`` each gradient is taken at a randomly resized-and-padded
    input (:func:`input_diversity`; M-DI²-FGSM of Xie et al., CVPR 2019).

    Args:
        model: the surrogate returning logits, or a non-empty list or tuple of them (an ensemble, fused per
            ``combine``; Dong et al. average logits); run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: L-infinity budget in [0, 1] pixel units.
        steps: iterations (Dong et al.: 10).
        step_size: defaults to ``eps / steps`` (Dong et al.), so the last step can reach the ball's surface.
        momentum: the decay factor μ ≥ 0 (Dong et al.: 1.0).
        combine: ensemble fusion, one of :data:`~robustness_book.attacks.COMBINES` (``"logits"`` or
            ``"loss"``); irrelevant for one model.
        loss: one of :data:`~robustness_book.attacks.LOSSES` (``"ce"`` or ``"margin"``).
        diversity: probability of input diversity per step; 0 (default) turns it off, Xie et al. use 0.5.
        generator: optional ``torch.Generator`` for the diversity draws (reproducible).

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x| <= eps``, on ``x``'s device.
    """
    members = checked_members(model, combine, loss, diversity)
    if not momentum >= 0:
        raise ValueError(f"momentum={momentum!r} must be ≥ 0")
    x = x.detach()
    if step_size is None:
        step_size = eps / max(steps, 1)
    step = _linf_stepper(x, eps, step_size)
    transform = diversity_transform(diversity, generator)
    x_adv = x.clone()
    velocity = torch.zeros_like(x)
    with ensemble_eval_mode(members):
        for _ in range(steps):
            grad = ensemble_gradient(members, x_adv, y, combine, loss, transform)
            # clamp_min: an all-zero gradient adds nothing instead of 0/0
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12)
            velocity = momentum * velocity + grad / _per_sample(l1, grad)
            x_adv = step(x_adv, velocity, None)
    return x_adv.detach()
