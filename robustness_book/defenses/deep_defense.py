"""Deep Defense (Yan, Guo & Zhang, NeurIPS 2018): a regularizer built from the DeepFool perturbation.

The objective of the official code (``deepdefense.py``) is::

    L(W) = mean_k CE(y_k, f(x_k))
         + (λ/B) Σ_{k correct}       exp(−c·ρ_k)
         + (λ/B) Σ_{k misclassified} exp(+d·ρ_k),      ρ_k = ‖Δx_k‖₂ / ‖x_k‖₂

where ``Δx_k`` is the DeepFool-L2 perturbation (all classes, overshoot 0.02, 5 iterations, each step
linearized at ``x + Σr`` and fooling tested at ``x + 1.02·Σr``) that leaves the predicted class for a
correct sample and reaches the true class for a misclassified one, and ``x_k`` is matconvnet's
mean-subtracted image: ‖x_k‖ is measured after subtracting the per-pixel training mean image.
The paper back-propagates through every DeepFool step with a hand-written "inverse network"; here
:func:`robustness_book.attacks.deepfool` with ``keep_graph=True`` builds the same unrolled graph with
autograd, batched over samples and candidate classes (one backward per class column per
iteration over the whole batch, never a per-sample loop).

The loss is a plain ``loss(model, x, y)`` callable with a ``spec``: it plugs into
:func:`robustness_book.train.train` like any other objective.
"""
from __future__ import annotations

import torch
from torch import nn

from ..attacks import deepfool, eval_mode
from ..attacks.deepfool import LINEARIZE_AT
from ..data import DATASETS, mean_image
from ..models import Normalize

#: Where ρ = ‖Δx‖/‖x‖ is measured: ``"mean_image"`` (‖Δx‖ / ‖x − m‖ with m the per-pixel training mean: matconvnet's
#: mean-subtracted input, the paper's scale), ``"normalized"`` (after the model's Normalize layer: per-channel
#: mean and σ), ``"pixels"`` ([0, 1] images).
RHO_REFERENCES = ("mean_image", "normalized", "pixels")


def _normalize_layer(model: nn.Module) -> Normalize | None:
    return next((m for m in model.modules() if isinstance(m, Normalize)), None)


def _check_reference(reference: str) -> None:
    if reference not in RHO_REFERENCES:
        raise ValueError(f"rho_reference={reference!r} is invalid: expected one of {', '.join(RHO_REFERENCES)}")


def relative_norm(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, reference: str = "mean_image",
                  mean: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ρ = ‖Δx‖₂ / ‖x‖₂, measured where ``reference`` says (one of :data:`RHO_REFERENCES`).

    ``"mean_image"``: ‖Δx‖ / ‖x − m‖ with ``mean`` = m, ``(C, H, W)``, the per-pixel training mean image
    (:func:`robustness_book.data.mean_image`): the mean-subtracted matconvnet images on which the paper (and
    DeepFool's ρ anchors) measured ρ on MNIST. ``"normalized"``: both after the model's
    :class:`~robustness_book.models.Normalize` layer, ‖Δx/σ‖ / ‖(x − μ)/σ‖ (per-channel mean). ``"pixels"``: both
    on the [0, 1] image. Differentiable in ``delta``.
    """
    _check_reference(reference)
    if reference == "mean_image":
        if mean is None:
            raise ValueError("rho_reference='mean_image' needs the mean image (data.mean_image(dataset))")
        x = x - mean.to(device=x.device, dtype=x.dtype)
    elif reference == "normalized":
        norm = _normalize_layer(model)
        if norm is None:
            raise ValueError("rho_reference='normalized' needs a model with a Normalize layer")
        x = (x - norm.mean) / norm.std
        delta = delta / norm.std
    return delta.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)


class DeepDefenseLoss:
    """Cross-entropy plus the Deep Defense regularizer; a loss for :func:`robustness_book.train.train`.

    Args:
        lam, c, d: λ, c, d of the objective (official defaults 15, 25, 5).
        max_iter: DeepFool iterations unrolled per batch (official: 5).
        overshoot: DeepFool overshoot (official: 0.02).
        rho_reference: where ‖Δx‖/‖x‖ is measured (see :func:`relative_norm`). The default,
            ``"mean_image"``, subtracts the per-pixel training mean image of ``dataset`` as matconvnet did, so
            ρ — and with it the meaning of c and d — is on the paper's scale (on MNIST; the paper's CIFAR-10
            data were also contrast-normalized and ZCA-whitened, which is not reproduced).
        dataset: the data set whose mean image ``"mean_image"`` subtracts (required for it).
        linearize_at: where each unrolled DeepFool step linearizes (:func:`robustness_book.attacks.deepfool`):
            ``"sum"`` (default) at ``x + Σr`` as the official code, ``"overshot"`` at ``x + 1.02·Σr``.
    """

    def __init__(self, lam: float = 15.0, c: float = 25.0, d: float = 5.0, max_iter: int = 5,
                 overshoot: float = 0.02, rho_reference: str = "mean_image", dataset: str | None = None,
                 linearize_at: str = "sum"):
        _check_reference(rho_reference)
        if rho_reference == "mean_image" and dataset not in DATASETS:
            raise ValueError(f"rho_reference='mean_image' needs dataset= one of {', '.join(DATASETS)} "
                             f"(got {dataset!r}); or choose rho_reference from {', '.join(RHO_REFERENCES)}")
        if linearize_at not in LINEARIZE_AT:
            raise ValueError(f"linearize_at={linearize_at!r} is invalid: expected one of {', '.join(LINEARIZE_AT)}")
        for name, value in (("lam", lam), ("c", c), ("d", d), ("overshoot", overshoot)):
            if not value >= 0:
                raise ValueError(f"{name}={value!r} must be ≥ 0")
        if not (isinstance(max_iter, int) and max_iter > 0):
            raise ValueError(f"max_iter={max_iter!r} must be an integer > 0")
        self.lam, self.c, self.d = float(lam), float(c), float(d)
        self.max_iter, self.overshoot, self.rho_reference = max_iter, float(overshoot), rho_reference
        self.dataset, self.linearize_at = dataset, linearize_at
        self._mean: torch.Tensor | None = None
        self.spec = {"name": "deep_defense", "lam": self.lam, "c": self.c, "d": self.d,
                     "max_iter": max_iter, "overshoot": self.overshoot, "rho_reference": rho_reference,
                     "linearize_at": linearize_at,
                     **({"dataset": dataset} if rho_reference == "mean_image" else {})}

    def mean_image(self, like: torch.Tensor) -> torch.Tensor | None:
        """The mean image ρ is measured against (``None`` unless ``rho_reference="mean_image"``), on ``like``'s
        device and dtype (loaded once)."""
        if self.rho_reference != "mean_image":
            return None
        if self._mean is None or self._mean.device != like.device or self._mean.dtype != like.dtype:
            self._mean = mean_image(self.dataset).to(device=like.device, dtype=like.dtype)
        return self._mean

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
                              keep_graph=True, toward=toward, linearize_at=self.linearize_at)
        rho = relative_norm(model, x, result.perturbation, self.rho_reference, self.mean_image(x))
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
