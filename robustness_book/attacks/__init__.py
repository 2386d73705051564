"""Adversarial attacks in functional style (like advertorch's and foolbox's functional APIs): one attack per
file (with its L∞ and L2 variants), each a function ``attack(model, x, y, ...)`` with its defaults in the signature.

All attacks take ``(N, C, H, W)`` inputs in ``[0, 1]`` and a model returning logits, run the
model in eval mode (restoring training flags afterwards), never leave ``.grad`` on parameters and
return detached tensors on ``x``'s device (except ``deepfool(..., keep_graph=True)``).
"""
from ._core import (LOSSES, MinNormResult, attack_loss, eval_mode, grad_or_zero, input_gradient, l2_norm, project_l2,
                    project_linf)
from .apgd import APGD_LOSSES, apgd, apgd_loss, apgd_targeted, dlr_loss
from .bpda import BPDA, with_bpda
from .ddn import ddn
from .deepfool import DeepFoolResult, deepfool
from .ensemble_pgd import COMBINES, ensemble_pgd
from .fgsm import fgsm
from .ifgsm import ifgsm
from .input_diversity import input_diversity
from .mi_fgsm import mi_fgsm
from .pgd import pgd_l2, pgd_linf
from .square import square_l2, square_linf

__all__ = [
    "APGD_LOSSES", "BPDA", "COMBINES", "DeepFoolResult", "LOSSES", "MinNormResult", "apgd", "apgd_loss",
    "apgd_targeted", "attack_loss", "ddn", "deepfool", "dlr_loss", "ensemble_pgd", "eval_mode", "fgsm", "ifgsm",
    "grad_or_zero", "input_diversity", "input_gradient", "l2_norm",
    "mi_fgsm", "pgd_l2", "pgd_linf", "project_l2", "project_linf", "square_l2", "square_linf", "with_bpda",
]
