"""On a GPU: device=auto picks it, attacks and training run there, the checkpoint cache round-trips across devices,
and a chapter's smoke profile runs end to end. Every test here is skipped on a machine without CUDA."""
from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_auto_device_and_profile_pick_the_gpu():
    from robustness_book.chapters import get_chapter
    from robustness_book.config import resolve
    from robustness_book.runtime import default_device

    assert default_device().type == "cuda"
    cfg = resolve(get_chapter("baselines"), "auto")
    assert cfg["profile"] == "paper" and cfg["device"] == "cuda"


def test_attacks_and_training_run_on_the_gpu_and_respect_the_threat_model(tiny_data, tmp_path):
    from conftest import TinyNet
    from robustness_book.attacks import fgsm, pgd_linf
    from robustness_book.data import ArrayDataset
    from robustness_book.train import TrainConfig, cached_train, load_checkpoint

    x, y = tiny_data
    data = ArrayDataset("blobs", "train", x, y, "synthetic")
    config = TrainConfig(epochs=3, lr=0.05)
    model, meta = cached_train({"model": "tiny"}, TinyNet, data, config, device="cuda", cache=tmp_path)
    assert next(model.parameters()).device.type == "cuda" and not meta["cached"]
    xc, yc = x.cuda(), y.cuda()
    clean = (model(xc).argmax(1) == yc).float().mean()
    for adv in (fgsm(model, xc, yc, eps=0.1),
                pgd_linf(model, xc, yc, eps=0.1, steps=10, generator=torch.Generator("cuda").manual_seed(0))):
        assert adv.device.type == "cuda"
        assert float((adv - xc).abs().max()) <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        assert (model(adv).argmax(1) == yc).float().mean() < clean
    # a checkpoint written on the GPU loads on the CPU with weights_only and its hash verified
    again, meta2 = cached_train({"model": "tiny"}, TinyNet, data, config, device="cpu", cache=tmp_path)
    assert meta2["cached"] and next(again.parameters()).device.type == "cpu"
    load_checkpoint(TinyNet(), meta["path"], expected_sha256=meta["sha256"])


@pytest.mark.notebook
def test_a_chapter_smoke_profile_runs_on_the_gpu(isolated_outputs):
    from robustness_book.results import load_results
    from robustness_book.runner import run_chapter

    # the smoke profile on a GPU machine: the device is chosen automatically
    run_chapter("baselines", "smoke", output_dir=isolated_outputs / "executed")
    saved = load_results("baselines", "smoke")
    assert saved["parameters"]["device"] == "cuda"
    assert saved["records"] and all(0 <= r["value"] <= 1 for r in saved["records"] if r["metric"] == "accuracy")
