"""DeepFool (L2 and L-infinity), batched over samples and candidate classes."""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ._core import eval_mode, grad_or_zero

#: Where each DeepFool step linearizes: the overshot iterate (DeepFool's and JumpReLU's codes) or the plain sum
#: of the steps (Deep Defense's code).
LINEARIZE_AT = ("overshot", "sum")


@dataclass
class DeepFoolResult:
    """Output of :func:`deepfool`.

    ``x_adv`` (N, C, H, W); ``perturbation`` = ``x_adv - x``; ``iterations`` (N,) int64: steps
    taken per sample; ``fooled`` (N,) bool: the model's decision at ``x_adv`` left ``orig`` (or,
    for ``toward`` rows, reached ``toward``); ``p``: the attack norm (2 or inf).
    ``norms`` is the ``p``-norm of ``perturbation`` per sample and ``success`` aliases ``fooled``,
    mirroring :class:`MinNormResult` (unlike it, ``norms`` is finite even where not fooled).
    With ``keep_graph=True`` ``norms`` stays differentiable w.r.t. the model's parameters.
    """

    x_adv: torch.Tensor
    perturbation: torch.Tensor
    iterations: torch.Tensor
    fooled: torch.Tensor
    p: float = 2.0

    @property
    def norms(self) -> torch.Tensor:
        return self.perturbation.flatten(1).norm(p=self.p, dim=1)

    @property
    def success(self) -> torch.Tensor:
        return self.fooled


def deepfool(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None, norm: float = 2,
             overshoot: float = 0.02, max_iter: int = 50, num_classes: Optional[int] = None,
             keep_graph: bool = False, toward: Optional[torch.Tensor] = None, clip: Optional[bool] = None,
             linearize_at: str = "overshot", resort: bool = False) -> DeepFoolResult:
    """DeepFool, L2 or L-infinity (Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and
    accurate method to fool deep neural networks", CVPR 2016).

    Iteratively linearizes the logit differences ``f_k - f_orig`` and steps to the closest
    linearized boundary: ``r = (|f_k| + 1e-4) / ||w_k||_2^2 * w_k`` (L2) or
    ``r = (|f_k| + 1e-4) / ||w_k||_1 * sign(w_k)`` (L-inf), where ``w_k`` is the gradient of
    ``f_k - f_orig`` and ``k`` minimizes ``|f_k| / ||w_k||_q`` (q = 2, resp. 1). Steps accumulate
    in ``r_tot``; the model is evaluated at ``x + (1 + overshoot) * r_tot`` (clipped to [0, 1]
    unless ``keep_graph``) and a sample stops as soon as it is fooled (already-fooled samples get
    a zero perturbation). By default the next step linearizes at that same overshot point, as the
    DeepFool and JumpReLU codes do; ``linearize_at="sum"`` linearizes at ``x + r_tot`` instead and
    only tests fooling at the overshot point, as the Deep Defense code does. Batched over samples; candidate-class Jacobian rows are obtained with
    one backward per candidate column over the whole batch (samples must be independent, which
    holds in eval mode).

    Args:
        model: classifier returning logits.
        x: ``(N, C, H, W)`` inputs in ``[0, 1]``.
        y: ``(N,)`` int64 labels to move away from; ``None`` uses the model's prediction at ``x``.
        norm: ``2`` or ``float('inf')``.
        overshoot: final perturbation is ``(1 + overshoot) * r_tot``.
        max_iter: maximum number of linearization steps.
        num_classes: only the ``num_classes`` highest-scoring classes (``orig`` included) are candidates;
            ``None`` means all classes. They are chosen once, at ``x``, unless ``resort``.
        resort: with ``num_classes``, choose the candidates afresh at every iterate from the logits there,
            as the JumpReLU code (``deep_fool`` sorts the outputs at each call) and the DeepFool code do;
            with fewer candidates than classes the greedy path can then differ from fixed candidates.
            Not with ``toward``.
        keep_graph: keep the result a differentiable function of the model's parameters
            (``create_graph=True``, nothing detached), e.g. for Deep Defense's regularizer. In this
            mode the model's train/eval state is left to the caller (so training-mode BatchNorm /
            dropout is the caller's choice; note that train-mode BatchNorm couples the samples of
            a batch, which the per-column batched gradients assume away), and the output is NOT
            clipped: ``x_adv = x + (1 + overshoot) * r_tot``.
            Otherwise the model runs in eval mode (flags restored after), outputs are detached and
            ``x_adv = clip(x + (1 + overshoot) * r_tot, 0, 1)``.
        toward: optional ``(N,)`` int64; rows with ``toward[i] >= 0`` are pushed *into* class
            ``toward[i]`` instead (Deep Defense uses this with the true label for misclassified
            samples): the step linearizes ``f_toward - f_j`` with ``j`` the currently highest
            other class, and the row is done once the prediction equals ``toward[i]``. Rows with
            ``toward[i] < 0`` run ordinary DeepFool.
        clip: clip iterates and output to [0, 1]; ``None`` (default) means ``not keep_graph``.
            ``clip=False`` without ``keep_graph`` is the original, unconstrained DeepFool (as the
            DeepFool and Deep Defense codes measure ρ_adv).
        linearize_at: ``"overshot"`` (default): each step linearizes at ``x + (1 + overshoot) * r_tot``,
            the point where fooling is tested (one forward per iteration). ``"sum"``: it linearizes at
            ``x + r_tot`` (clipped like the iterate), as Deep Defense's ``forward_correct`` /
            ``forward_wrong`` do, at the cost of a second forward per iteration. (Deep Defense also
            omits the ``1e-4`` added to ``|f_k|`` here and adds ``5e-6`` inside the norm of ``w``
            instead; a difference far below the step sizes.)

    Returns:
        :class:`DeepFoolResult` with ``x_adv``, ``perturbation = x_adv - x``, ``iterations`` and
        ``fooled``.
    """
    if norm not in (2, math.inf):
        raise ValueError("norm must be 2 or float('inf')")
    if resort and toward is not None:
        raise ValueError("resort=True re-chooses the top num_classes candidates; it cannot be combined with "
                         "toward=")
    if linearize_at not in LINEARIZE_AT:
        raise ValueError(f"linearize_at={linearize_at!r} is invalid: expected one of {', '.join(LINEARIZE_AT)}")
    x = x.detach()
    n = x.shape[0]
    dev = x.device
    ctx = contextlib.nullcontext() if keep_graph else eval_mode(model)
    if clip is None:
        clip = not keep_graph
    tmask = torch.zeros(n, dtype=torch.bool, device=dev)
    if toward is None:
        toward = torch.full((n,), -1, dtype=torch.long, device=dev)
    else:
        toward = toward.to(dev).long()
        tmask = toward >= 0
    with ctx, torch.enable_grad():  # callable from inside torch.no_grad()
        r_tot = torch.zeros_like(x)
        iterations = torch.zeros(n, dtype=torch.long, device=dev)
        fooled = torch.zeros(n, dtype=torch.bool, device=dev)
        active = torch.arange(n, device=dev)
        for it in range(max_iter + 1):
            x_full = x + (1 + overshoot) * r_tot
            if clip:
                x_full = x_full.clamp(0, 1)
            # only still-active samples are re-evaluated (the batch shrinks as samples finish)
            split = linearize_at == "sum" and it > 0
            if split:  # the fooling test needs no graph: the step below linearizes elsewhere
                with torch.no_grad():
                    pred = model(x_full[active].detach()).argmax(1)
            else:
                xa = x_full[active]
                if not (keep_graph and xa.requires_grad):  # keep_graph: xa depends on the weights
                    xa = xa.detach().requires_grad_(True)
                f = model(xa)
                pred = f.argmax(1)
            if it == 0:
                # the first pass is at x itself (r_tot = 0): set up labels and candidates
                orig, cand, valid = _setup(f.detach(), y, num_classes, toward, tmask)
            t_a, tm_a = toward[active], tmask[active]
            done = torch.where(tm_a, pred == t_a, pred != orig[active])
            fooled[active] = done
            if it == max_iter or done.all():
                break
            if split:
                # Deep Defense: linearize at x + r_tot (the overshoot only enters the fooling test)
                x_lin = x + r_tot
                if clip:
                    x_lin = x_lin.clamp(0, 1)
                xa = x_lin[active]
                if not (keep_graph and xa.requires_grad):
                    xa = xa.detach().requires_grad_(True)
                f = model(xa)
            # reference class: orig, or for toward rows the highest class other than target
            others = f.detach().scatter(1, t_a.clamp_min(0)[:, None], -math.inf)
            ref = torch.where(tm_a, others.argmax(1), orig[active])
            c_a, v_a = cand[active], valid[active] & ~done[:, None]
            if resort and it > 0 and num_classes is not None and num_classes < f.shape[1]:
                # the candidates of this step: the top num_classes at the linearization point, minus orig
                c_a = f.detach().argsort(dim=1, descending=True)[:, :num_classes]
                v_a = (c_a != orig[active][:, None]) & ~done[:, None]
            f_ref = f.gather(1, ref[:, None]).squeeze(1)
            ws, fs = [], []
            for j in range(c_a.shape[1]):
                fj = f.gather(1, c_a[:, j:j + 1]).squeeze(1) - f_ref
                if v_a[:, j].any():
                    g = grad_or_zero(fj.sum(), xa, retain_graph=True, create_graph=keep_graph)
                else:
                    g = torch.zeros_like(xa)
                ws.append(g.flatten(1))
                fs.append(fj if keep_graph else fj.detach())  # no graph kept across iterations
            w = torch.stack(ws, 1)  # (Na, K, D)
            fd = torch.stack(fs, 1)  # (Na, K)
            q = 2 if norm == 2 else 1
            wn = w.detach().norm(p=q, dim=2)
            dist = fd.detach().abs() / wn.clamp_min(1e-12)
            dist = dist.masked_fill(~v_a, math.inf)
            k = dist.argmin(1)
            w_k = w[torch.arange(len(k), device=dev), k]
            f_k = fd.gather(1, k[:, None]).squeeze(1).abs() + 1e-4
            if norm == 2:
                scale = f_k / (w_k.norm(dim=1) ** 2).clamp_min(1e-12)
                r = scale[:, None] * w_k
            else:
                scale = f_k / w_k.norm(p=1, dim=1).clamp_min(1e-12)
                r = scale[:, None] * w_k.sign()
            # finished samples get r = 0 (they stay in the batch for this iteration only)
            r = torch.where(done[:, None], torch.zeros_like(r), r)
            r_tot = r_tot.index_add(0, active, r.view_as(xa))
            iterations[active] += (~done).long()
            active = active[~done]

    pert = (1 + overshoot) * r_tot
    x_adv = x + pert
    if clip:
        x_adv = x_adv.clamp(0, 1)
        pert = x_adv - x
    if not keep_graph:
        x_adv, pert = x_adv.detach(), pert.detach()
    return DeepFoolResult(x_adv=x_adv, perturbation=pert, iterations=iterations, fooled=fooled, p=float(norm))


def _setup(logits0, y, num_classes, toward, tmask):
    """Original labels ``(N,)``, candidate classes ``(N, K)`` and their validity mask ``(N, K)``."""
    n, n_cls = logits0.shape
    dev = logits0.device
    orig = logits0.argmax(1) if y is None else y.to(dev).long()
    if num_classes is None or num_classes >= n_cls:
        cand = torch.arange(n_cls, device=dev).expand(n, -1)
    else:
        cand = logits0.argsort(dim=1, descending=True)[:, :num_classes]
    valid = cand != orig[:, None]
    if tmask.any():
        # one extra column holds the target: toward rows use only it, other rows never
        cand = torch.cat([cand, toward.clamp_min(0)[:, None]], dim=1)
        valid = torch.cat([valid & ~tmask[:, None], tmask[:, None]], dim=1)
    return orig, cand, valid
