"""Defenses: each is a model transform (JumpReLU's retrofit) or a training loss for :mod:`robustness.train`."""
from .adversarial_training import AdversarialLoss
from .deep_defense import DeepDefenseLoss, DeepFoolRho, deepfool_rho, relative_norm
from .fgsm_mix import FGSMMix
from .jumprelu import JumpReLU, bpda_relu, retrofit

__all__ = ["AdversarialLoss", "DeepDefenseLoss", "DeepFoolRho", "deepfool_rho", "relative_norm", "FGSMMix", "JumpReLU", "bpda_relu", "retrofit"]
