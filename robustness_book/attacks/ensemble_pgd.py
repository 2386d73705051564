"""PGD (L-infinity) on an ensemble of surrogate models, for transfer attacks; the ensemble gradient it shares
with MI-FGSM."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence, Union

import torch
from torch import nn

from ._core import attack_loss, check_loss, eval_mode, grad_or_zero
from .input_diversity import check_diversity, input_diversity
from .pgd import _linf_start, _linf_stepper

#: How an ensemble's members are fused: ``"logits"`` (the loss of the averaged logits; Dong et al.'s choice)
#: or ``"loss"`` (the average of the members' losses; Liu et al.'s and Tramèr et al.'s).
COMBINES = ("logits", "loss")

Models = Union[nn.Module, Sequence[nn.Module]]


def as_models(models: Models) -> list[nn.Module]:
    """``models`` as a non-empty list of modules (a single module is an ensemble of one)."""
    members = [models] if isinstance(models, nn.Module) else list(models) if isinstance(models, (list, tuple)) else []
    if not members or not all(isinstance(m, nn.Module) for m in members):
        raise ValueError("models must be an nn.Module or a non-empty list or tuple of nn.Modules, "
                         f"got {type(models).__name__}")
    return members


def checked_members(models: Models, combine: str, loss: str, diversity: float) -> list[nn.Module]:
    """The ensemble's members (:func:`as_models`), after checking the arguments every transfer attack shares;
    ``ValueError`` naming the first bad one (called before any work)."""
    members = as_models(models)
    if combine not in COMBINES:
        raise ValueError(f"unknown combine {combine!r}; allowed values: {', '.join(map(repr, COMBINES))}")
    check_loss(loss)
    check_diversity(diversity, name="diversity")
    return members


@contextlib.contextmanager
def ensemble_eval_mode(models: Sequence[nn.Module]) -> Iterator[None]:
    """:func:`eval_mode` for every member; each restores its own training flags on exit."""
    with contextlib.ExitStack() as stack:
        for model in models:
            stack.enter_context(eval_mode(model))
        yield


def diversity_transform(p: float, generator: Optional[torch.Generator]) -> Optional[Callable]:
    """The per-step input transform of an attack: :func:`input_diversity` with probability ``p``, or ``None``
    for ``p = 0`` (then no random numbers are drawn, so the attack's random stream is the one without it)."""
    if p == 0:
        return None
    return lambda z: input_diversity(z, p, generator=generator)


def ensemble_gradient(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, combine: str = "logits",
                      loss: str = "ce", transform: Optional[Callable] = None) -> torch.Tensor:
    """Gradient w.r.t. ``x`` of the ensemble's *summed* per-sample loss (each sample's gradient is its own).

    ``combine="logits"``: ``loss(mean_k f_k(t(x)), y)``; ``"loss"``: ``mean_k loss(f_k(t(x)), y)``, with ``t``
    the optional ``transform`` (one draw for every member). For one model both equal
    :func:`~robustness_book.attacks.input_gradient`. Differentiates w.r.t. ``x`` only (no ``.grad`` on
    parameters); callable under ``torch.no_grad()``; returns a detached tensor shaped like ``x``.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = x if transform is None else transform(x)
        if combine == "logits":
            value = attack_loss(torch.stack([m(z) for m in models]).mean(0), y, loss)
        else:
            value = torch.stack([attack_loss(m(z), y, loss) for m in models]).mean(0)
        return grad_or_zero(value.sum(), x).detach()


def ensemble_pgd(models: Models, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, steps: int = 40,
                 step_size: Optional[float] = None, random_start: bool = True, combine: str = "logits",
                 loss: str = "ce", diversity: float = 0.0,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """PGD, L-infinity (Madry et al., ICLR 2018) on an ensemble of surrogate models, for transfer to an unseen
    target (Liu et al., "Delving into Transferable Adversarial Examples and Black-box Attacks", ICLR 2017;
    Tramèr et al., "Ensemble Adversarial Training", ICLR 2018).

    Each step is ``clip(x_t + step_size · sign(grad), eps-ball ∩ [0, 1])`` with the gradient of the ensemble
    loss (see ``combine``), from a uniform random start in the eps-ball (or ``x``). Returns the **last**
    iterate, as transfer attacks do: success can only be judged on the target, and a point deep past the
    surrogates' boundary transfers better than their first crossing (unlike :func:`pgd_linf`, which keeps the
    first fooling iterate). For one model every iterate is :func:`pgd_linf`'s (same start from the same
    generator, same steps); only which iterate is returned may differ.

    Args:
        models: the surrogates (a module, or a non-empty list or tuple of them), each returning logits; run in
            eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: L-infinity budget in [0, 1] pixel units.
        steps: gradient steps.
        step_size: defaults to ``2.5 * eps / steps`` (as :func:`pgd_linf`).
        random_start: start uniformly in the eps-ball (else at ``x``).
        combine: one of :data:`COMBINES`: ``"logits"`` ascends the loss of the members' averaged logits,
            ``"loss"`` the average of their losses; members weigh equally.
        loss: one of :data:`~robustness_book.attacks.LOSSES` (``"ce"`` or ``"margin"``).
        diversity: probability of :func:`input_diversity` (random resize-and-pad, Xie et al. CVPR 2019) at each
            step, one draw shared by all members; 0 (default) turns it off, Xie et al. use 0.5.
        generator: optional ``torch.Generator`` for the random start and the diversity draws (reproducible).

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x| <= eps``, on ``x``'s device.
    """
    members = checked_members(models, combine, loss, diversity)
    x = x.detach()
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1)
    step = _linf_stepper(x, eps, step_size)
    transform = diversity_transform(diversity, generator)
    x_adv = (x + _linf_start(x, eps, generator)).clamp(0, 1) if random_start else x.clone()
    with ensemble_eval_mode(members):
        for _ in range(steps):
            grad = ensemble_gradient(members, x_adv, y, combine, loss, transform)
            x_adv = step(x_adv, grad, None)
    return x_adv.detach()
