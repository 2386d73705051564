"""The evaluation-health table of Carlini et al. (2019), "On evaluating adversarial robustness".

Every check is a measurement that can fail: an ordinary network passes them all, a network with masked
gradients, a broken attack or a near-constant classifier fails at least one (``tests/test_health.py``
shows each check passing and failing).
"""
from __future__ import annotations

import inspect
import math
from typing import Callable

import torch
from torch import nn

from .. import attacks
from .core import gradient_norms, model_device, predict, run_attack
from .members import check_norm

__all__ = ["health_checks"]

#: gradient norms below this count as vanished (float32 gradients of a working network are far larger)
VANISHED = 1e-10


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _row(id_: str, check: str, measured: str, expected: str, passed: bool) -> dict:
    return {"id": id_, "check": check, "measured": measured, "expected": expected, "passed": bool(passed)}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def health_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int,
                  num_classes: int, norm: str = "linf", attack: Callable | None = None,
                  attack_model: nn.Module | None = None, transfer_x_adv: torch.Tensor | None = None,
                  transfer_from: nn.Module | None = None, worst: dict | None = None, large_eps: float | None = None, max_class_share: float = 0.5,
                  batch_size: int = 256, seed: int = 0) -> list[dict]:
    """The evaluation-health table of Carlini et al. (2019, "On evaluating adversarial robustness").

    Rows ``{"id", "check", "measured", "expected", "passed"}``. The reference attack is ``attack``
    (default: the toolkit's PGD in ``norm``, ``"linf"`` or ``"l2"``), called as
    ``attack(net, x, y, eps=..., steps=..., generator=..., early_stop=True)`` (only the keywords it accepts)
    with ``steps`` steps, on ``attack_model`` (default ``model``): e.g. a BPDA copy, which must compute the
    same function as ``model`` (only its backward may differ). Accuracy is always judged on ``model``.

    Checks (a row fails when the measurement is outside ``expected``):

    - ``eps_zero``: the attack at eps = 0 (it runs through the attack code) gives the clean accuracy;
    - ``monotone``: accuracy never rises along eps = 0, eps/4, eps/2, eps, 2·eps, ``large_eps``;
    - ``chance``: at ``large_eps`` accuracy is at most chance + 10 points. ``large_eps`` defaults to 0.5 in
      L∞ and 0.5·sqrt(pixels) in L2: both balls contain the all-gray image, so every image can be sent there;
    - ``single_step``: the iterative attack leaves no higher accuracy than FGSM at eps (L2: one PGD-L2 step
      of length eps from the clean image);
    - ``step_doubling``: at the radius of the curve where accuracy is nearest 50% (not where it is already
      0), doubling the steps moves accuracy by at most max(1 point, 2 images);
    - ``gradients``: on the *exact* ``model`` (not the BPDA copy), under 1% of the images have an input
      gradient of the margin loss with L2 norm below 1e-10 (the share and the median norm are reported);
    - ``near_constant``: the classifier is not near-constant: clean accuracy above chance + 10 points and
      no class taking ``max_class_share`` (default 50%, meant for class-balanced data) of the predictions;
    - ``gradient_free`` (when ``worst``, a :func:`worst_case` result or its record, is given): the Square
      members that ran after a gradient member fooled at most max(1 point, 2 images) more;
    - ``transfer`` (when ``transfer_x_adv``, examples crafted on another model for the same ``x``, is
      given, or ``transfer_from``, that other model: its examples are then crafted here with the toolkit's PGD
      in ``norm`` at ``eps``, ``steps`` steps at full strength (no early stop), seeded by ``seed``): transfer
      accuracy is no lower than white-box accuracy at eps.
    """
    check_norm(norm)
    if not (eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes!r}")
    x, y = x.detach().cpu(), y.detach().cpu()
    n = len(y)
    attack_model = attack_model if attack_model is not None else model
    if attack_model is not model and not torch.equal(predict(attack_model, x[:batch_size]),
                                                     predict(model, x[:batch_size])):
        raise ValueError("attack_model must compute the same function as model (only its gradients may differ)")
    default = attack is None
    attack = attack or (attacks.pgd_linf if norm == "linf" else attacks.pgd_l2)
    name = f"PGD-{'L∞' if norm == 'linf' else 'L2'}" if default else getattr(attack, "__name__", "attack")
    if large_eps is None:
        large_eps = 0.5 if norm == "linf" else 0.5 * math.sqrt(x[0].numel())
    dev = model_device(attack_model)

    def acc_under(e: float, n_steps: int) -> float:
        kw = {"eps": e, "steps": n_steps, "generator": torch.Generator(dev).manual_seed(seed), "early_stop": True}
        kw = {k: v for k, v in kw.items() if _accepts(attack, k)}
        return acc(run_attack(attack, attack_model, x, y, batch_size, desc=f"health {name} eps={e:g}", **kw))

    def acc(x_adv: torch.Tensor) -> float:  # exact k / n, so comparisons of equal counts are exact
        return int((predict(model, x_adv, batch_size) == y).sum()) / max(n, 1)

    pred = predict(model, x, batch_size)
    clean = acc(x)
    chance = 1.0 / num_classes
    grid = sorted({0.0, eps / 4, eps / 2, float(eps), min(1.0, 2 * eps) if norm == "linf" else 2.0 * eps,
                   float(large_eps)})
    curve = {e: acc_under(e, steps) for e in grid}
    at_eps, at_large = curve[float(eps)], curve[float(large_eps)]
    if norm == "linf":
        single_name = "FGSM"
        single = acc(run_attack(attacks.fgsm, attack_model, x, y, batch_size, desc="health FGSM", eps=eps))
    else:
        single_name = "one PGD-L2 step of length eps"
        single = acc(run_attack(attacks.pgd_l2, attack_model, x, y, batch_size, desc="health 1-step L2", eps=eps,
                                steps=1, step_size=eps, random_start=False, early_stop=False))
    # the radius where accuracy is nearest 50%: there more steps can still change the answer
    e_mid = min((e for e in grid if e > 0), key=lambda e: (abs(curve[e] - 0.5), e))
    doubled = acc_under(e_mid, 2 * steps)
    tol = max(0.01, 2 / max(n, 1))
    norms = gradient_norms(model, x, y, loss="margin", batch_size=batch_size)
    vanished = float((norms < VANISHED).float().mean()) if n else 0.0
    counts = torch.bincount(pred, minlength=num_classes)
    top = int(counts.argmax())
    top_share = float(counts[top]) / max(n, 1)
    points = [curve[e] for e in grid]

    rows = [
        _row("eps_zero", "eps = 0 gives clean accuracy", f"{_pct(curve[0.0])} vs clean {_pct(clean)}",
             "equal", abs(curve[0.0] - clean) < 1e-9),
        _row("monotone", "accuracy never rises with eps",
             " → ".join(_pct(a) for a in points) + f" at eps {', '.join(f'{e:.3g}' for e in grid)}",
             "non-increasing", all(b <= a for a, b in zip(points, points[1:]))),
        _row("chance", f"near chance at eps = {large_eps:g}", _pct(at_large),
             f"≤ chance + 10 points ({_pct(chance + 0.1)})", at_large <= chance + 0.1),
        _row("single_step", f"{name} ({steps} steps) no better for the model than {single_name}",
             f"{name} {_pct(at_eps)}, {single_name} {_pct(single)} at eps {eps:g}",
             f"{name} ≤ {single_name}", at_eps <= single),
        _row("step_doubling", f"doubling the steps ({steps} → {2 * steps}) barely moves accuracy",
             f"{_pct(curve[e_mid])} → {_pct(doubled)} at eps {e_mid:.3g} (accuracy nearest 50%)",
             f"change ≤ {_pct(tol)} (max of 1 point, 2 images)", abs(doubled - curve[e_mid]) <= tol + 1e-12),
        _row("gradients", "input gradients non-zero",
             f"{_pct(vanished)} of images with ‖∇ margin‖₂ < {VANISHED:g} on the exact model; median norm "
             f"{float(norms.median()) if n else float('nan'):.3g}", "< 1% of images", vanished < 0.01),
        _row("near_constant", "classifier is not near-constant",
             f"clean {_pct(clean)}; most frequent prediction (class {top}) {_pct(top_share)} of images",
             f"clean > chance + 10 points ({_pct(chance + 0.1)}) and no class ≥ {_pct(max_class_share)}",
             clean > chance + 0.1 and top_share < max_class_share),
    ]
    if worst is not None:
        rows.append(_gradient_free_row(worst))
    if transfer_from is not None:
        if transfer_x_adv is not None:
            raise ValueError("give transfer_x_adv or transfer_from, not both")
        pgd = attacks.pgd_linf if norm == "linf" else attacks.pgd_l2
        transfer_x_adv = run_attack(pgd, transfer_from, x, y, batch_size, desc="health transfer", eps=eps,
                                    steps=steps, early_stop=False,
                                    generator=torch.Generator(model_device(transfer_from)).manual_seed(seed))
    if transfer_x_adv is not None:
        if transfer_x_adv.shape != x.shape:
            raise ValueError(f"transfer_x_adv has shape {tuple(transfer_x_adv.shape)}, x has {tuple(x.shape)}")
        transfer = acc(transfer_x_adv.detach().cpu())
        rows.append(_row("transfer", "transfer no stronger than white-box",
                         f"transfer {_pct(transfer)}, white-box {name} {_pct(at_eps)}", "transfer ≥ white-box",
                         transfer >= at_eps))
    return rows


def _gradient_free_row(worst: dict) -> dict:
    names, kinds, added, n = worst["members"], worst["kinds"], worst["added"], int(worst["n"])
    first_gradient = next((i for i, m in enumerate(names) if kinds[m] != "square"), None)
    late = [m for i, m in enumerate(names) if kinds[m] == "square" and first_gradient is not None
            and i > first_gradient]
    if not late:
        raise ValueError("the gradient-free check needs a worst case in which a Square member runs after a "
                         f"gradient member; its members are {names}")
    extra = sum(int(added[m]) for m in late)
    tol = max(0.01 * n, 2)
    return _row("gradient_free", "gradient-free attack finds nothing the gradient attacks missed",
                f"{' + '.join(late)} fooled {extra} more of {n} images ({_pct(extra / max(n, 1))}) at eps "
                f"{float(worst['eps']):g}", f"≤ max(1 point, 2 images) = {tol:g} images", extra <= tol)
