"""Superimposition training (Seiler, Trautmann & Kerschke, "Enhancing Resilience of Deep Learning Networks By
Means of Transferable Adversaries", IJCNN 2020) as a loss for :func:`robustness_book.train.train`.

The paper's formula and constants could not be found (see ``NOTES-2.md`` §3); this follows the only
implementation found, a third-party TensorFlow re-implementation::

    x_imp = (1 − a)·x + a·x_r,        a ~ Beta(2, 10), one value per batch
    L     = CE(y, f(x)) + λ · KL(f(x) ‖ f(x_imp)),        λ = 10

with ``f`` the softmax output, ``KL(p ‖ q) = Σ_j p_j log(p_j / q_j)`` averaged over the batch (Keras'
``KLDivergence(y_true=f(x), y_pred=f(x_imp))``), and no stop-gradient: the gradient flows through both the
clean and the superimposed branch. These are that code's settings, not verified against the paper.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def beta_sample(alpha: int, beta: int, generator: torch.Generator) -> float:
    """One draw of Beta(``alpha``, ``beta``) for positive integers, from ``generator`` alone.

    The ``alpha``-th smallest of ``alpha + beta − 1`` independent U(0, 1) draws is exactly Beta(alpha, beta)
    distributed (an order statistic), so no sampler outside ``generator`` is needed (``torch.distributions``
    only draws from the global RNG).
    """
    uniforms = torch.rand(alpha + beta - 1, generator=generator, device=generator.device)
    return float(uniforms.sort().values[alpha - 1])


class SuperimpositionLoss:
    """``CE(f(x), y) + lam · KL(f(x) ‖ f((1 − a)·x + a·x_r))``, a loss ``loss(model, x, y) -> scalar``.

    ``x_r`` is the batch itself in another order: a random cyclic pairing (shuffle the batch, pair each image
    with the next one in the shuffled order), so no image is superimposed on itself in a batch of two or more.
    The third-party code used a separately drawn shuffled batch of training images instead; pairing within the
    batch needs no second data stream. ``a`` is one value per batch, as in that code (``np.random.beta(2, 10)``
    returns a scalar). There, ``train_step`` is a ``tf.function``, so the draw happened once at trace time and
    ``a`` was in fact one constant for the whole run; ``a=<float>`` gives that fixed-a variant.

    Both branches are separate forward passes in the model's current (training) mode, as the two Keras calls
    were: BatchNorm normalizes each with its own batch statistics, and dropout draws different masks (so the
    KL term is then not 0 even for ``a = 0``). Neither branch is detached.

    Randomness (``a`` and the pairing) comes from the loss's own CPU ``torch.Generator`` seeded with ``seed``:
    a fresh loss object per training run reproduces the run. ``last_a`` holds the ``a`` of the latest call.

    Args:
        lam: weight λ ≥ 0 of the KL term (third-party code: 10); 0 gives cross-entropy.
        a: the fixed superimposition weight in [0, 1], or ``None`` (default) to draw ``a ~ Beta(*beta)`` per
            batch; ``a = 0`` gives cross-entropy for a deterministic model.
        beta: the Beta distribution's two shape parameters, positive integers (third-party code: (2, 10),
            mean 1/6); used when ``a`` is ``None``.
        seed: seed of the generator behind ``a`` and the pairing.
    """

    def __init__(self, lam: float = 10.0, a: float | None = None, beta: tuple[int, int] = (2, 10), seed: int = 0):
        if not lam >= 0:
            raise ValueError(f"lam={lam!r} must be ≥ 0")
        if a is not None and not 0 <= a <= 1:
            raise ValueError(f"a={a!r} must be in [0, 1], or None to draw it from Beta{tuple(beta)} per batch")
        beta = tuple(beta)
        if len(beta) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in beta):
            raise ValueError(f"beta={beta!r} must be two positive integers (the Beta distribution's shapes)")
        self.lam, self.a, self.beta, self.seed = float(lam), None if a is None else float(a), beta, seed
        self._generator = torch.Generator().manual_seed(seed)
        self.last_a: float | None = None
        self.spec = {"name": "superimposition", "lam": self.lam, "seed": seed,
                     **({"a": "beta", "beta": list(beta)} if a is None else {"a": self.a})}

    def superimposed(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """``((1 − a)·x + a·x_r, a)`` for a batch ``x`` (N, C, H, W) in [0, 1]; draws ``a`` (unless fixed) and the
        pairing from the loss's generator. The result stays in [0, 1] (a convex combination)."""
        a = beta_sample(*self.beta, self._generator) if self.a is None else self.a
        order = torch.randperm(len(x), generator=self._generator)
        partner = torch.empty_like(order)
        partner[order] = order.roll(-1)  # order[i] is paired with order[i + 1], cyclically
        self.last_a = a
        return (1 - a) * x + a * x[partner.to(x.device)], a

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        x_imp, _ = self.superimposed(x)
        log_p, log_q = F.log_softmax(logits, 1), F.log_softmax(model(x_imp), 1)
        # Σ_j p_j (log p_j − log q_j), averaged over the batch: KL(f(x) ‖ f(x_imp)), computed in log space
        kl = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
        return F.cross_entropy(logits, y) + self.lam * kl

    def __repr__(self) -> str:
        return f"SuperimpositionLoss({', '.join(f'{k}={v!r}' for k, v in self.spec.items() if k != 'name')})"
