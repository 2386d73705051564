"""JumpReLU (Erichson, Yao & Mahoney, "JumpReLU: A Retrofit Defense Strategy for Adversarial Attacks",
ICPRAM 2020): swap every ReLU of a trained network for ``x if x > kappa else 0``, without retraining.

This module holds the activation, the retrofit, its BPDA surrogate, and the measurements of the
chapter: a sweep over kappa in the paper's gray-box and white-box settings, the validation rule that
picks kappa, and the adaptive (BPDA) evaluation.
"""
from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from .. import attacks, evaluate


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
    (Athalye et al. 2018), so any attack of :mod:`robustness.attacks` sees through the jump."""
    return attacks.with_bpda(model, {JumpReLU: lambda m: nn.ReLU()})


# ---------------------------------------------------------------------------
# The paper's protocol: a sweep over kappa in the gray-box and white-box settings


def _deepfool_stats(model, x, y, x_adv) -> dict:
    out = {}
    for p, key in ((2, "l2"), (math.inf, "linf")):
        s = evaluate.min_norm_summary(x, x_adv[key], y, model, p=p)
        out[f"deepfool_{key}_acc"] = evaluate.accuracy(model, x_adv[key], y)
        out[f"deepfool_{key}_rho"] = s["rho_mean"]
        out[f"deepfool_{key}_success"] = s["success_rate"]
    return out


def _deepfool_both(model, x, y, *, max_iter, num_classes, batch_size) -> dict:
    return {key: evaluate.run_attack(attacks.deepfool, model, x, y, batch_size, desc=f"deepfool {key}", norm=p,
                                     max_iter=max_iter, num_classes=num_classes)
            for p, key in ((2, "l2"), (math.inf, "linf"))}


def kappa_sweep(model: nn.Module, kappas: Sequence[float], x: torch.Tensor, y: torch.Tensor, *,
                ifgsm_step: float, ifgsm_steps: int, deepfool_iter: int = 0, deepfool_classes: int = 10,
                n_deepfool: int | None = None, x_clean: torch.Tensor | None = None,
                y_clean: torch.Tensor | None = None, batch_size: int = 256) -> dict:
    """The paper's measurements for each kappa, on the retrofitted copies of ``model``.

    Per kappa (keys ``f"{kappa:g}"``): ``clean`` accuracy (on ``x_clean``/``y_clean`` when given, else on
    ``x``), and for ``white_box`` (attacks crafted on the retrofitted model, with autograd's gradient, as
    the paper) and ``gray_box`` (crafted once on the kappa = 0 model, evaluated on the retrofitted one):
    IFGSM accuracy and, when ``deepfool_iter > 0``, DeepFool L2 / L∞ accuracy, mean relative perturbation
    ``rho`` over the correctly classified images it fools, and success rate, on the first ``n_deepfool``
    images of ``x`` (all when ``None``).
    """
    x_clean, y_clean = (x, y) if x_clean is None else (x_clean, y_clean)
    ifgsm_kw = dict(step=ifgsm_step, steps=ifgsm_steps)
    df_kw = dict(max_iter=deepfool_iter, num_classes=deepfool_classes, batch_size=batch_size)
    gray_ifgsm = evaluate.run_attack(attacks.ifgsm, model, x, y, batch_size, desc="ifgsm (kappa=0)", **ifgsm_kw)
    xd, yd = (x, y) if n_deepfool is None else (x[:n_deepfool], y[:n_deepfool])
    gray_df = _deepfool_both(model, xd, yd, **df_kw) if deepfool_iter > 0 else None
    out = {}
    for kappa in kappas:
        net = retrofit(model, kappa)
        row = {"clean": evaluate.accuracy(net, x_clean, y_clean), "clean_attack_subset": evaluate.accuracy(net, x, y)}
        white_ifgsm = (gray_ifgsm if kappa == 0 else
                       evaluate.run_attack(attacks.ifgsm, net, x, y, batch_size, desc=f"ifgsm kappa={kappa:g}",
                                           **ifgsm_kw))
        row["white_box"] = {"ifgsm_acc": evaluate.accuracy(net, white_ifgsm, y)}
        row["gray_box"] = {"ifgsm_acc": evaluate.accuracy(net, gray_ifgsm, y)}
        if deepfool_iter > 0:
            white_df = gray_df if kappa == 0 else _deepfool_both(net, xd, yd, **df_kw)
            row["white_box"].update(_deepfool_stats(net, xd, yd, white_df))
            # gray box: the perturbation is the kappa = 0 one; whether it still fools the retrofit is the question
            row["gray_box"].update(_deepfool_stats(net, xd, yd, gray_df))
        out[f"{kappa:g}"] = row
    return out


def choose_kappa(sweep: dict, budget: float) -> dict:
    """The validation rule: among the kappas whose clean accuracy is at most ``budget`` (a fraction)
    below kappa = 0's, the one with the highest white-box IFGSM accuracy (ties: the smaller kappa).

    ``sweep`` is a :func:`kappa_sweep` result on validation data and must contain kappa = 0.
    Returns ``{"kappa", "clean_drop", "ifgsm_acc", "admissible"}``.
    """
    if "0" not in sweep:
        raise ValueError("the kappa grid must contain 0 (the unmodified model is the reference)")
    base = sweep["0"]["clean"]
    admissible = sorted((float(k) for k, r in sweep.items() if base - r["clean"] <= budget + 1e-12))
    best = max(admissible, key=lambda k: (sweep[f"{k:g}"]["white_box"]["ifgsm_acc"], -k))
    row = sweep[f"{best:g}"]
    return {"kappa": best, "clean_drop": base - row["clean"], "ifgsm_acc": row["white_box"]["ifgsm_acc"],
            "admissible": admissible, "budget": budget}


# ---------------------------------------------------------------------------
# Beyond the paper: an adaptive ensemble, worst case per image


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


#: The ensemble's members, in the order they run; each image counts as robust only if it survives all.
ADAPTIVE_ATTACKS = ("transfer", "pgd_bpda", "pgd_white", "pgd_smooth")


def adaptive_sweep(model: nn.Module, kappas: Sequence[float], x: torch.Tensor, y: torch.Tensor,
                   eps_list: Sequence[float], *, steps: int, restarts: int, smooth_temperature: float = 0.0,
                   ddn_steps: int = 0, batch_size: int = 256, seed: int = 0) -> dict:
    """Worst case per image over an ensemble of L∞ attacks on each ``kappa``-retrofit of ``model``.

    Members (accuracy is always measured on the exact retrofitted network):

    - ``transfer``: PGD examples crafted on the kappa = 0 network (``steps`` steps, ``restarts``
      restarts), i.e. the gray-box setting with a strong attack;
    - ``pgd_bpda``: PGD through the BPDA copy (forward JumpReLU, backward ReLU), ``restarts`` restarts;
    - ``pgd_white``: PGD with autograd's own gradient of the JumpReLU network (what the paper's
      white-box attacks follow), one restart;
    - ``pgd_smooth``: PGD through a BPDA copy whose backward is :class:`SmoothJump` (skipped when
      ``smooth_temperature`` is 0), one restart.

    Three savings keep this affordable and leave the worst case unchanged: (1) on a retrofit (kappa > 0),
    an image already misclassified, or fooled at a smaller eps of ``eps_list`` (the smaller ball lies inside
    the larger, so that example is also valid here), is not attacked again; (2) ``pgd_white`` and ``pgd_smooth`` only
    attack images that survived ``transfer`` and ``pgd_bpda``; (3) the direct members stop attacking an
    image once it is fooled (``pgd_linf(early_stop=True)``). Hence per eps we report the *standalone*
    accuracy of ``transfer`` and ``pgd_bpda`` (each still counting images fooled at smaller eps by that
    same attack as fooled, so each column is itself an attack run at every radius up to eps; the transfer
    examples themselves are crafted afresh at every eps) and, for the
    two others, how many more images they fool beyond the first two. At kappa = 0 BPDA's backward is
    exact, so ``pgd_white`` and ``transfer`` would repeat ``pgd_bpda`` and are not run.

    Returns ``{f"{kappa:g}": {"clean", "n", "eps": {f"{eps:g}": {"worst_case", "transfer", "pgd_bpda",
    "extra_fooled": {"pgd_white", "pgd_smooth"}, "fooled_only_by": {member: count}}}, "ddn_bpda"?}}``.
    """
    dev = evaluate.model_device(model)
    eps_sorted = sorted(float(e) for e in eps_list)
    n = len(y)

    def craft(net, idx, eps, k_restarts, early_stop=True):
        # restarts per image: a restart only re-attacks the images no earlier restart fooled (pgd_linf's own
        # restarts re-run whole batches); per image the first fooling example is kept, else the first run's.
        # ``net``'s forward is the exact retrofit (BPDA changes only the backward), so it judges "fooled",
        # and an image is attacked only until it is fooled (early stop), except for the transfer source,
        # whose examples must stay strong beyond the kappa = 0 boundary.
        adv = x[idx].clone()
        todo = torch.arange(idx.numel())
        for r in range(k_restarts):
            if todo.numel() == 0:
                break
            a = evaluate.run_attack(attacks.pgd_linf, net, x[idx[todo]], y[idx[todo]], batch_size, eps=eps,
                                    steps=steps, generator=torch.Generator(dev).manual_seed(seed + r),
                                    early_stop=early_stop)
            fooled = evaluate.predict(net, a).to(y.device) != y[idx[todo]]
            if r == 0:
                adv[todo] = a
            else:
                adv[todo[fooled]] = a[fooled]
            todo = todo[~fooled]
        return adv

    def correct_on(net, x_adv, idx):
        return evaluate.predict(net, x_adv).to(y.device) == y[idx] if idx.numel() else torch.zeros(0, dtype=torch.bool)

    kappa_list = sorted({0.0, *(float(k) for k in kappas)})
    nets = {k: retrofit(model, k) for k in kappa_list}
    clean = {k: evaluate.predict(net, x).to(y.device) == y for k, net in nets.items()}
    # transfer examples are needed for every image some retrofit still classifies correctly
    need_transfer = torch.stack(list(clean.values())).any(0)
    transfer_adv = {}  # eps -> kappa = 0 PGD examples (the clean image where none was needed)
    out = {}
    for kappa in kappa_list:
        net = nets[kappa]
        surrogate = bpda_relu(net)
        smooth = bpda_smooth(net, smooth_temperature) if smooth_temperature > 0 and kappa > 0 else None
        clean_ok = clean[kappa]
        alive = {m: clean_ok.clone() for m in ("worst_case", "transfer", "pgd_bpda")}
        per_eps = {}
        for eps in eps_sorted:
            fooled_by = {m: torch.zeros(n, dtype=torch.bool) for m in ADAPTIVE_ATTACKS}
            # transfer: examples of the kappa = 0 network (crafted there once, on every image it gets right
            # at this eps or smaller eps; where it was not crafted the clean image stands in)
            if kappa == 0:
                # crafted afresh at every eps (no reuse of smaller-eps examples), so that the transfer
                # examples are full-strength PGD at this radius
                idx = need_transfer.nonzero().flatten()
                adv = x.clone()
                adv[idx] = craft(surrogate, idx, eps, restarts, early_stop=False)
                transfer_adv[eps] = adv
                idx = alive["pgd_bpda"].nonzero().flatten()
                ok = correct_on(net, adv[idx], idx)
                fooled_by["pgd_bpda"][idx[~ok]] = True
                fooled_by["transfer"] = fooled_by["pgd_bpda"].clone()
                fooled_by["pgd_white"] = fooled_by["pgd_bpda"].clone()
            else:
                idx = alive["transfer"].nonzero().flatten()
                ok = correct_on(net, transfer_adv[eps][idx], idx)
                fooled_by["transfer"][idx[~ok]] = True
                idx = alive["pgd_bpda"].nonzero().flatten()
                ok = correct_on(net, craft(surrogate, idx, eps, restarts), idx)
                fooled_by["pgd_bpda"][idx[~ok]] = True
            alive["transfer"] &= ~fooled_by["transfer"]
            alive["pgd_bpda"] &= ~fooled_by["pgd_bpda"]
            survivors = alive["worst_case"] & ~fooled_by["transfer"] & ~fooled_by["pgd_bpda"]
            extra = {}
            for name, attack_net in (("pgd_white", net if kappa > 0 else None), ("pgd_smooth", smooth)):
                if attack_net is None:
                    extra[name] = None
                    continue
                idx = survivors.nonzero().flatten()
                ok = correct_on(net, craft(attack_net, idx, eps, 1), idx)
                fooled_by[name][idx[~ok]] = True
                extra[name] = int((~ok).sum())
                survivors &= ~fooled_by[name]
            alive["worst_case"] = survivors
            any_fooled = torch.stack([fooled_by[m] for m in ADAPTIVE_ATTACKS])
            only = (any_fooled.sum(0) == 1)
            per_eps[f"{eps:g}"] = {
                "worst_case": float(survivors.float().mean()),
                "transfer": float(alive["transfer"].float().mean()),
                "pgd_bpda": float(alive["pgd_bpda"].float().mean()),
                "extra_fooled": extra,
                # of the images the ensemble newly fools at this eps, how many only one member found
                "fooled_only_by": {m: int((only & fooled_by[m]).sum()) for m in ADAPTIVE_ATTACKS},
            }
        row = {"clean": float(clean_ok.float().mean()), "n": n, "eps": per_eps}
        if ddn_steps > 0:
            adv = evaluate.run_attack(attacks.ddn, surrogate, x, y, batch_size, desc="ddn-bpda", steps=ddn_steps,
                                      generator=torch.Generator(dev).manual_seed(seed))
            row["ddn_bpda"] = {k: v for k, v in evaluate.min_norm_summary(x, adv, y, net, p=2).items() if k != "rho"}
        out[f"{kappa:g}"] = row
    return out
