"""Defenses: each is a model transform (JumpReLU's retrofit) or a training loss for :mod:`robustness.train`."""
from .adversarial_training import AdversarialLoss
from .deep_defense import DeepDefenseLoss, relative_norm
from .jumprelu import JumpReLU, bpda_relu, retrofit

__all__ = ["AdversarialLoss", "DeepDefenseLoss", "JumpReLU", "bpda_relu", "relative_norm", "retrofit"]
