"""Auto-PGD (APGD): PGD with an adaptive step size and momentum, untargeted or targeted (L-infinity and L2)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._core import BestPoint, _per_sample, attack_loss, eval_mode, grad_or_zero, l2_norm, project_l2
from .pgd import _rand

__all__ = ["APGD_LOSSES", "APGD_NORMS", "apgd", "apgd_loss", "apgd_targeted", "checkpoints", "dlr_loss",
           "halve_step", "step_halvings"]

#: Losses APGD can ascend: cross-entropy, the Difference of Logits Ratio (Croce & Hein 2020) and the CW margin.
APGD_LOSSES = ("ce", "dlr", "margin")
#: Threat models of :func:`apgd`.
APGD_NORMS = ("linf", "l2")

_TINY = 1e-12  # keeps the DLR denominator away from 0 (as the paper's code does)


# --- losses --------------------------------------------------------------------------------------

def _ranked(logits: torch.Tensor, rank: int) -> torch.Tensor:
    """The ``rank``-th largest logit per row (rank 1 = the largest); a model with fewer classes than ``rank``
    gives its smallest logit instead."""
    top = logits.topk(min(rank, logits.shape[1]), dim=1).values
    return top[:, -1]


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020); per sample, shape ``(N,)``, to be *maximized*.

    With ``z`` the logits ``(N, K)`` sorted as ``z_π1 >= z_π2 >= ...``:

    * untargeted: ``(max_{j != y} z_j - z_y) / (z_π1 - z_π3)``, the CW margin divided by a logit spread, so
      it is invariant to shifting and rescaling the logits (a saturated softmax or a ×1000 output layer does
      not change it); positive exactly where another class wins;
    * targeted (``target`` (N,) int64): ``(z_t - z_y) / (z_π1 - (z_π3 + z_π4) / 2)``.

    A ``1e-12`` is added to the denominator. Needs 3 classes (4 for the targeted form); with fewer, the
    missing ranks are taken as the smallest logit.
    """
    true = logits.gather(1, y[:, None]).squeeze(1)
    top1 = _ranked(logits, 1)
    if target is None:
        is_true = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, y[:, None], True)
        other = logits.masked_fill(is_true, -float("inf")).amax(1)
        return (other - true) / (top1 - _ranked(logits, 3) + _TINY)
    wanted = logits.gather(1, target[:, None]).squeeze(1)
    return (wanted - true) / (top1 - 0.5 * (_ranked(logits, 3) + _ranked(logits, 4)) + _TINY)


def _check(name: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed values: {', '.join(map(repr, allowed))}")


def apgd_loss(logits: torch.Tensor, y: torch.Tensor, loss: str = "ce",
              target: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-sample loss APGD *maximizes*, shape ``(N,)``, differentiable.

    Untargeted (``target=None``): ``"ce"`` the cross-entropy at ``y``, ``"margin"`` ``max_{j != y} z_j - z_y``
    (as :func:`~robustness_book.attacks.attack_loss`), ``"dlr"`` :func:`dlr_loss`. Targeted (``target`` (N,)
    int64): ``"ce"`` minus the cross-entropy at ``target``, ``"margin"`` ``z_target - z_y``, ``"dlr"`` the
    targeted DLR. Every targeted loss rises as the target's logit gains on the true one.
    """
    _check("loss", loss, APGD_LOSSES)
    if target is None:
        return dlr_loss(logits, y) if loss == "dlr" else attack_loss(logits, y, loss)
    if loss == "ce":
        return -F.cross_entropy(logits, target, reduction="none")
    if loss == "margin":
        return (logits.gather(1, target[:, None]) - logits.gather(1, y[:, None])).squeeze(1)
    return dlr_loss(logits, y, target)


# --- step-size schedule ----------------------------------------------------------------------------

def checkpoints(steps: int) -> list[int]:
    """The iterations ``w_1 < w_2 < ... < steps`` at which APGD checks its step size.

    The paper's ``w_j = ceil(p_j * steps)`` with ``p_0 = 0``, ``p_1 = 0.22`` and ``p_{j+1} = p_j +
    max(p_j - p_{j-1} - 0.03, 0.06)``, in the integer form of its reference code (first interval
    ``max(int(0.22 steps), 1)``, each next one ``max(int(0.03 steps), 1)`` shorter, never below
    ``max(int(0.06 steps), 1)``), so every interval holds at least one step. For 100 steps: 22, 41, 57, 70,
    80, 87, 93, 99. A checkpoint at ``steps`` itself would change nothing (no step follows) and is left out.
    """
    first, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, w, k = [], 0, first
    while w + k < steps:
        w += k
        out.append(w)
        k = max(k - shrink, least)
    return out


def halve_step(increases: torch.Tensor, interval: int, best: torch.Tensor, best_at_last: torch.Tensor,
               halved_last: torch.Tensor, rho: float = 0.75) -> torch.Tensor:
    """Which images halve their step size at a checkpoint (bool ``(N,)``); a pure function.

    Condition 1: fewer than ``rho * interval`` of the ``interval`` steps since the last checkpoint raised the
    loss over the previous iterate (``increases`` (N,) counts those that did; strictly fewer, as in the paper,
    where the reference code halves at equality too). Condition 2: the step size was
    not halved at the last checkpoint and the best loss has not risen since (``best`` (N,) now,
    ``best_at_last`` (N,) then). At the first checkpoint pass ``halved_last`` all ``True``: only condition 1
    applies there (as in the reference code).
    """
    return (increases < rho * interval) | (~halved_last & (best <= best_at_last))


def step_halvings(trace, rho: float = 0.75) -> list[int]:
    """The checkpoints at which APGD halves its step size, given the losses it observes.

    ``trace``: the loss of the iterates ``x^0`` (the start), ``x^1``, ..., ``x^T`` of one image (a sequence
    of ``T + 1`` numbers; ``T`` is the attack's ``steps``). Runs exactly the bookkeeping of :func:`apgd`
    (the loss of an iterate as evaluated, before a halving sends the next step back to the best point) over
    :func:`checkpoints` of ``T`` and :func:`halve_step`. Returns the halving checkpoints, ascending.
    """
    trace = torch.as_tensor(trace, dtype=torch.float64).flatten()
    steps = trace.numel() - 1
    sched = _Schedule(trace[:1], rho, steps)
    out = []
    for t in range(1, steps + 1):
        sched.observe(trace[t:t + 1])
        if t in sched.at and bool(sched.check(t)[0]):
            out.append(t)
    return out


class _Schedule:
    """APGD's per-image step-size bookkeeping (its state is per image, so it can drop images that leave)."""

    def __init__(self, start_loss: torch.Tensor, rho: float, steps: int):
        n = start_loss.shape[0]
        self.rho = rho
        self.prev = start_loss.clone()  # the loss of the previous iterate
        self.best = start_loss.clone()  # the best loss of this run (the start included)
        self.best_at_last = start_loss.clone()
        self.halved_last = torch.ones(n, dtype=torch.bool, device=start_loss.device)
        self.increases = torch.zeros(n, dtype=torch.long, device=start_loss.device)
        self.last = 0  # the previous checkpoint (0: the start)
        self.at = set(checkpoints(steps))

    def observe(self, value: torch.Tensor) -> torch.Tensor:
        """Record the loss of a new iterate; returns where it beats the run's best."""
        self.increases += value > self.prev
        self.prev = value
        better = value > self.best
        self.best = torch.where(better, value, self.best)
        return better

    def check(self, t: int) -> torch.Tensor:
        """At checkpoint ``t``: which images halve; resets the counts for the next interval."""
        halve = halve_step(self.increases, t - self.last, self.best, self.best_at_last, self.halved_last, self.rho)
        self.halved_last, self.best_at_last = halve, self.best.clone()
        self.increases = torch.zeros_like(self.increases)
        self.last = t
        return halve

    def keep(self, live: torch.Tensor) -> None:
        for key in ("prev", "best", "best_at_last", "halved_last", "increases"):
            setattr(self, key, getattr(self, key)[live])


# --- the attack ------------------------------------------------------------------------------------

def _start(x: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    """A random start for the whole batch, as in the paper's code: L∞, a uniform draw in ``[-1, 1]``
    rescaled so its largest coordinate is ``eps``; L2, a Gaussian direction of norm ``eps``."""
    if norm == "linf":
        t = 2 * _rand(x.shape, generator, x.device, "uniform") - 1
        size = t.flatten(1).abs().amax(1)
    else:
        t = _rand(x.shape, generator, x.device, "normal")
        size = l2_norm(t)
    return t * _per_sample(eps / size.clamp_min(1e-12), t)


def _projector(x: torch.Tensor, eps: float, norm: str):
    """``project(point, idx)``: onto the eps-ball around ``x[idx]`` and ``[0, 1]``."""
    if norm == "linf":
        lo, hi = (x - eps).clamp_min(0), (x + eps).clamp_max(1)
        return lambda p, idx: torch.maximum(torch.minimum(p, hi[idx]), lo[idx])

    def project(p, idx):
        x0 = x[idx]
        # eps-ball then box: clamping to [0, 1] only shrinks |delta| coordinate-wise, so both hold
        return (x0 + project_l2(p - x0, eps)).clamp(0, 1)
    return project


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _per_sample(l2_norm(grad).clamp_min(1e-12), grad)


def _value_and_grad(model, x_adv, y, loss, target):
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():  # callable from inside torch.no_grad()
        logits = model(x_adv)
        value = apgd_loss(logits, y, loss, target)
        grad = grad_or_zero(value.sum(), x_adv)
    return value.detach(), grad.detach(), logits.detach()


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, steps: int = 100,
         norm: str = "linf", loss: str = "ce", target: Optional[torch.Tensor] = None, restarts: int = 1,
         rho: float = 0.75, momentum: float = 0.75, generator: Optional[torch.Generator] = None,
         early_stop: bool = True) -> torch.Tensor:
    """Auto-PGD, L-infinity or L2 (Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020), untargeted or targeted.

    PGD without a step size to tune. The step size starts at ``2 * eps`` (per image) and is halved at the
    :func:`checkpoints` (22, 41, 57, ... of 100 steps) where progress stalled (:func:`halve_step`: fewer
    than ``rho`` of the steps since the last checkpoint raised the loss, or no halving last time and no new
    best loss since); a halving sends the next step back to the best point of the run (with its gradient).
    Each step has momentum: ``z = P(x_k + η s(∇))``, ``x_{k+1} = P(x_k + α (z - x_k) + (1 - α)(x_k -
    x_{k-1}))`` with ``α = momentum`` (1 on the first step), ``s`` the sign (L∞) or the L2-normalized
    gradient, ``P`` the projection onto the eps-ball around ``x`` and ``[0, 1]``. The random start lies on
    the ball's surface (L∞: largest coordinate ``eps``; L2: norm ``eps``, then clipped to ``[0, 1]``).

    Every iterate (the start included) is judged on the forward pass that also gives its gradient, as in
    :func:`~robustness_book.attacks.pgd_linf`: per image the *first* misclassified iterate is kept, else the one
    with the highest ``loss``. Success is always untargeted (``argmax != y``), also with a ``target``.

    Args:
        model: classifier returning logits; run in eval mode, training flags restored after.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 true labels.
        eps: budget in ``norm`` (the default 0.3 is the book's L∞ threat model on MNIST; its L2 one is 2.0).
        steps: gradient steps per restart (``steps + 1`` iterates judged; ``steps`` backward passes).
        norm: ``"linf"`` or ``"l2"``.
        loss: one of :data:`APGD_LOSSES` (see :func:`apgd_loss`): ``"ce"``, ``"dlr"`` or ``"margin"``.
        target: optional ``(N,)`` int64 target classes: the loss becomes the targeted version (APGD-T with
            ``"dlr"``); see :func:`apgd_targeted` for AutoAttack's loop over the top classes.
        restarts: independent runs, each on the images no earlier run fooled; each draws its random start
            for the whole batch from ``generator``, so restart #1 equals a ``restarts=1`` run.
        rho: the fraction of loss-raising steps below which the step size is halved (condition 1).
        momentum: ``α`` of the update (1 disables the momentum).
        generator: optional ``torch.Generator`` for reproducible random starts.
        early_stop: an image leaves the batch at its first fooling iterate, which is returned (same accuracy
            under attack, less compute). ``False``: every image takes every step and per image the
            highest-loss iterate is returned (among fooling iterates if there are any).

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x|_norm <= eps``.
    """
    _check("norm", norm, APGD_NORMS)
    _check("loss", loss, APGD_LOSSES)
    x, y = x.detach(), y.detach()
    n = x.shape[0]
    if target is not None:
        target = torch.as_tensor(target, device=y.device).long().detach()
        if target.shape != y.shape:
            raise ValueError(f"target has shape {tuple(target.shape)}, y has {tuple(y.shape)}")
    project = _projector(x, eps, norm)
    best = BestPoint(x)

    def record(idx, x_adv, logits, value):
        fooled = logits.argmax(1) != y[idx]
        best.update(idx, x_adv, fooled, value)
        return fooled

    with eval_mode(model):
        for _ in range(max(1, restarts)):
            delta = _start(x, eps, norm, generator)  # drawn for the whole batch (see restarts)
            idx = best.standing()  # only images no earlier restart fooled
            if idx.numel() == 0:
                break
            yt = None if target is None else target[idx]
            x_adv = project(x[idx] + delta[idx], idx)
            value, grad, logits = _value_and_grad(model, x_adv, y[idx], loss, yt)
            fooled = record(idx, x_adv, logits, value)
            # per-image state of this run: step size, previous iterate, best point and its gradient
            eta = torch.full((idx.numel(),), 2.0 * eps, device=x.device, dtype=x.dtype)
            x_prev, x_max, g_max = x_adv, x_adv, grad
            sched = _Schedule(value, rho, steps)
            for t in range(1, steps + 1):
                if early_stop and fooled.any():
                    live = ~fooled
                    idx, x_adv, x_prev, grad, x_max, g_max, eta = (
                        v[live] for v in (idx, x_adv, x_prev, grad, x_max, g_max, eta))
                    yt = None if yt is None else yt[live]
                    sched.keep(live)
                    if idx.numel() == 0:
                        break
                a = 1.0 if t == 1 else momentum
                z = project(x_adv + _per_sample(eta, x_adv) * _direction(grad, norm), idx)
                x_new = project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev), idx)
                x_prev, x_adv = x_adv, x_new
                if t == steps:  # the last iterate is only judged, so no backward
                    with torch.no_grad():
                        logits = model(x_adv)
                        record(idx, x_adv, logits, apgd_loss(logits, y[idx], loss, yt))
                    break
                value, grad, logits = _value_and_grad(model, x_adv, y[idx], loss, yt)
                fooled = record(idx, x_adv, logits, value)
                better = _per_sample(sched.observe(value), x_adv)
                x_max, g_max = torch.where(better, x_adv, x_max), torch.where(better, grad, g_max)
                if t in sched.at:
                    halve = sched.check(t)
                    eta = torch.where(halve, eta / 2, eta)
                    back = _per_sample(halve, x_adv)
                    # restart from the best point; x_prev stays, so the momentum then points from the
                    # previous iterate to the best point (as in the paper's algorithm)
                    x_adv, grad = torch.where(back, x_max, x_adv), torch.where(back, g_max, grad)
    return best.x


def apgd_targeted(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = 0.3, steps: int = 100,
                  norm: str = "linf", targets: int = 9, loss: str = "dlr", restarts: int = 1,
                  rho: float = 0.75, momentum: float = 0.75, generator: Optional[torch.Generator] = None,
                  early_stop: bool = True) -> torch.Tensor:
    """APGD-T, L-infinity or L2 (Croce & Hein, "Reliable evaluation of adversarial robustness with an
    ensemble of diverse parameter-free attacks", ICML 2020): :func:`apgd` on a targeted loss, once per
    target class.

    The targets of an image are the ``targets`` classes other than ``y`` with the largest logits on the clean
    image (AutoAttack's APGD-T takes ``min(9, classes - 1)``; fewer is faster and usually loses little: the
    runner-up classes are the likely ones). For target ``j = 1, 2, ...`` (``j``-th largest other logit),
    :func:`apgd` with that target runs only on the images no earlier target fooled. Success is untargeted
    (``argmax != y``): an image counts as fooled by any wrong class. Per image the first fooling example is
    kept; an image never fooled gets, over all targets, the example with the highest CW margin
    ``max_{j != y} z_j - z_y`` (the losses of different targets are not comparable).

    Args:
        model, x, y, eps, steps, norm, restarts, rho, momentum, generator, early_stop: as in :func:`apgd`
            (``restarts`` per target).
        targets: how many target classes (at most ``classes - 1``; more is clipped).
        loss: the targeted loss, one of :data:`APGD_LOSSES`; AutoAttack's is ``"dlr"``.

    Returns:
        ``(N, C, H, W)`` detached adversarial images in ``[0, 1]``, ``|x_adv - x|_norm <= eps``.
    """
    _check("norm", norm, APGD_NORMS)
    _check("loss", loss, APGD_LOSSES)
    if not isinstance(targets, int) or isinstance(targets, bool) or targets < 1:
        raise ValueError(f"targets must be a positive integer, got {targets!r}")
    x, y = x.detach(), y.detach()
    with eval_mode(model), torch.no_grad():
        logits = model(x)
        # the other classes by decreasing clean logit: mask the true class below every other one
        ranked = logits.scatter(1, y[:, None], -float("inf")).argsort(1, descending=True)
        k = min(targets, logits.shape[1] - 1)
        best = BestPoint(x)  # its loss here: the margin
        for j in range(k):
            idx = best.standing()
            if idx.numel() == 0:
                break
            adv = apgd(model, x[idx], y[idx], eps=eps, steps=steps, norm=norm, loss=loss,
                       target=ranked[idx, j], restarts=restarts, rho=rho, momentum=momentum,
                       generator=generator, early_stop=early_stop)
            out = model(adv)
            # fooled images leave for good; a standing one keeps its highest-margin example
            best.update(idx, adv, out.argmax(1) != y[idx], attack_loss(out, y[idx], "margin"))
    return best.x
