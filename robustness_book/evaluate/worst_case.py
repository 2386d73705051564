"""The adaptive worst case: an ensemble of attacks, per image, judged on the model's exact forward pass.

Every chapter that claims robustness calls this module instead of writing its own restart loop or ensemble.

* A :class:`~.members.Member` describes one attack of the ensemble (module :mod:`.members`: build one with
  ``pgd``, ``square``, ``bpda``, ``transfer`` or ``autoattack``, or by name with :func:`members_from_names`;
  :func:`check_members` validates a chapter parameter before any work).
* :func:`worst_case` runs the members in order, each only on the images still standing, and reports the
  robust fraction with its 95% Wilson interval and what each member added.
* :func:`worst_case_curve` does it over ascending radii, attacking at each radius only the images that
  survived the smaller one (the smaller ball lies inside the larger): non-increasing by construction.
* :func:`to_record` strips the tensors (and wall-clock seconds) from a result so it can go into a results JSON.

Example::

    from robustness_book import evaluate
    ensemble = evaluate.default_members(steps=100, restarts=1)    # PGD-CE, PGD-margin, Square
    res = evaluate.worst_case(model, x, y, eps=0.3, members=ensemble)
    metrics["worst_case"] = evaluate.to_record(res)               # {"robust": 0.87, "interval": [...], ...}
"""
from __future__ import annotations

import time
import zlib
from typing import Sequence, Union

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import attacks
from ..runtime import progress_disabled
from .autoattack import run_autoattack
from .core import model_device, predict, run_attack
from .members import (MEMBER_KINDS, MEMBER_NAMES, NORMS, Member, autoattack, bpda, check_members,  # noqa: F401
                      check_norm, craft_gradient, default_members, member, members_from_names, pgd, resolve, square,
                      transfer)
from .stats import accuracy_record

__all__ = ["member_robust_masks", "to_record", "worst_case", "worst_case_curve"]

_TOLERANCE = 1e-5  # threat-model check: float slack allowed on |delta| and on the [0, 1] box


def _member_seed(seed: int, name: str) -> int:
    # each member draws from its own generator, seeded from (seed, name): results do not depend on member order
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


def _check_threat_model(m: Member, x: torch.Tensor, x_adv: torch.Tensor, eps: float, norm: str) -> None:
    """A member whose examples leave the eps-ball or the [0, 1] box would over-state its strength."""
    if x_adv.shape != x.shape:
        raise RuntimeError(f"member {m.name!r} returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    d = (x_adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
    if len(d) and (size.max() > eps * (1 + _TOLERANCE) + _TOLERANCE or x_adv.min() < -_TOLERANCE
                   or x_adv.max() > 1 + _TOLERANCE):
        raise RuntimeError(f"member {m.name!r} left the threat model: largest {norm} perturbation "
                           f"{float(size.max()):.6g} for eps {eps:g}, pixel range [{float(x_adv.min()):.4g}, "
                           f"{float(x_adv.max()):.4g}]")


def _craft(m: Member, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
           batch_size: int, seed: int) -> torch.Tensor:
    """Examples of member ``m`` for ``x`` (CPU), crafted on ``m.through`` or ``model``."""
    net = m.through if m.through is not None else model
    gen = torch.Generator(model_device(net)).manual_seed(_member_seed(seed, m.name))
    desc = f"{m.name} eps={eps:g}"
    if m.kind == "pgd":
        fn = attacks.pgd_linf if norm == "linf" else attacks.pgd_l2
        return run_attack(fn, net, x, y, batch_size, desc=desc, eps=eps, steps=m.steps, restarts=m.restarts,
                          loss=m.loss, generator=gen, early_stop=not m.transfer)
    if m.kind == "gradient":
        return craft_gradient(m, net, x, y, eps, norm, batch_size, gen, desc)
    if m.kind == "square":
        fn = attacks.square_linf if norm == "linf" else attacks.square_l2
        return run_attack(fn, net, x, y, batch_size, desc=desc, eps=eps, queries=m.queries, restarts=m.restarts,
                          loss=m.loss, generator=gen)
    return run_autoattack(net, x, y, eps, norm=norm, version=m.version, batch_size=batch_size,
                          seed=_member_seed(seed, m.name) % (2**31))


def _same_function(m: Member, model: nn.Module, x: torch.Tensor, batch_size: int) -> None:
    if m.through is None or m.transfer or len(x) == 0:
        return
    xb = x[:batch_size]
    if not torch.equal(predict(m.through, xb, batch_size), predict(model, xb, batch_size)):
        raise ValueError(f"member {m.name!r}: its module must compute the same function as the model (a BPDA "
                         "copy: only the gradients may differ); use transfer(...) for another model")


def _run(model, x, y, eps, members, norm, batch_size, seed, standing, x_adv, fooled_by):
    """Attack the images of ``standing`` with each member in turn; updates ``standing``, ``x_adv`` and
    ``fooled_by`` (per image, the index of the member that fooled it)."""
    added, seconds = {}, {}
    for index, m in enumerate(tqdm(members, desc=f"worst case eps={eps:g}", disable=progress_disabled(), leave=False)):
        idx = standing.nonzero().flatten()
        _same_function(m, model, x[idx], batch_size)
        start = time.perf_counter()
        if idx.numel() == 0:
            added[m.name], seconds[m.name] = 0, 0.0
            continue
        adv = _craft(m, model, x[idx], y[idx], eps, norm, batch_size, seed).cpu()
        _check_threat_model(m, x[idx], adv, eps, norm)
        fooled = predict(model, adv, batch_size) != y[idx]  # judged on the model's exact forward pass
        hit = idx[fooled]
        x_adv[hit] = adv[fooled]
        standing[hit] = False
        fooled_by[hit] = index
        added[m.name] = int(fooled.sum())
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds[m.name] = time.perf_counter() - start
    return added, seconds


#: ``fooled_by`` codes of images no member fooled: still robust, or misclassified before any attack.
STANDING, CLEAN_WRONG = -1, -2


def _result(eps, norm, n, clean_ok, standing, x_adv, members, added, seconds, fooled_by) -> dict:
    rec = accuracy_record(standing)
    return {"eps": float(eps), "norm": norm, "n": n, "clean": int(clean_ok.sum()) / max(n, 1),
            "robust": rec["value"], "k": rec["k"], "interval": rec["interval"],
            "members": [m.name for m in members], "kinds": {m.name: m.kind for m in members},
            "added": added, "seconds": seconds, "robust_mask": standing.clone(), "x_adv": x_adv.clone(),
            "fooled_by": fooled_by.clone()}


def _fooled_by_start(clean_ok: torch.Tensor) -> torch.Tensor:
    return torch.where(clean_ok, torch.tensor(STANDING), torch.tensor(CLEAN_WRONG)).to(torch.int16)


def member_robust_masks(result: dict) -> dict:
    """Per member, the images still robust after it ran (bool tensors (N,)), from a :func:`worst_case` result:
    ``{name: mask}`` in the members' order; the last equals ``robust_mask``. Paired tests between two evaluations
    of the same images compare these masks image by image."""
    fooled_by = result["fooled_by"]
    standing = fooled_by != CLEAN_WRONG
    masks = {}
    for index, name in enumerate(result["members"]):
        standing = standing & (fooled_by != index)
        masks[name] = standing.clone()
    return masks


def _prepare(model, x, y, eps_values, members, norm):
    check_norm(norm)
    members = resolve(members)
    for e in eps_values:
        if not (isinstance(e, (int, float)) and e >= 0 and e == e and e != float("inf")):
            raise ValueError(f"eps must be a finite number >= 0, got {e!r}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels")
    return members, x.detach().cpu(), y.detach().cpu()


def worst_case(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
               members: Sequence[Union[Member, str]], norm: str = "linf", batch_size: int = 256,
               seed: int = 0) -> dict:
    """Per-image worst case over ``members`` within the ``norm``-ball of radius ``eps`` (``"linf"`` or ``"l2"``).

    The members run in order, each only on the images still standing (classified correctly by ``model``'s
    exact forward pass and not fooled by an earlier member); whether an example fools is always judged on
    ``model``. Member names given as strings are built with :func:`member`'s defaults. Each member draws its
    random numbers from its own generator seeded from ``seed`` and its name, so a run is reproducible.

    Returns ``{"eps", "norm", "n", "clean" (fraction), "robust" (fraction), "k" (robust images),
    "interval" (95% Wilson of robust), "members" (names, in order), "kinds" ({name: kind}),
    "added" ({name: images it fooled that earlier members did not}), "seconds" ({name: wall-clock}),
    "robust_mask" (bool tensor (N,)), "x_adv" (tensor like ``x``: the member's example where an image was
    fooled, the clean image elsewhere), "fooled_by" (int tensor (N,): the index of the member that fooled each
    image, :data:`STANDING` or :data:`CLEAN_WRONG`; :func:`member_robust_masks`)}``. :func:`to_record` drops the tensors and the seconds.
    """
    members, x, y = _prepare(model, x, y, [eps], members, norm)
    clean_ok = predict(model, x, batch_size) == y
    standing, x_adv, fooled_by = clean_ok.clone(), x.clone(), _fooled_by_start(clean_ok)
    added, seconds = _run(model, x, y, float(eps), members, norm, batch_size, seed, standing, x_adv, fooled_by)
    return _result(eps, norm, len(y), clean_ok, standing, x_adv, members, added, seconds, fooled_by)


def worst_case_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float],
                     members: Sequence[Union[Member, str]], norm: str = "linf", batch_size: int = 256,
                     seed: int = 0) -> list[dict]:
    """:func:`worst_case` at each radius of ``eps_list``, in ascending order, nested.

    An image fooled at a smaller radius is fooled at every larger one (the smaller ball lies inside the
    larger, so its example stays valid): only the survivors of one radius are attacked at the next, and the
    curve is non-increasing by construction. Returns one :func:`worst_case` result per radius (ascending),
    each with ``"carried"``: the images counted as fooled because a smaller radius fooled them (``"added"``
    counts only the images newly fooled at this radius).
    """
    eps_sorted = sorted(float(e) for e in eps_list)
    members, x, y = _prepare(model, x, y, eps_sorted, members, norm)
    if not eps_sorted:
        raise ValueError("eps_list is empty")
    clean_ok = predict(model, x, batch_size) == y
    standing, x_adv, fooled_by = clean_ok.clone(), x.clone(), _fooled_by_start(clean_ok)
    out = []
    for eps in eps_sorted:
        carried = int((clean_ok & ~standing).sum())
        # an image fooled at a smaller radius keeps that member's index (its example stays valid here)
        added, seconds = _run(model, x, y, eps, members, norm, batch_size, seed, standing, x_adv, fooled_by)
        out.append({**_result(eps, norm, len(y), clean_ok, standing, x_adv, members, added, seconds, fooled_by),
                    "carried": carried})
    return out


def to_record(result):
    """A JSON-ready copy of a result (a dict, or a list of them as :func:`worst_case_curve` returns):
    tensors and wall-clock ``"seconds"`` are dropped (metrics must be deterministic; put seconds in timings)."""
    if isinstance(result, dict):
        return {k: to_record(v) for k, v in result.items() if k != "seconds" and not isinstance(v, torch.Tensor)}
    if isinstance(result, (list, tuple)):
        return [to_record(v) for v in result if not isinstance(v, torch.Tensor)]
    return result
