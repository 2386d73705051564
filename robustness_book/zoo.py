"""The model zoo: the plainly trained models that several chapters share, by name.

A zoo recipe (:class:`Recipe`) names everything that makes a model: the architecture, the data set, the first
``train_size`` training images, the :class:`~robustness_book.train.TrainConfig` and the loss (plain cross-entropy).
There is one recipe per name and profile (``smoke``, ``laptop``, ``paper``), defined once, below. Models are
trained and cached through :func:`robustness_book.train.trained_model`, so the checkpoint cache is keyed by the
recipe: two chapters that ask for the same recipe get the same file, and a reader who has run one chapter never
retrains its models in another.

* :func:`names`, :func:`recipe`, :func:`for_dataset`: the recipes (an unknown name or profile raises
  ``ValueError`` listing the known ones, before any work);
* :func:`get`: the trained model of a recipe (trained once, then loaded);
* :func:`variant`, :func:`find`, :func:`model_for`: what the chapters call. A chapter derives its training
  arguments from the zoo recipe of its data set and profile, with the reader's overrides applied
  (:func:`variant`); :func:`model_for` serves them from the zoo when they equal a zoo recipe and trains the
  chapter's own model otherwise (still cached by its recipe);
* :func:`status`, :func:`accuracy`, :func:`listing`, :func:`format_rows`: what ``python -m robustness_book models``
  shows. The clean accuracy of each zoo model on the first :data:`ACCURACY_IMAGES` test images is computed once
  and kept in a small index file beside the checkpoints (:data:`INDEX_NAME`, written atomically, recomputed when
  missing or when the checkpoint changed).

Layer: ``runner`` (beside :mod:`robustness_book.config` and :mod:`robustness_book.results`). The zoo imports data, models,
train and evaluate (the accuracy of the listing); chapters and the command line import it. It never imports a
defense or a chapter.

The models of one chapter only (an adversarially trained network, Deep Defense's fine-tuned ones, a reader's
own variant) are not in the zoo; they go through the same cache under their own recipes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from . import _io
from .data import DATASETS, dataset_info
from .runtime import checkpoint_dir
from .train import (CheckpointError, Loss, TrainConfig, checkpoint_path, cross_entropy, loss_spec, official_milestones,
                    recipe_key, trained_model, trained_model_recipe)

#: The profiles a zoo recipe is defined for (``auto`` resolves to one of them, see :mod:`robustness_book.config`).
PROFILES = ("smoke", "laptop", "paper")
#: The architecture each data set's zoo model uses: JumpReLU's networks (Erichson et al.).
ARCH = {"mnist": "lenet_like", "fashion_mnist": "lenet_like", "cifar10": "alex_like"}
#: Test images (the first N) of the clean accuracy the listing shows.
ACCURACY_IMAGES = 1000
#: The accuracy index, a file in the checkpoint folder.
INDEX_NAME = "zoo-index.json"

# ---------------------------------------------------------------------------------------------------------------
# The CIFAR-10 laptop recipe, in one place: the winner of the recipe study (``python -m robustness_book.recipe_study``,
# reference/recipes/cifar10-alex_like.json, shown on the running page). AlexLike, unchanged, on 49,000 training
# images (JumpReLU holds out the next 1,000 to choose kappa), one-cycle Nesterov SGD (peak lr 0.1, batch 256),
# crops and flips, bfloat16 autocast and channels-last layout (2.6× the float32 images/s on an AVX512-BF16 CPU):
# 79.5-80.8% clean on the first 1,000 test images after 9 epochs in the study for peak lr 0.05 or 0.1 (within
# their intervals; 0.1 measured highest); 8 epochs keep it under 10 minutes on 2 cores. The paper profile keeps the official recipe. CIFAR10_LAPTOP_TRAIN_SIZE must leave room for JumpReLU's
# validation images, which are the 1,000 training images after the training ones: at most 49,000.
CIFAR10_LAPTOP_TRAIN_SIZE = 49_000
CIFAR10_LAPTOP = TrainConfig(epochs=8, batch_size=256, lr=0.1, nesterov=True, schedule="onecycle",
                             precision="bf16", channels_last=True, augment=True)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """One zoo model: ``model`` trained on the first ``train_size`` training images of ``dataset`` with
    ``config`` and ``loss``. ``source`` is ``"paper"`` for a paper's official recipe, ``"book"`` for a
    reduced one."""

    name: str
    profile: str
    model: str
    dataset: str
    train_size: int
    config: TrainConfig
    source: str
    description: str
    loss: Loss = cross_entropy

    def kwargs(self) -> dict:
        """The keyword arguments of :func:`robustness_book.train.trained_model` (and :func:`model_for`)."""
        return {"model": self.model, "dataset": self.dataset, "config": self.config, "train_size": self.train_size,
                "loss": self.loss}

    def cache_recipe(self) -> dict:
        """The whole recipe as :func:`robustness_book.train.cached_train` keys it (through ``trained_model``): train's
        own :func:`~robustness_book.train.trained_model_recipe` of :meth:`kwargs`, so the key is defined in one place."""
        return trained_model_recipe(**self.kwargs())

    def key(self) -> str:
        """The checkpoint cache's key of this recipe."""
        return recipe_key(self.cache_recipe())

    def path(self, cache: Path | str | None = None) -> Path:
        """Where the checkpoint cache keeps this model (``cache``: the folder, default the cache's)."""
        return checkpoint_path(self.cache_recipe(), cache)


# --------------------------------------------------------------------------- the recipes, one definition each

# MNIST and Fashion-MNIST (LeNetLike), one recipe for both chapters that train it (baselines, jumprelu):
#
# * smoke: 1 epoch on the first 10,000 images (chapter 1's smoke model; about a second on 2 cores, and a model
#   well above chance, so the smoke pages exercise a real verdict);
# * laptop: 6 epochs on the first 55,000 images. Chapter 1 trained 6 epochs and JumpReLU 3; we keep 6 because
#   both chapters compare against a trained-to-convergence network (JumpReLU's table sets its clean accuracy
#   beside the paper's) and an MNIST epoch costs about 7 s on 2 cores, so the 3 more epochs cost about 20 s,
#   once, for the shared model (and as much again for JumpReLU's robust model, which follows the same schedule);
# * paper: the official recipe, 90 epochs, SGD momentum 0.9, weight decay 5e-4, batch 128, lr 0.02 × 0.2 at
#   epochs 30, 60, 80, on the first 55,000 images.
#
# 55,000, not 60,000: JumpReLU chooses kappa on the 5,000 training images after the training ones, which no
# model it attacks may have seen; sharing the model means chapter 1 trains on the same 55,000.
_GRAY = {
    "smoke": (10_000, TrainConfig(epochs=1, lr=0.02), "book"),
    "laptop": (55_000, TrainConfig(epochs=6, lr=0.02, milestones=official_milestones(6)), "book"),
    "paper": (55_000, TrainConfig(epochs=90, lr=0.02, milestones=official_milestones(90)), "paper"),
}
# CIFAR-10 (AlexLike). smoke: JumpReLU's smoke size (1 epoch on 1,200 images, about 9 s; chapter 1's 10,000
# would cost roughly a minute per smoke run); laptop: see CIFAR10_LAPTOP above; paper: the official recipe with
# random crops (pad 4) and flips, on the first 45,000 images (JumpReLU holds out the next 5,000).
_COLOR = {
    "smoke": (1_200, TrainConfig(epochs=1, lr=0.02, augment=True), "book"),
    "laptop": (CIFAR10_LAPTOP_TRAIN_SIZE, CIFAR10_LAPTOP, "book"),
    "paper": (45_000, TrainConfig(epochs=90, lr=0.02, milestones=official_milestones(90), augment=True), "paper"),
}


def _describe(model: str, dataset: str, n: int, config: TrainConfig, source: str) -> str:
    what = "the official recipe" if source == "paper" else "the book's reduced recipe"
    schedule = (f"× {config.gamma:g} at epochs {', '.join(map(str, config.milestones))}" if config.milestones
                else "constant" if config.schedule == "step" else config.schedule)
    return (f"{model} on the first {n:,} {dataset} training images, plain cross-entropy, {config.epochs} epochs of "
            f"SGD (lr {config.lr:g}, {schedule}, batch {config.batch_size})"
            + (", random crops and flips" if config.augment else "") + f": {what}")


def _build_registry() -> dict[tuple[str, str], Recipe]:
    out = {}
    for dataset, table in (("mnist", _GRAY), ("fashion_mnist", _GRAY), ("cifar10", _COLOR)):
        model = ARCH[dataset]
        for profile, (n, config, source) in table.items():
            name = f"{model}-{dataset}"
            out[name, profile] = Recipe(name, profile, model, dataset, n, config, source,
                                        _describe(model, dataset, n, config, source))
    return out


#: Every recipe, by ``(name, profile)``.
REGISTRY: dict[tuple[str, str], Recipe] = _build_registry()


def names() -> list[str]:
    """The zoo's model names, in the book's data-set order."""
    return list(dict.fromkeys(name for name, _ in REGISTRY))


def _check_profile(profile: str) -> None:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r} for the model zoo; known: {', '.join(PROFILES)}")


def recipe(name: str, profile: str) -> Recipe:
    """The zoo recipe ``name`` at ``profile``. Raises ``ValueError`` listing the known names (or profiles)."""
    if name not in names():
        raise ValueError(f"unknown model {name!r}; the zoo has: {', '.join(names())}")
    _check_profile(profile)
    return REGISTRY[name, profile]


def for_dataset(dataset: str, profile: str) -> Recipe:
    """The zoo recipe of ``dataset``'s architecture (:data:`ARCH`) at ``profile``."""
    if dataset not in ARCH:
        raise ValueError(f"unknown data set {dataset!r}; the zoo covers: {', '.join(ARCH)}")
    return recipe(f"{ARCH[dataset]}-{dataset}", profile)


def get(name: str, profile: str, device=None) -> tuple[nn.Module, dict]:
    """``(model, meta)``: the zoo model ``name`` at ``profile``, trained once and then loaded from the cache
    (a corrupted checkpoint is reported and retrained). ``meta`` as :func:`robustness_book.train.cached_train`
    returns it (``cached``, ``train_seconds``, ``history``, ``path``), plus ``zoo`` (the name) and
    ``accuracy`` (clean, first :data:`ACCURACY_IMAGES` test images, from the index)."""
    r = recipe(name, profile)  # an unknown name fails here, before any work
    model, meta = trained_model(**r.kwargs(), device=device)
    try:
        acc, _ = _accuracy(r, model, meta.get("sha256"))  # an unwritable index: the listing reports it
    except (OSError, RuntimeError):  # e.g. no test images offline: the listing measures it later
        acc = None
    return model, {**meta, "zoo": r.name, "accuracy": acc}


# --------------------------------------------------------------------------- what the chapters call


def _scaled_milestones(config: TrainConfig, epochs: int) -> tuple[int, ...]:
    if config.milestones == official_milestones(config.epochs):
        return official_milestones(epochs)
    scaled = {round(m * epochs / config.epochs) for m in config.milestones}
    return tuple(sorted(m for m in scaled if 0 < m < epochs))


def variant(base: Recipe, *, model: str | None = None, train_size: int | None = None, epochs: int | None = None,
            lr: float | None = None, augment: bool | None = None, seed: int | None = None) -> dict:
    """The :func:`robustness_book.train.trained_model` keyword arguments of ``base`` with the given fields changed
    (``None``: keep ``base``'s). New epochs rescale a step schedule's milestones (official ones stay official:
    :func:`robustness_book.train.official_milestones`). Everything else (batch, momentum, schedule...) stays the zoo's,
    so a reader's override changes only what it names."""
    config = base.config
    changes: dict[str, Any] = {}
    if epochs is not None and epochs != config.epochs:
        changes["epochs"] = epochs
        if config.schedule == "step":
            changes["milestones"] = _scaled_milestones(config, epochs)
    for field, value in (("lr", lr), ("augment", augment), ("seed", seed)):
        if value is not None and value != getattr(config, field):
            changes[field] = value
    return {"model": base.model if model is None else model, "dataset": base.dataset,
            "config": replace(config, **changes) if changes else config,
            "train_size": base.train_size if train_size is None else train_size, "loss": base.loss}


def find(model: str, dataset: str, config: TrainConfig, train_size: int | None = None,
         loss: Loss = cross_entropy) -> Recipe | None:
    """The zoo recipe these :func:`robustness_book.train.trained_model` arguments describe (the same cache key), or
    ``None``."""
    for r in REGISTRY.values():
        if ((r.model, r.dataset, r.train_size) == (model, dataset, train_size)
                and r.config.key() == config.key() and loss_spec(r.loss) == loss_spec(loss)):
            return r
    return None


def model_for(model: str, dataset: str, config: TrainConfig, train_size: int | None = None,
              loss: Loss = cross_entropy, device=None) -> tuple[nn.Module, dict]:
    """``(model, meta)`` for :func:`robustness_book.train.trained_model`'s arguments: the zoo's model (:func:`get`)
    when a zoo recipe equals them, so chapters share it; otherwise the chapter's own model, trained or loaded
    through the same cache (``meta["zoo"]`` is ``None`` then)."""
    shared = find(model, dataset, config, train_size, loss)
    if shared is not None:
        return get(shared.name, shared.profile, device=device)
    net, meta = trained_model(model, dataset, config, train_size=train_size, loss=loss, device=device)
    return net, {**meta, "zoo": None}


# --------------------------------------------------------------------------- the cache, as the listing sees it


def status(r: Recipe, cache: Path | str | None = None) -> dict:
    """What the cache holds for ``r``, without loading the weights: ``state`` is ``"not cached"``,
    ``"cached"`` (with ``sha256``, ``size`` in bytes and ``train_seconds``) or ``"corrupted"`` (with
    ``error``: the checkpoint's hash differs from its sidecar's, the sidecar is unreadable or missing, or it was
    written for another recipe)."""
    path = r.path(cache)
    if not path.exists():
        return {"state": "not cached", "path": str(path)}
    side = path.with_suffix(".json")
    try:
        meta = json.loads(side.read_text())
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as err:
        return {"state": "corrupted", "path": str(path), "error": f"metadata {side.name} unreadable ({err})"}
    digest = _io.sha256_file(path)
    if digest != meta.get("sha256"):
        return {"state": "corrupted", "path": str(path),
                "error": f"sha256 {digest[:12]}… differs from the recorded {str(meta.get('sha256'))[:12]}…"}
    if meta.get("recipe") != json.loads(json.dumps(r.cache_recipe(), default=str)):
        return {"state": "corrupted", "path": str(path), "error": "written for another recipe"}
    return {"state": "cached", "path": str(path), "sha256": digest, "size": path.stat().st_size,
            "train_seconds": meta.get("train_seconds")}


def _index_path(cache: Path | str | None = None) -> Path:
    return Path(cache or checkpoint_dir()) / INDEX_NAME


def read_index(cache: Path | str | None = None) -> dict:
    """The accuracy index: ``{checkpoint file name: {"name", "profile", "sha256", "accuracy", "n"}}`` (empty
    when missing or unreadable; it is rebuilt as models are listed or trained)."""
    try:
        data = json.loads(_index_path(cache).read_text())
    except (OSError, ValueError):
        return {}
    return data.get("models", {}) if isinstance(data, dict) else {}


def _write_index_entry(file: str, entry: dict, cache: Path | str | None = None) -> None:
    models = read_index(cache)
    models[file] = entry
    _io.atomic_write_text(_index_path(cache), json.dumps({"version": 1, "models": models}, indent=1,
                                                         sort_keys=True))


def _test_accuracy(model: nn.Module, dataset: str) -> tuple[float, int]:
    from .data import load_dataset
    from .evaluate import predict

    test = load_dataset(dataset, "test")
    test = test.first(min(ACCURACY_IMAGES, len(test)))
    correct = int((predict(model, test.x) == test.y.cpu()).sum())  # predict returns CPU labels
    return correct / len(test), len(test)  # exactly k / n


def accuracy(r: Recipe, model: nn.Module | None = None, sha256: str | None = None,
             cache: Path | str | None = None) -> float | None:
    """Clean accuracy of ``r``'s cached model on the first :data:`ACCURACY_IMAGES` test images: read from the
    index, else measured (on ``model`` when given, else on the checkpoint, loaded and verified) and stored.
    ``None`` when the model is not cached. Raises :class:`robustness_book.train.CheckpointError` for a corrupted
    checkpoint, ``OSError`` when the index cannot be written (:func:`row` shows the value and says so)."""
    value, unsaved = _accuracy(r, model, sha256, cache)
    if unsaved is not None:
        raise unsaved
    return value


def _accuracy(r: Recipe, model: nn.Module | None = None, sha256: str | None = None,
              cache: Path | str | None = None) -> tuple[float | None, OSError | None]:
    """:func:`accuracy`, and the error of writing the index (``None`` when stored): a folder the index cannot be
    written to must not hide an accuracy that was measured."""
    from .models import build_model
    from .train import load_checkpoint

    path = r.path(cache)
    if sha256 is None:
        state = status(r, cache)
        if state["state"] == "not cached":
            return None, None
        if state["state"] == "corrupted":
            raise CheckpointError(f"checkpoint {path} is corrupted: {state['error']}")
        sha256 = state["sha256"]
    entry = read_index(cache).get(path.name)
    if entry and entry.get("sha256") == sha256 and entry.get("accuracy") is not None:
        return entry["accuracy"], None
    if model is None:
        model = build_model(r.model, r.dataset)
        load_checkpoint(model, path, expected_sha256=sha256)
        model.eval()
    value, n = _test_accuracy(model, r.dataset)
    try:
        _write_index_entry(path.name, {"name": r.name, "profile": r.profile, "sha256": sha256, "accuracy": value,
                                       "n": n}, cache)
    except OSError as err:
        return value, err
    return value, None


def _unsaved_note(err: OSError, cache: Path | str | None = None) -> str:
    folder = _index_path(cache).parent
    return (f"accuracy measured but not saved: the index {INDEX_NAME} cannot be written, {folder} is not writable "
            f"({err.strerror or err}); it is measured again at each listing")


def row(r: Recipe, cache: Path | str | None = None, measure: bool = True) -> dict:
    """One line of the listing: the recipe, the cache's state and, for a cached model, its clean accuracy
    (``measure``: compute it when the index lacks it), file size and training seconds. Never raises for a
    corrupted checkpoint: it is reported in ``state`` and ``error``."""
    out = {"name": r.name, "model": r.model, "dataset": r.dataset, "profile": r.profile, "source": r.source,
           "epochs": r.config.epochs, "train_images": r.train_size, "accuracy": None, "size": None,
           "train_seconds": None, "error": None}
    state = status(r, cache)
    out.update(state=state["state"], path=state["path"], error=state.get("error"))
    if state["state"] != "cached":
        return out
    out.update(size=state["size"], train_seconds=state["train_seconds"])
    entry = read_index(cache).get(Path(state["path"]).name)
    if entry and entry.get("sha256") == state["sha256"]:
        out["accuracy"] = entry.get("accuracy")
    elif measure:
        try:
            out["accuracy"], unsaved = _accuracy(r, sha256=state["sha256"], cache=cache)
            if unsaved is not None:
                out["error"] = _unsaved_note(unsaved, cache)
        except CheckpointError as err:
            out.update(state="corrupted", error=str(err))
        except (OSError, RuntimeError) as err:  # e.g. the test images are not available offline
            out["error"] = f"accuracy not measured: {err}"
    return out


def listing(profile: str = "laptop", cache: Path | str | None = None, measure: bool = True) -> list[dict]:
    """:func:`row` for every zoo recipe at ``profile``."""
    _check_profile(profile)
    return [row(REGISTRY[name, profile], cache, measure) for name in names()]


def format_rows(rows: list[dict]) -> str:
    """The listing as aligned text, one line per model (corrupted ones say why)."""
    head = ("name", "model", "data set", "profile", "source", "epochs", "train images", "cached", "accuracy",
            "size", "train s")
    lines = []
    for r in rows:
        acc = "–" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}% ({ACCURACY_IMAGES:,} test)"
        size = "–" if r["size"] is None else f"{r['size'] / 2 ** 20:.1f} MiB"
        secs = "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        state = {"cached": "yes", "not cached": "no"}.get(r["state"], r["state"].upper())
        lines.append((r["name"], r["model"], r["dataset"], r["profile"], r["source"], str(r["epochs"]),
                      f"{r['train_images']:,}", state, acc, size, secs))
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    text = ["  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip() for line in (head, *lines)]
    for r in rows:
        if r["error"]:
            text.append(f"{r['name']} ({r['profile']}): {r['error']}")
    return "\n".join(text)


def models_command(action: str = "list", name: str | None = None, profile: str = "laptop") -> int:
    """``python -m robustness_book models [--profile P]`` (every zoo recipe of the profile, cached or not) and
    ``python -m robustness_book models train NAME [--profile P]`` (train or load one, then print its line). An
    unknown name or profile prints one error listing the known ones and returns 2 before any work; a corrupted
    checkpoint is reported and retrained."""
    import sys
    import warnings

    from .config import resolve_profile

    try:
        profile = resolve_profile(profile)
        _check_profile(profile)
        if action == "train":
            if name is None:
                raise ValueError(f"models train needs a NAME; the zoo has: {', '.join(names())}")
            r = recipe(name, profile)
        elif action != "list" or name is not None:
            raise ValueError(f"expected `models` or `models train NAME`, got {' '.join(filter(None, [action, name]))}")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if action == "list":
        print(format_rows(listing(profile)))
        return 0
    before = status(r)
    with warnings.catch_warnings():
        if before["state"] == "corrupted":
            print(f"{r.name} ({profile}): the cached checkpoint is corrupted ({before['error']}); retraining it",
                  file=sys.stderr)
            warnings.simplefilter("ignore", UserWarning)  # the cache's own warning says the same
        _, meta = get(r.name, profile)
    print(format_rows([row(r)]))
    print(("loaded from the cache" if meta["cached"] else f"trained in {meta['train_seconds']:.0f} s")
          + f": {meta['path']}")
    return 0


def _check_registry() -> None:
    """Every recipe fits its data set (import-time check, so a bad swap of a constant fails at once)."""
    for r in REGISTRY.values():
        if r.dataset not in DATASETS or not 0 < r.train_size <= dataset_info(r.dataset).n_train:
            raise ValueError(f"zoo recipe {r.name} ({r.profile}): train_size={r.train_size} does not fit "
                             f"{r.dataset}")


_check_registry()
