"""Evaluation basics: predictions, clean and robust accuracy, minimum-norm statistics (``timed`` is
:func:`robustness_book.timing.timed`, re-exported).

Everything here works in batches on the model's device and returns plain
Python numbers or CPU tensors, ready for a results JSON.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..attacks import eval_mode, input_gradient
from ..timing import timed  # noqa: F401  (re-exported as evaluate.timed)
from ..runtime import progress_disabled
from .rho import pixel_rho


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels (CPU, int64) for images ``x`` (N, C, H, W) in [0, 1]; model in eval mode (each
    submodule's own training flag is restored afterwards, see :func:`robustness_book.attacks.eval_mode`)."""
    dev = model_device(model)
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` classified as ``y``."""
    return float((predict(model, x, batch_size) == y).float().mean())


def run_attack(attack: Callable, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               batch_size: int = 256, desc: str | None = None, **kwargs) -> torch.Tensor:
    """Apply ``attack(model, xb, yb, **kwargs)`` batch by batch; returns adversarial images on the CPU.

    Works with attacks returning a tensor or a result object with ``x_adv``.
    """
    dev = model_device(model)
    outs = []
    for i in tqdm(range(0, len(x), batch_size), desc=desc or getattr(attack, "__name__", "attack"),
                  disable=progress_disabled(), leave=False):
        out = attack(model, x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev), **kwargs)
        outs.append(getattr(out, "x_adv", out).detach().cpu())
    return torch.cat(outs)


def accuracy_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: Callable,
                   eps_grid: Sequence[float], batch_size: int = 256, seed: int = 0,
                   **kwargs) -> list[dict]:
    """Accuracy under ``attack`` at each eps of ``eps_grid`` (attacks that take a ``generator``
    get one seeded with ``seed`` per eps, so curves are reproducible)."""
    curve = []
    for eps in eps_grid:
        extra = dict(kwargs)
        if _takes_generator(attack):
            extra["generator"] = torch.Generator(model_device(model)).manual_seed(seed)
        x_adv = run_attack(attack, model, x, y, batch_size, desc=f"{attack.__name__} eps={eps:g}", eps=eps, **extra)
        curve.append({"eps": float(eps), "accuracy": accuracy(model, x_adv, y)})
    return curve


def _takes_generator(attack: Callable) -> bool:
    import inspect

    return "generator" in inspect.signature(attack).parameters


def min_norm_summary(x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, model: nn.Module,
                     p: float = 2) -> dict:
    """ρ_adv statistics over the samples the model classifies correctly.

    ρ_adv is the mean of ‖r‖_p/‖x‖_p (as DeepFool and Deep Defense define it);
    a sample the attack does not fool counts with ρ = ∞ in the median and is
    left out of the mean (``success_rate`` says how many).
    """
    correct = predict(model, x) == y
    fooled = predict(model, x_adv) != y
    rho = pixel_rho(x, x_adv, p)
    absolute = (x_adv - x).flatten(1).norm(p=p, dim=1)
    ok = correct & fooled
    rho_inf = torch.where(ok, rho, torch.full_like(rho, float("inf")))[correct]
    return {
        "p": "inf" if p == float("inf") else p,
        "n_correct": int(correct.sum()),
        "success_rate": float(ok.sum() / correct.sum().clamp(min=1)),
        "rho_mean": float(rho[ok].mean()) if ok.any() else float("nan"),
        "rho_median": float(rho_inf.median()) if correct.any() else float("nan"),
        "norm_median": float(torch.where(ok, absolute, torch.full_like(absolute, float("inf")))[correct].median())
        if correct.any() else float("nan"),
        "rho": rho[ok].tolist(),
    }


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "margin",
                   batch_size: int = 500) -> torch.Tensor:
    """Per-sample L2 norm (CPU, ``(N,)``) of the input gradient of ``loss`` (``attacks.LOSSES``) on ``model``.

    The default margin loss (largest other logit minus the true one) does not saturate like the
    cross-entropy, whose gradient underflows to zero on very confident images of an ordinary network, so a
    (near-)zero norm here means the network's own gradient is masked (e.g. a rounding or threshold layer).
    """
    dev = model_device(model)
    norms = []
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            g = input_gradient(model, x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev), loss=loss)
            norms.append(g.flatten(1).norm(dim=1).cpu())
    return torch.cat(norms) if norms else torch.zeros(0)
