"""The CIFAR-10 training-recipe study (``python -m robustness_book recipes``): clean accuracy per minute of training.

Each candidate recipe trains the paper's architecture, unchanged, on the full 50,000-image training set through
the one training loop for a fixed wall-clock budget, and is evaluated on the first 1,000 test images after every
epoch. The result, with provenance, goes to ``reference/recipes/<dataset>-<model>.json``: a measurement of this
machine, committed so the running page can show it; ``recipe_figure`` draws it.

The recipes are the book's, not the papers' (the paper profile keeps the official recipes).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ._io import atomic_write_text
from .data import dataset_info, load_dataset
from .evaluate import accuracy
from .models import build_model
from .results import git_commit, repo_root
from .train import TrainConfig, official_milestones, train


def whiten_first_conv(model: nn.Sequential, x: torch.Tensor, eps: float = 1e-2) -> None:
    """Initialize the first convolution as a patch-whitening filter bank: the eigenvectors of the covariance of
    its input patches (after the model's normalization layer), scaled by 1/sqrt(eigenvalue + eps), with both
    signs, in place of the first 2·(C·k·k) filters; the remaining filters keep their random initialization."""
    norm, conv = model[0], next(m for m in model if isinstance(m, nn.Conv2d))
    with torch.no_grad():
        patches = nn.functional.unfold(norm(x), conv.kernel_size)  # (n, C·k·k, L)
        patches = patches.transpose(1, 2).reshape(-1, patches.shape[1]).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigval, eigvec = torch.linalg.eigh(cov)
        filters = (eigvec.T / torch.sqrt(eigval[:, None] + eps)).float().view(-1, *conv.weight.shape[1:])
        k = min(2 * len(filters), conv.out_channels)
        conv.weight[:k] = torch.cat([filters, -filters])[:k]
        if conv.bias is not None:
            conv.bias[:k] = 0


def _epochs_for(budget_s: float, images_per_s: float, n: int) -> int:
    """Whole epochs of ``n`` images that fit ``budget_s`` seconds at ``images_per_s``; a budget that cannot hold
    one epoch is refused (the study compares recipes at equal time, so it would not be met)."""
    if not (budget_s > 0 and math.isfinite(budget_s)):
        raise ValueError(f"budget {budget_s!r} s must be a finite number of seconds > 0")
    epochs = int(budget_s * images_per_s / n)
    if epochs < 1:
        raise ValueError(f"a budget of {budget_s:g} s cannot be met: one epoch of {n:,} images takes about "
                         f"{n / images_per_s:.0f} s at this recipe's {images_per_s:g} images/s; give at least that")
    return epochs


#: The candidates, in the order of the study. ``rate`` is the images/s the recipe reaches on the reference
#: machine (2 cores), used only to fit its epochs into the budget; ``whiten`` adds the patch-whitening init.
CANDIDATES = {
    "official-step": dict(config=TrainConfig(epochs=1, batch_size=128, lr=0.02, augment=True), rate=300),
    "onecycle-nesterov": dict(config=TrainConfig(epochs=1, batch_size=256, lr=0.05, augment=True, nesterov=True,
                                                 schedule="onecycle"), rate=320),
    "onecycle-nesterov-bf16": dict(config=TrainConfig(epochs=1, batch_size=256, lr=0.05, augment=True,
                                                      nesterov=True, schedule="onecycle", precision="bf16",
                                                      channels_last=True), rate=800),
    "onecycle-bf16-lr0.1": dict(config=TrainConfig(epochs=1, batch_size=256, lr=0.1, augment=True, nesterov=True,
                                                   schedule="onecycle", precision="bf16", channels_last=True),
                                rate=800),
    "onecycle-bf16-whiten": dict(config=TrainConfig(epochs=1, batch_size=256, lr=0.05, augment=True,
                                                    nesterov=True, schedule="onecycle", precision="bf16",
                                                    channels_last=True), rate=800, whiten=True),
}


def run_candidate(name: str, model_name: str = "alex_like", dataset: str = "cifar10", budget_s: float = 600,
                  n_test: int = 1000, seed: int = 0) -> dict:
    spec = CANDIDATES[name]
    train_set, test = load_dataset(dataset, "train"), load_dataset(dataset, "test").first(n_test)
    epochs = _epochs_for(budget_s, spec["rate"], len(train_set))
    config = replace(spec["config"], epochs=epochs, seed=seed)
    if config.schedule == "step":
        config = replace(config, milestones=official_milestones(epochs))
    torch.manual_seed(seed)
    model = build_model(model_name, dataset)
    if spec.get("whiten"):
        whiten_first_conv(model, train_set.x[:5000])
    start = time.perf_counter()
    history = train(model, train_set, config, device="cpu",
                    epoch_callback=lambda epoch, m: {"test_accuracy": accuracy(m, test.x, test.y)},
                    desc=name)
    wall = time.perf_counter() - start
    minutes, points = 0.0, []
    for e in history["epochs"]:
        minutes += e["seconds"] / 60
        points.append({"epoch": e["epoch"], "minutes": round(minutes, 3), "accuracy": e["test_accuracy"],
                       "loss": e["loss"]})
    return {"name": name, "config": config.key(), "whiten": bool(spec.get("whiten")), "epochs": epochs,
            "train_minutes": round(minutes, 3), "wall_minutes": round(wall / 60, 3), "points": points,
            "final_accuracy": points[-1]["accuracy"], "n_test": len(test.y)}


def study_path(model_name: str = "alex_like", dataset: str = "cifar10") -> Path:
    return repo_root() / "reference" / "recipes" / f"{dataset}-{model_name}.json"


def run_study(names: list[str] | None = None, budget_s: float = 600, model_name: str = "alex_like",
              dataset: str = "cifar10") -> Path:
    """Run the candidates one after the other, rewriting the JSON after each (a cut-off study keeps its runs)."""
    names = names or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown recipe(s) {', '.join(unknown)}; the study has: {', '.join(CANDIDATES)}")
    n_train = dataset_info(dataset).n_train
    for name in names:  # every budget checked before the first run starts
        _epochs_for(budget_s, CANDIDATES[name]["rate"], n_train)
    path = study_path(model_name, dataset)
    done = json.loads(path.read_text())["runs"] if path.exists() else []
    for name in names:
        print(f"[recipes] {name}: budget {budget_s:.0f} s ...", flush=True)
        run = run_candidate(name, model_name, dataset, budget_s)
        print(f"[recipes] {name}: {run['final_accuracy']:.1%} after {run['train_minutes']:.1f} min "
              f"({run['epochs']} epochs)", flush=True)
        done = [r for r in done if r["name"] != name] + [run]
        content = {"model": model_name, "dataset": dataset, "budget_seconds": budget_s, "runs": done,
                   "provenance": {"git_commit": git_commit(), "torch": torch.__version__,
                                  "threads": torch.get_num_threads(), "cpu": platform.processor() or "cpu",
                                  "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}}
        atomic_write_text(path, json.dumps(content, indent=1))
    return path


def recipe_figure(path: Path | None = None):
    """Clean test accuracy against minutes of training, one line per recipe of the study in ``path``."""
    import matplotlib.pyplot as plt

    path = Path(path or study_path())
    if not path.exists():
        raise FileNotFoundError(f"no recipe study at {path}; make it with: python -m robustness_book.recipe_study")
    study = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for run in study["runs"]:
        ax.plot([0] + [p["minutes"] for p in run["points"]], [0.1] + [p["accuracy"] for p in run["points"]],
                marker="o", ms=3, label=f"{run['name']} ({run['final_accuracy']:.1%})")
    ax.axvline(study["budget_seconds"] / 60, color="gray", ls="--", lw=1, label="budget")
    ax.axhline(0.7, color="red", ls=":", lw=1, label="goal 70%")
    prov = study["provenance"]
    ax.set(xlabel=f"minutes of training ({prov['cores']} CPU cores, {prov['threads']} threads)",
           ylabel=f"clean accuracy, first {study['runs'][0]['n_test']} test images", ylim=(0, 1),
           title=f"{study['model']} on the full {study['dataset']} training set")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m robustness_book.recipe_study", description=__doc__)
    parser.add_argument("candidates", nargs="*", help=f"recipes to run (default: all): {', '.join(CANDIDATES)}")
    parser.add_argument("--budget", type=float, default=600, help="seconds of training per recipe")
    parser.add_argument("--figure", default=None, metavar="PNG", help="only draw the study's figure into PNG")
    args = parser.parse_args(argv)
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(unknown)}; known: {', '.join(CANDIDATES)}")
    if args.figure:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        recipe_figure().savefig(args.figure, dpi=110)
        return 0
    run_study(args.candidates or None, budget_s=args.budget)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
