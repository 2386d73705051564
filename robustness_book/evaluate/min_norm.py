"""The adaptive minimum-norm measurement: DDN through an attack model, judged on the model, with a
convergence check (the same attack with twice the steps must not move the median by more than 2%)."""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import attacks
from .core import model_device, predict, run_attack

__all__ = ["min_norm"]

MIN_NORM_NORMS = ("l2",)


def _summary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor, correct: torch.Tensor,
             batch_size: int) -> dict:
    fooled = predict(model, x_adv, batch_size) != y
    ok = correct & fooled
    dist = (x_adv - x).flatten(1).norm(dim=1)
    rho = dist / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    inf = torch.full_like(rho, math.inf)
    n_correct = int(correct.sum())
    return {
        "success_rate": float(ok.sum()) / n_correct if n_correct else float("nan"),
        "rho_median": float(torch.where(ok, rho, inf)[correct].median()) if n_correct else float("nan"),
        "rho_mean": float(rho[ok].mean()) if ok.any() else float("nan"),
        "norm_median": float(torch.where(ok, dist, inf)[correct].median()) if n_correct else float("nan"),
    }


def min_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack_model: nn.Module | None = None,
             steps: int = 100, norm: str = "l2", batch_size: int = 256, seed: int = 0,
             check_convergence: bool = True, **ddn_kwargs) -> dict:
    """Minimum adversarial L2 perturbation per image: DDN (``robustness_book.attacks.ddn``, box-constrained to
    [0, 1]) following the gradients of ``attack_model`` (default ``model``; e.g. a BPDA copy), each example
    judged on ``model``'s exact forward pass.

    ρ = ‖δ‖₂ / ‖x‖₂ in pixel space, over the images ``model`` classifies correctly: ``rho_median`` counts
    an image DDN did not fool as ρ = ∞ (so it is an upper bound on the median distance to the boundary),
    ``rho_mean`` averages the fooled ones only (``success_rate`` says how many). With ``check_convergence``
    the attack is rerun with ``2 * steps``; ``converged`` is True when both medians are finite and differ by
    less than 2% (``relative_change``). Extra keyword arguments go to ``ddn`` (e.g. ``init_epsilon``).

    Returns JSON-ready numbers: ``{"norm", "steps", "n", "n_correct", "success_rate", "rho_median",
    "rho_mean", "norm_median"}`` and, with the check, ``"steps_double", "rho_median_double",
    "rho_mean_double", "success_rate_double", "relative_change", "converged"``.
    """
    if norm not in MIN_NORM_NORMS:
        raise ValueError(f"unsupported norm {norm!r} for the minimum-norm attack (DDN); allowed: "
                         f"{', '.join(MIN_NORM_NORMS)}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    attack_model = attack_model if attack_model is not None else model
    x, y = x.detach().cpu(), y.detach().cpu()
    correct = predict(model, x, batch_size) == y

    def run(n_steps: int) -> dict:
        gen = torch.Generator(model_device(attack_model)).manual_seed(seed)
        adv = run_attack(attacks.ddn, attack_model, x, y, batch_size, desc=f"ddn {n_steps} steps", steps=n_steps,
                         generator=gen, **ddn_kwargs)
        if len(adv) and (adv.min() < 0 or adv.max() > 1):
            raise RuntimeError("DDN left the [0, 1] box")
        return _summary(model, x, y, adv, correct, batch_size)

    out = {"norm": norm, "steps": steps, "n": len(y), "n_correct": int(correct.sum()), **run(steps)}
    if check_convergence:
        double = run(2 * steps)
        m1, m2 = out["rho_median"], double["rho_median"]
        finite = math.isfinite(m1) and math.isfinite(m2) and m1 > 0
        change = abs(m2 - m1) / m1 if finite else float("nan")
        out.update({"steps_double": 2 * steps, "rho_median_double": m2, "rho_mean_double": double["rho_mean"],
                    "success_rate_double": double["success_rate"], "relative_change": change,
                    "converged": bool(finite and change < 0.02)})
    return out
