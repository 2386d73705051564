"""Iterative FGSM as run by the JumpReLU paper's code."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._core import eval_mode, grad_or_zero


def ifgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: float = 0.01,
          steps: int = 40) -> torch.Tensor:
    """Iterative FGSM, L-infinity, exactly as the official JumpReLU code runs it (Erichson, Yao &
    Mahoney, "JumpReLU: A Retrofit Defense Strategy for Adversarial Attacks", 2019).

    Each of ``steps`` iterations predicts the current images and applies an *unprojected*
    sign-gradient step ``x_adv + step * sign(grad CE)`` only to images still classified as ``y``;
    images are clipped to ``[0, 1]`` (the original clipped to the batch min/max, which is
    ``[0, 1]`` for our data). There is no eps-ball: the total budget is ``steps * step``.
    The loop stops early once every image is misclassified.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        step: size of each sign step.
        steps: maximum number of iterations.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, on ``x``'s device.
    """
    x_adv = x.detach().clone()
    active = torch.arange(x.shape[0], device=x.device)  # images still classified as y
    with eval_mode(model), torch.enable_grad():  # callable from inside torch.no_grad()
        for _ in range(steps):
            x_in = x_adv[active].requires_grad_(True)
            logits = model(x_in)
            correct = logits.argmax(1) == y[active]
            if not correct.any():
                break
            # one forward serves both the prediction and the gradient; fooled images then leave the
            # batch (samples are independent in eval mode), so each step pays only for the images it moves
            loss = F.cross_entropy(logits[correct], y[active][correct], reduction="sum")
            grad = grad_or_zero(loss, x_in)[correct]
            active = active[correct]
            x_adv[active] = (x_in.detach()[correct] + step * grad.sign()).clamp(0, 1)
    return x_adv.detach()
