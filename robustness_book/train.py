"""One training loop for every chapter, and a checkpoint cache keyed by the whole recipe.

Defenses change *what* is minimized, never the loop: they pass a ``loss``
callable ``loss(model, x, y) -> scalar tensor``. A loss may carry a ``spec``
attribute (a JSON-able dict of its settings) so that the checkpoint cache can
tell two losses apart.
"""
from __future__ import annotations

import copy
import hashlib
import json
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import _io
from .data import ArrayDataset
from .runtime import checkpoint_dir, default_device, progress_disabled
from .timing import timed

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]

#: Bump when a change to the loop or the models makes old checkpoints stale.
CACHE_VERSION = 1


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The plain objective: mean cross-entropy of the model's logits."""
    return nn.functional.cross_entropy(model(x), y)


cross_entropy.spec = {"name": "cross_entropy"}


@dataclass(frozen=True)
class TrainConfig:
    """Optimizer and schedule: SGD with momentum (or Adam), lr × ``gamma`` at each epoch in ``milestones``."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[int, ...] = ()
    gamma: float = 0.2
    augment: bool = False  # CIFAR: random crop (pad 4) and horizontal flip
    freeze_bn: bool = False  # fine-tuning recipes keep batch-norm statistics fixed
    seed: int = 0
    nesterov: bool = False
    #: "step": lr × gamma at each milestone epoch; "onecycle": per batch, linear warm-up from lr/10 to lr over
    #: the first ``warmup`` fraction of all steps, then linear decay to 0 (for short budgets)
    schedule: str = "step"
    warmup: float = 0.2
    #: "bf16": forward and backward under bfloat16 autocast (weights and optimizer stay float32); on a CPU with
    #: AVX512-BF16 about twice the images per second. Evaluation and attacks always run in float32.
    precision: str = "fp32"
    channels_last: bool = False  # NHWC memory layout: faster convolutions on CPU (oneDNN)
    #: "sgd" (momentum, nesterov, weight_decay as above) or "adam" (Kingma & Ba; betas (0.9, 0.999), L2
    #: ``weight_decay`` as torch's Adam applies it, momentum ignored): the fragile-neurons authors' optimizer
    optimizer: str = "sgd"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainConfig.schedule={self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"TrainConfig.precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer={self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"TrainConfig.warmup={self.warmup!r}: expected a fraction in [0, 1)")

    def describe(self) -> str:
        """The recipe in words, for a page: optimizer, schedule, batch, precision, augmentation."""
        if self.optimizer == "adam":
            opt = "Adam" + (f" with weight decay {self.weight_decay:g}" if self.weight_decay else "")
        else:
            opt = (f"SGD with {'Nesterov ' if self.nesterov else ''}momentum {self.momentum:g}, "
                   f"weight decay {self.weight_decay:g}")
        if self.schedule == "onecycle":
            sched = (f"one-cycle learning rate (linear warm-up to {self.lr:g} over the first {100 * self.warmup:.0f}% "
                     "of the steps, then linear decay to 0)")
        elif self.milestones:
            sched = (f"learning rate {self.lr:g}, × {self.gamma:g} at epoch{'s' if len(self.milestones) > 1 else ''} "
                     + ", ".join(map(str, self.milestones)))
        else:
            sched = f"learning rate {self.lr:g} throughout"
        extras = [f"batch {self.batch_size}", f"{self.epochs} epoch{'s' if self.epochs > 1 else ''}"]
        if self.precision == "bf16":
            extras.append("bfloat16 autocast")
        extras.append("random crops and flips" if self.augment else "no augmentation")
        return f"{opt}, {sched}, " + ", ".join(extras)

    def key(self) -> dict:
        """The config as it enters a cache key. Options added after the first cached models are left out while
        at their defaults, so those models keep their keys."""
        out = asdict(self)
        for name in _LATER_OPTIONS:
            if out[name] == _DEFAULTS[name]:
                del out[name]
        return out


SCHEDULES = ("step", "onecycle")
PRECISIONS = ("fp32", "bf16")
OPTIMIZERS = ("sgd", "adam")
_LATER_OPTIONS = ("nesterov", "schedule", "warmup", "precision", "channels_last", "optimizer")
_DEFAULTS = {"nesterov": False, "schedule": "step", "warmup": 0.2, "precision": "fp32", "channels_last": False,
             "optimizer": "sgd"}


def _scheduler(opt: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """``(scheduler, per_batch)``: the learning-rate schedule of ``config``."""
    if config.schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(opt, list(config.milestones), config.gamma), False
    total = max(config.epochs * steps_per_epoch, 1)
    rise = max(int(config.warmup * total), 1)

    def factor(step: int) -> float:
        if step < rise:
            return 0.1 + 0.9 * step / rise
        return max(0.0, (total - step) / max(total - rise, 1))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor), True


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Batched random crop (zero padding ``pad``) and horizontal flip, one draw per image."""
    n, c, h, w = x.shape
    padded = nn.functional.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (n, h, 1)
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (n, 1, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[idx, rows, cols].permute(0, 3, 1, 2)  # (n, c, h, w)
    flip = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out).contiguous()


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(
    model: nn.Module,
    data: ArrayDataset,
    config: TrainConfig,
    loss: Loss = cross_entropy,
    device: torch.device | str | None = None,
    epoch_callback: Callable[[int, nn.Module], dict] | None = None,
    desc: str = "train",
) -> dict:
    """Train ``model`` in place on ``data`` and return its history.

    The history holds, per epoch, the mean training loss, seconds, and
    whatever ``epoch_callback(epoch, model)`` returned (evaluated in eval mode).
    Shuffling, augmentation and dropout are seeded from ``config.seed``.
    """
    device = torch.device(device) if device is not None else default_device()
    torch.manual_seed(config.seed)
    shuffle = torch.Generator().manual_seed(config.seed)
    model.to(device)
    if config.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, nesterov=config.nesterov)
    sched, per_batch = _scheduler(opt, config, -(-len(data) // config.batch_size))
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(memory_format=layout)
    x_all, y_all = data.x, data.y
    if device.type == "cuda":  # small data sets fit; avoids a host copy per batch
        x_all, y_all = x_all.to(device), y_all.to(device)
    history: dict = {"epochs": []}
    for epoch in range(config.epochs):
        _set_train_mode(model, config.freeze_bn)
        order = torch.randperm(len(data), generator=shuffle)
        total, count, start = 0.0, 0, time.perf_counter()
        batches = range(0, len(data), config.batch_size)
        for i in tqdm(batches, desc=f"{desc} epoch {epoch + 1}/{config.epochs}", disable=progress_disabled(),
                      leave=False):
            idx = order[i:i + config.batch_size]
            x, y = x_all[idx.to(x_all.device)].to(device), y_all[idx.to(y_all.device)].to(device)
            if config.augment:
                x = augment_crop_flip(x, shuffle)
            x = x.contiguous(memory_format=layout)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                value = loss(model, x, y)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if per_batch:
                sched.step()
            total += float(value.detach()) * len(idx)
            count += len(idx)
        if not per_batch:
            sched.step()
        record = {"epoch": epoch + 1, "loss": total / count, "seconds": time.perf_counter() - start}
        if epoch_callback is not None:
            model.eval()
            record.update(epoch_callback(epoch + 1, model))
        history["epochs"].append(record)
    model.to(memory_format=torch.contiguous_format).eval()
    for p in model.parameters():
        p.grad = None
    return history


def seconds_per_step(model: nn.Module, data: ArrayDataset, config: TrainConfig, loss: Loss = cross_entropy,
                     steps: int = 10, device: torch.device | str | None = None) -> float:
    """Wall-clock seconds of one step of :func:`train` (``loss``, backward, optimizer step) with ``config``'s
    optimizer, batch size and precision: the mean over ``steps`` steps on the first ``steps * config.batch_size``
    images of ``data``, after one untimed warm-up step, on a throw-away copy of ``model`` (``model`` is not
    changed). The one place the book times a training step: chapters compare defenses by the ratio of two of these
    measured back to back."""
    if steps < 1:
        raise ValueError(f"steps={steps}: time at least one step")
    need = steps * config.batch_size
    if len(data) < need:
        raise ValueError(f"{len(data)} images cannot fill {steps} steps of {config.batch_size}: pass at least {need}")
    net = copy.deepcopy(model)
    one_epoch = replace(config, epochs=1, schedule="step", milestones=())
    train(net, data.first(config.batch_size), one_epoch, loss=loss, device=device, desc="warm-up")
    _, seconds = timed(train, net, data.first(need), one_epoch, loss=loss, device=device, desc="timed")
    return seconds / steps


# ---------------------------------------------------------------------------
# Checkpoint cache


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupted, or does not match its recipe."""


def loss_spec(loss: Loss) -> dict:
    """The JSON-able description of a loss used in cache keys."""
    spec = getattr(loss, "spec", None)
    if spec is None:
        spec = {"name": f"{loss.__module__}.{getattr(loss, '__qualname__', type(loss).__qualname__)}"}
    return dict(spec)


def recipe_key(recipe: dict) -> str:
    """A short hash of the whole recipe (model, data, schedule, loss, init...)."""
    blob = json.dumps({"cache_version": CACHE_VERSION, **recipe}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cache_recipe(recipe: dict, config: TrainConfig, n_train: int, loss: Loss = cross_entropy,
                 init: nn.Module | None = None, epoch_callback: Callable[[int, nn.Module], dict] | None = None) -> dict:
    """The whole recipe that the checkpoint cache keys a model by (:func:`recipe_key`) and that its sidecar
    records: ``recipe`` (what the model and data embody: model name, data set, subset...) with the training
    config, the loss spec, the number of training images ``n_train``, the initial weights' hash and the
    callback's ``spec`` added. The one definition: :func:`cached_train` keys by it, and so does the zoo's listing
    (through :func:`trained_model_recipe`)."""
    return {
        **recipe,
        "train": config.key(),
        "loss": loss_spec(loss),
        "n_train": n_train,
        "init": None if init is None else state_hash(init),
        "epoch_callback": getattr(epoch_callback, "spec", None) if epoch_callback else None,
    }


def checkpoint_path(full: dict, cache: Path | str | None = None) -> Path:
    """The file the checkpoint cache keeps the model of the whole recipe ``full`` (:func:`cache_recipe`) in:
    ``<model>-<recipe_key>.pt`` in ``cache`` (default :func:`robustness_book.runtime.checkpoint_dir`)."""
    return Path(cache or checkpoint_dir()) / f"{full.get('model', 'model')}-{recipe_key(full)}.pt"


def save_checkpoint(model: nn.Module, path: Path, meta: dict) -> str:
    """Write ``model``'s state dict atomically, then its sidecar ``.json`` with the file's sha256."""
    path = Path(path)
    with _io.atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
        digest = _io.sha256_file(tmp)
    _io.atomic_write_text(path.with_suffix(".json"), json.dumps({**meta, "sha256": digest}, indent=1))
    return digest


def load_checkpoint(model: nn.Module, path: Path, expected_sha256: str | None = None) -> dict:
    """Load a checkpoint into ``model`` after checking its sha256; returns the sidecar metadata.

    Raises :class:`CheckpointError` (naming the file) when the file or its
    sidecar is missing, the sidecar is damaged, the hash differs, the file is
    not plain weights, or the weights do not fit the model.
    Loading uses ``weights_only=True``: a checkpoint can never run code.
    """
    path = Path(path)
    side = path.with_suffix(".json")
    if not path.exists() or not side.exists():
        raise CheckpointError(f"checkpoint {path} (or its {side.name}) is missing")
    meta = read_sidecar(side)
    expected = expected_sha256 or meta["sha256"]
    actual = _io.sha256_file(path)
    if actual != expected:
        raise CheckpointError(f"checkpoint {path} is corrupted: sha256 {actual}, expected {expected}")
    state = _load_weights(path)
    try:
        model.load_state_dict(state)
    except Exception as err:  # a readable state dict with the right hash, but for another model
        raise CheckpointError(f"checkpoint {path} does not fit this model: {err}") from err
    return meta


def _json_kind(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def read_sidecar(side: Path) -> dict:
    """A checkpoint's sidecar metadata, as :func:`save_checkpoint` writes it. Any damage (unreadable, not UTF-8,
    not JSON, not an object, no sha256 string) raises :class:`CheckpointError` naming the file, so that callers
    that retrain on a CheckpointError recover instead of crashing."""
    try:
        meta = json.loads(Path(side).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"checkpoint metadata {side} is unreadable: not UTF-8 text ({err})") from err
    except (OSError, ValueError) as err:  # ValueError: JSONDecodeError
        raise CheckpointError(f"checkpoint metadata {side} is unreadable: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint metadata {side} is malformed: {_json_kind(meta)}, not a JSON object")
    if not isinstance(meta.get("sha256"), str):
        raise CheckpointError(f"checkpoint metadata {side} is malformed: its sha256 is "
                              f"{'missing' if 'sha256' not in meta else _json_kind(meta['sha256'])}, not a string")
    return meta


def _load_weights(path: Path) -> dict:
    """``torch.load(weights_only=True)`` of a hash-checked file, as a state dict. A refusal is reported as an
    unsafe file, without torch's advice to turn the protection off (``weights_only=False``, safe globals)."""
    import pickle
    import re

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported operand (\d+)", str(err))
        detail = "" if found is None else (f": it names {found[1]}" if found[1] else f": pickle opcode {found[2]}")
        raise CheckpointError(f"checkpoint {path} is not a plain weights file (it holds Python objects that "
                              f"weights_only=True refuses to load{detail}); it will not be loaded; delete it and "
                              "retrain") from None  # no chain: torch's text advises weights_only=False
    except Exception as err:  # e.g. not a torch archive at all
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable as a weights file ({first}); it will not be "
                              "loaded; delete it and retrain") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} is not a plain weights file: it holds a {type(state).__name__}, "
                              "not a state dict of tensors; it will not be loaded; delete it and retrain")
    return state


def cached_train(
    recipe: dict,
    build: Callable[[], nn.Module],
    data: ArrayDataset,
    config: TrainConfig,
    loss: Loss = cross_entropy,
    init: nn.Module | None = None,
    epoch_callback: Callable[[int, nn.Module], dict] | None = None,
    device: torch.device | str | None = None,
    cache: Path | None = None,
) -> tuple[nn.Module, dict]:
    """Train (or load from the cache) the model that ``recipe`` describes.

    ``recipe`` must name everything about the model and data that ``build`` and
    ``data`` embody (model name, dataset, subset...); the training config, the
    loss spec, the initial weights' hash and the callback's ``spec`` are added
    here. ``init``, if given, is a trained model whose weights start the run
    (fine-tuning). Returns ``(model in eval mode on device, meta)``; ``meta``
    has the training history and ``cached`` (True when loaded).
    """
    device = torch.device(device) if device is not None else default_device()
    full = cache_recipe(recipe, config, len(data), loss=loss, init=init, epoch_callback=epoch_callback)
    path = checkpoint_path(full, cache)
    torch.manual_seed(config.seed)
    model = build()
    if path.exists():
        try:
            meta = load_checkpoint(model, path)
            if meta.get("recipe") != json.loads(json.dumps(full, default=str)):
                raise CheckpointError(f"checkpoint {path} was written for another recipe")
            history = meta.get("history")
            if (not isinstance(history, dict) or not isinstance(history.get("epochs"), list)
                    or not isinstance(meta.get("train_seconds"), (int, float))):  # what the chapters read
                raise CheckpointError(f"checkpoint metadata {path.with_suffix('.json')} is malformed: no training "
                                      "history or train_seconds")
            return model.to(device).eval(), {**meta, "cached": True, "path": str(path)}
        except CheckpointError as err:
            warnings.warn(f"{err}; retraining it", stacklevel=2)
            torch.manual_seed(config.seed)  # the weights may have been loaded before a sidecar check failed
            model = build()
    if init is not None:
        model.load_state_dict(init.state_dict())
    start = time.perf_counter()
    history = train(model, data, config, loss=loss, device=device, epoch_callback=epoch_callback,
                    desc=recipe.get("model", "train"))
    meta = {"recipe": json.loads(json.dumps(full, default=str)), "history": history,
            "train_seconds": time.perf_counter() - start, "device": str(device)}
    meta["sha256"] = save_checkpoint(model, path, meta)
    return model.eval(), {**meta, "cached": False, "path": str(path)}


def export_entry(meta: dict, label: str, dataset: str, model: str, **setting) -> dict:
    """What another chapter needs to score a cached network without retraining it: the registry ``model`` and
    ``dataset`` to build it, the checkpoint file and its sha256 (from :func:`cached_train`'s ``meta``), a ``label``
    for tables and the ``setting`` that made it. Chapters write these entries into their results file
    (``extra["models"]``); :func:`load_export` reads one back."""
    return {"label": label, "dataset": dataset, "model": model, "checkpoint": meta["path"],
            "sha256": meta["sha256"], "setting": setting}


def load_export(entry: dict, device: torch.device | str | None = None) -> nn.Module:
    """The network an :func:`export_entry` names, built from the registry and loaded with ``weights_only=True``
    after its sha256 is checked; :class:`CheckpointError` (naming the file) when it is missing or altered."""
    from .models import build_model

    model = build_model(entry["model"], entry["dataset"])
    load_checkpoint(model, Path(entry["checkpoint"]), expected_sha256=entry["sha256"])
    return model.to(device if device is not None else default_device()).eval()


def state_hash(model: nn.Module) -> str:
    """sha256 over a model's parameters and buffers (identifies fine-tuning starting points)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def official_milestones(epochs: int, fractions: tuple[float, ...] = (1 / 3, 2 / 3, 8 / 9)) -> tuple[int, ...]:
    """JumpReLU's schedule (×0.2 at epochs 30/60/80 of 90) scaled to ``epochs``."""
    return tuple(sorted({m for m in (round(epochs * f) for f in fractions) if 0 < m < epochs}))


def trained_model(model: str, dataset: str, config: TrainConfig, train_size: int | None = None,
                  loss: Loss = cross_entropy, init: nn.Module | None = None,
                  epoch_callback: Callable[[int, nn.Module], dict] | None = None,
                  device: torch.device | str | None = None) -> tuple[nn.Module, dict]:
    """The registry model ``model`` trained on the first ``train_size`` training images of ``dataset``
    (all when ``None``), through the checkpoint cache. Returns ``(model, meta)`` as :func:`cached_train`."""
    from .data import load_dataset
    from .models import build_model

    data = load_dataset(dataset, "train")
    if train_size is not None:
        data = data.first(train_size)
    return cached_train(_registry_recipe(model, dataset, len(data)), lambda: build_model(model, dataset), data,
                        config, loss=loss, init=init, epoch_callback=epoch_callback, device=device)


def _registry_recipe(model: str, dataset: str, train_size: int) -> dict:
    """What a registry model trained on the first ``train_size`` training images of ``dataset`` embodies: the
    ``recipe`` that :func:`trained_model` gives :func:`cached_train`."""
    return {"model": model, "dataset": dataset, "train_size": train_size}


def trained_model_recipe(model: str, dataset: str, config: TrainConfig, train_size: int, loss: Loss = cross_entropy,
                         init: nn.Module | None = None,
                         epoch_callback: Callable[[int, nn.Module], dict] | None = None) -> dict:
    """The whole cache recipe (:func:`cache_recipe`) of :func:`trained_model`'s arguments, without loading any
    data: ``train_size`` is the number of images it trains on (the first ``train_size``; pass the training set's
    size for ``None``). :func:`checkpoint_path` of it is the file ``trained_model`` reads or writes."""
    return cache_recipe(_registry_recipe(model, dataset, train_size), config, train_size, loss=loss, init=init,
                        epoch_callback=epoch_callback)
