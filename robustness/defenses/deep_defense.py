"""Deep Defense (Yan, Guo & Zhang, NeurIPS 2018): a regularizer built from the DeepFool perturbation.

The objective of the official code (``deepdefense.py``) is::

    L(W) = mean_k CE(y_k, f(x_k))
         + (λ/B) Σ_{k correct}       exp(−c·ρ_k)
         + (λ/B) Σ_{k misclassified} exp(+d·ρ_k),      ρ_k = ‖Δx_k‖₂ / ‖x_k‖₂

where ``Δx_k`` is the DeepFool-L2 perturbation (all classes, overshoot 0.02, 5 iterations) that
leaves the predicted class for a correct sample and reaches the true class for a misclassified one.
The paper back-propagates through every DeepFool step with a hand-written "inverse network"; here
:func:`robustness.attacks.deepfool` with ``keep_graph=True`` builds the same unrolled graph with
autograd, batched over samples and candidate classes (one backward per class column per
iteration over the whole batch, never a per-sample loop).

The loss is a plain ``loss(model, x, y)`` callable with a ``spec``: it plugs into
:func:`robustness.train.train` like any other objective.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attacks import deepfool, eval_mode
from ..models import Normalize

RHO_REFERENCES = ("normalized", "pixels")


def _normalize_layer(model: nn.Module) -> Normalize | None:
    return next((m for m in model.modules() if isinstance(m, Normalize)), None)


def relative_norm(model: nn.Module, x: torch.Tensor, delta: torch.Tensor,
                  reference: str = "normalized") -> torch.Tensor:
    """Per-sample ρ = ‖Δx‖₂ / ‖x‖₂, measured where ``reference`` says.

    ``"pixels"``: both on the [0, 1] image. ``"normalized"``: both after the model's
    :class:`~robustness.models.Normalize` layer, i.e. ‖Δx/σ‖ / ‖(x − μ)/σ‖ — the closest we have to
    the mean-subtracted matconvnet images on which the paper (and DeepFool's ρ anchors) measured ρ.
    Differentiable in ``delta``.
    """
    if reference not in RHO_REFERENCES:
        raise ValueError(f"rho_reference={reference!r} is invalid: expected one of {', '.join(RHO_REFERENCES)}")
    if reference == "normalized":
        norm = _normalize_layer(model)
        if norm is None:
            raise ValueError("rho_reference='normalized' needs a model with a Normalize layer")
        x = (x - norm.mean) / norm.std
        delta = delta / norm.std
    return delta.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)


class DeepDefenseLoss:
    """Cross-entropy plus the Deep Defense regularizer; a loss for :func:`robustness.train.train`.

    Args:
        lam, c, d: λ, c, d of the objective (official defaults 15, 25, 5).
        max_iter: DeepFool iterations unrolled per batch (official: 5).
        overshoot: DeepFool overshoot (official: 0.02).
        rho_reference: where ‖Δx‖/‖x‖ is measured (see :func:`relative_norm`). The default,
            ``"normalized"``, keeps the scale of ρ — and so the meaning of c and d — close to the
            paper's mean-subtracted inputs; ``"pixels"`` uses the [0, 1] images.
    """

    def __init__(self, lam: float = 15.0, c: float = 25.0, d: float = 5.0, max_iter: int = 5,
                 overshoot: float = 0.02, rho_reference: str = "normalized"):
        if rho_reference not in RHO_REFERENCES:
            raise ValueError(f"rho_reference={rho_reference!r} is invalid: expected one of "
                             f"{', '.join(RHO_REFERENCES)}")
        for name, value in (("lam", lam), ("c", c), ("d", d), ("overshoot", overshoot)):
            if not value >= 0:
                raise ValueError(f"{name}={value!r} must be ≥ 0")
        if not (isinstance(max_iter, int) and max_iter > 0):
            raise ValueError(f"max_iter={max_iter!r} must be an integer > 0")
        self.lam, self.c, self.d = float(lam), float(c), float(d)
        self.max_iter, self.overshoot, self.rho_reference = max_iter, float(overshoot), rho_reference
        self.spec = {"name": "deep_defense", "lam": self.lam, "c": self.c, "d": self.d,
                     "max_iter": max_iter, "overshoot": self.overshoot, "rho_reference": rho_reference}

    def regularizer(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
        """The regularizer term and its parts: ``reg`` (scalar, differentiable w.r.t. the weights
        through Δx), ``rho`` (B,), ``correct`` (B,) bool, ``perturbation`` (B, C, H, W)."""
        # DeepFool's batched per-class gradients assume independent samples (no train-mode BatchNorm)
        # and a deterministic function (no dropout). The official code fine-tunes with frozen BN and
        # its models have no dropout, so for them eval mode is the same function as train mode.
        # Gradients still flow (eval_mode only flips the training flags, restored per module on exit).
        with eval_mode(model):
            with torch.no_grad():
                correct = model(x).argmax(1) == y
            # correct rows: ordinary DeepFool away from the prediction; misclassified rows: toward y
            toward = torch.where(correct, torch.full_like(y, -1), y)
            result = deepfool(model, x, None, norm=2, overshoot=self.overshoot, max_iter=self.max_iter,
                              keep_graph=True, toward=toward)
        rho = relative_norm(model, x, result.perturbation, self.rho_reference)
        terms = torch.where(correct, torch.exp(-self.c * rho), torch.exp(self.d * rho))
        reg = self.lam * terms.sum() / len(x)
        return {"reg": reg, "rho": rho, "correct": correct, "perturbation": result.perturbation}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = nn.functional.cross_entropy(model(x), y)
        if self.lam == 0:
            return ce
        return ce + self.regularizer(model, x, y)["reg"]

    def __repr__(self) -> str:
        return f"DeepDefenseLoss({', '.join(f'{k}={v!r}' for k, v in self.spec.items() if k != 'name')})"


class DeepFoolRho:
    """An ``epoch_callback`` for :func:`robustness.train.train`: DeepFool-L2 ρ_adv on a fixed set.

    Returns ``{"rho_deepfool": mean ρ over correctly classified samples that DeepFool fools,
    "clean": accuracy}``. ρ is measured on pixels and on the normalized input (both recorded).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, max_iter: int = 5, overshoot: float = 0.02,
                 batch_size: int = 500, tag: str = ""):
        self.x, self.y, self.max_iter, self.overshoot, self.batch_size = x, y, max_iter, overshoot, batch_size
        self.spec = {"name": "deepfool_rho", "n": len(x), "max_iter": max_iter, "overshoot": overshoot,
                     "tag": tag}

    def __call__(self, epoch: int, model: nn.Module) -> dict:
        return deepfool_rho(model, self.x, self.y, self.max_iter, self.overshoot, self.batch_size)


def deepfool_rho(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_iter: int = 5,
                 overshoot: float = 0.02, batch_size: int = 500) -> dict:
    """ρ_adv as the paper's ``test()`` measures it: unclipped DeepFool-L2 (``max_iter`` steps) on each
    correctly classified sample; mean ‖r‖/‖x‖ over the samples it fools, in both references, and the
    fraction fooled (``deepfool_success``)."""
    dev = next(model.parameters()).device
    rho_px, rho_nz, fooled, correct = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        # unclipped, as the paper's test() (no [0, 1] box on mean-subtracted inputs): clipping stalls
        # 5-step DeepFool on MNIST, whose pixels sit at 0 or 1
        res = deepfool(model, xb, yb, norm=2, overshoot=overshoot, max_iter=max_iter, clip=False)
        with torch.no_grad():
            correct.append((model(xb).argmax(1) == yb).cpu())
            rho_px.append(relative_norm(model, xb, res.perturbation, "pixels").cpu())
            rho_nz.append(relative_norm(model, xb, res.perturbation, "normalized").cpu()
                          if _normalize_layer(model) is not None else rho_px[-1])
        fooled.append(res.fooled.cpu())
    correct, fooled = torch.cat(correct), torch.cat(fooled)
    ok = correct & fooled
    rp, rn = torch.cat(rho_px), torch.cat(rho_nz)
    nan = float("nan")
    return {"clean": float(correct.float().mean()),
            "rho_deepfool": float(rp[ok].mean()) if ok.any() else nan,
            "rho_deepfool_normalized": float(rn[ok].mean()) if ok.any() else nan,
            "deepfool_success": float(ok.sum() / correct.sum().clamp(min=1))}
