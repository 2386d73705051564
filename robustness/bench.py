"""Benchmarks (``python -m robustness bench``): speed near the machine's limit, peers, chapter budgets, the page.

Default mode, **speed near the limit**: for the chapter-1 model (LeNetLike on MNIST test images) and for AlexLike
(CIFAR-10 shape, random inputs and weights: speed does not depend on them) it measures this machine's limit, the
raw forward+backward images/s (input gradient only, model in eval mode, as an attack does) and the raw
forward+backward+optimizer-step images/s (train mode, SGD as :class:`~robustness.train.TrainConfig`), and prints
three ratios to those limits, each with its goal (:data:`GOALS`): PGD (gradient steps per second ÷ raw
fwd+bwd), the training loop :func:`robustness.train.train` on in-memory random data (images/s ÷ raw
fwd+bwd+step) and DeepFool (gradient rows per second ÷ raw fwd+bwd; an iteration on ``k`` candidate classes
computes ``k`` rows per image). A ratio of 1.0 means no overhead beyond the model's own arithmetic.

``--worst-case`` compares, on the first ``--n`` test images and at each ``--eps``, the toolkit's adaptive worst
case (PGD-CE, PGD-margin, Square) with AutoAttack (standard): robust accuracy, 95% Wilson interval, seconds.

``--peers`` (in ``.venv-peers``, made by ``make bench-peers``) runs PGD L∞ beside ``torchattacks.PGD`` and
foolbox's ``LinfPGD`` at equal eps, steps and step size, and DeepFool L2 beside ``torchattacks.DeepFool``, on the
same model and images: images/s, robust accuracy, median ρ.

``--chapters [CHAPTER ...]`` runs each chapter's profile twice through :func:`robustness.runner.run_chapter`,
in a subprocess per run, with a fresh empty checkpoint cache (models train) and then with that cache filled,
into temporary folders (the book's pages and results are not touched): wall time of each run, peak RSS of the
run's process tree (notebook kernel included) and the budget check of :data:`BUDGETS`.

``--json PATH`` writes any mode's figures with provenance; ``--page`` turns the JSON files under
``reference/bench/`` into ``book/performance.md`` (:func:`render_page`, a pure function of those files).

Layering: like ``cli`` and ``runner``, this is an entry point above the chapters (it reads chapter 1's SPEC to
load the same model the chapter trains); timings come from :mod:`robustness.timing`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import attacks, evaluate, zoo
from ._io import atomic_write_text
from .chapters import CHAPTER_IDS, baselines, get_chapter
from .config import resolve
from .data import ArrayDataset, dataset_info, load_dataset, threat_eps
from .models import build_model
from .results import provenance as results_provenance
from .results import repo_root
from .runtime import thread_count
from .timing import calls_per_second, timed
from .train import TrainConfig, train

#: Each ratio's goal: the measured rate ÷ this machine's limit must reach it.
GOALS = {"pgd": 0.9, "train": 0.85, "deepfool": 0.8}
#: What each ratio divides, in words (printed and on the page).
RATIO_HELP = {
    "pgd": "PGD gradient steps/s ÷ raw fwd+bwd/s",
    "train": "train() images/s ÷ raw fwd+bwd+step/s",
    "deepfool": "DeepFool gradient rows/s ÷ raw fwd+bwd/s",
}
#: PGD L∞ of the toolkit must be at least this many times as fast as torchattacks.PGD.
PEER_SPEEDUP_GOAL = 1.2
#: Where the committed measurements live, and the page made from them.
BENCH_DIR = Path("reference") / "bench"
PAGE = Path("book") / "performance.md"
#: The JSON file of each mode under :data:`BENCH_DIR`.
JSON_FILES = {"speed": "speed.json", "worst_case": "worst_case.json", "peers": "peers.json",
              "chapters": "chapters.json"}
PEERS_HINT = "run make bench-peers"


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# --------------------------------------------------------------------------- provenance and JSON


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _uncommitted_changes() -> bool | None:
    """Whether tracked files differ from the commit (read-only: no index refresh, no lock); None without git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo_root(),
                             capture_output=True, text=True, timeout=10, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def provenance(device: torch.device | str = "cpu") -> dict:
    """Where the figures came from: commit (and whether tracked files had uncommitted changes), versions,
    threads, CPU (and GPU), date (UTC)."""
    device = torch.device(device)
    base = results_provenance({"device": device.type})
    return {"git_commit": base["git_commit"], "uncommitted_changes": _uncommitted_changes(),
            "versions": base["versions"], "device": base["device"],
            "threads": torch.get_num_threads(), "cpu": _cpu_name(), "cores": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def write_json(path: str | os.PathLike, content: dict) -> Path:
    """Write ``content`` (with its provenance) atomically as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(content, indent=1, sort_keys=False) + "\n")
    print(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- ratios and budgets (pure)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def speed_ratios(t: dict) -> dict:
    """The machine's limit and the three ratios to it, from timings ``t`` (seconds per call of each):

    ``fwd_bwd``: ``{"images", "seconds"}`` of one raw forward+backward batch at the clean images (where DeepFool
    starts); ``fwd_bwd_ball`` (optional, else ``fwd_bwd``): the same at random points of the eps-ball around them
    (where PGD starts: a max-pool network is a few percent slower on such noisy inputs, a cost of the model's
    own arithmetic, not of the attack); ``fwd_bwd_step``: forward+backward+optimizer step; ``pgd``: ``{"images",
    "steps", "seconds"}`` of one PGD call; ``train``: ``{"images", "seconds"}`` of one
    :func:`~robustness.train.train` epoch; ``deepfool``: ``{"images", "rows", "seconds"}`` of one DeepFool call
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


@dataclass(frozen=True)
class Budget:
    """A profile's per-chapter budget: wall seconds with a filled checkpoint cache (``cached_s``), with an empty
    one (``uncached_s``, absolute) and/or its excess over the cached run (``extra_s``, the training), and the
    peak RSS of the run's process tree (bytes). ``None``: not budgeted."""

    cached_s: float | None
    uncached_s: float | None
    extra_s: float | None
    rss_bytes: float | None


GB = 1e9
#: laptop: ≤ 15 min with the cache, ≤ 20 min more without it, ≤ 4 GB; smoke: ≤ 2 min per run. (paper: none.)
BUDGETS = {
    "laptop": Budget(cached_s=15 * 60, uncached_s=None, extra_s=20 * 60, rss_bytes=4 * GB),
    "smoke": Budget(cached_s=2 * 60, uncached_s=2 * 60, extra_s=None, rss_bytes=4 * GB),
}


def budget_checks(profile: str, uncached_s: float | None, cached_s: float | None,
                  peak_rss_bytes: float | None) -> dict:
    """Each limit of ``profile``'s budget against a chapter's measurements (a limit is met at equality; a
    missing measurement, e.g. from a failed run, fails its check). Returns ``{"checks": [{"what", "value",
    "limit", "pass"}], "pass"}``; ``pass`` is ``None`` for a profile without a budget."""
    budget = BUDGETS.get(profile)
    if budget is None:
        return {"checks": [], "pass": None}
    extra = None if uncached_s is None or cached_s is None else uncached_s - cached_s
    rows = [("with cache", "s", cached_s, budget.cached_s), ("without cache", "s", uncached_s, budget.uncached_s),
            ("training (without − with cache)", "s", extra, budget.extra_s),
            ("peak RSS", "bytes", peak_rss_bytes, budget.rss_bytes)]
    checks = [{"what": what, "unit": unit, "value": value, "limit": limit,
               "pass": value is not None and value <= limit}
              for what, unit, value, limit in rows if limit is not None]
    return {"checks": checks, "pass": all(c["pass"] for c in checks)}


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


# --------------------------------------------------------------------------- worst case vs AutoAttack


def worst_case_vs_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list, norm: str = "linf",
                             steps: int = 100, restarts: int = 1, queries: int = 5000, batch_size: int = 256,
                             seed: int = 0) -> list[dict]:
    """Per eps: the toolkit's worst case over the default members and AutoAttack (standard), each with its
    robust accuracy, 95% Wilson interval and seconds; printed as it goes and returned."""
    members = evaluate.default_members(steps, restarts, queries)
    rows = []
    print(f"worst case ({', '.join(m.name for m in members)}; PGD {steps} steps × {restarts} restart(s), "
          f"Square {queries} queries) vs AutoAttack standard, {norm}, {len(y)} images")
    for eps in eps_list:
        wc, wc_seconds = timed(evaluate.worst_case, model, x, y, eps, members, norm=norm,
                               batch_size=batch_size, seed=seed)
        aa = evaluate.autoattack_accuracy(model, x, y, eps, norm=norm, batch_size=batch_size, seed=seed)
        row = {"eps": eps, "clean": wc["clean"], "worst_case": evaluate.to_record(wc), "worst_case_seconds": wc_seconds,
               "autoattack": aa}
        rows.append(row)
        added = ", ".join(f"{k} +{v}" for k, v in wc["added"].items())
        print(f"eps {eps:<7g} clean {wc['clean']:6.1%} | worst case {wc['robust']:6.1%} "
              f"[{wc['interval'][0]:.1%}, {wc['interval'][1]:.1%}] {wc_seconds:8.1f} s ({added}) | "
              f"AutoAttack {aa['robust']:6.1%} [{aa['interval'][0]:.1%}, {aa['interval'][1]:.1%}] "
              f"{aa['seconds']:8.1f} s")
    return rows


# --------------------------------------------------------------------------- peers


class PeersMissing(RuntimeError):
    """The peer libraries (torchattacks, foolbox) cannot be imported in this environment."""


def import_peers() -> tuple[Any, Any]:
    """``(torchattacks, foolbox)``, or :class:`PeersMissing` with one message that says how to get them.

    In ``.venv-peers`` torchvision comes from PyPI beside the CPU-only torch, where a plain ``import torchvision``
    dies (``operator torchvision::nms does not exist``). Neither peer imports it when imported (torchattacks 3.5.1,
    foolbox 3.3.4), but the book's data loading does, and a peer may later; importing it first through
    :mod:`robustness._torchvision` installs the work-around, so every later ``import torchvision`` gets that module.
    """
    from ._torchvision import import_torchvision

    import_torchvision()
    found, missing = {}, []
    for name in ("torchattacks", "foolbox"):
        try:
            found[name] = __import__(name)
        except Exception as err:  # ImportError, or a peer that breaks while importing
            missing.append(f"{name} ({type(err).__name__}: {err})")
    if missing:
        raise PeersMissing(f"the peer libraries are not importable in {sys.executable}: {'; '.join(missing)}. "
                           f"To compare with them, {PEERS_HINT} (it builds .venv-peers and runs "
                           f"`python -m robustness bench --peers` there).")
    return found["torchattacks"], found["foolbox"]


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((evaluate.predict(model, x) == y.cpu()).float().mean())


def _best_time(fn: Callable[[], Any], repeats: int) -> tuple[Any, float]:
    """``(result of the last call, best seconds)`` over ``repeats`` calls, after one warm-up call."""
    out = fn()
    best = math.inf
    for _ in range(repeats):
        out, seconds = timed(fn)
        best = min(best, seconds)
    return out, best


def _median_rho(x: torch.Tensor, x_adv: torch.Tensor, fooled: torch.Tensor) -> float | None:
    rho = evaluate.pixel_rho(x, x_adv)[fooled]
    return float(rho.median()) if len(rho) else None


def run_peers(profile: str = "smoke", n: int = 300, batch_size: int = 256, steps: int = 40,
              repeats: int = 3) -> dict:
    """PGD L∞ (toolkit with and without early stop, torchattacks, foolbox) and DeepFool L2 (toolkit,
    torchattacks) on chapter 1's model and its first ``n`` test images; printed and returned as JSON content."""
    torchattacks, foolbox = import_peers()
    torch.set_num_threads(thread_count())
    cfg = resolve(get_chapter("baselines"), profile=profile)
    model, _ = baselines.train_model(cfg)
    model.eval()
    device = next(model.parameters()).device
    test = load_dataset(cfg.dataset, "test").first(n)
    x, y = test.x.to(device), test.y.to(device)
    eps = threat_eps(cfg.dataset)
    alpha = 2.5 * eps / steps  # the toolkit's default step size, given to every library
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]

    def batched(attack: Callable) -> Callable[[], torch.Tensor]:
        return lambda: torch.cat([attack(xb, yb) for xb, yb in batches])

    fmodel = foolbox.PyTorchModel(model, bounds=(0, 1), device=device)
    fb_pgd = foolbox.attacks.LinfPGD(abs_stepsize=alpha, steps=steps, random_start=True)
    ta_pgd = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=True)
    pgd_runs = {
        "toolkit": lambda xb, yb: attacks.pgd_linf(model, xb, yb, eps=eps, steps=steps, step_size=alpha),
        "toolkit, no early stop": lambda xb, yb: attacks.pgd_linf(model, xb, yb, eps=eps, steps=steps,
                                                                  step_size=alpha, early_stop=False),
        "torchattacks.PGD": lambda xb, yb: ta_pgd(xb, yb),
        "foolbox LinfPGD": lambda xb, yb: fb_pgd(fmodel, xb, yb, epsilons=eps)[1],
    }
    clean = _accuracy(model, x, y)
    print(f"model: {cfg.model} on {cfg.dataset} ({profile} recipe), first {n} test images (clean accuracy "
          f"{clean:.1%}), device {device}, threads {torch.get_num_threads()}; best of {repeats} runs")
    print(f"PGD L∞ eps {eps:g}, {steps} steps of {alpha:g}, random start")
    pgd_rows = []
    for name, attack in pgd_runs.items():
        adv, seconds = _best_time(batched(attack), repeats)
        linf = float((adv - x).abs().flatten(1).amax(1).max())
        row = {"library": name, "images_per_s": n / seconds, "seconds": seconds,
               "robust_accuracy": _accuracy(model, adv, y), "max_linf": linf}
        pgd_rows.append(row)
        print(f"  {name:<24} {row['images_per_s']:9.0f} images/s  robust accuracy {row['robust_accuracy']:6.1%}  "
              f"(max |δ|∞ {linf:.4f})")
    speedup = pgd_rows[0]["images_per_s"] / pgd_rows[2]["images_per_s"]
    speedup_same_work = pgd_rows[1]["images_per_s"] / pgd_rows[2]["images_per_s"]
    print(f"  toolkit ÷ torchattacks: {speedup:.2f}× (goal ≥ {PEER_SPEEDUP_GOAL}×) "
          f"{verdict(speedup >= PEER_SPEEDUP_GOAL)}; without early stop {speedup_same_work:.2f}×")

    overshoot, max_iter = 0.02, 50
    ta_df = torchattacks.DeepFool(model, steps=max_iter, overshoot=overshoot)
    df_runs = {
        "toolkit": lambda xb, yb: attacks.deepfool(model, xb, yb, norm=2, overshoot=overshoot,
                                                   max_iter=max_iter).x_adv,
        "torchattacks.DeepFool": lambda xb, yb: ta_df(xb, yb),
    }
    correct = evaluate.predict(model, x) == y.cpu()
    print(f"DeepFool L2, overshoot {overshoot}, ≤ {max_iter} iterations; ρ = ‖δ‖₂/‖x‖₂ over the fooled images "
          f"of the {int(correct.sum())} classified correctly")
    df_rows, advs, fooled_sets = [], [], []
    for name, attack in df_runs.items():
        adv, seconds = _best_time(batched(attack), 1 if name.startswith("torchattacks") else repeats)
        fooled = correct & (evaluate.predict(model, adv) != y.cpu())
        advs.append(adv.cpu())
        fooled_sets.append(fooled)
        df_rows.append({"library": name, "images_per_s": n / seconds, "seconds": seconds,
                        "fooled": float(fooled.float().sum() / max(int(correct.sum()), 1)),
                        "median_rho": _median_rho(x.cpu(), adv.cpu(), fooled)})
    both = fooled_sets[0] & fooled_sets[1]  # the same images for both: a fair comparison of ρ
    for row, adv in zip(df_rows, advs):
        row["median_rho_both_fooled"] = _median_rho(x.cpu(), adv, both)
        rho = "n/a" if row["median_rho"] is None else f"{row['median_rho']:.4f}"
        rho_both = "n/a" if row["median_rho_both_fooled"] is None else f"{row['median_rho_both_fooled']:.4f}"
        print(f"  {row['library']:<24} {row['images_per_s']:9.1f} images/s  fooled {row['fooled']:6.1%}  median ρ "
              f"{rho} (own fooled images), {rho_both} (the {int(both.sum())} both fooled)")
    ours, theirs = df_rows[0]["median_rho_both_fooled"], df_rows[1]["median_rho_both_fooled"]
    rho_ok = None if ours is None or theirs is None else ours <= theirs
    print(f"  median ρ on the images both fooled, toolkit ≤ torchattacks: {verdict(rho_ok)}")
    versions = {"torchattacks": getattr(torchattacks, "__version__", "?"),
                "foolbox": getattr(foolbox, "__version__", "?")}
    return {"kind": "peers", "profile": profile, "model": cfg.model, "dataset": cfg.dataset, "n": n,
            "clean_accuracy": clean, "batch_size": batch_size, "repeats": repeats, "peer_versions": versions,
            "pgd": {"eps": eps, "steps": steps, "step_size": alpha, "random_start": True, "rows": pgd_rows,
                    "speedup_vs_torchattacks": speedup, "speedup_vs_torchattacks_without_early_stop":
                        speedup_same_work, "goal": PEER_SPEEDUP_GOAL, "pass": speedup >= PEER_SPEEDUP_GOAL},
            "deepfool": {"norm": 2, "overshoot": overshoot, "max_iter": max_iter, "rows": df_rows,
                         "both_fooled": int(both.sum()), "correct": int(correct.sum()),
                         "goal": "median ρ ≤ torchattacks's on the images both fooled", "pass": rho_ok},
            "provenance": provenance(device)}


# --------------------------------------------------------------------------- chapter budgets

_CHILD = ("import sys; from pathlib import Path; from robustness.runner import run_chapter; "
          "run_chapter(sys.argv[1], sys.argv[2], output_dir=Path(sys.argv[3]))")


def _tree_rss(pid: int) -> int:
    """Summed RSS (bytes) of process ``pid`` and its descendants now (0 if psutil is missing or it is gone)."""
    try:
        import psutil
    except ImportError:
        return 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def measure_run(chapter: str, profile: str, env: dict, output_dir: Path, log: Path,
                sample_every: float = 0.5) -> dict:
    """One chapter run in a subprocess: wall seconds, peak RSS and exit status.

    Peak RSS is the larger of two figures: ``os.wait4``'s ``ru_maxrss`` (exact, the largest single process of the
    run's tree that was waited for: the notebook kernel) and the summed RSS of the whole tree sampled every
    ``sample_every`` seconds with psutil when it is installed (the driver and the kernel together)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, chapter, profile, str(output_dir)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, cwd=repo_root())
        tree_peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, _tree_rss(proc.pid))
            time.sleep(sample_every)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    seconds = time.perf_counter() - start
    single_peak = usage.ru_maxrss * 1024  # Linux: KiB
    return {"seconds": seconds, "returncode": proc.returncode, "peak_rss_bytes": max(single_peak, tree_peak),
            "peak_rss_single_process_bytes": single_peak, "peak_rss_tree_sampled_bytes": tree_peak or None}


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_chapter_budgets(chapters: list[str], profile: str = "laptop",
                        on_row: Callable[[dict], None] | None = None, note: str | None = None) -> dict:
    """Each chapter twice (empty, then filled checkpoint cache) in temporary folders; printed and returned.
    ``on_row(content so far)`` is called after each chapter (the command writes its JSON then, so a run cut off
    keeps the chapters it measured, marked ``"complete": false``). ``note``: the conditions of the run in words
    (e.g. what else shared the machine), shown on the page."""
    chapters = list(chapters) or list(CHAPTER_IDS)
    for chapter in chapters:
        resolve(get_chapter(chapter), profile=profile)  # a bad chapter or profile fails before any run
    budget = BUDGETS.get(profile)
    print(f"chapters {', '.join(chapters)}, profile {profile}, threads {thread_count()}; budget: "
          f"{_budget_text(budget)}")
    rows = []
    started = provenance("cpu")  # the code that runs is the code at the start (the tree may change meanwhile)
    for chapter in chapters:
        with tempfile.TemporaryDirectory(prefix=f"bench-{chapter}-") as tmp:
            tmp = Path(tmp)
            # nothing the chapter may reuse comes from the user's folders: checkpoints, results, adversary sets
            env = {**os.environ, "ROBUSTNESS_CHECKPOINTS": str(tmp / "checkpoints"),
                   "ROBUSTNESS_RESULTS": str(tmp / "results"), "ROBUSTNESS_ADVERSARIES": str(tmp / "adversaries")}
            runs = {}
            for label in ("uncached", "cached"):
                print(f"[bench] {chapter}: run {'with an empty' if label == 'uncached' else 'with the filled'} "
                      f"checkpoint cache ...", flush=True)
                log = tmp / f"{label}.log"
                runs[label] = measure_run(chapter, profile, env, tmp / label, log)
                if runs[label]["returncode"] != 0:
                    runs[label]["error"] = _tail(log)
                    print(f"[bench] {chapter} failed (exit {runs[label]['returncode']}):\n{runs[label]['error']}",
                          flush=True)
        ok = {k: r["returncode"] == 0 for k, r in runs.items()}
        uncached = runs["uncached"]["seconds"] if ok["uncached"] else None
        cached = runs["cached"]["seconds"] if ok["cached"] else None
        peak = max(r["peak_rss_bytes"] for r in runs.values())
        checks = budget_checks(profile, uncached, cached, peak)
        row = {"chapter": chapter, "uncached_s": uncached, "cached_s": cached,
               "training_s": None if uncached is None or cached is None else uncached - cached,
               "peak_rss_bytes": peak, "runs": runs, **checks}
        rows.append(row)
        _print_budget_row(row)
        if on_row is not None:
            on_row(_budget_content(profile, budget, list(rows), len(rows) == len(chapters), started, note))
    return _budget_content(profile, budget, rows, True, started, note)


def _budget_content(profile: str, budget: Budget | None, rows: list[dict], complete: bool, started: dict,
                    note: str | None) -> dict:
    return {"kind": "chapters", "profile": profile, "budget": None if budget is None else asdict(budget),
            "chapters": rows, "complete": complete,
            "pass": None if budget is None else all(r["pass"] for r in rows), "provenance": started,
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **({"note": note} if note else {})}


def _minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def _budget_text(budget: Budget | None) -> str:
    if budget is None:
        return "none for this profile"
    parts = []
    if budget.cached_s is not None:
        parts.append(f"≤ {_minutes(budget.cached_s)} with the cache")
    if budget.uncached_s is not None:
        parts.append(f"≤ {_minutes(budget.uncached_s)} without it")
    if budget.extra_s is not None:
        parts.append(f"≤ {_minutes(budget.extra_s)} more without it")
    if budget.rss_bytes is not None:
        parts.append(f"peak RSS ≤ {budget.rss_bytes / GB:g} GB")
    return ", ".join(parts)


def _print_budget_row(row: dict) -> None:
    failed = [c["what"] for c in row["checks"] if not c["pass"]]
    status = verdict(row["pass"]) + (f" ({'; '.join(failed)})" if failed else "")
    print(f"{row['chapter']:<14} without cache {_minutes(row['uncached_s']):>10}  with cache "
          f"{_minutes(row['cached_s']):>10}  peak RSS {row['peak_rss_bytes'] / GB:5.2f} GB  budget {status}",
          flush=True)


# --------------------------------------------------------------------------- the page


def _load(bench_dir: Path, kind: str) -> dict | None:
    path = Path(bench_dir) / JSON_FILES[kind]
    return json.loads(path.read_text()) if path.exists() else None


def _source_line(label: str, content: dict) -> str:
    p = content.get("provenance", {})
    commit = f"`{(p.get('git_commit') or 'unknown')[:10]}`"
    if p.get("uncommitted_changes"):
        commit += " with uncommitted changes"
    torch_version = p.get("versions", {}).get("torch", "?")
    device = p.get("device", "?")
    gpu = "" if str(device).startswith("cpu") else f", {device}"
    return (f"From `{label}`: commit {commit}, torch {torch_version}, {p.get('threads', '?')} thread(s), "
            f"{p.get('cpu', '?')} ({p.get('cores', '?')} cores){gpu}, {p.get('date', '?')}.")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _missing(label: str, command: str) -> list[str]:
    return [f"No measurements yet: `{label}` does not exist. Make it with `{command}`, then rebuild this page with "
            f"`python -m robustness bench --page`.", ""]


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f}%"


def _speed_sections(content: dict | None, label: str) -> list[str]:
    out = ["## The machine's limit", "",
           "Raw forward+backward: the gradient with respect to the input only, model in eval mode, as an attack "
           "computes it, at the attack's images themselves (where DeepFool starts) and at random points of the "
           "eps-ball around them (where PGD starts; a max-pool network is a few percent slower on such noisy "
           "inputs). Raw forward+backward+step: train mode, gradients of the weights and one optimizer step of the "
           "book's training recipe, on one batch. Images per second, the best of interleaved rounds.", ""]
    if content is None:
        return out + _missing(label, f"python -m robustness bench --json {label}") + \
            ["## Ratios to the limit", ""] + _missing(label, f"python -m robustness bench --json {label}")
    out += [_source_line(label, content), ""]
    out += _table(["model", "data", "inputs", "batch", "fwd+bwd images/s", "in the eps-ball",
                   "fwd+bwd+step images/s", "training recipe (laptop profile)"],
                  [[m["model"], m["dataset"], m["source"], str(m["batch_size"]),
                    f"{m['limit']['fwd_bwd_images_per_s']:,.0f}",
                    f"{m['limit'].get('fwd_bwd_ball_images_per_s', m['limit']['fwd_bwd_images_per_s']):,.0f}",
                    f"{m['limit']['fwd_bwd_step_images_per_s']:,.0f}", m["timings"]["train"].get("recipe", "")]
                   for m in content["models"]])
    out += ["", "## Ratios to the limit", "",
            "Each rate divided by its limit above: 1.0 means no overhead beyond the model's own arithmetic. "
            "PGD counts gradient steps (no early stop), divided by the limit in the eps-ball; the training loop is "
            "`robustness.train.train` on in-memory random data, divided by the forward+backward+step limit; "
            "DeepFool counts gradient rows, one per candidate class per image and iteration, divided by the limit "
            "at the images.", "", _source_line(label, content), ""]
    rows = []
    for m in content["models"]:
        df = m["timings"]["deepfool"]
        detail = {"pgd": f"PGD-{m['pgd_steps']}: {m['attack_images_per_s']['pgd']:,.0f} images/s",
                  "train": f"{m['timings']['train']['images']} random images per epoch",
                  "deepfool": f"{m['attack_images_per_s']['deepfool']:,.0f} images/s, "
                              f"{df['mean_iterations']:.2f} iterations × {df['candidates']} rows"}
        for r in m["ratios"]:
            rows.append([m["model"], r["what"], f"{r['rate']:,.0f}", f"{r['value']:.2f}", f"≥ {r['goal']:.2f}",
                         f"**{verdict(r['pass'])}**", detail[r["name"]]])
    out += _table(["model", "measure", "rate /s", "ratio", "goal", "verdict", "detail"], rows)
    return out + ["",
                  "Ratios move by a few hundredths between runs, and by more for a model as small as LeNetLike: each "
                  "of its steps allocates tens of megabytes of buffers, which glibc's allocator often gives back to "
                  "the system and then faults in again (thousands of page faults per step), and how often depends "
                  "on the heap layout of the process, which differs between the attack and the raw loop.", ""]


def _worst_case_section(content: dict | None, label: str) -> list[str]:
    out = ["## Worst case and AutoAttack", "",
           "The toolkit's adaptive worst case (PGD-CE, PGD-margin, Square) beside AutoAttack (standard) on the "
           "same test images: robust accuracy with its 95% Wilson interval, and seconds.", ""]
    if content is None:
        return out + _missing(label, f"python -m robustness bench --worst-case --json {label}")
    out += [_source_line(label, content), "",
            f"{content['model']} on {content['dataset']} ({content['profile']} recipe), first {content['n']} test "
            f"images, {content['norm']}.", ""]
    rows = []
    for r in content["rows"]:
        wc, aa = r["worst_case"], r["autoattack"]
        rows.append([f"{r['eps']:g}", _pct(r["clean"]),
                     f"{_pct(wc['robust'])} [{_pct(wc['interval'][0])}, {_pct(wc['interval'][1])}]",
                     f"{r['worst_case_seconds']:.1f}",
                     f"{_pct(aa['robust'])} [{_pct(aa['interval'][0])}, {_pct(aa['interval'][1])}]",
                     f"{aa['seconds']:.1f}"])
    out += _table(["eps", "clean", "worst case [95% CI]", "s", "AutoAttack [95% CI]", "s"], rows)
    return out + [""]


def _peers_section(content: dict | None, label: str) -> list[str]:
    out = ["## Peers", "",
           "The same model and images through torchattacks and foolbox, in their own environment "
           "(`make bench-peers`).", ""]
    if content is None:
        return out + _missing(label, "make bench-peers")
    pgd, df = content["pgd"], content["deepfool"]
    versions = ", ".join(f"{k} {v}" for k, v in content.get("peer_versions", {}).items())
    out += [_source_line(label, content), "",
            f"{content['model']} on {content['dataset']} ({content['profile']} recipe), first {content['n']} test "
            f"images (clean accuracy {_pct(content['clean_accuracy'])}); {versions}.", "",
            f"PGD L∞: eps {pgd['eps']:g}, {pgd['steps']} steps of {pgd['step_size']:g}, random start. The toolkit "
            f"keeps each image's first fooling iterate and stops attacking it (early stop); without early stop it "
            f"does the same work as the others.", ""]
    out += _table(["library", "images/s", "robust accuracy"],
                  [[r["library"], f"{r['images_per_s']:,.0f}", _pct(r["robust_accuracy"])] for r in pgd["rows"]])
    out += ["", f"Toolkit ÷ torchattacks: **{pgd['speedup_vs_torchattacks']:.2f}×** (goal ≥ {pgd['goal']}×, "
                f"**{verdict(pgd['pass'])}**); without early stop "
                f"{pgd['speedup_vs_torchattacks_without_early_stop']:.2f}×.", "",
            f"DeepFool L2: overshoot {df['overshoot']}, at most {df['max_iter']} iterations, on the "
            f"{df.get('correct', '?')} images classified correctly. ρ = ‖δ‖₂ / ‖x‖₂ on [0, 1] pixels; its median "
            f"over the images each attack fooled, and over the {df.get('both_fooled', '?')} images both fooled (the "
            f"goal's comparison: the same images for both).", ""]

    def rho(v):
        return "—" if v is None else f"{v:.4f}"

    out += _table(["library", "images/s", "fooled", "median ρ (own fooled)", "median ρ (both fooled)"],
                  [[r["library"], f"{r['images_per_s']:,.1f}", _pct(r["fooled"]), rho(r["median_rho"]),
                    rho(r.get("median_rho_both_fooled"))] for r in df["rows"]])
    out += ["", f"Goal: {df['goal']}: **{verdict(df['pass'])}**.", ""]
    return out


def _chapters_section(content: dict | None, label: str, first: bool = True) -> list[str]:
    """The budget table of one ``--chapters`` JSON file; ``first=False`` for a later file that measured other
    chapters on another occasion (``chapters-<name>.json``): a sub-heading instead of the section's introduction."""
    out = ["## Chapter budgets", "",
           "Each chapter's profile run twice through the runner: with an empty checkpoint cache (its models "
           "train) and with that cache filled. Peak RSS is that of the run's process tree, notebook kernel "
           "included.", ""] if first else [f"### Measured separately: `{Path(label).name}`", ""]
    if content is None:
        return out + _missing(label, f"python -m robustness bench --chapters --json {label}")
    budget = BUDGETS.get(content["profile"]) if content.get("budget") is None else Budget(**content["budget"])
    out += [_source_line(label, content), "",
            f"Profile `{content['profile']}`; budget: {_budget_text(budget)}.", ""]
    rows = []
    for r in content["chapters"]:
        failed = [c["what"] for c in r["checks"] if not c["pass"]]
        rows.append([r["chapter"], _minutes(r["uncached_s"]), _minutes(r["cached_s"]),
                     f"{r['peak_rss_bytes'] / GB:.2f} GB",
                     f"**{verdict(r['pass'])}**" + (f" ({'; '.join(failed)})" if failed else "")])
    out += _table(["chapter", "without cache", "with cache", "peak RSS", "budget"], rows)
    if content.get("complete") is False:
        out += ["", "The run was cut off after these chapters; the others were not measured."]
    if content.get("note"):
        out += ["", f"Conditions of this run: {content['note']}"]
    return out + [""]


def render_page(bench_dir: str | os.PathLike, label_dir: str = BENCH_DIR.as_posix()) -> str:
    """``book/performance.md`` from the JSON files in ``bench_dir`` (named ``label_dir/<file>`` on the page): a
    pure function of their content. A missing file leaves its section saying how to make it."""
    bench_dir = Path(bench_dir)

    def label(kind: str) -> str:
        return f"{label_dir}/{JSON_FILES[kind]}"

    lines = ["# Performance", "",
             "```{note}",
             "Generated by `python -m robustness bench --page` from the JSON files under "
             f"`{label_dir}/`, which hold measurements of one machine (named under each table) and are committed "
             "with this page. Nothing here is typed by hand; to refresh a table, rerun the command it names.",
             "```", ""]
    lines += _speed_sections(_load(bench_dir, "speed"), label("speed"))
    lines += _worst_case_section(_load(bench_dir, "worst_case"), label("worst_case"))
    lines += _peers_section(_load(bench_dir, "peers"), label("peers"))
    lines += _chapters_section(_load(bench_dir, "chapters"), label("chapters"))
    for later in sorted(bench_dir.glob("chapters-*.json")):  # other chapters, measured on another occasion
        lines += _chapters_section(json.loads(later.read_text()), f"{label_dir}/{later.name}", first=False)
    return "\n".join(lines).rstrip() + "\n"


def write_page(bench_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> Path:
    root = repo_root()
    path = Path(out) if out is not None else root / PAGE
    atomic_write_text(path, render_page(bench_dir if bench_dir is not None else root / BENCH_DIR))
    print(f"wrote {path}")
    return path


# --------------------------------------------------------------------------- entry point


def main(batch_size: int = 256, profile: str | None = None, worst_case: bool = False, n: int = 300,
         eps: list[float] | None = None, norm: str = "linf", steps: int = 100, queries: int = 5000,
         chapters: list[str] | None = None, peers: bool = False, page: bool = False, json_path: str | None = None,
         min_seconds: float = 2.0, note: str | None = None) -> int:
    """The ``bench`` command; returns the exit status. ``chapters`` (a list, empty for all) selects the budget
    mode, whose ``profile`` defaults to laptop; the other modes load chapter 1's model of ``profile`` (default
    smoke)."""
    if page:
        write_page()
        return 0
    if chapters is not None:
        run_chapter_budgets(chapters, profile or "laptop", note=note,
                            on_row=(lambda content: write_json(json_path, content)) if json_path else None)
        return 0
    profile = profile or "smoke"
    if peers:
        try:
            content = run_peers(profile, n=n, batch_size=batch_size)
        except PeersMissing as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if json_path:
            write_json(json_path, content)
        return 0
    torch.set_num_threads(thread_count())
    if worst_case:
        cfg = resolve(get_chapter("baselines"), profile=profile)
        model, _ = baselines.train_model(cfg)  # the chapter's own recipe, so the cache holds one model, not two
        device = next(model.parameters()).device
        model.eval()
        test = load_dataset(cfg.dataset, "test").first(n)
        eps_list = eps if eps else [cfg.eps]
        print(f"model: {cfg.model} on {cfg.dataset} ({profile} recipe), device {device}, "
              f"threads {torch.get_num_threads()}, first {len(test.y)} test images")
        rows = worst_case_vs_autoattack(model, test.x, test.y, eps_list, norm=norm, steps=steps, queries=queries,
                                        batch_size=batch_size, seed=cfg.seed)
        if json_path:
            write_json(json_path, {"kind": "worst_case", "profile": profile, "model": cfg.model,
                                   "dataset": cfg.dataset, "n": len(test.y), "norm": norm, "steps": steps,
                                   "queries": queries, "rows": rows, "provenance": provenance(device)})
        return 0
    cases = tuple(replace(c, batch_size=batch_size) if c.model == "lenet_like" else c for c in SPEED_CASES)
    content = run_speed(profile, min_seconds=min_seconds, cases=cases)
    device = torch.device(content["models"][0]["device"])
    print(f"\npeak memory: {_peak_memory_mb(device):.0f} MiB "
          f"({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")
    if json_path:
        write_json(json_path, content)
    return 0
