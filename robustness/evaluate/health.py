"""The evaluation-health table of Carlini et al. (2019), "On evaluating adversarial robustness"."""
from __future__ import annotations

import torch
from torch import nn

from ..attacks import fgsm, pgd_linf
from .core import _takes_generator, accuracy, model_device, predict, run_attack, zero_gradient_fraction


def health_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                  num_classes: int, large_eps: float = 0.5, transfer_x_adv: torch.Tensor | None = None,
                  batch_size: int = 256, seed: int = 0, attack_model: nn.Module | None = None) -> list[dict]:
    """The evaluation-health table of Carlini et al. (2019, "On evaluating adversarial robustness").

    Each row: ``check``, ``measured``, ``expected`` and ``passed``. PGD-L∞ at
    ``eps`` with ``steps`` steps is the reference attack. ``attack_model``
    (default ``model``) is the model whose gradients the attacks follow, e.g.
    a BPDA copy: it must compute the same function as ``model`` (only its
    backward may differ), because PGD stops on an image once ``attack_model``
    misclassifies it (early stop: the same accuracy for less compute).
    ``transfer_x_adv``, if given, are examples crafted on another model for the same ``x``.
    """
    attack_model = attack_model or model
    if attack_model is not model and not torch.equal(predict(attack_model, x[:batch_size]), predict(model, x[:batch_size])):
        raise ValueError("attack_model must compute the same function as model (only its gradients may differ)")

    def acc_under(attack, e, **kw):
        if _takes_generator(attack):
            kw["generator"] = torch.Generator(model_device(attack_model)).manual_seed(seed)
        if attack is pgd_linf:
            kw["early_stop"] = True
        return accuracy(model, run_attack(attack, attack_model, x, y, batch_size, eps=e, **kw), y)

    clean = accuracy(model, x, y)
    at_zero = acc_under(pgd_linf, 0.0, steps=steps)
    grid = [eps / 4, eps / 2, eps, min(1.0, 2 * eps)]
    curve = [acc_under(pgd_linf, e, steps=steps) for e in grid]
    at_large = acc_under(pgd_linf, large_eps, steps=steps)
    pgd_acc = curve[2]
    fgsm_acc = acc_under(fgsm, eps)
    pgd_double = acc_under(pgd_linf, eps, steps=2 * steps)
    chance = 1.0 / num_classes
    rows = [
        ("eps = 0 gives clean accuracy", f"{at_zero:.1%} vs clean {clean:.1%}", "equal", abs(at_zero - clean) < 1e-9),
        ("accuracy never rises with eps",
         " → ".join(f"{a:.1%}" for a in [clean, *curve]) + f" at eps {', '.join(f'{e:.3g}' for e in grid)}",
         "non-increasing", all(b <= a for a, b in zip([clean, *curve], curve))),
        (f"near chance at eps = {large_eps:g}", f"{at_large:.1%}", f"≤ chance + 10 points ({chance + 0.1:.0%})",
         at_large <= chance + 0.1),
        (f"PGD-{steps} no better for the model than FGSM", f"PGD {pgd_acc:.1%}, FGSM {fgsm_acc:.1%}",
         "PGD ≤ FGSM", pgd_acc <= fgsm_acc),
        (f"doubling PGD steps ({steps} → {2 * steps}) moves accuracy ≤ 1 point",
         f"{pgd_acc:.1%} → {pgd_double:.1%}", "|Δ| ≤ 1 point", abs(pgd_double - pgd_acc) <= 0.01),
    ]
    if transfer_x_adv is not None:
        transfer = accuracy(model, transfer_x_adv, y)
        rows.append(("transfer no stronger than white-box", f"transfer {transfer:.1%}, white-box {pgd_acc:.1%}",
                     "transfer ≥ white-box", transfer >= pgd_acc))
    zero = zero_gradient_fraction(attack_model, x, y)
    rows.append(("input gradients non-zero", f"{zero:.1%} of samples have an all-zero gradient", "< 1%", zero < 0.01))
    return [{"check": c, "measured": m, "expected": e, "passed": bool(p)} for c, m, e, p in rows]
