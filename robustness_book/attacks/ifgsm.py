"""Iterative FGSM as run by the JumpReLU paper's code."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._core import eval_mode, grad_or_zero
from .fgsm import Radius, as_radius


def ifgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, step: Radius = 0.01,
          steps: int = 40) -> torch.Tensor:
    """Iterative FGSM, L-infinity, as the official JumpReLU code runs it (Erichson, Yao & Mahoney,
    "JumpReLU: A Retrofit Defense Strategy for Adversarial Attacks", 2019; ``fgsm_adaptive_iter``).

    Each of ``steps`` iterations predicts the current images and applies an *unprojected*
    sign-gradient step ``x_adv + step * sign(grad CE)`` only to images still classified as ``y``;
    images are clipped to ``[0, 1]``. There is no eps-ball: the total budget is ``steps * step``.
    The loop stops early once every image is misclassified.

    **Units.** The official code runs on *normalized* inputs ``(x − mean_c) / std_c`` with step 0.01
    there. It is reproduced exactly only with the per-channel pixel step
    ``step = data.normalized_to_pixels(name, 0.01)`` (0.01 × std_c: 0.00308 on MNIST pixels, about
    0.0020 on CIFAR-10): the gradient's sign is the same in both spaces, and clipping to [0, 1] is
    clipping to the normalized image of [0, 1]. A float ``step = 0.01`` is a step of 0.01 *pixels*,
    3.2× (MNIST) to 5× (CIFAR-10) the official one. One difference remains on CIFAR-10: the official
    code clips to the batch's global min/max over all channels, which for some channels is slightly
    wider than that channel's image of [0, 1]; here every pixel stays a valid [0, 1] value.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        step: size of each sign step in [0, 1] pixel units: a float, or a tensor broadcastable to
            ``x`` such as a per-channel ``(C, 1, 1)`` step.
        steps: maximum number of iterations.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, on ``x``'s device.
    """
    x_adv = x.detach().clone()
    step = as_radius(step, x_adv, "step")
    per_sample = isinstance(step, torch.Tensor) and step.dim() == x.dim() and step.shape[0] == x.shape[0] > 1
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
            s = step[active] if per_sample else step
            x_adv[active] = (x_in.detach()[correct] + s * grad.sign()).clamp(0, 1)
    return x_adv.detach()
