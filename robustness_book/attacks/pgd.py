"""Projected Gradient Descent (L-infinity and L2) with random restarts."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ._core import BestPoint, _per_sample, attack_loss, check_loss, eval_mode, input_gradient, l2_norm, project_l2


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
        # idx: the images of x that x_adv holds (None: all of them, in order)
        b_lo, b_hi = (lo, hi) if idx is None else (lo[idx], hi[idx])
        # clamp(x_adv + step_size * sign(grad), lo, hi), in place on the one new tensor: an image-sized
        # allocation costs page faults on a CPU, and a step is otherwise a few cheap passes
        return grad.sign().mul_(step_size).add_(x_adv).clamp_(b_lo, b_hi)
    return step


def _l2_stepper(x, eps, step_size):
    def step(x_adv, grad, idx):
        x0 = x if idx is None else x[idx]
        direction = grad / _per_sample(l2_norm(grad).clamp_min(1e-12), grad)
        # eps-ball then box: clamping to [0, 1] only shrinks |delta| coordinate-wise, so both hold
        return (x0 + project_l2(x_adv + step_size * direction - x0, eps)).clamp(0, 1)
    return step


def _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator, early_stop: bool, loss: str,
         start: Callable, stepper: Callable) -> torch.Tensor:
    check_loss(loss)
    x = x.detach()
    n = x.shape[0]
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1)
    step = stepper(x, eps, step_size)
    best = BestPoint(x)

    def record(idx, x_adv, logits, full):
        fooled = logits.argmax(1) != y[idx]
        best.update(idx, x_adv, fooled, attack_loss(logits, y[idx], loss), full)
        return fooled

    with eval_mode(model):
        for _ in range(max(1, restarts)):
            # the start is drawn for the whole batch, so an image's start in restart r depends only on the
            # generator's seed (not on which images earlier restarts fooled), and restart #1 is a restarts=1 run
            delta = start(x, eps, generator) if random_start else None
            idx = best.standing()  # only images no earlier restart fooled
            if idx.numel() == 0:
                break
            full = idx.numel() == n  # then the stepper needs no gather of the box
            x_adv = (x[idx] + delta[idx]).clamp(0, 1) if random_start else x[idx].clone()
            for t in range(steps + 1):
                if t == steps:  # the last iterate is only judged, so no backward
                    with torch.no_grad():
                        record(idx, x_adv, model(x_adv), full)
                    break
                # one forward per iterate: its logits judge the iterate and its backward gives the step
                grad, logits = input_gradient(model, x_adv, y[idx], loss=loss, return_logits=True)
                fooled = record(idx, x_adv, logits, full)
                if early_stop and fooled.any():
                    live = ~fooled
                    idx, x_adv, grad, full = idx[live], x_adv[live], grad[live], False
                    if idx.numel() == 0:
                        break
                x_adv = step(x_adv, grad, None if full else idx)
    return best.x


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, steps: int = 40,
             step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
             generator: Optional[torch.Generator] = None, early_stop: bool = True,
             loss: str = "ce") -> torch.Tensor:
    """PGD, L-infinity (Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018).

    Sign-gradient ascent on ``loss``, projected after each step onto the eps-ball around ``x`` and
    onto ``[0, 1]``. Every iterate is judged (the random start included), on the logits of the
    forward pass that also gives its gradient: per image the *first* iterate the model misclassifies
    is kept (a later step can never lose it), and for an image never fooled the iterate with the
    highest ``loss``. ``eps=0`` runs the same loop (the projection then returns ``x``), so a health
    check "eps = 0 gives clean accuracy" exercises the attack code.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: L-infinity budget.
        steps: gradient steps per restart (``steps + 1`` iterates are judged).
        step_size: defaults to ``2.5 * eps / steps``.
        random_start: start uniformly in the eps-ball (else at ``x``).
        restarts: independent runs; a restart attacks only the images no earlier restart fooled. Per
            image the first fooling example is kept, else the highest-loss one over all restarts. Each
            restart draws its random start for the whole batch from ``generator``, so restart #1 equals
            a ``restarts=1`` run with the same seed and more restarts are never weaker per image.
        generator: optional ``torch.Generator`` for reproducible random starts.
        early_stop: an image leaves the batch at its first fooling iterate, which is returned (same
            accuracy under attack, less compute). ``False``: every image takes every step and per image
            the highest-loss iterate is returned (among fooling iterates if there are any), i.e. points
            deep past the boundary, e.g. to craft examples for transfer to another model.
        loss: one of :data:`~robustness_book.attacks.LOSSES`: ``"ce"`` (cross-entropy) or ``"margin"``
            (``max_{j != y} z_j - z_y`` on the logits, which does not saturate like CE).

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x| <= eps``.
    """
    return _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator, early_stop, loss,
                _linf_start, _linf_stepper)


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 2.0, steps: int = 40,
           step_size: Optional[float] = None, random_start: bool = True, restarts: int = 1,
           generator: Optional[torch.Generator] = None, early_stop: bool = True,
           loss: str = "ce") -> torch.Tensor:
    """PGD, L2 (Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks",
    ICLR 2018).

    Steps along the per-sample L2-normalized gradient of ``loss``, each followed by projection onto
    the per-sample L2 ball of radius ``eps`` and onto ``[0, 1]``. The random start is uniform in the
    L2 ball. Iterates are judged and kept exactly as in :func:`pgd_linf`.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: per-sample L2 budget (``eps=0`` runs the loop and returns ``x``).
        steps, step_size, random_start, restarts, generator, early_stop, loss: as in :func:`pgd_linf`
            (``step_size`` defaults to ``2.5 * eps / steps``).

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``||x_adv - x||_2 <= eps``.
    """
    return _pgd(model, x, y, eps, steps, step_size, random_start, restarts, generator, early_stop, loss,
                _l2_start, _l2_stepper)
