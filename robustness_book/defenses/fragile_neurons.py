"""Fragile neurons (Pravin, Martino, Nicosia & Ojha, "Adversarial Robustness in Deep Learning: Attacks on Fragile
Neurons", ICANN 2021): the channels ("neurons") of a network's first convolutional layer, dropped one at a time,
scored, targeted, and rescaled.

The paper's formulas were not published; this module is the book's reading of its abstract, of Pravin's thesis
abstract (fragility is measured on *clean* accuracy) and of the authors' later code (FGSM in normalized input space,
unclipped). What each function takes from which source is said in its docstring; the chapter page repeats it.

* :func:`scale_channels` / :func:`drop_channel`: a copy of the model whose first-layer channel ``j`` is multiplied
  by ``scales[j]`` (0 = the paper's nodal dropout); the original is untouched.
* :func:`fragility`: per channel, clean accuracy (the thesis' fragility) and FGSM accuracy with it dropped.
* :func:`targeting`: per channel, how much an FGSM perturbation changes that channel's activation, and per image the
  most-changed channel (the book's reading of the "adversarial targeting algorithm").
* :func:`compress_amplify`: robust channels scaled down and fragile ones up, in proportion to their scores, with one
  ``strength`` (0 = identity): the paper's proposed defense, in the book's reading.

Everything works on any model whose first ``nn.Conv2d`` (in ``named_modules`` order) is the layer in question.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..attacks import eval_mode, fgsm
from ..attacks.fgsm import Radius

__all__ = ["ChannelScale", "channel_count", "compress_amplify", "compress_amplify_scales", "drop_channel",
           "first_conv_name", "fragility", "scale_channels", "targeting"]


def first_conv_name(model: nn.Module) -> str:
    """The qualified name of ``model``'s first ``nn.Conv2d`` (``named_modules`` order, which is the forward order
    of the book's models). ``ValueError`` if it has none."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer: fragile neurons are first-conv channels")


def channel_count(model: nn.Module) -> int:
    """How many output channels (neurons) the first convolutional layer has."""
    return model.get_submodule(first_conv_name(model)).out_channels


class ChannelScale(nn.Module):
    """Multiplies channel ``j`` of its ``(N, C, H, W)`` input by ``scales[j]`` (a buffer, so it follows ``.to``)."""

    def __init__(self, scales: torch.Tensor):
        super().__init__()
        self.register_buffer("scales", scales.detach().to(torch.float32).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scales.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"channels={self.scales.numel()}"


def scale_channels(model: nn.Module, scales: Sequence[float] | torch.Tensor) -> nn.Module:
    """A deep copy of ``model`` whose first convolution's output channel ``j`` is multiplied by ``scales[j]``.

    The scale acts on the convolution's output, before whatever follows it (a ReLU, a pool, or ResNet-18's batch
    norm), so ``scales[j] = 0`` removes the neuron's response to the image (nodal dropout) and all ones leave every
    output bit-identical (``x * 1.0 == x`` in IEEE arithmetic). The copy is in eval mode and differentiable:
    attacks see it as any other model.

    In ResNet-18 the scale sits *before* batch norm (``bn1``): in eval mode a zeroed channel then leaves ``bn1``
    as the constant ``β − γμ/σ``, not 0, and a scale ``c`` gives ``γ(c·a − μ)/σ + β``, not ``c`` times the
    normalized feature. So in ResNet-18 "dropping" a channel replaces it by its batch-norm offset, and
    compress/amplify is an affine, not a proportional, change of what the next layer sees (the book's reading;
    the paper does not say where its neurons were cut). In LeNetLike and AlexLike a ReLU follows the convolution
    and the scale is a plain rescaling.
    """
    name = first_conv_name(model)
    conv = model.get_submodule(name)
    scales = torch.as_tensor(scales, dtype=torch.float32).flatten()
    if scales.numel() != conv.out_channels:
        raise ValueError(f"scales has {scales.numel()} entries; the first convolution ({name}) has "
                         f"{conv.out_channels} channels")
    if not bool(torch.isfinite(scales).all()) or bool((scales < 0).any()):
        raise ValueError(f"scales must be finite and ≥ 0, got {scales.tolist()}")
    view = copy.deepcopy(model)
    parent_name, _, child = name.rpartition(".")
    parent = view.get_submodule(parent_name) if parent_name else view
    new_conv = view.get_submodule(name)
    setattr(parent, child, nn.Sequential(new_conv, ChannelScale(scales.to(new_conv.weight.device))))
    return view.eval()


def drop_channel(model: nn.Module, channel: int | None) -> nn.Module:
    """``model`` with first-layer channel ``channel`` zeroed (the paper's nodal dropout); ``None`` drops nothing
    and gives an identical copy."""
    scales = torch.ones(channel_count(model))
    if channel is not None:
        if not 0 <= channel < len(scales):
            raise ValueError(f"channel={channel} is out of range: the first convolution has {len(scales)} channels")
        scales[channel] = 0.0
    return scale_channels(model, scales)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    dev = _device(model)
    with eval_mode(model):
        return torch.cat([model(x[i:i + batch_size].to(dev)).argmax(1).cpu() == y[i:i + batch_size].cpu()
                          for i in range(0, len(x), batch_size)])


def _fgsm_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Radius, clip: bool,
                  batch_size: int) -> torch.Tensor:
    """Whether each image is still classified correctly after FGSM crafted on ``model`` itself (every image is
    attacked, the misclassified ones included, as the authors' code does)."""
    dev = _device(model)
    out = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        x_adv = fgsm(model, xb, yb, eps=eps, clip=clip)
        out.append(_correct(model, x_adv, yb, batch_size).cpu())
    return torch.cat(out)


def fragility(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Radius, clip: bool = True,
              batch_size: int = 250, fgsm_too: bool = True) -> dict:
    """Each first-layer channel dropped in turn: clean and FGSM accuracy on ``(x, y)``.

    The thesis defines a fragile neuron as one whose removal lowers *clean* test accuracy, so the fragility score of
    channel ``j`` is ``clean_drop[j]`` = accuracy of the model − accuracy with ``j`` dropped (a robust neuron scores
    about 0; a negative score means the network does better without it). Beside it, ``fgsm_drop[j]``, the same
    drop in accuracy under FGSM of radius ``eps`` crafted white-box on each dropped network (``clip`` as in
    :func:`robustness_book.attacks.fgsm`; ``clip=False`` with a per-channel radius reproduces the authors' unclipped
    normalized-space FGSM).

    Returns CPU tensors ``clean`` and ``fgsm`` (accuracy with channel ``j`` dropped, shape ``(C,)``),
    ``clean_drop`` and ``fgsm_drop``, the undropped ``clean_base`` and ``fgsm_base`` (floats), the correct counts
    ``clean_k``/``fgsm_k`` and ``n``; and per image, for paired tests of each channel against the full network on
    the same images, ``clean_correct_base`` ``(n,)`` and ``clean_correct`` ``(C, n)`` (booleans). ``fgsm_too=False``
    skips the attack (FGSM entries are then absent).
    """
    n = len(y)
    if n == 0:
        raise ValueError("fragility needs at least one image")
    base_clean = _correct(model, x, y, batch_size)
    base_fgsm = _fgsm_correct(model, x, y, eps, clip, batch_size) if fgsm_too else None
    clean_k, fgsm_k, clean_masks = [], [], []
    for j in range(channel_count(model)):
        dropped = drop_channel(model, j)
        clean_masks.append(_correct(dropped, x, y, batch_size).cpu())
        clean_k.append(int(clean_masks[-1].sum()))
        if fgsm_too:
            fgsm_k.append(int(_fgsm_correct(dropped, x, y, eps, clip, batch_size).sum()))
    out = {"n": n, "clean_k": torch.tensor(clean_k), "clean": torch.tensor(clean_k, dtype=torch.float64) / n,
           "clean_base": float(base_clean.double().mean()), "clean_correct_base": base_clean.cpu(),
           "clean_correct": torch.stack(clean_masks)}
    out["clean_drop"] = out["clean_base"] - out["clean"]
    if fgsm_too:
        out.update(fgsm_k=torch.tensor(fgsm_k), fgsm=torch.tensor(fgsm_k, dtype=torch.float64) / n,
                   fgsm_base=float(base_fgsm.double().mean()))
        out["fgsm_drop"] = out["fgsm_base"] - out["fgsm"]
    return out


def _first_conv_output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The first convolution's output on ``x`` (a forward hook, removed even on error)."""
    store: list[torch.Tensor] = []
    handle = model.get_submodule(first_conv_name(model)).register_forward_hook(
        lambda module, inputs, output: store.append(output.detach()))
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    finally:
        handle.remove()
    return store[0]


def _random_sign(x: torch.Tensor, eps: Radius, clip: bool, generator: torch.Generator) -> torch.Tensor:
    """``x`` plus ``eps`` times a random sign per pixel (the same radius and box as FGSM, no gradient)."""
    sign = torch.randint(0, 2, x.shape, generator=generator).to(x.device, x.dtype) * 2 - 1
    radius = eps.to(x.device, x.dtype) if isinstance(eps, torch.Tensor) else eps
    out = x + radius * sign
    return out.clamp(0, 1) if clip else out


def targeting(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Radius, clip: bool = True,
              batch_size: int = 250, seed: int = 0) -> dict:
    """Where an FGSM perturbation lands in the first layer (the book's reading of the "adversarial targeting
    algorithm"; the paper's own was not published).

    For each image, FGSM of radius ``eps`` crafted on ``model``, and per first-layer channel ``j`` the change of its
    activation map ``‖a_j(x + δ) − a_j(x)‖₂`` (over the map's pixels), measured at the convolution's output, where
    :func:`scale_channels` acts (on such a view: before its scale). Returns CPU tensors: ``change`` ``(C,)``, the
    mean change per channel; ``top`` ``(C,)``, how many images had channel ``j`` as their most-changed channel (the targeting distribution);
    ``share`` = ``top / n``; and ``n``.

    At this layer the change is linear in the perturbation (the bias cancels): it is ``‖W_j ⋆ δ‖₂`` and grows with
    the filter's norm, as fragility does, so ``change`` correlates with fragility with no targeting at all. The
    control: the same measurement under a random-sign perturbation of the same radius (``random_change``, signs
    drawn with ``seed``), and per channel the *excess* ``change / random_change − 1``, how much more FGSM moves
    the channel than chance does. Multiplying a filter by ``c`` multiplies both changes by ``c``, so the excess
    does not depend on the filter's norm (0 for a channel neither perturbation moves). Also returns
    ``random_change`` and ``excess``.
    """
    dev = _device(model)
    generator = torch.Generator().manual_seed(seed)
    sums, random_sums, top = None, None, None
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size].to(dev), y[i:i + batch_size].to(dev)
        x_adv = fgsm(model, xb, yb, eps=eps, clip=clip)
        clean = _first_conv_output(model, xb)
        per_image = (_first_conv_output(model, x_adv) - clean).flatten(2).norm(dim=2).cpu().double()  # (B, C)
        at_random = _first_conv_output(model, _random_sign(xb, eps, clip, generator)) - clean
        random_sums = (at_random.flatten(2).norm(dim=2).cpu().double().sum(0)
                       + (0 if random_sums is None else random_sums))
        counts = torch.bincount(per_image.argmax(1), minlength=per_image.shape[1])
        sums = per_image.sum(0) if sums is None else sums + per_image.sum(0)
        top = counts if top is None else top + counts
    n = len(y)
    change, random_change = sums / n, random_sums / n
    moved = random_change > 0
    excess = torch.zeros_like(change)
    excess[moved] = change[moved] / random_change[moved] - 1
    return {"change": change, "random_change": random_change, "excess": excess, "top": top,
            "share": top.double() / n, "n": n}


def compress_amplify_scales(scores: Sequence[float] | torch.Tensor, strength: float) -> torch.Tensor:
    """Per-channel scales ``1 + strength · u_j`` (clamped at 0), ``u_j`` the fragility score centred on its mean and
    divided by the largest deviation, so ``u ∈ [−1, 1]``: the most fragile channel is amplified by ``1 + strength``,
    the most robust compressed by ``1 − strength``, the others in proportion ("compressing features within robust
    neurons and amplifying the fragile neurons proportionally", the paper's abstract; the formula is the book's).
    ``strength = 0``, or scores that are all equal, give all ones."""
    if not strength >= 0:
        raise ValueError(f"strength={strength!r} must be ≥ 0")
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    centred = s - s.mean()
    spread = float(centred.abs().max()) if len(s) else 0.0
    # equal scores (up to the rounding of their mean) rank nothing: no rescaling
    u = centred / spread if spread > 1e-12 * max(1.0, float(s.abs().max())) else torch.zeros_like(s)
    return (1 + strength * u).clamp_min(0).to(torch.float32)


def compress_amplify(model: nn.Module, scores: Sequence[float] | torch.Tensor, strength: float) -> nn.Module:
    """A copy of ``model`` with its first-layer channels rescaled by :func:`compress_amplify_scales`."""
    return scale_channels(model, compress_amplify_scales(scores, strength))
