"""The members of the worst-case ensemble (:mod:`.worst_case`): what each attack is, built by name or by hand.

A :class:`Member` is a frozen description; :func:`pgd`, :func:`apgd`, :func:`apgd_t`, :func:`square`, :func:`bpda`,
:func:`transfer` and :func:`autoattack` build one with the book's defaults; :data:`MEMBER_NAMES` lists the members a
chapter parameter may name and :func:`check_members` validates such a parameter before any work::

    from robustness_book.evaluate import members as M
    ensemble = [M.pgd("ce"), M.pgd("margin"), M.bpda(bpda_copy, loss="margin"), M.square(queries=5000)]

(Import this module as ``robustness_book.evaluate.members``: ``robustness_book.evaluate.worst_case`` is the function.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import torch
from torch import nn

from .. import attacks
from .autoattack import AUTOATTACK_VERSIONS
from .core import run_attack

__all__ = [
    "GRADIENT_ATTACKS", "MEMBER_KINDS", "MEMBER_NAMES", "Member", "NORMS", "apgd", "apgd_t", "autoattack", "bpda",
    "check_members", "check_norm", "craft_gradient", "default_members", "member", "members_from_names", "pgd",
    "resolve", "square", "transfer", "classic_members", "DEFAULT_TARGETS",
]

NORMS = ("linf", "l2")
#: APGD-T's target classes in the default ensemble (AutoAttack uses 9; the worst-case benchmark compares 3 with
#: AutoAttack on the same images)
DEFAULT_TARGETS = 3
MEMBER_KINDS = ("pgd", "square", "autoattack", "gradient")
#: the algorithms of a ``"gradient"`` member (its ``version``)
GRADIENT_ATTACKS = ("apgd",)
#: the members a chapter parameter may name, with what each is (built by :func:`member`)
MEMBER_NAMES = {
    "pgd_ce": "PGD on the cross-entropy loss, with the model's own gradient",
    "pgd_margin": "PGD on the margin (CW) loss, with the model's own gradient",
    "square": "Square attack (gradient-free, margin loss)",
    "autoattack": "AutoAttack, standard version (APGD-CE, APGD-T, FAB-T, Square)",
    "apgd_ce": "APGD (adaptive step size, momentum) on the cross-entropy loss, with the model's own gradient",
    "apgd_dlr": "APGD on the DLR loss (the margin divided by a logit spread), with the model's own gradient",
    "apgd_t": "APGD-T: APGD on the targeted DLR loss toward each of the top other classes in turn, on the survivors",
}


def check_norm(norm: str) -> str:
    """``norm`` if it is one of :data:`NORMS`, else ``ValueError`` naming the allowed values."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(NORMS)}")
    return norm


@dataclass(frozen=True)
class Member:
    """One attack of the worst-case ensemble.

    ``kind``: ``"pgd"`` (``steps`` iterations, ``restarts`` random restarts), ``"square"`` (``queries``
    model queries per image and restart), ``"autoattack"`` (``version``) or ``"gradient"``: another gradient
    attack, named by ``version`` (one of :data:`GRADIENT_ATTACKS`: ``"apgd"``, APGD; with ``targets`` > 0,
    APGD-T over that many target classes), ``steps`` and ``restarts`` as for PGD. ``loss``: one of
    ``attacks.LOSSES`` (PGD and Square), of ``attacks.APGD_LOSSES`` (``"gradient"``); AutoAttack ignores it.
    ``through``: an optional module whose gradients (PGD, gradient) or queries (Square, AutoAttack) are used
    instead of the model's: a BPDA copy, which must compute the same function as the model, or — with
    ``transfer=True`` — another model, on which the examples are crafted at full strength (no early stop) and
    then judged on the model. Accuracy is always judged on the evaluated model's exact forward pass.
    """

    name: str
    kind: str
    loss: str = "ce"
    steps: int = 100
    queries: int = 5000
    restarts: int = 1
    through: nn.Module | None = field(default=None, repr=False, compare=False)
    transfer: bool = False
    version: str = "standard"
    targets: int = 0

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"a member needs a non-empty name, got {self.name!r}")
        if self.kind not in MEMBER_KINDS:
            raise ValueError(f"member {self.name!r}: unknown kind {self.kind!r}; allowed: {', '.join(MEMBER_KINDS)}")
        losses = attacks.APGD_LOSSES if self.kind == "gradient" else attacks.LOSSES
        if self.kind != "autoattack" and self.loss not in losses:
            raise ValueError(f"member {self.name!r}: unknown loss {self.loss!r}; allowed: {', '.join(losses)}")
        if self.kind == "gradient" and self.version not in GRADIENT_ATTACKS:
            raise ValueError(f"member {self.name!r}: unknown gradient attack {self.version!r}; allowed: "
                             f"{', '.join(GRADIENT_ATTACKS)}")
        if not isinstance(self.targets, int) or isinstance(self.targets, bool) or self.targets < 0:
            raise ValueError(f"member {self.name!r}: targets must be an integer >= 0, got {self.targets!r}")
        if self.targets and self.kind != "gradient":
            raise ValueError(f"member {self.name!r}: only a gradient (APGD) member takes targets")
        for key in ("steps", "queries", "restarts"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"member {self.name!r}: {key} must be a positive integer, got {value!r}")
        if self.through is not None and not isinstance(self.through, nn.Module):
            raise ValueError(f"member {self.name!r}: through must be an nn.Module, got {type(self.through).__name__}")
        if self.transfer and self.through is None:
            raise ValueError(f"member {self.name!r}: a transfer member needs a source model (through=...)")
        if self.transfer and self.kind == "autoattack":
            raise ValueError(f"member {self.name!r}: AutoAttack stops at the source's boundary; it cannot transfer")
        if self.kind == "autoattack" and self.version not in AUTOATTACK_VERSIONS[:3]:
            raise ValueError(f"member {self.name!r}: unknown AutoAttack version {self.version!r}; allowed: "
                             f"{', '.join(AUTOATTACK_VERSIONS[:3])}")


def pgd(loss: str = "ce", steps: int = 100, restarts: int = 1, name: str | None = None) -> Member:
    """PGD (L∞ or L2, as the evaluation's norm) with the model's own gradient; name ``pgd_<loss>``."""
    return Member(name or f"pgd_{loss}", "pgd", loss=loss, steps=steps, restarts=restarts)


def apgd(loss: str = "ce", steps: int = 100, restarts: int = 1, name: str | None = None) -> Member:
    """APGD (Croce & Hein, ICML 2020; ``attacks.apgd``: PGD with AutoAttack's step-size schedule and momentum, L∞ or
    L2 as the evaluation's norm) on ``loss`` (``"ce"``, ``"dlr"`` or ``"margin"``) with the model's own gradient;
    name ``apgd_<loss>``. Kind ``"gradient"``."""
    return Member(name or f"apgd_{loss}", "gradient", loss=loss, steps=steps, restarts=restarts, version="apgd")


def apgd_t(targets: int = 9, steps: int = 100, restarts: int = 1, loss: str = "dlr", name: str = "apgd_t") -> Member:
    """APGD-T (``attacks.apgd_targeted``): APGD on the targeted ``loss`` toward each of the ``targets`` other classes
    with the largest clean logits in turn, each run only on the images no earlier target fooled (AutoAttack uses
    9 targets, DLR, 100 steps). Kind ``"gradient"``."""
    return Member(name, "gradient", loss=loss, steps=steps, restarts=restarts, version="apgd", targets=targets)


def craft_gradient(m: Member, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
                   batch_size: int = 256, generator: torch.Generator | None = None,
                   desc: str | None = None) -> torch.Tensor:
    """The examples of a ``"gradient"`` member ``m`` for ``x`` (CPU tensor like ``x``), crafted on ``model`` (the
    evaluated model, or ``m.through``) batch by batch; a transfer member takes every step (no early stop)."""
    if m.kind != "gradient":
        raise ValueError(f"member {m.name!r} is of kind {m.kind!r}, not 'gradient'")
    kwargs = dict(eps=eps, norm=check_norm(norm), steps=m.steps, restarts=m.restarts, loss=m.loss,
                  generator=generator, early_stop=not m.transfer)
    if m.targets:
        return run_attack(attacks.apgd_targeted, model, x, y, batch_size, desc=desc, targets=m.targets, **kwargs)
    return run_attack(attacks.apgd, model, x, y, batch_size, desc=desc, **kwargs)


def square(queries: int = 5000, restarts: int = 1, loss: str = "margin", name: str = "square") -> Member:
    """The gradient-free Square attack (Andriushchenko et al., ECCV 2020) on the model's outputs."""
    return Member(name, "square", loss=loss, queries=queries, restarts=restarts)


def bpda(surrogate: nn.Module, loss: str = "ce", steps: int = 100, restarts: int = 1,
         name: str | None = None) -> Member:
    """PGD following the gradients of ``surrogate``, a BPDA copy of the model (same forward pass, a
    differentiable backward; e.g. ``attacks.with_bpda(model, ...)``). Name ``bpda_<loss>`` by default."""
    return Member(name or f"bpda_{loss}", "pgd", loss=loss, steps=steps, restarts=restarts, through=surrogate)


def transfer(source: nn.Module, loss: str = "ce", steps: int = 100, restarts: int = 1,
             name: str = "transfer") -> Member:
    """PGD examples crafted on another model ``source`` at full strength (every step, no early stop),
    judged on the evaluated model (the gray-box / transfer setting)."""
    return Member(name, "pgd", loss=loss, steps=steps, restarts=restarts, through=source, transfer=True)


def autoattack(version: str = "standard", name: str | None = None) -> Member:
    """AutoAttack (through ``pyautoattack``) as a member; name ``autoattack`` (``autoattack_<version>``
    for another version)."""
    return Member(name or ("autoattack" if version == "standard" else f"autoattack_{version}"), "autoattack",
                  version=version)


def default_members(steps: int = 100, restarts: int = 1, queries: int = 5000,
                    targets: int = DEFAULT_TARGETS) -> list[Member]:
    """The book's worst-case ensemble, in order: APGD-CE, APGD-T (``targets`` target classes), Square: AutoAttack's
    recipe without FAB-T, each member run only on the images the earlier ones left standing. The worst-case
    benchmark (``robustness-book bench --worst-case``; ``reference/bench/worst_case_*.json``, shown in
    ``book/performance.md``) measures it beside AutoAttack (standard) on the same images, on chapter 1's network and
    on a JumpReLU-retrofitted one; the chapters run AutoAttack on its survivors before a positive verdict."""
    return [apgd("ce", steps, restarts), apgd_t(targets, steps, restarts), square(queries)]


def classic_members(steps: int = 100, restarts: int = 1, queries: int = 5000) -> list[Member]:
    """The book's first ensemble, in order: PGD-CE, PGD-margin, Square (fixed step size, no momentum). Kept as the
    benchmark's point of comparison: it is weaker than :func:`default_members` (``reference/bench/worst_case.json``)."""
    return [pgd("ce", steps, restarts), pgd("margin", steps, restarts), square(queries)]


def check_members(names: Sequence[str]) -> list[str]:
    """Validate member names (a chapter parameter) before any work: a non-empty list of distinct names of
    :data:`MEMBER_NAMES`. Returns the list; raises ``ValueError`` naming the bad member and the allowed ones."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"members must be a list of names, got {names!r}; allowed: {', '.join(MEMBER_NAMES)}")
    if not names:
        raise ValueError(f"members must name at least one attack; allowed: {', '.join(MEMBER_NAMES)}")
    for name in names:
        if name not in MEMBER_NAMES:
            raise ValueError(f"unknown member {name!r}; allowed: {', '.join(MEMBER_NAMES)}")
    dup = sorted({n for n in names if list(names).count(n) > 1})
    if dup:
        raise ValueError(f"member(s) {', '.join(map(repr, dup))} named twice")
    return list(names)


def member(name: str, steps: int = 100, restarts: int = 1, queries: int = 5000,
           targets: int = DEFAULT_TARGETS) -> Member:
    """The member called ``name`` in :data:`MEMBER_NAMES` (``targets``: APGD-T's target classes)."""
    check_members([name])
    if name == "square":
        return square(queries, restarts)
    if name == "autoattack":
        return autoattack()
    if name == "apgd_t":
        return apgd_t(targets, steps, restarts)
    if name.startswith("apgd_"):
        return apgd(name[len("apgd_"):], steps, restarts)
    return pgd(name[len("pgd_"):], steps, restarts)


def members_from_names(names: Sequence[str], steps: int = 100, restarts: int = 1,
                       queries: int = 5000, targets: int = DEFAULT_TARGETS) -> list[Member]:
    """The members called ``names`` (validated with :func:`check_members`), in that order."""
    return [member(n, steps, restarts, queries, targets) for n in check_members(names)]


def resolve(members: Sequence[Union[Member, str]]) -> list[Member]:
    """``members`` as :class:`Member` objects (names built with :func:`member`'s defaults); their names must
    be distinct."""
    if isinstance(members, (str, Member)) or not members:
        raise ValueError("members must be a non-empty list of Member objects or member names")
    out = [m if isinstance(m, Member) else member(m) for m in members]
    names = [m.name for m in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"member names must be distinct; {', '.join(map(repr, dup))} appear twice")
    return out
