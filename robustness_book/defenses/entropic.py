"""Entropic retraining (Sperl & Böttinger, "Optimizing Information Loss Towards Robust Neural Networks",
arXiv 2008.03072): cross-entropy plus a term built from the entropy of hidden activations.

What the paper's authors state (abstract and their AutoAttack submissions, auto-attack issues #41/#42):
training uses clean data only, no adversarial examples, with "an adapted loss function [whose] additional
loss-term is based on information theoretic inspired metrics"; it is meant to mimic the effect of adversarial
training; the CIFAR-10 network is :func:`robustness_book.models.entropic_cnn`. The method section could not be read,
so everything below is the book's reading, labelled as such:

* the loss is ``CE + λ·term`` on clean batches, one forward pass (the activations are collected with forward
  hooks on ``model.get_submodule(name)`` for each chosen layer, removed afterwards even on error);
* a layer's entropy is the mean over its units of each unit's entropy across the batch, in nats. A unit is one
  activation coordinate (``units="neuron"``) or, for a conv layer, one channel with every spatial position a
  sample (``units="channel"``);
* a unit's entropy is estimated either by a soft-binned histogram (``"histogram"``): ``bins`` bin centres spaced
  evenly over the unit's range in the batch (its min and max are the outer centres; ``value_range="batch"``) or
  over a fixed ``(lo, hi)`` (values outside are clipped to it), each value spread over the bins by a triangular
  kernel (linear interpolation between its two nearest centres, an exact partition of unity) or a Gaussian kernel
  (``bandwidth`` bin widths, truncated at 4 bandwidths, renormalized per value), and ``H = −Σ p log p`` of the
  averaged assignment; or by a Gaussian fit (``"gaussian"``), ``½·log(2πe·σ²)`` with σ² the unit's batch
  variance (at least :data:`MIN_VARIANCE`). A constant unit has histogram entropy 0, values spread evenly over
  the bins give ``log(bins)``; the histogram's range moves with the batch, so its gradient includes the range's;
* the term either pulls each chosen layer's entropy toward a target, ``Σ_l (H_l − target_l)²`` (the chapter's
  use: the targets are the per-layer profile of an adversarially trained model), or, without targets, moves it
  in a ``direction`` per layer, ``−Σ_l d_l·H_l`` with ``d_l = +1`` to raise the entropy and ``−1`` to lower it.
  The default layers are every ``nn.ReLU`` module (:func:`entropy_layers`);
* precision: the estimate and the term are computed in float32 (autocast is switched off for them), also when the
  training step runs its forward pass under bfloat16 autocast; the activations they read are then the forward
  pass's bfloat16 values (8-bit mantissa), upcast. :func:`layer_entropies` (the profiles, the targets) runs the
  forward pass in the model's own precision (float32 in this book).

:class:`EntropicLoss` is a plain ``loss(model, x, y)`` callable with a JSON-able ``spec``: it plugs into
:func:`robustness_book.train.train` like any other objective. :func:`layer_entropies` measures the per-layer profile.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from ..attacks import eval_mode

ESTIMATORS = ("histogram", "gaussian")
KERNELS = ("triangular", "gaussian")
UNITS = ("neuron", "channel")
#: The Gaussian estimator's floor on a unit's variance, so that a constant unit has a finite entropy.
MIN_VARIANCE = 1e-8
#: ``log p`` is taken of ``max(p, 1e-8)``: exact for every filled bin, and the gradient that pushes values into an
#: empty bin stays finite (``−log(1e-8) ≈ 18`` instead of ``+∞``).
_LOG_FLOOR = 1e-8
#: The Gaussian kernel is cut off at this many bandwidths (weight ≤ e⁻⁸ there).
_KERNEL_REACH = 4.0


def _choice(name: str, value, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is invalid: expected one of {', '.join(allowed)}")


@dataclass(frozen=True)
class EntropyEstimator:
    """How a unit's entropy is estimated (see the module docstring); ``spec`` names only the settings it uses.

    Args:
        method: ``"histogram"`` (soft-binned) or ``"gaussian"`` (``½·log(2πe·σ²)``).
        bins: number of histogram bins, ≥ 2.
        kernel: the histogram's soft assignment, ``"triangular"`` or ``"gaussian"``.
        bandwidth: the Gaussian kernel's standard deviation in bin widths, > 0.
        value_range: ``"batch"`` (each unit's min..max in the batch) or a fixed ``(lo, hi)`` with ``lo < hi``.
        units: ``"neuron"`` (every activation coordinate is a unit) or ``"channel"`` (dimension 1 is the unit,
            the other dimensions are samples; the same as ``"neuron"`` for a 2-D activation).
    """

    method: str = "histogram"
    bins: int = 16
    kernel: str = "triangular"
    bandwidth: float = 0.5
    value_range: str | tuple[float, float] = "batch"
    units: str = "neuron"

    def __post_init__(self):
        _choice("estimator", self.method, ESTIMATORS)
        _choice("kernel", self.kernel, KERNELS)
        _choice("units", self.units, UNITS)
        if not (isinstance(self.bins, int) and self.bins >= 2):
            raise ValueError(f"bins={self.bins!r} must be an integer ≥ 2")
        if not (self.bandwidth > 0 and math.isfinite(self.bandwidth)):
            raise ValueError(f"bandwidth={self.bandwidth!r} must be a finite number > 0 (in bin widths)")
        if self.value_range != "batch":
            ok = isinstance(self.value_range, (tuple, list)) and len(self.value_range) == 2
            if not (ok and all(math.isfinite(v) for v in self.value_range) and self.value_range[0] < self.value_range[1]):
                raise ValueError(f"value_range={self.value_range!r} must be 'batch' or a pair (lo, hi) of finite "
                                 f"numbers with lo < hi")
            object.__setattr__(self, "value_range", (float(self.value_range[0]), float(self.value_range[1])))

    @property
    def spec(self) -> dict:
        if self.method == "gaussian":
            return {"estimator": "gaussian", "units": self.units}
        return {"estimator": "histogram", "bins": self.bins, "kernel": self.kernel,
                **({"bandwidth": float(self.bandwidth)} if self.kernel == "gaussian" else {}),
                "range": self.value_range if self.value_range == "batch" else list(self.value_range),
                "units": self.units}

    def as_units(self, activation: torch.Tensor) -> torch.Tensor:
        """``activation`` (N, ...) as a ``(samples, units)`` matrix in at least float32."""
        if activation.dim() < 2:
            raise ValueError(f"an activation needs a batch and a feature dimension, got shape {tuple(activation.shape)}")
        a = activation if activation.dtype == torch.float64 else activation.float()
        if self.units == "channel" and a.dim() > 2:
            return a.movedim(1, -1).reshape(-1, a.shape[1])
        return a.flatten(1)

    def unit_entropy(self, samples: torch.Tensor) -> torch.Tensor:
        """Entropy in nats of each column of ``samples`` (N, U); shape ``(U,)``, differentiable."""
        if self.method == "gaussian":
            variance = samples.var(0, correction=0).clamp_min(MIN_VARIANCE)
            return 0.5 * torch.log(2 * math.pi * math.e * variance)
        return self._histogram_entropy(samples)

    def layer_entropy(self, activations: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean unit entropy of a layer (a scalar); ``activations`` holds one tensor per call of the layer."""
        return torch.cat([self.unit_entropy(self.as_units(a)) for a in activations]).mean()

    def _histogram_entropy(self, a: torch.Tensor) -> torch.Tensor:
        n, units = a.shape
        bins = self.bins
        if self.value_range == "batch":
            lo, hi = a.amin(0), a.amax(0)
        else:
            lo = a.new_full((units,), self.value_range[0])
            hi = a.new_full((units,), self.value_range[1])
            a = torch.maximum(torch.minimum(a, hi), lo)
        width = (hi - lo) / (bins - 1)
        constant = width == 0  # not `width > 0`: a NaN width (a diverged network) must give NaN, not 0
        # a constant unit: one full bin (entropy 0); width 1 there keeps its (masked) gradient finite
        position = (a - lo) / torch.where(constant, torch.ones_like(width), width)  # in [0, bins − 1]
        base = position.detach().floor()
        if self.kernel == "triangular":
            offsets = range(0, 2)
        else:
            reach = math.ceil(_KERNEL_REACH * self.bandwidth)
            offsets = range(-reach, reach + 2)
        column = torch.arange(units, device=a.device) * bins
        index, weight = [], []
        for offset in offsets:
            k = base + offset
            distance = position - k
            if self.kernel == "triangular":
                w = (1 - distance.abs()).clamp_min(0)
            else:
                w = torch.exp(-0.5 * (distance / self.bandwidth) ** 2)
            inside = (k >= 0) & (k < bins)
            weight.append(w * inside)
            # NaN → bin 0: a non-finite activation then yields a NaN weight and entropy, not an index out of range
            index.append(column + k.nan_to_num(0.0).clamp(0, bins - 1).long())
        weight_all = torch.stack(weight)
        if self.kernel == "gaussian":  # the triangular weights already sum to 1 on [0, bins − 1]
            weight_all = weight_all / weight_all.sum(0, keepdim=True)
        hist = torch.zeros(units * bins, dtype=a.dtype, device=a.device)
        hist = hist.index_add(0, torch.stack(index).flatten(), weight_all.flatten())
        p = hist.view(units, bins) / n
        entropy = -(p * torch.log(p.clamp_min(_LOG_FLOOR))).sum(1)
        return torch.where(constant, torch.zeros_like(entropy), entropy)


def entropy_layers(model: nn.Module) -> list[str]:
    """Names of the ``nn.ReLU`` modules of ``model`` in registration order (the forward order for a
    Sequential model): the default layers whose entropy :class:`EntropicLoss` shapes."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


@contextlib.contextmanager
def recorded_activations(model: nn.Module, layers: Sequence[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, every forward pass appends each named layer's output to ``outputs[name]``.

    Yields that dict ``{name: [tensor, ...]}`` (one tensor per call of the layer). The hooks are removed on
    exit, also when the block raises. An unknown name raises ``ValueError`` before any hook is placed.
    """
    modules = {}
    for name in layers:
        try:
            modules[name] = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"layer {name!r} is not a submodule of the model; its activation modules are: "
                             f"{', '.join(entropy_layers(model)) or 'none'}") from None
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []
    try:
        for name, module in modules.items():
            def hook(_module, _inputs, output, store=outputs[name]):
                if not isinstance(output, torch.Tensor):
                    raise ValueError(f"layer output must be a tensor, got {type(output).__name__}")
                store.append(output)
            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


def _forward_with_entropies(model: nn.Module, x: torch.Tensor, layers: Sequence[str],
                            estimator: EntropyEstimator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits of one forward pass and each layer's mean unit entropy (scalar tensors, differentiable)."""
    with recorded_activations(model, layers) as outputs:
        logits = model(x)
    missing = [name for name in layers if not outputs[name]]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass")
    # The term in float32 whatever autocast the forward pass ran under: the activations are upcast (as_units) and
    # no op of the estimate may drop back to bfloat16; only the activations' own values carry the forward's rounding.
    with torch.autocast(x.device.type, enabled=False):
        return logits, {name: estimator.layer_entropy(outputs[name]) for name in layers}


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    names = entropy_layers(model) if layers is None else list(layers)
    if not names:
        raise ValueError("no layers to measure: the model has no nn.ReLU modules; pass layers=[module names]")
    return names


def layer_entropies(model: nn.Module, x: torch.Tensor, layers: Sequence[str] | None = None,
                    estimator: str = "histogram", bins: int = 16, kernel: str = "triangular",
                    bandwidth: float = 0.5, value_range: str | tuple[float, float] = "batch",
                    units: str = "neuron") -> dict[str, float]:
    """Each layer's mean unit entropy (nats) on the batch ``x`` (N, C, H, W) in [0, 1]: the per-layer profile.

    Runs the model once in eval mode without gradients. ``layers`` defaults to :func:`entropy_layers`; the
    other arguments are those of :class:`EntropyEstimator`. Every activation of the chosen layers for the
    whole of ``x`` is held at once, and the histogram estimate depends on N (its bias is about
    ``−(bins − 1)/(2N)`` nats), so compare profiles measured on batches of the same size.
    """
    est = EntropyEstimator(estimator, bins, kernel, bandwidth, value_range, units)
    names = _resolve_layers(model, layers)
    with eval_mode(model), torch.no_grad():
        _, entropies = _forward_with_entropies(model, x, names, est)
    return {name: float(value) for name, value in entropies.items()}


class EntropicLoss:
    """Cross-entropy plus ``λ`` times an entropy term on chosen layers; a loss for :func:`robustness_book.train.train`.

    Args:
        lam: λ ≥ 0, the weight of the entropy term (``0``: plain cross-entropy).
        layers: module names (``model.get_submodule``); ``None``: the keys of ``targets`` or of a ``direction``
            mapping when given, else every ``nn.ReLU`` module (:func:`entropy_layers`).
        targets: ``{layer: entropy in nats}``; the term is ``Σ_l (H_l − target_l)²`` over exactly these layers.
        direction: without ``targets``, ``+1`` (raise) or ``−1`` (lower) for every layer, or ``{layer: ±1}``;
            the term is ``−Σ_l d_l·H_l``. Raising is the book's default, a choice the paper does not confirm.
        estimator, bins, kernel, bandwidth, value_range, units: the entropy estimate (:class:`EntropyEstimator`).
    """

    def __init__(self, lam: float = 0.1, layers: Sequence[str] | None = None,
                 targets: Mapping[str, float] | None = None, direction: int | Mapping[str, int] = 1,
                 estimator: str = "histogram", bins: int = 16, kernel: str = "triangular", bandwidth: float = 0.5,
                 value_range: str | tuple[float, float] = "batch", units: str = "neuron"):
        if not (lam >= 0 and math.isfinite(lam)):
            raise ValueError(f"lam={lam!r} must be a finite number ≥ 0")
        self.estimator = EntropyEstimator(estimator, bins, kernel, bandwidth, value_range, units)
        if isinstance(direction, Mapping):
            direction = dict(direction)
            bad = {k: v for k, v in direction.items() if v not in (1, -1)}
        else:
            bad = {"direction": direction} if direction not in (1, -1) else {}
        if bad:
            raise ValueError(f"direction={direction!r} is invalid: expected +1 (raise) or -1 (lower), "
                             f"or a mapping of layer names to them")
        if targets is not None:
            targets = {str(k): float(v) for k, v in targets.items()}
            if not targets or not all(math.isfinite(v) for v in targets.values()):
                raise ValueError(f"targets={targets!r} must map at least one layer name to a finite entropy")
        keyed = targets if targets is not None else direction if isinstance(direction, dict) else None
        if layers is not None:
            layers = list(layers)
            if not layers or len(set(layers)) != len(layers):
                raise ValueError(f"layers={layers!r} must be a non-empty list of distinct module names")
            if keyed is not None and set(keyed) != set(layers):
                what = "targets" if targets is not None else "direction"
                raise ValueError(f"{what} names layers {sorted(keyed)} but layers={layers}: they must be the same")
        elif keyed is not None:
            layers = list(keyed)
        self.lam, self.layers, self.targets, self.direction = float(lam), layers, targets, direction
        self.spec = {"name": "entropic", "lam": self.lam, "layers": layers,
                     **({"targets": targets} if targets is not None else {"direction": direction}),
                     **self.estimator.spec}

    def entropies(self, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One forward pass: the logits and each chosen layer's mean unit entropy (differentiable scalars)."""
        return _forward_with_entropies(model, x, _resolve_layers(model, self.layers), self.estimator)

    def term_from(self, entropies: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The entropy term from per-layer entropies (before λ)."""
        if self.targets is not None:
            return sum((entropies[name] - self.targets[name]) ** 2 for name in entropies)
        sign = self.direction if isinstance(self.direction, dict) else dict.fromkeys(entropies, self.direction)
        return -sum(sign[name] * value for name, value in entropies.items())

    def term(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The entropy term alone on the batch ``x`` (before λ), differentiable w.r.t. the weights."""
        return self.term_from(self.entropies(model, x)[1])

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.lam == 0:
            return nn.functional.cross_entropy(model(x), y)
        logits, entropies = self.entropies(model, x)
        return nn.functional.cross_entropy(logits, y) + self.lam * self.term_from(entropies)

    def __repr__(self) -> str:
        return f"EntropicLoss({', '.join(f'{k}={v!r}' for k, v in self.spec.items() if k != 'name')})"
