"""Projected Gradient Descent (L-infinity and L2) with random restarts."""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._core import _per_sample, eval_mode, input_gradient, l2_norm, project_l2


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


def _linf_stepper(x, eps, step_size):
    # the eps-box intersected with [0, 1], computed once, so each step is one add and one clamp
    lo, hi = (x - eps).clamp_min(0), (x + eps).clamp_max(1)

    def step(x_adv, grad, idx):
        b_lo, b_hi = (lo, hi) if idx is None else (lo[idx], hi[idx])
        return torch.clamp(x_adv + step_size * grad.sign(), b_lo, b_hi)
    return step


def _l2_stepper(x, eps, step_size):
    def step(x_adv, grad, idx):
        x0 = x if idx is None else x[idx]
        direction = grad / _per_sample(l2_norm(grad).clamp_min(1e-12), grad)
        # eps-ball then box: clamping to [0, 1] only shrinks |delta| coordinate-wise, so both hold
        return (x0 + project_l2(x_adv + step_size * direction - x0, eps)).clamp(0, 1)
    return step


def _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator, early_stop: bool,
         start: Callable, stepper: Callable) -> torch.Tensor:
    x = x.detach()
    if eps == 0:
        return x.clone()
    if step_size is None:
        step_size = 2.5 * eps / steps
    step = stepper(x, eps, step_size)
    best = x.clone()
    best_fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best_loss = torch.full((x.shape[0],), -float("inf"), device=x.device)
    with eval_mode(model):
        for _ in range(max(1, restarts)):
            # restarts draw from `generator` sequentially, so restart #1 equals a restarts=1 run
            delta = start(x, eps, generator) if random_start else torch.zeros_like(x)
            x_adv = (x + delta).clamp(0, 1)
            if not early_stop:
                for _ in range(steps):
                    x_adv = step(x_adv, input_gradient(model, x_adv, y), None)
            else:
                # images the model already misclassifies are frozen where they were first fooled and
                # dropped from the batch; the others follow the trajectory they would without early stop
                active = torch.arange(x.shape[0], device=x.device)
                for _ in range(steps):
                    grad, logits = input_gradient(model, x_adv[active], y[active], return_logits=True)
                    live = logits.argmax(1) == y[active]
                    active, grad = active[live], grad[live]
                    if active.numel() == 0:
                        break
                    x_adv[active] = step(x_adv[active], grad, active)
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
             generator: Optional[torch.Generator] = None, early_stop: bool = False) -> torch.Tensor:
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
        early_stop: stop attacking an image once the model misclassifies it and return that first
            adversarial point (checked on the logits of each gradient step, so it costs nothing). For
            accuracy under attack this finds every image the full run finds, for less compute; the
            examples are barely adversarial, so do not use it to craft examples for transfer.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x| <= eps``.
    """
    return _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator, early_stop,
                _linf_start, _linf_stepper)


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 2.0, steps: int = 40,
           step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
           generator: Optional[torch.Generator] = None, early_stop: bool = False) -> torch.Tensor:
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
        steps, step_size, random_start, restarts, generator, early_stop: as in :func:`pgd_linf`
            (``step_size`` defaults to ``2.5 * eps / steps``).

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``||x_adv - x||_2 <= eps``.
    """
    return _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator, early_stop,
                _l2_start, _l2_stepper)
