"""Defenses: each is a model transform (JumpReLU's retrofit, fragile neurons' channel rescaling) or a training loss
for :mod:`robustness_book.train` (adversarial training, Deep Defense, entropic retraining, superimposition)."""
from .adversarial_training import AdversarialLoss
from .deep_defense import DeepDefenseLoss, relative_norm
from .entropic import EntropicLoss, entropy_layers, layer_entropies
from . import fragile_neurons
from .jumprelu import JumpReLU, bpda_relu, retrofit
from .superimposition import SuperimpositionLoss

__all__ = ["AdversarialLoss", "DeepDefenseLoss", "EntropicLoss", "JumpReLU", "SuperimpositionLoss", "bpda_relu",
           "entropy_layers", "fragile_neurons", "layer_entropies", "relative_norm", "retrofit"]
