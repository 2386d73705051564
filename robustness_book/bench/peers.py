"""``--peers`` (in ``.venv-peers``, made by ``make bench-peers``): PGD L∞ beside ``torchattacks.PGD`` and
foolbox's ``LinfPGD`` at equal eps, steps and step size, and DeepFool L2 beside ``torchattacks.DeepFool``, on the
same model and images: images/s, robust accuracy, median ρ."""
from __future__ import annotations

import math
import sys
from typing import Any, Callable

import torch
from torch import nn

from .. import attacks, evaluate
from ..chapters import baselines, get_chapter
from ..config import resolve
from ..data import load_dataset, threat_eps
from ..runtime import thread_count
from ..timing import timed
from ._common import provenance, verdict

#: PGD L∞ of the toolkit must be at least this many times as fast as torchattacks.PGD.
PEER_SPEEDUP_GOAL = 1.2
PEERS_HINT = "run make bench-peers"


class PeersMissing(RuntimeError):
    """The peer libraries (torchattacks, foolbox) cannot be imported in this environment."""


def import_peers() -> tuple[Any, Any]:
    """``(torchattacks, foolbox)``, or :class:`PeersMissing` with one message that says how to get them.

    In ``.venv-peers`` torchvision comes from PyPI beside the CPU-only torch, where a plain ``import torchvision``
    dies (``operator torchvision::nms does not exist``). Neither peer imports it when imported (torchattacks 3.5.1,
    foolbox 3.3.4), but the book's data loading does, and a peer may later; importing it first through
    :mod:`robustness_book._torchvision` installs the work-around, so every later ``import torchvision`` gets that module.
    """
    from .._torchvision import import_torchvision

    import_torchvision()
    found, missing = {}, []
    for name in ("torchattacks", "foolbox"):
        try:
            found[name] = __import__(name)
        except Exception as err:  # ImportError, or a peer that breaks while importing
            missing.append(f"{name} ({type(err).__name__}: {err})")
    if missing:
        raise PeersMissing(f"the peer libraries are not importable in {sys.executable}: {'; '.join(missing)}. "
                           f"To compare with them, {PEERS_HINT} (it builds .venv-peers and runs "
                           f"`python -m robustness_book bench --peers` there).")
    return found["torchattacks"], found["foolbox"]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((evaluate.predict(model, x) == y.cpu()).float().mean())


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """``(result of the last call, best seconds)`` over ``repeats`` calls, after one warm-up call."""
    out = fn()
    best = math.inf
    for _ in range(repeats):
        out, seconds = timed(fn)
        best = min(best, seconds)
    return out, best


def _median_rho(x: torch.Tensor, x_adv: torch.Tensor, fooled: torch.Tensor) -> float | None:
    rho = evaluate.pixel_rho(x, x_adv)[fooled]
    return float(rho.median()) if len(rho) else None


def run_peers(profile: str = "smoke", n: int = 300, batch_size: int = 256, steps: int = 40,
              repeats: int = 3) -> dict:
    """PGD L∞ (toolkit with and without early stop, torchattacks, foolbox) and DeepFool L2 (toolkit,
    torchattacks) on chapter 1's model and its first ``n`` test images; printed and returned as JSON content."""
    torchattacks, foolbox = import_peers()
    torch.set_num_threads(thread_count())
    cfg = resolve(get_chapter("baselines"), profile=profile)
    model, _ = baselines.train_model(cfg)
    model.eval()
    device = next(model.parameters()).device
    test = load_dataset(cfg.dataset, "test").first(n)
    x, y = test.x.to(device), test.y.to(device)
    eps = threat_eps(cfg.dataset)
    alpha = 2.5 * eps / steps  # the toolkit's default step size, given to every library
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]

    def batched(attack: Callable) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat([attack(xb, yb) for xb, yb in batches])

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=device)
    fb_pgd = foolbox.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    pgd_runs = {
        "toolkit": lambda xb, yb: attacks.pgd_linf(model, xb, yb, eps=eps, steps=steps, step_size=alpha),
        "toolkit, no early stop": lambda xb, yb: attacks.pgd_linf(model, xb, yb, eps=eps, steps=steps,
                                                                  step_size=alpha, early_stop=False),
        "torchattacks.PGD": lambda xb, yb: ta_pgd(xb, yb),
        "foolbox LinfPGD": lambda xb, yb: fb_pgd(fmodel, xb, yb, epsilons=eps)[1],
    }
    clean = _accuracy(model, x, y)
    print(f"model: {cfg.model} on {cfg.dataset} ({profile} recipe), first {n} test images (clean accuracy "
          f"{clean:.1%}), device {device}, threads {torch.get_num_threads()}; best of {repeats} runs")
    print(f"PGD L∞ eps {eps:g}, {steps} steps of {alpha:g}, random start")
    pgd_rows = []
    for name, attack in pgd_runs.items():
        adv, seconds = _best_time(batched(attack), repeats)
        linf = float((adv - x).abs().flatten(1).amax(1).max())
        row = {"library": name, "images_per_s": n / seconds, "seconds": seconds,
               "robust_accuracy": _accuracy(model, adv, y), "max_linf": linf}
        pgd_rows.append(row)
        print(f"  {name:<24} {row['images_per_s']:9.0f} images/s  robust accuracy {row['robust_accuracy']:6.1%}  "
              f"(max |δ|∞ {linf:.4f})")
    speedup = pgd_rows[0]["images_per_s"] / pgd_rows[2]["images_per_s"]
    speedup_same_work = pgd_rows[1]["images_per_s"] / pgd_rows[2]["images_per_s"]
    print(f"  toolkit ÷ torchattacks: {speedup:.2f}× (goal ≥ {PEER_SPEEDUP_GOAL}×) "
          f"{verdict(speedup >= PEER_SPEEDUP_GOAL)}; without early stop {speedup_same_work:.2f}×")

    overshoot, max_iter = 0.02, 50
    ta_df = torchattacks.DeepFool(model, steps=max_iter, overshoot=overshoot)
    df_runs = {
        "toolkit": lambda xb, yb: attacks.deepfool(model, xb, yb, norm=2, overshoot=overshoot,
                                                   max_iter=max_iter).x_adv,
        "torchattacks.DeepFool": lambda xb, yb: ta_df(xb, yb),
    }
    correct = evaluate.predict(model, x) == y.cpu()
    print(f"DeepFool L2, overshoot {overshoot}, ≤ {max_iter} iterations; ρ = ‖δ‖₂/‖x‖₂ over the fooled images "
          f"of the {int(correct.sum())} classified correctly")
    df_rows, advs, fooled_sets = [], [], []
    for name, attack in df_runs.items():
        adv, seconds = _best_time(batched(attack), 1 if name.startswith("torchattacks") else repeats)
        fooled = correct & (evaluate.predict(model, adv) != y.cpu())
        advs.append(adv.cpu())
        fooled_sets.append(fooled)
        df_rows.append({"library": name, "images_per_s": n / seconds, "seconds": seconds,
                        "fooled": float(fooled.float().sum() / max(int(correct.sum()), 1)),
                        "median_rho": _median_rho(x.cpu(), adv.cpu(), fooled)})
    both = fooled_sets[0] & fooled_sets[1]  # the same images for both: a fair comparison of ρ
    for row, adv in zip(df_rows, advs):
        row["median_rho_both_fooled"] = _median_rho(x.cpu(), adv, both)
        rho = "n/a" if row["median_rho"] is None else f"{row['median_rho']:.4f}"
        rho_both = "n/a" if row["median_rho_both_fooled"] is None else f"{row['median_rho_both_fooled']:.4f}"
        print(f"  {row['library']:<24} {row['images_per_s']:9.1f} images/s  fooled {row['fooled']:6.1%}  median ρ "
              f"{rho} (own fooled images), {rho_both} (the {int(both.sum())} both fooled)")
    ours, theirs = df_rows[0]["median_rho_both_fooled"], df_rows[1]["median_rho_both_fooled"]
    rho_ok = None if ours is None or theirs is None else ours <= theirs
    print(f"  median ρ on the images both fooled, toolkit ≤ torchattacks: {verdict(rho_ok)}")
    versions = {"torchattacks": getattr(torchattacks, "__version__", "?"),
                "foolbox": getattr(foolbox, "__version__", "?")}
    return {"kind": "peers", "profile": profile, "model": cfg.model, "dataset": cfg.dataset, "n": n,
            "clean_accuracy": clean, "batch_size": batch_size, "repeats": repeats, "peer_versions": versions,
            "pgd": {"eps": eps, "steps": steps, "step_size": alpha, "random_start": True, "rows": pgd_rows,
                    "speedup_vs_torchattacks": speedup, "speedup_vs_torchattacks_without_early_stop":
                        speedup_same_work, "goal": PEER_SPEEDUP_GOAL, "pass": speedup >= PEER_SPEEDUP_GOAL},
            "deepfool": {"norm": 2, "overshoot": overshoot, "max_iter": max_iter, "rows": df_rows,
                         "both_fooled": int(both.sum()), "correct": int(correct.sum()),
                         "goal": "median ρ ≤ torchattacks's on the images both fooled", "pass": rho_ok},
            "provenance": provenance(device)}
