"""Fast Gradient Sign Method."""
from __future__ import annotations

import torch
from torch import nn

from ._core import eval_mode, input_gradient


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3) -> torch.Tensor:
    """FGSM, L-infinity (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015).

    One step ``x + eps * sign(grad_x CE(model(x), y))``, clipped to ``[0, 1]``.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: L-infinity budget; ``eps=0`` returns ``x`` unchanged.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, on ``x``'s device.
    """
    x = x.detach()
    if eps == 0:
        return x.clone()
    with eval_mode(model):
        grad = input_gradient(model, x, y)
    return (x + eps * grad.sign()).clamp(0, 1)
