"""Input diversity: the random resize-and-pad transform of the DI²-FGSM transfer attack."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F


def _randint(low: int, high: int, generator: Optional[torch.Generator]) -> int:
    """One integer uniform in ``[low, high)``, drawn on the generator's device (CPU without one)."""
    device = generator.device if generator is not None else "cpu"
    return int(torch.randint(low, high, (1,), generator=generator, device=device).item())


def _uniform(generator: Optional[torch.Generator]) -> float:
    device = generator.device if generator is not None else "cpu"
    return float(torch.rand((1,), generator=generator, device=device).item())


def check_diversity(p: float, scale: float = 0.9, name: str = "p") -> None:
    """Raise ``ValueError`` unless ``p`` (the argument ``name``) is a probability and ``scale`` in (0, 1)."""
    if not 0 <= p <= 1:
        raise ValueError(f"{name}={p!r} (the probability of applying input diversity) must be in [0, 1]")
    if not 0 < scale < 1:
        raise ValueError(f"scale={scale!r} (the smallest resize factor of input diversity) must be in (0, 1)")


def input_diversity(x: torch.Tensor, p: float = 0.5, scale: float = 0.9,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random resize-and-pad (Xie et al., "Improving Transferability of Adversarial Examples with Input
    Diversity", CVPR 2019), differentiable w.r.t. ``x``; no norm (a transform, not an attack).

    With probability ``p`` the batch is shrunk by nearest-neighbour interpolation (as in Xie et al.'s code) to a
    random side ``s`` uniform in the integers ``[floor(scale·H), H)`` and zero-padded back to ``H × W`` at a
    random offset (top and left padding each uniform over the free pixels); otherwise ``x`` is returned as it
    is. One draw serves the whole batch, as in Xie et al. and torchattacks' ``DIFGSM``.

    **Bounds.** Xie et al. enlarge 299-pixel images to ``[299, 330)`` and pad to 330, i.e. the image keeps
    0.906–0.997 of the canvas. Our models take a fixed size, so we shrink and pad back to the input size
    instead (torchattacks' ``resize_rate=0.9``): with ``scale=0.9`` a 28-pixel image (MNIST, Fashion-MNIST)
    becomes 25, 26 or 27 pixels (0.89–0.96 of the canvas) and a 32-pixel one (CIFAR-10) 28 to 31 pixels
    (0.875–0.97). A non-square image keeps its aspect ratio (width ``round(s·W/H)``). Padding is 0 (black
    on [0, 1] images, the MNIST background).

    Args:
        x: ``(N, C, H, W)`` images in ``[0, 1]``.
        p: probability of transforming the batch; 0 returns ``x`` and draws nothing; Xie et al. use 0.5.
        scale: the smallest side is ``floor(scale·H)`` pixels; in (0, 1).
        generator: optional ``torch.Generator`` for reproducible draws (else the global RNG).

    Returns:
        ``(N, C, H, W)`` tensor in ``[0, 1]``: ``x`` itself when not applied, else the transformed batch
        (keeping ``x``'s autograd graph, so attacks can differentiate through it).
    """
    check_diversity(p, scale)
    if x.dim() != 4:
        raise ValueError(f"x must be a (N, C, H, W) batch, got shape {tuple(x.shape)}")
    height, width = x.shape[-2:]
    low = max(1, math.floor(scale * height))
    if low >= height:
        raise ValueError(f"scale={scale!r} leaves no smaller size for {height}-pixel images; use a smaller scale")
    if p == 0 or (p < 1 and _uniform(generator) >= p):
        return x
    side = _randint(low, height, generator)
    new_h, new_w = side, max(1, round(side * width / height))
    top, left = _randint(0, height - new_h + 1, generator), _randint(0, width - new_w + 1, generator)
    shrunk = F.interpolate(x, size=(new_h, new_w), mode="nearest")
    return F.pad(shrunk, (left, width - new_w - left, top, height - new_h - top), value=0.0)
