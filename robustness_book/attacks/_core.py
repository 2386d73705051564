"""Helpers shared by the attacks: eval-mode guard, input gradients, norm-ball projections.

Conventions for every attack in this package: inputs ``x`` are ``(N, C, H, W)`` floats in
``[0, 1]``, labels ``y`` are ``(N,)`` int64, the model returns logits (normalization is a layer
inside the model, so attacks always clip to ``[0, 1]``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSSES", "attack_loss", "eval_mode", "input_gradient", "grad_or_zero", "project_linf", "project_l2", "l2_norm",
    "MinNormResult",
]

#: Losses an attack can ascend: ``"ce"`` (cross-entropy) and ``"margin"`` (Carlini & Wagner's margin).
LOSSES = ("ce", "margin")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; on exit restore each submodule's own ``training`` flag.

    Restoring per module (not ``model.train(old)``) keeps mixed states intact, e.g. a model in
    train mode whose BatchNorm layers were deliberately frozen in eval mode.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def check_loss(loss: str) -> None:
    """Raise ``ValueError`` unless ``loss`` is one of :data:`LOSSES` (called before any work)."""
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; allowed values: {', '.join(map(repr, LOSSES))}")


def attack_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce") -> torch.Tensor:
    """Per-sample loss an untargeted attack *maximizes*; shape ``(N,)``, differentiable.

    ``"ce"``: cross-entropy of ``logits`` (N, K) at the true labels ``y`` (N,).
    ``"margin"``: ``max_{j != y} z_j - z_y`` on the logits ``z`` (Carlini & Wagner, "Towards Evaluating
    the Robustness of Neural Networks", S&P 2017); positive exactly where another class wins. Unlike CE
    it does not saturate: its gradient is a difference of two logit gradients, never exactly zero
    because a softmax underflowed.
    """
    check_loss(loss)
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    # masking the true class with -inf leaves the largest other logit (and its gradient) to amax
    is_true = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
    return logits.masked_fill(is_true, -float("inf")).amax(1) - true


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce",
                   return_logits: bool = False):
    """Gradient w.r.t. ``x`` of the *summed* loss (so each sample's gradient is its own, unscaled).

    Works under ``torch.no_grad()``. Differentiates w.r.t. the input only, so no ``.grad`` lands
    on the parameters; a model whose output does not depend on ``x`` gives zeros. ``loss`` is one
    of :data:`LOSSES` (see :func:`attack_loss`; an unknown name raises ``ValueError``). Returns a
    detached tensor shaped like ``x``, or ``(gradient, logits)`` with ``return_logits`` (the logits
    of the same forward pass, so an attack can check success at no extra cost).
    """
    check_loss(loss)
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():  # attacks may be called from inside torch.no_grad()
        logits = model(x)
        value = attack_loss(logits, y, loss).sum()
        grad = grad_or_zero(value, x)
    return (grad.detach(), logits.detach()) if return_logits else grad.detach()


def grad_or_zero(output: torch.Tensor, inp: torch.Tensor, **kwargs) -> torch.Tensor:
    """``torch.autograd.grad(output, inp)``, but zeros where ``inp`` does not reach ``output``.

    A model with a fully masked gradient (e.g. a hard threshold layer) then yields a zero
    gradient instead of an autograd error, so attacks degrade gracefully (and BPDA can be shown
    to help).
    """
    if not output.requires_grad:
        return torch.zeros_like(inp)
    (grad,) = torch.autograd.grad(output, inp, allow_unused=True, materialize_grads=True, **kwargs)
    return grad


def l2_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm of ``t`` flattened over all non-batch dims; shape ``(N,)``."""
    return t.flatten(1).norm(p=2, dim=1)


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape an ``(N,)`` vector to broadcast against ``like`` (N, ...)."""
    return v.view(-1, *([1] * (like.dim() - 1)))


class BestPoint:
    """The best point so far per image of an iterative attack: a fooling point beats any other, and among equals the
    higher loss wins; a fooling point is never replaced by a non-fooling one (with early stop a fooled image leaves
    the batch right after, so its first fooling iterate is the one kept). ``x`` holds the points (the clean images at
    first), ``fooled`` and ``loss`` their state; :meth:`standing` the images not fooled yet."""

    def __init__(self, x: torch.Tensor):
        self.x = x.clone()
        self.fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        self.loss = torch.full((x.shape[0],), -float("inf"), device=x.device, dtype=x.dtype)

    def standing(self) -> torch.Tensor:
        """The indices of the images no point has fooled yet."""
        return (~self.fooled).nonzero().flatten()

    def update(self, idx: torch.Tensor, x_adv: torch.Tensor, fooled: torch.Tensor, value: torch.Tensor,
               full: bool = False) -> None:
        """Offer the points ``x_adv`` of images ``idx`` (``fooled``: where they fool the model, ``value``: their
        loss). ``full``: ``idx`` holds every image, in order; the state is then updated in place, with no copies."""
        value = value.to(self.loss.dtype)
        was = self.fooled[idx]
        take = (fooled & ~was) | ((fooled == was) & (value > self.loss[idx]))
        # where (+ index_copy_) rather than boolean indexing: no host-device sync per step
        if full:
            torch.where(_per_sample(take, x_adv), x_adv, self.x, out=self.x)
            torch.where(take, value, self.loss, out=self.loss)
            self.fooled.copy_(was | fooled & take)
        else:
            self.x.index_copy_(0, idx, torch.where(_per_sample(take, x_adv), x_adv, self.x[idx]))
            self.loss.index_copy_(0, idx, torch.where(take, value, self.loss[idx]))
            self.fooled.index_copy_(0, idx, was | fooled & take)


def project_linf(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project ``delta`` onto the L-infinity ball of radius ``eps`` (element-wise clamp)."""
    return delta.clamp(-eps, eps)


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Project each sample of ``delta`` onto the L2 ball of radius ``eps`` (rescale if outside)."""
    norms = l2_norm(delta)
    # clamp_min avoids 0/0 for an all-zero delta; factor <= 1 so points inside are untouched
    factor = (eps / norms.clamp_min(1e-12)).clamp(max=1.0)
    return delta * _per_sample(factor, delta)


@dataclass
class MinNormResult:
    """Output of a minimum-norm attack.

    ``x_adv`` (N, C, H, W): the smallest-norm adversarial example found per sample (``x`` itself
    where none was found); ``norms`` (N,): its L2 distance to ``x`` (``inf`` where none was
    found); ``success`` (N,) bool: whether an adversarial example was found.
    """

    x_adv: torch.Tensor
    norms: torch.Tensor
    success: torch.Tensor
