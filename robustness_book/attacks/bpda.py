"""Backward Pass Differentiable Approximation (BPDA)."""
from __future__ import annotations

import copy
from typing import Callable, Dict, Type

import torch
from torch import nn


class BPDA(nn.Module):
    """BPDA wrapper (Athalye, Carlini & Wagner, "Obfuscated Gradients Give a False Sense of
    Security", ICML 2018).

    The forward value is exactly ``module(x)``; the backward pass is that of ``surrogate(x)``
    (a differentiable approximation of a non-differentiable / gradient-masking layer):
    ``s + (module(x) - s).detach()`` with ``s = surrogate(x)``. Works on any tensor shape.
    """

    def __init__(self, module: nn.Module, surrogate: nn.Module):
        super().__init__()
        self.module = module
        self.surrogate = surrogate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.surrogate(x)
        return s + (self.module(x) - s).detach()


def with_bpda(model: nn.Module,
              replacements: Dict[Type[nn.Module], Callable[[nn.Module], nn.Module]]) -> nn.Module:
    """Deep copy of ``model`` with every submodule whose type is a key of ``replacements`` wrapped
    as ``BPDA(original, replacements[type](original))``; ``model`` itself is untouched.

    Types are matched along the module's MRO (so subclasses match too, the most specific key
    wins). Matched modules are not searched further (the wrapper already replaces their whole
    gradient); if ``model`` itself matches, the wrapped copy is returned. Any attack then runs
    unchanged on the result, e.g. ``with_bpda(net, {JumpReLU: lambda m: nn.ReLU()})``.
    """
    def surrogate_for(m: nn.Module):
        for cls in type(m).__mro__:
            if cls in replacements:
                return replacements[cls]
        return None

    def wrap(m: nn.Module) -> nn.Module:
        make = surrogate_for(m)
        if make is not None:
            return BPDA(m, make(m))
        for name, child in list(m.named_children()):
            new = wrap(child)
            if new is not child:
                setattr(m, name, new)
        return m

    return wrap(copy.deepcopy(model))
