"""The "robust" training of JumpReLU's official code, as a loss for the one training loop."""
from __future__ import annotations

import torch
from torch import nn

from ..attacks import fgsm


class FGSMMix:
    """Cross-entropy on a batch whose first ``round(ratio * B)`` images are replaced by FGSM(``eps``)
    examples crafted with the model's current weights (JumpReLU's ``adv_ratio`` training).

    ``eps`` is in [0, 1] pixel units. FGSM runs the model in eval mode (dropout off) while crafting
    and restores train mode before the loss, a small departure from the official code, which
    crafted in train mode.
    """

    def __init__(self, ratio: float, eps: float):
        if not 0 <= ratio <= 1:
            raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
        if not 0 <= eps <= 1:
            raise ValueError(f"eps must be in [0, 1] (pixel units), got {eps!r}")
        self.ratio, self.eps = float(ratio), float(eps)
        self.spec = {"name": "fgsm_mix", "ratio": self.ratio, "eps": self.eps}

    def mix(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch the loss sees: adversarial head, clean tail."""
        k = round(self.ratio * len(x))
        if k == 0:
            return x
        return torch.cat([fgsm(model, x[:k], y[:k], eps=self.eps), x[k:]])

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(model(self.mix(model, x, y)), y)
