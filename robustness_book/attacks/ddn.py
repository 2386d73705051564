"""Decoupled Direction and Norm (DDN) L2 minimum-norm attack."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._core import MinNormResult, _per_sample, eval_mode, grad_or_zero, l2_norm


def ddn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 100, init_epsilon: float = 1.0,
        gamma: float = 0.05, step_size: float = 1.0,
        generator: Optional[torch.Generator] = None) -> MinNormResult:
    """DDN, L2 minimum-norm attack (Rony et al., "Decoupling Direction and Norm for Efficient
    Gradient-Based L2 Adversarial Attacks and Defenses", CVPR 2019).

    Each step moves ``delta`` along the L2-normalized cross-entropy gradient (step size
    cosine-annealed from ``step_size`` to ``0.01 * step_size``), then rescales it to the current
    norm budget ``eps`` — which shrinks by ``(1 - gamma)`` when the current point is adversarial
    and grows by ``(1 + gamma)`` otherwise (capped at the largest L2 distance reachable inside
    ``[0, 1]``) — and clips ``x + delta`` to ``[0, 1]``. The smallest-norm adversarial point seen
    is kept per sample (each candidate is checked by a forward pass at exactly that point).
    A zero gradient is replaced by a random direction drawn from ``generator``.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        steps: number of iterations.
        init_epsilon: initial norm budget.
        gamma: multiplicative budget update factor.
        step_size: initial step size (cosine-annealed).
        generator: optional ``torch.Generator`` for the (rare) random directions.

    Returns:
        :class:`MinNormResult`: ``x_adv`` (N, C, H, W), ``norms`` (N,) L2 norms (``inf`` and
        ``x_adv = x`` where no adversarial was found), ``success`` (N,) bool. All detached.
    """
    x = x.detach()
    n = x.shape[0]
    dev = x.device
    delta = torch.zeros_like(x)
    eps = torch.full((n,), float(init_epsilon), device=dev)
    # largest L2 distance to any point of the box: moving each pixel to the far end
    worst_norm = l2_norm(torch.maximum(x, 1 - x))
    best_norm = torch.full((n,), math.inf, device=dev)
    best_delta = torch.zeros_like(x)
    min_lr = 0.01 * step_size
    with eval_mode(model), torch.enable_grad():  # callable from inside torch.no_grad()
        for i in range(steps + 1):
            x_adv = (x + delta).requires_grad_(True)
            logits = model(x_adv)
            is_adv = logits.argmax(1) != y
            norm = l2_norm(delta)
            better = is_adv & (norm < best_norm)
            best_norm = torch.where(better, norm, best_norm)
            best_delta[better] = delta[better]
            if i == steps:  # the final point is only checked, not stepped from
                break
            grad = grad_or_zero(F.cross_entropy(logits, y, reduction="sum"), x_adv)
            gnorm = l2_norm(grad)
            zero = gnorm == 0
            if zero.any():
                # a random direction keeps the iterate moving where the loss is flat
                rnd = torch.randn(grad[zero].shape, generator=generator,
                                  device=generator.device if generator is not None else dev).to(dev)
                grad[zero] = rnd
                gnorm = l2_norm(grad)
            lr = min_lr + (step_size - min_lr) * (1 + math.cos(math.pi * i / steps)) / 2
            delta = delta + lr * grad / _per_sample(gnorm, grad)
            # decoupled norm: shrink the budget when adversarial, grow it otherwise
            eps = torch.minimum(eps * (1 - (2 * is_adv.float() - 1) * gamma), worst_norm)
            delta = delta * _per_sample(eps / l2_norm(delta).clamp_min(1e-12), delta)
            delta = (x + delta).clamp(0, 1) - x
    success = torch.isfinite(best_norm)
    return MinNormResult(x_adv=(x + best_delta).detach(), norms=best_norm, success=success)
