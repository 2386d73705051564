"""Attack throughput benchmark (``python -m robustness bench``).

On the chapter-1 model (LeNetLike, MNIST) with one batch of test images it
prints images/s for PGD-40 and DeepFool, the raw forward+backward rate of the
same model, their ratio (attack gradient steps per second ÷ raw fwd+bwd per
second; an attack with no overhead reaches 1.0), and peak memory.

With ``--worst-case`` it instead compares, on the first ``--n`` test images and
at each ``--eps``, the toolkit's adaptive worst case (default members: PGD-CE,
PGD-margin, Square) with AutoAttack (standard): robust accuracy with its 95%
Wilson interval, and seconds, e.g.
``python -m robustness bench --worst-case --n 300 --eps 0.1 0.15``.

Layering: like ``cli`` and ``runner``, this is an entry point above the chapters (it reads chapter 1's SPEC to
load the same model the chapter trains); timings come from :mod:`robustness.timing`.
"""
from __future__ import annotations

import resource

import torch
from torch import nn

from . import attacks, evaluate
from .chapters import baselines, get_chapter
from .config import resolve
from .data import load_dataset, threat_eps
from .runtime import thread_count
from .timing import calls_per_second, timed


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


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


def main(batch_size: int = 256, profile: str = "smoke", repeats: int = 3, worst_case: bool = False, n: int = 300,
         eps: list[float] | None = None, norm: str = "linf", steps: int = 100, queries: int = 5000) -> int:
    torch.set_num_threads(thread_count())
    cfg = resolve(get_chapter("baselines"), profile=profile)
    model, _ = baselines.train_model(cfg)  # the chapter's own recipe, so the cache holds one model, not two
    device = next(model.parameters()).device
    if worst_case:
        model.eval()
        test = load_dataset(cfg.dataset, "test").first(n)
        eps_list = eps if eps else [cfg.eps]
        print(f"model: {cfg.model} on {cfg.dataset} ({profile} recipe), device {device}, "
              f"threads {torch.get_num_threads()}, first {len(test.y)} test images")
        worst_case_vs_autoattack(model, test.x, test.y, eps_list, norm=norm, steps=steps, queries=queries,
                                 batch_size=batch_size, seed=cfg.seed)
        return 0
    test = load_dataset(cfg.dataset, "test").first(batch_size)
    x, y = test.x.to(device), test.y.to(device)
    model.eval()

    def fwd_bwd():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)

    raw = calls_per_second(fwd_bwd, repeats * 10, device)
    steps, eps_linf = 40, threat_eps(cfg.dataset)
    pgd_calls = calls_per_second(lambda: attacks.pgd_linf(model, x, y, eps=eps_linf, steps=steps, random_start=True,
                                                          early_stop=False), repeats, device)
    df_result = attacks.deepfool(model, x, y, norm=2, max_iter=50)
    df_calls = calls_per_second(lambda: attacks.deepfool(model, x, y, norm=2, max_iter=50), repeats, device)
    # DeepFool's gradient work: one forward and one backward per candidate class per iteration.
    iters = float(df_result.iterations.float().mean())
    print(f"model: {cfg.model} on {cfg.dataset} ({profile} recipe), device {device}, batch {batch_size}, "
          f"threads {torch.get_num_threads()}")
    print(f"raw forward+backward (input gradient): {raw * batch_size:10.0f} images/s  ({raw:.1f} batches/s)")
    print(f"PGD-{steps} L∞:                          {pgd_calls * batch_size:10.0f} images/s")
    ratio = pgd_calls * steps / raw
    print(f"PGD gradient steps/s ÷ raw fwd+bwd/s:   {ratio:10.2f}   (target ≥ 0.9)")
    print(f"DeepFool L2 (≤50 it., mean {iters:.1f}): {df_calls * batch_size:10.0f} images/s")
    print(f"peak memory: {_peak_memory_mb(device):.0f} MiB ({'GPU allocated' if device.type == 'cuda' else 'process RSS'})")
    return 0
