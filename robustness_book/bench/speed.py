"""The default mode, **speed near the limit** (``python -m robustness_book bench``).

For the chapter-1 model (LeNetLike on MNIST test images) and for AlexLike (CIFAR-10 shape, random inputs and
weights: speed does not depend on them) it measures this machine's limit, the raw forward+backward images/s
(input gradient only, model in eval mode, as an attack does) and the raw forward+backward+optimizer-step images/s
(train mode, SGD as :class:`~robustness_book.train.TrainConfig`), and prints three ratios to those limits, each with
its goal (:data:`GOALS`). :func:`speed_ratios` is the pure arithmetic; :func:`measure_speed` times one model;
:func:`run_speed` runs every :class:`SpeedCase`.
"""
from __future__ import annotations

import copy
import math
import os
import resource
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

import torch
from torch import nn

from .. import attacks, zoo
from ..chapters import baselines, get_chapter
from ..config import resolve
from ..data import ArrayDataset, dataset_info, load_dataset, threat_eps
from ..models import build_model
from ..timing import calls_per_second, timed
from ..train import TrainConfig, train
from ._common import provenance, verdict

#: Each ratio's goal: the measured rate ÷ this machine's limit must reach it.
GOALS = {"pgd": 0.9, "train": 0.85, "deepfool": 0.8}
#: What each ratio divides, in words (printed and on the page).
RATIO_HELP = {
    "pgd": "PGD gradient steps/s ÷ raw fwd+bwd/s",
    "train": "train() images/s ÷ raw fwd+bwd+step/s",
    "deepfool": "DeepFool gradient rows/s ÷ raw fwd+bwd/s",
}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --------------------------------------------------------------------------- ratios (pure)


def speed_ratios(t: dict) -> dict:
    """The machine's limit and the three ratios to it, from timings ``t`` (seconds per call of each):

    ``fwd_bwd``: ``{"images", "seconds"}`` of one raw forward+backward batch at the clean images (where DeepFool
    starts); ``fwd_bwd_ball`` (optional, else ``fwd_bwd``): the same at random points of the eps-ball around them
    (where PGD starts: a max-pool network is a few percent slower on such noisy inputs, a cost of the model's
    own arithmetic, not of the attack); ``fwd_bwd_step``: forward+backward+optimizer step; ``pgd``: ``{"images",
    "steps", "seconds"}`` of one PGD call; ``train``: ``{"images", "seconds"}`` of one
    :func:`~robustness_book.train.train` epoch; ``deepfool``: ``{"images", "rows", "seconds"}`` of one DeepFool call
    (``rows``: the gradient rows it computed). Returns ``{"limit": {...}, "attack_images_per_s": {...},
    "ratios": [...]}``; each ratio has ``name``, ``value``, ``goal``, ``pass``, its rate and the limit it divides.
    """
    raw = t["fwd_bwd"]["images"] / t["fwd_bwd"]["seconds"]
    ball = t.get("fwd_bwd_ball", t["fwd_bwd"])
    raw_ball = ball["images"] / ball["seconds"]
    raw_step = t["fwd_bwd_step"]["images"] / t["fwd_bwd_step"]["seconds"]
    rates = {
        "pgd": (t["pgd"]["images"] * t["pgd"]["steps"] / t["pgd"]["seconds"], raw_ball, "gradient steps/s (images)"),
        "train": (t["train"]["images"] / t["train"]["seconds"], raw_step, "images/s"),
        "deepfool": (t["deepfool"]["rows"] / t["deepfool"]["seconds"], raw, "gradient rows/s"),
    }
    ratios = []
    for name, (rate, limit, unit) in rates.items():
        value = rate / limit
        ratios.append({"name": name, "what": RATIO_HELP[name], "rate": rate, "unit": unit, "limit": limit,
                       "value": value, "goal": GOALS[name], "pass": value >= GOALS[name]})
    images_per_s = {"pgd": t["pgd"]["images"] / t["pgd"]["seconds"],
                    "deepfool": t["deepfool"]["images"] / t["deepfool"]["seconds"]}
    return {"limit": {"fwd_bwd_images_per_s": raw, "fwd_bwd_ball_images_per_s": raw_ball,
                      "fwd_bwd_step_images_per_s": raw_step},
            "attack_images_per_s": images_per_s, "ratios": ratios}



# --------------------------------------------------------------------------- measuring


def seconds_per_call(fns: dict[str, Callable[[], Any]], device: torch.device, min_seconds: float,
                     rounds: int) -> dict[str, float]:
    """Seconds per call of each function of ``fns``: the best of ``rounds`` rounds of back-to-back calls, each
    round lasting about ``min_seconds`` (at least one call), after one untimed warm-up call of each, which also
    sizes the rounds. The rounds are interleaved (a round of every function, then the next round), so the
    figures a ratio divides are taken close together in time; the best, not the mean, because the figure is
    what the machine can do and noise from other work only ever slows a call."""
    repeats = {}
    for name, fn in fns.items():
        _, probe = timed(fn)
        repeats[name] = max(1, math.ceil(min_seconds / max(probe, 1e-9)))
    best = {name: math.inf for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], 1.0 / calls_per_second(fn, repeats[name], device, warmup=0))
    return best


@dataclass(frozen=True)
class SpeedCase:
    """One model of the speed bench: the attacks' batch and PGD steps; the training loop runs the zoo recipe of
    the data set at ``train_profile`` (batch size, precision, memory layout, augmentation: the book's training)
    for one epoch of ``train_batches`` batches."""

    model: str
    dataset: str
    batch_size: int
    pgd_steps: int
    train_batches: int
    train_profile: str = "laptop"


#: The chapter-1 model (trained, on test images) and AlexLike (random weights and inputs).
SPEED_CASES = (SpeedCase("lenet_like", "mnist", batch_size=256, pgd_steps=20, train_batches=40),
               SpeedCase("alex_like", "cifar10", batch_size=64, pgd_steps=10, train_batches=8))


def train_config(case: SpeedCase, seed: int = 0) -> TrainConfig:
    """The training loop's config of ``case``: the zoo recipe's, for one epoch, seeded."""
    base = zoo.for_dataset(case.dataset, case.train_profile).config
    return replace(base, epochs=1, milestones=(), seed=seed)


def measure_speed(model: nn.Module, x: torch.Tensor, y: torch.Tensor, case: SpeedCase, *,
                  min_seconds: float = 2.0, rounds: int = 3, seed: int = 0) -> dict:
    """Timings of :func:`speed_ratios` for ``model`` (eval-mode attacks on ``x, y``) and a fresh copy of its
    architecture (training on random data of ``x``'s shape). ``model`` is not changed."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    n = len(y)
    model.eval()

    eps = threat_eps(case.dataset)
    g_ball = torch.Generator().manual_seed(seed)
    x_ball = (x + (2 * torch.rand(x.shape, generator=g_ball).to(device) - 1) * eps).clamp(0, 1)  # PGD's kind of start

    def raw_at(inputs: torch.Tensor) -> Callable[[], None]:
        def fwd_bwd():
            xr = inputs.clone().requires_grad_(True)
            torch.autograd.grad(nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)
        return fwd_bwd

    # training: a fresh model of the same architecture on in-memory random data. The limit runs the recipe's
    # arithmetic (batch, autocast precision, memory layout, SGD) on one batch, without the loop around it.
    config = train_config(case, seed)
    n_train = config.batch_size * case.train_batches
    g = torch.Generator().manual_seed(seed)
    n_classes = dataset_info(case.dataset).num_classes
    data = ArrayDataset(case.dataset, "random", torch.rand((n_train, *x.shape[1:]), generator=g),
                        torch.randint(0, n_classes, (n_train,), generator=g), "random")
    torch.manual_seed(seed)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    fresh = build_model(case.model, case.dataset).to(device).train()
    trained = copy.deepcopy(fresh)
    fresh.to(memory_format=layout)
    opt = torch.optim.SGD(fresh.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay, nesterov=config.nesterov)
    xb = data.x[:config.batch_size].to(device).contiguous(memory_format=layout)
    yb = data.y[:config.batch_size].to(device)

    def fwd_bwd_step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
            loss = nn.functional.cross_entropy(fresh(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def train_epoch():
        # no progress bar, as in the chapters the runner executes (it sets ROBUSTNESS_PROGRESS=0 too)
        old = os.environ.get("ROBUSTNESS_PROGRESS")
        os.environ["ROBUSTNESS_PROGRESS"] = "0"
        try:
            train(trained, data, config, device=device, desc="bench")
        finally:
            if old is None:
                del os.environ["ROBUSTNESS_PROGRESS"]
            else:
                os.environ["ROBUSTNESS_PROGRESS"] = old

    def pgd():
        attacks.pgd_linf(model, x, y, eps=eps, steps=case.pgd_steps, random_start=True, early_stop=False)

    last: dict = {}

    def deepfool():
        last["result"] = attacks.deepfool(model, x, y, norm=2, max_iter=50)

    sec = seconds_per_call({"fwd_bwd": raw_at(x), "deepfool": deepfool, "fwd_bwd_ball": raw_at(x_ball), "pgd": pgd,
                            "fwd_bwd_step": fwd_bwd_step, "train": train_epoch}, device, min_seconds, rounds)
    t = {
        "fwd_bwd": {"images": n, "seconds": sec["fwd_bwd"]},
        "fwd_bwd_ball": {"images": n, "seconds": sec["fwd_bwd_ball"], "eps": eps},
        "fwd_bwd_step": {"images": config.batch_size, "seconds": sec["fwd_bwd_step"]},
        "pgd": {"images": n, "steps": case.pgd_steps, "seconds": sec["pgd"]},
        "train": {"images": n_train, "seconds": sec["train"], "config": config.key(), "recipe": config.describe()},
    }
    iterations = last["result"].iterations
    k = n_classes - 1  # the candidate classes of untargeted DeepFool: every class but the original one
    t["deepfool"] = {"images": n, "rows": int(iterations.sum()) * k, "seconds": sec["deepfool"], "candidates": k,
                     "mean_iterations": float(iterations.float().mean()),
                     "fooled": float(last["result"].fooled.float().mean())}
    return t


def _case_inputs(case: SpeedCase, profile: str, seed: int = 0):
    """``(model, x, y, source)`` of a speed case: chapter 1's trained model on its test images for the
    chapter-1 model, else random weights, random inputs and the model's own predictions as labels."""
    if case.model == "lenet_like" and case.dataset == "mnist":
        cfg = resolve(get_chapter("baselines"), profile=profile)
        if cfg.model == case.model and cfg.dataset == case.dataset:
            model, _ = baselines.train_model(cfg)  # the chapter's own recipe: the cache holds one model, not two
            test = load_dataset(case.dataset, "test").first(case.batch_size)
            return model.eval(), test.x, test.y, f"chapter 1 ({profile} recipe), first {case.batch_size} test images"
    torch.manual_seed(seed)
    model = build_model(case.model, case.dataset).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((case.batch_size, *dataset_info(case.dataset).shape), generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y, "random weights, random inputs, labels = the model's predictions"


def speed_entry(case: SpeedCase, source: str, device: torch.device | str, timings: dict) -> dict:
    """One model's part of the speed JSON: the case, where its inputs came from, the timings, limits and ratios."""
    return {**asdict(case), "source": source, "device": str(device), "timings": timings, **speed_ratios(timings)}


def run_speed(profile: str = "smoke", min_seconds: float = 2.0, rounds: int = 3,
              cases: tuple[SpeedCase, ...] = SPEED_CASES) -> dict:
    """The default mode: limits and ratios of every case, printed as they come; returns the JSON content."""
    out = {"kind": "speed", "profile": profile, "settings": {"min_seconds": min_seconds, "rounds": rounds},
           "models": []}
    for case in cases:
        model, x, y, source = _case_inputs(case, profile)
        device = next(model.parameters()).device
        timings = measure_speed(model, x, y, case, min_seconds=min_seconds, rounds=rounds)
        entry = speed_entry(case, source, device, timings)
        out["models"].append(entry)
        _print_speed(entry)
    out["provenance"] = provenance(device)
    return out


def _print_speed(e: dict) -> None:
    lim = e["limit"]
    print(f"\n{e['model']} on {e['dataset']} shape ({e['source']}), batch {e['batch_size']}, "
          f"threads {torch.get_num_threads()}")
    print(f"  limit: raw fwd+bwd (input gradient, eval) {lim['fwd_bwd_images_per_s']:10.0f} images/s at the inputs, "
          f"{lim['fwd_bwd_ball_images_per_s']:.0f} at random points of their eps-ball")
    print(f"         raw fwd+bwd+step (train mode)              {lim['fwd_bwd_step_images_per_s']:10.0f} images/s  "
          f"[{e['timings']['train']['recipe']}]")
    df = e["timings"]["deepfool"]
    print(f"  PGD-{e['pgd_steps']} L∞ {e['attack_images_per_s']['pgd']:.0f} images/s; DeepFool L2 "
          f"{e['attack_images_per_s']['deepfool']:.0f} images/s (mean {df['mean_iterations']:.2f} iterations × "
          f"{df['candidates']} candidate rows)")
    for r in e["ratios"]:
        print(f"  {r['what']:<42} {r['value']:6.2f}  (goal ≥ {r['goal']:.2f})  {verdict(r['pass'])}")

