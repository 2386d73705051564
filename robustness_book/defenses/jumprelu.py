"""JumpReLU (Erichson, Yao & Mahoney, "JumpReLU: A Retrofit Defense Strategy for Adversarial Attacks",
ICPRAM 2020): swap every ReLU of a trained network for ``x if x > kappa else 0``, without retraining.

This module holds only the method: the activation, the retrofit, and two BPDA surrogates an attacker
needs to see through it. The paper's protocol and the adaptive evaluation live in the chapter module
(:mod:`robustness_book.chapters.jumprelu`).
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from .. import attacks


class JumpReLU(nn.Module):
    """``x if x > kappa else 0`` (official code: ``arr[arr <= k] = 0``, so ``kappa = 0`` is exactly ReLU).

    Autograd's gradient is ``1[x > kappa]``: the jump of height ``kappa`` at the threshold is invisible
    to gradients, which is why gradient attacks can under-rate the distance to the boundary.
    """

    def __init__(self, kappa: float = 0.0):
        super().__init__()
        if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 0):
            raise ValueError(f"kappa must be a finite number >= 0, got {kappa!r}")
        self.kappa = float(kappa)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # not in place (the official code is), so the input stays usable by autograd and BPDA
        return x * (x > self.kappa).to(x.dtype)

    def extra_repr(self) -> str:
        return f"kappa={self.kappa:g}"


def relu_count(model: nn.Module) -> int:
    """Number of ``nn.ReLU`` modules (the activations a retrofit replaces), in module order."""
    return sum(isinstance(m, nn.ReLU) for m in model.modules())


def retrofit(model: nn.Module, kappa: float | Sequence[float]) -> nn.Module:
    """A deep copy of ``model`` with every ``nn.ReLU`` (at any depth) replaced by :class:`JumpReLU`.

    ``kappa`` is one threshold for all layers, or one per ReLU in ``model.modules()`` order (a list of
    the wrong length raises ``ValueError``). ``model`` itself is left untouched; the copy is in eval mode
    on the same device.
    """
    n = relu_count(model)
    if n == 0:
        raise ValueError("model has no nn.ReLU modules to retrofit (activations must be modules, not F.relu)")
    kappas = [float(k) for k in kappa] if isinstance(kappa, (list, tuple)) else [float(kappa)] * n
    if len(kappas) != n:
        raise ValueError(f"kappa has {len(kappas)} values but the model has {n} ReLU modules")
    out = copy.deepcopy(model)
    it = iter(kappas)

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():  # named_children follows modules() order
            if isinstance(child, nn.ReLU):
                setattr(parent, name, JumpReLU(next(it)))
            else:
                swap(child)

    swap(out)
    return out.eval()


def bpda_relu(model: nn.Module) -> nn.Module:
    """BPDA copy of a retrofitted model: forward exactly JumpReLU, backward as plain ReLU
    (Athalye et al. 2018), so any attack of :mod:`robustness_book.attacks` sees through the jump."""
    return attacks.with_bpda(model, {JumpReLU: lambda m: nn.ReLU()})


# ---------------------------------------------------------------------------
# Surrogates for BPDA (Athalye et al. 2018): exact forward, a gradient that sees through the jump


class SmoothJump(nn.Module):
    """Differentiable stand-in for ``JumpReLU(kappa)``: ``x * sigmoid((x - kappa) / temperature)``.

    Unlike the ReLU surrogate it *sees* the jump: its slope near ``kappa`` carries the step of height
    ``kappa``, so a gradient attack following it is pulled toward the threshold the real network jumps at.
    """

    def __init__(self, kappa: float, temperature: float):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.kappa, self.temperature = float(kappa), float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid((x - self.kappa) / self.temperature)


def bpda_smooth(model: nn.Module, temperature: float) -> nn.Module:
    """BPDA copy whose backward pass is that of :class:`SmoothJump` (forward still exactly JumpReLU)."""
    return attacks.with_bpda(model, {JumpReLU: lambda m: SmoothJump(m.kappa, temperature)})
