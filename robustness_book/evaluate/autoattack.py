"""AutoAttack (Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020) through the ``pyautoattack`` package: the field's reference number.

``pyautoattack`` is imported only when an AutoAttack is run, so the rest of the toolkit works without it.
"""
from __future__ import annotations

import contextlib
import io
import logging
import time

import torch
from torch import nn

from ..attacks import eval_mode
from .core import model_device, predict
from .stats import accuracy_record, pack_mask

__all__ = ["AUTOATTACK_FLAGS", "AUTOATTACK_VERSIONS", "autoattack_accuracy", "flags_of", "run_autoattack"]

#: the versions of ``pyautoattack.AutoAttack`` this wrapper runs ("rand" is for randomized defenses, "custom"
#: takes an explicit ``attacks`` list)
AUTOATTACK_VERSIONS = ("standard", "plus", "rand", "custom")
_NORMS = {"linf": "Linf", "l2": "L2"}


#: AutoAttack's own reliability checks (its ``checks.py``, sent to the ``auto-attack`` logger), by the words that
#: identify each warning: RobustBench marks an evaluation that raised one "potentially unreliable".
AUTOATTACK_FLAGS = {"randomized": "randomized defense", "probability_output": "probability distribution",
                    "zero_gradients": "zero gradient", "square_gain": "Square Attack has decreased",
                    "dynamic": "dynamic defense", "n_classes": "target classes"}


class _FlagCollector(logging.Handler):
    """Collects AutoAttack's warnings (its reliability flags) while it runs."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def flags_of(messages: list[str]) -> list[str]:
    """The :data:`AUTOATTACK_FLAGS` ids named by AutoAttack's warning ``messages`` (``other`` for one not known)."""
    out = []
    for message in messages:
        ids = [k for k, words in AUTOATTACK_FLAGS.items() if words.lower() in message.lower()] or ["other"]
        out += [i for i in ids if i not in out]
    return out


@contextlib.contextmanager
def _collect_flags():
    logger = logging.getLogger("auto-attack")
    collector = _FlagCollector()
    propagate = logger.propagate
    logger.addHandler(collector)
    logger.propagate = False  # the flags go into the results, not to a page's stderr
    try:
        yield collector.messages
    finally:
        logger.removeHandler(collector)
        logger.propagate = propagate


def _check(norm: str, version: str, eps: float) -> None:
    if norm not in _NORMS:
        raise ValueError(f"unknown norm {norm!r}; allowed: {', '.join(_NORMS)}")
    if version not in AUTOATTACK_VERSIONS:
        raise ValueError(f"unknown AutoAttack version {version!r}; allowed: {', '.join(AUTOATTACK_VERSIONS)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
                   version: str = "standard", batch_size: int = 256, seed: int = 0,
                   attacks: list[str] | None = None, flags: list | None = None) -> torch.Tensor:
    """AutoAttack's adversarial examples for ``x`` (CPU tensor shaped like ``x``; the clean image where
    AutoAttack found none).

    ``norm`` is ``"linf"`` or ``"l2"``; ``version`` one of :data:`AUTOATTACK_VERSIONS` (``attacks``, e.g.
    ``["apgd-ce", "square"]``, only with ``"custom"``). The targeted attacks use ``min(9, classes − 1)``
    target classes, so models with fewer than 10 classes work; the DLR losses need at least 4 classes.
    AutoAttack seeds torch's global generator with ``seed``; the caller's global random state is restored
    afterwards. Runs the model in eval mode (training flags restored). AutoAttack's reliability warnings are
    appended to ``flags`` (a list, when given) as :data:`AUTOATTACK_FLAGS` ids, never printed.
    """
    _check(norm, version, eps)
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:  # pragma: no cover - the package is a dependency of the book
        raise ImportError("AutoAttack needs the 'pyautoattack' package (pip install pyautoattack)") from err
    if len(x) == 0:
        return x.detach().cpu().clone()
    dev = model_device(model)
    with eval_mode(model):
        with torch.no_grad():
            n_cls = model(x[:1].to(dev)).shape[1]
        if version in ("standard", "plus") and n_cls < 4:
            raise ValueError(f"AutoAttack {version!r} uses the targeted DLR loss, which needs >= 4 classes; "
                             f"the model has {n_cls}")
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        fork = torch.random.fork_rng(devices=cuda)
        # AutoAttack backpropagates to the input through the whole model: keep its gradients off the weights
        grads = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in grads:
            p.requires_grad_(False)
        try:
            with fork:
                aa = AutoAttack(model, norm=_NORMS[norm], eps=float(eps), version=version, device=dev, seed=seed,
                                attacks=attacks)
                aa.verbose = False
                aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, n_cls - 1)
                aa.fab.n_target_classes = min(aa.fab.n_target_classes, n_cls - 1)
                # the package prints warnings (e.g. zero-gradient points) to stdout even when not verbose; the
                # book's own health table reports those conditions, so keep them off the page
                with contextlib.redirect_stdout(io.StringIO()), _collect_flags() as messages:
                    x_adv, _ = aa.run_standard_evaluation(x.detach().cpu(), y.detach().cpu(),
                                                          batch_size=batch_size)
                if flags is not None:
                    flags += [f for f in flags_of(messages) if f not in flags]
        finally:
            for p, flag in grads:
                p.requires_grad_(flag)
    return x_adv.detach().cpu()


def autoattack_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str = "linf",
                        version: str = "standard", batch_size: int = 256, seed: int = 0,
                        attacks: list[str] | None = None) -> dict:
    """Robust accuracy of ``model`` under AutoAttack (see :func:`run_autoattack` for the arguments).

    Returns JSON-ready numbers only: ``{"eps", "norm", "version", "n", "clean", "robust", "k", "interval" (95%
    Wilson of robust), "seconds", "flags" (AutoAttack's reliability warnings, :data:`AUTOATTACK_FLAGS` ids), "mask"
    (per image robust or not, packed with :func:`.stats.pack_mask`)}``; accuracy is judged on ``model`` at the returned
    examples (an image counts as robust only if ``model`` classifies its example correctly).
    """
    start = time.perf_counter()
    flags: list[str] = []
    x_adv = run_autoattack(model, x, y, eps, norm=norm, version=version, batch_size=batch_size, seed=seed,
                           attacks=attacks, flags=flags)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    y = y.cpu()
    clean = predict(model, x, batch_size) == y
    robust = clean & (predict(model, x_adv, batch_size) == y)
    rec = accuracy_record(robust)
    return {"eps": float(eps), "norm": norm, "version": version, "n": len(y),
            "clean": int(clean.sum()) / max(len(y), 1), "robust": rec["value"], "k": rec["k"],
            "interval": rec["interval"], "seconds": seconds, "flags": flags, "mask": pack_mask(robust)}
