"""Fast Gradient Sign Method."""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from ._core import eval_mode, input_gradient

#: A radius or step: one float for every pixel, or a tensor broadcastable to the images, e.g. ``(C, 1, 1)``
#: per channel (:func:`robustness_book.data.normalized_to_pixels` turns normalized units into such a tensor).
Radius = Union[float, torch.Tensor]


def as_radius(value: Radius, x: torch.Tensor, name: str = "eps") -> Radius:
    """``value`` checked (≥ 0, broadcastable to ``x`` without changing its shape) and, for a tensor, moved to
    ``x``'s device and dtype. A float stays a float."""
    if not isinstance(value, torch.Tensor):
        value = float(value)
        if not value >= 0:
            raise ValueError(f"{name}={value!r} must be ≥ 0")
        return value
    t = value.detach().to(device=x.device, dtype=x.dtype)
    try:
        shape = torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(f"{name} of shape {tuple(t.shape)} does not broadcast to the images' shape "
                         f"{tuple(x.shape)}; use a float or a per-channel (C, 1, 1) tensor")
    if not bool((t >= 0).all()):
        raise ValueError(f"{name} must be ≥ 0 everywhere, got {value.flatten().tolist()[:6]}")
    return t


def is_zero(value: Radius) -> bool:
    return bool((value == 0).all()) if isinstance(value, torch.Tensor) else value == 0


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Radius = 0.3, clip: bool = True) -> torch.Tensor:
    """FGSM, L-infinity (Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015).

    One step ``x + eps * sign(grad_x CE(model(x), y))``, clipped to ``[0, 1]``.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: L-infinity budget in [0, 1] pixel units: a float, or a tensor broadcastable to ``x``
            such as a per-channel ``(C, 1, 1)`` radius. A radius given in the *normalized* units of
            an official code (``(x − mean_c) / std_c``) is ``data.normalized_to_pixels(name, eps)``:
            since the sign of the gradient is the same in both spaces, the step is then exactly the
            official normalized-space FGSM, clipped to the normalized image of ``[0, 1]``.
            ``eps=0`` returns ``x`` unchanged.
        clip: clip the result to ``[0, 1]`` (the standard threat model). ``clip=False`` reproduces codes that
            attack in normalized space without clipping (the fragile-neurons authors'); such images can leave
            the valid pixel range, so they are no threat-model attack.

    Returns:
        ``(N, C, H, W)`` detached adversarial images (in ``[0, 1]`` when ``clip``), on ``x``'s device.
    """
    x = x.detach()
    eps = as_radius(eps, x)
    if is_zero(eps):
        return x.clone()
    with eval_mode(model):
        grad = input_gradient(model, x, y)
    x_adv = x + eps * grad.sign()
    return x_adv.clamp(0, 1) if clip else x_adv
