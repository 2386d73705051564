"""Projected Gradient Descent (L-infinity and L2) with random restarts."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._core import _per_sample, eval_mode, input_gradient, l2_norm, project_l2, project_linf


def _rand(shape, generator: Optional[torch.Generator], device, kind: str) -> torch.Tensor:
    """``torch.rand``/``randn`` drawn on the generator's device (a CPU generator cannot sample
    on CUDA), then moved to ``device``."""
    fn = torch.rand if kind == "uniform" else torch.randn
    gen_device = generator.device if generator is not None else device
    return fn(shape, generator=generator, device=gen_device).to(device)


def _linf_start(x, eps, generator):
    return (2 * _rand(x.shape, generator, x.device, "uniform") - 1) * eps


def _l2_start(x, eps, generator):
    # uniform in the ball: Gaussian direction, radius eps * U^(1/d)
    d = x[0].numel()
    direction = _rand(x.shape, generator, x.device, "normal")
    direction = direction / _per_sample(l2_norm(direction).clamp_min(1e-12), x)
    radius = eps * _rand((x.shape[0],), generator, x.device, "uniform") ** (1.0 / d)
    return direction * _per_sample(radius, x)


def _l2_direction(grad):
    return grad / _per_sample(l2_norm(grad).clamp_min(1e-12), grad)


def _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator,
         start: Callable, direction: Callable, project: Callable) -> torch.Tensor:
    x = x.detach()
    if eps == 0:
        return x.clone()
    if step_size is None:
        step_size = 2.5 * eps / steps
    best = x.clone()
    best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    with eval_mode(model):
        for _ in range(max(1, restarts)):
            # restarts draw from `generator` sequentially, so restart #1 equals a restarts=1 run
            delta = start(x, eps, generator) if random_start else torch.zeros_like(x)
            x_adv = (x + delta).clamp(0, 1)
            for _ in range(steps):
                x_adv = x_adv + step_size * direction(input_gradient(model, x_adv, y))
                # eps-ball then box: clamping to [0, 1] only shrinks |delta| coordinate-wise,
                # so the result satisfies both constraints
                x_adv = (x + project(x_adv - x, eps)).clamp(0, 1)
            with torch.no_grad():
                logits = model(x_adv)
                fooled = logits.argmax(1) != y
                loss = F.cross_entropy(logits, y, reduction="none")
            # worst case per sample: keep the first restart that fools; else the highest loss
            take = ~best_fooled & (fooled | (loss > best_loss))
            best[take] = x_adv[take]
            best_loss = torch.where(take, loss, best_loss)
            best_fooled |= fooled
            if best_fooled.all():
                break
    return best


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, steps: int = 40,
             step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD, L-infinity (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018).

    Sign-gradient ascent on the cross-entropy, projected after each step onto the eps-ball around
    ``x`` and onto ``[0, 1]``.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: L-infinity budget; ``eps=0`` returns ``x`` unchanged.
        steps: iterations per restart.
        step_size: defaults to ``2.5 * eps / steps``.
        random_start: start uniformly in the eps-ball (else at ``x``).
        restarts: independent runs; per sample the first run that misclassifies is kept, else the
            run with the highest final loss. Random starts are drawn from ``generator`` one
            restart after another, so the first restart reproduces a ``restarts=1`` run with the
            same seed and more restarts are never weaker per sample.
        generator: optional ``torch.Generator`` for reproducible random starts.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x| <= eps``.
    """
    return _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator,
                _linf_start, torch.sign, project_linf)


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 2.0, steps: int = 40,
           step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
           generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD, L2 (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018).

    Steps along the per-sample L2-normalized gradient of the cross-entropy, each followed by
    projection onto the per-sample L2 ball of radius ``eps`` and onto ``[0, 1]``. The random
    start is uniform in the L2 ball.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: per-sample L2 budget; ``eps=0`` returns ``x`` unchanged.
        steps, step_size, random_start, restarts, generator: as in :func:`pgd_linf`
            (``step_size`` defaults to ``2.5 * eps / steps``).

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``||x_adv - x||_2 <= eps``.
    """
    return _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator,
                _l2_start, _l2_direction, project_l2)
