"""Attack throughput benchmark (``python -m robustness bench``).

On the chapter-1 model (LeNetLike, MNIST) with one batch of test images it
prints images/s for PGD-40 and DeepFool, the raw forward+backward rate of the
same model, their ratio (attack gradient steps per second ÷ raw fwd+bwd per
second; an attack with no overhead reaches 1.0), and peak memory.
"""
from __future__ import annotations

import resource
import time

import torch
from torch import nn

from . import attacks
from .chapters import get_chapter
from .config import resolve
from .data import load_dataset
from .train import TrainConfig, official_milestones, trained_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, device: torch.device, repeats: int) -> float:
    """Calls per second of ``fn`` (one warm-up call first)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return repeats / (time.perf_counter() - start)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main(batch_size: int = 256, profile: str = "smoke", repeats: int = 3) -> int:
    cfg = resolve(get_chapter("baselines"), profile=profile)
    config = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, milestones=official_milestones(cfg.epochs), seed=cfg.seed)
    model, _ = trained_model(cfg.model, cfg.dataset, config, train_size=cfg.train_size)
    device = next(model.parameters()).device
    test = load_dataset(cfg.dataset, "test").first(batch_size)
    x, y = test.x.to(device), test.y.to(device)
    model.eval()

    def fwd_bwd():
        xr = x.clone().requires_grad_(True)
        torch.autograd.grad(nn.functional.cross_entropy(model(xr), y, reduction="sum"), xr)

    raw = _rate(fwd_bwd, device, repeats * 10)
    steps = 40
    pgd_calls = _rate(lambda: attacks.pgd_linf(model, x, y, eps=0.3, steps=steps, random_start=True), device, repeats)
    df_result = attacks.deepfool(model, x, y, norm=2, max_iter=50)
    df_calls = _rate(lambda: attacks.deepfool(model, x, y, norm=2, max_iter=50), device, repeats)
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
