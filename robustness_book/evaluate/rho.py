"""The relative perturbation ρ = ‖δ‖/‖x‖ in the units each paper used.

The same perturbation gives different ρ depending on where ‖x‖ is measured, and papers differ in which images
they average over. Three conventions are used in this book:

* **pixels** (this book): ``‖δ‖_p / ‖x‖_p`` on [0, 1] images (:func:`pixel_rho`).
* **JumpReLU** (official ``advfuns.distance``): on *normalized* tensors ``(x − μ_c)/σ_c``; L2:
  ``‖δ/σ‖₂ / ‖(x − μ)/σ‖₂``, L∞: ``max|δ/σ| / max|(x − μ)/σ|``; the mean over **all** test images given
  (an image misclassified before the attack is never attacked and contributes 0, a DeepFool failure its
  partial δ) (:func:`normalized_rho`, :func:`jumprelu_rho`).
* **Deep Defense / DeepFool** (matconvnet; official ``test()``): ``‖δ‖₂ / ‖x − m‖₂`` with ``m`` the per-pixel
  mean image of the training set (:func:`robustness_book.data.mean_image`), DeepFool run from the *predicted* label
  on **all** test images (unclipped, 5 iterations), failures included in the mean (:func:`mean_image_rho`,
  :func:`deep_defense_rho`). On CIFAR-10 the matconvnet reference data were also contrast-normalized and
  ZCA-whitened; that space is not reproduced here, so CIFAR-10 numbers in these units are *not* comparable
  to the paper's.

Evaluate layer: imports the data and attacks layers only.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..attacks import eval_mode
from ..attacks.deepfool import deepfool
from ..data import dataset_info, mean_image

__all__ = ["RHO_SPACES", "deep_defense_rho", "jumprelu_rho", "mean_image_rho", "mean_interval",
           "mean_subtraction_factor", "normalized_rho", "pixel_rho", "relative_perturbation"]

#: Where ‖x‖ (and δ) are measured: [0, 1] pixels, JumpReLU's normalized tensors, matconvnet's mean-subtracted
#: images.
RHO_SPACES = ("pixels", "normalized", "mean_image")


def _check_p(p: float) -> float:
    if p not in (2, math.inf):
        raise ValueError(f"p={p!r} is invalid: expected 2 or float('inf')")
    return float(p)


def _ratio(delta: torch.Tensor, ref: torch.Tensor, p: float) -> torch.Tensor:
    d, r = delta.flatten(1), ref.flatten(1)
    if p == math.inf:
        return d.abs().amax(1) / r.abs().amax(1).clamp_min(1e-12)
    return d.norm(dim=1) / r.norm(dim=1).clamp_min(1e-12)


def _channel_stats(dataset: str, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    info = dataset_info(dataset)
    mu = torch.tensor(info.mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    sd = torch.tensor(info.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
    return mu, sd


def mean_interval(values: torch.Tensor, z: float = 1.96) -> list[float]:
    """Approximate 95% interval ``[lo, hi]`` of the mean of ``values`` (normal approximation, mean ± z·s/√n,
    ``s`` the sample standard deviation); ``[nan, nan]`` for fewer than two values. ρ is a mean over images,
    not a proportion, so this plays the role the Wilson interval plays for accuracies."""
    v = values.detach().double().flatten()
    if v.numel() < 2:
        return [float("nan"), float("nan")]
    half = z * float(v.std()) / math.sqrt(v.numel())
    m = float(v.mean())
    return [m - half, m + half]


def pixel_rho(x: torch.Tensor, x_adv: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Per image ``‖x_adv − x‖_p / ‖x‖_p`` on [0, 1] pixels, shape ``(N,)``."""
    return _ratio(x_adv - x, x, _check_p(p))


def normalized_rho(x: torch.Tensor, x_adv: torch.Tensor, dataset: str, p: float = 2) -> torch.Tensor:
    """Per image ρ on JumpReLU's normalized tensors, shape ``(N,)``: L2 ``‖δ/σ‖₂ / ‖(x − μ)/σ‖₂``, L∞
    ``max|δ/σ| / max|(x − μ)/σ|`` (the official ``norm=1`` branch of ``advfuns.distance`` is this L∞ one)."""
    mu, sd = _channel_stats(dataset, x)
    return _ratio((x_adv - x) / sd, (x - mu) / sd, _check_p(p))


def mean_image_rho(x: torch.Tensor, x_adv: torch.Tensor, dataset: str | None = None, *,
                   mean: torch.Tensor | None = None) -> torch.Tensor:
    """Per image ``‖δ‖₂ / ‖x − m‖₂``, shape ``(N,)``, with ``m`` the per-pixel training mean image of
    ``dataset`` (or the ``mean`` given, ``(C, H, W)``): matconvnet's mean-subtracted input, Deep Defense's
    and DeepFool's reference (the scale of the data cancels, so [0, 1] or 0-255 images give the same ρ)."""
    if mean is None:
        if dataset is None:
            raise ValueError("mean_image_rho needs a dataset name or a mean image")
        mean = mean_image(dataset)
    mean = mean.to(device=x.device, dtype=x.dtype)
    return _ratio(x_adv - x, x - mean, 2.0)


def relative_perturbation(x: torch.Tensor, x_adv: torch.Tensor, space: str, dataset: str | None = None,
                          p: float = 2) -> torch.Tensor:
    """Per image ρ in ``space`` (one of :data:`RHO_SPACES`); ``"mean_image"`` is L2 only."""
    if space not in RHO_SPACES:
        raise ValueError(f"space={space!r} is invalid: expected one of {', '.join(RHO_SPACES)}")
    if space == "pixels":
        return pixel_rho(x, x_adv, p)
    if dataset is None:
        raise ValueError(f"space={space!r} needs the dataset name")
    if space == "normalized":
        return normalized_rho(x, x_adv, dataset, p)
    if _check_p(p) != 2:
        raise ValueError("space='mean_image' is defined for p=2 only (Deep Defense's ρ)")
    return mean_image_rho(x, x_adv, dataset)


def jumprelu_rho(x: torch.Tensor, x_adv: torch.Tensor, dataset: str, p: float = 2) -> dict:
    """JumpReLU's "relative noise" as the official code averages it.

    ``x``/``x_adv`` must hold **all** the test images evaluated, with ``x_adv = x`` where the attack left
    an image alone (images misclassified before the attack: the official IFGSM and DeepFool only attack
    images still classified correctly, and :func:`robustness_book.attacks.deepfool` with the true labels
    returns a zero perturbation for them), and the partial perturbation where the attack failed.

    Returns ``{"mean": float (the official number), "interval": its approximate 95% interval
    (:func:`mean_interval`), "max": float (the official "large" value), "per_image": (N,) CPU tensor, "n": N,
    "p": 2 or "inf"}``.
    """
    rho = normalized_rho(x, x_adv, dataset, p).detach().cpu()
    return {"mean": float(rho.mean()) if len(rho) else float("nan"), "interval": mean_interval(rho),
            "max": float(rho.max()) if len(rho) else float("nan"),
            "per_image": rho, "n": len(rho), "p": "inf" if p == math.inf else 2}


def mean_subtraction_factor(x: torch.Tensor, dataset: str | None = None, reference: str = "mean_image", *,
                            mean: torch.Tensor | None = None) -> float:
    """Mean over images of ``‖x‖ / ‖x − m‖``: how much larger ρ is on mean-subtracted inputs than on [0, 1]
    pixels, for the same perturbation. ``reference="mean_image"``: ``m`` the per-pixel training mean (or the
    ``mean`` given); ``"channel_mean"``: ``m`` the per-channel mean μ_c of :func:`robustness_book.data.dataset_info`.
    On the MNIST test set: 1.285 and 1.077."""
    if reference == "mean_image":
        m = mean if mean is not None else mean_image(dataset) if dataset is not None else None
        if m is None:
            raise ValueError("reference='mean_image' needs a dataset name or a mean image")
        m = m.to(device=x.device, dtype=x.dtype)
    elif reference == "channel_mean":
        if dataset is None:
            raise ValueError("reference='channel_mean' needs the dataset name")
        m = _channel_stats(dataset, x)[0]
    else:
        raise ValueError(f"reference={reference!r} is invalid: expected one of mean_image, channel_mean")
    return float(_ratio(x, x - m, 2.0).mean())


def deep_defense_rho(model: nn.Module, x: torch.Tensor, dataset: str | None = None, y: torch.Tensor | None = None,
                     *, max_iter: int = 5, overshoot: float = 0.02, clip: bool = False,
                     linearize_at: str = "sum", batch_size: int = 500,
                     mean: torch.Tensor | None = None) -> dict:
    """ρ_adv as Deep Defense's official ``test()`` measures it.

    DeepFool-L2 (``max_iter`` iterations, overshoot 0.02, all classes, linearized at ``x + Σr`` and tested at
    ``x + 1.02·Σr`` as in that code) from the model's **predicted** label, on **every** image of ``x``;
    ``ρ = ‖δ‖₂ / ‖x − m‖₂`` (``m``: the per-pixel training mean image of ``dataset``, or ``mean``) averaged
    over all images, failures included with their partial δ. ``clip=False`` is the official, unconstrained
    DeepFool; ``clip=True`` keeps every iterate in [0, 1] (the box of DDN and PGD).

    Returns ``{"rho": float (the paper's number), "interval": its approximate 95% interval
    (:func:`mean_interval`), "rho_pixels": float (same average, [0, 1] pixels),
    "success": float (fraction of images DeepFool moved off their predicted label), "n": N,
    "per_image", "per_image_pixels": (N,) CPU tensors, "fooled": (N,) bool CPU tensor,
    "settings": dict}`` and, when ``y`` is given, ``"clean"``: the accuracy on ``x`` (as ``test()`` reports).
    """
    if len(x) == 0:
        raise ValueError("deep_defense_rho needs at least one image")
    if mean is None:
        if dataset is None:
            raise ValueError("deep_defense_rho needs a dataset name or a mean image")
        mean = mean_image(dataset)
    dev = next(model.parameters()).device
    rho, rho_px, fooled, correct = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        res = deepfool(model, xb, None, norm=2, overshoot=overshoot, max_iter=max_iter, clip=clip,
                       linearize_at=linearize_at)
        adv = xb + res.perturbation
        rho.append(mean_image_rho(xb, adv, mean=mean).cpu())
        rho_px.append(pixel_rho(xb, adv).cpu())
        fooled.append(res.fooled.cpu())
        if y is not None:
            with torch.no_grad(), eval_mode(model):
                correct.append((model(xb).argmax(1).cpu() == y[i:i + batch_size].cpu()))
    rho, rho_px, fooled = torch.cat(rho), torch.cat(rho_px), torch.cat(fooled)
    out = {"rho": float(rho.mean()), "interval": mean_interval(rho), "rho_pixels": float(rho_px.mean()), "success": float(fooled.float().mean()),
           "n": len(rho), "per_image": rho, "per_image_pixels": rho_px, "fooled": fooled,
           "settings": {"max_iter": max_iter, "overshoot": overshoot, "clip": clip, "linearize_at": linearize_at,
                        "from": "predicted label", "averaged_over": "all images, failures included"}}
    if y is not None:
        out["clean"] = float(torch.cat(correct).float().mean())
    return out
