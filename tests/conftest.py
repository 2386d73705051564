"""Shared fixtures: tiny synthetic data and a tiny trained classifier (seconds on CPU)."""
from __future__ import annotations

import pytest
import torch
from torch import nn


def make_blobs(n: int = 600, classes: int = 4, side: int = 6, seed: int = 0):
    """Images in [0, 1] of shape (n, 1, side, side): one random prototype per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(classes, 1, side, side, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    x = (protos[y] + 0.15 * torch.randn(n, 1, side, side, generator=g)).clamp(0, 1)
    return x, y


class TinyNet(nn.Module):
    """Small ReLU MLP with ReLUs as modules (so defenses can swap them)."""

    def __init__(self, side: int = 6, classes: int = 4, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(side * side, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="session")
def tiny_data():
    return make_blobs()


def train_tiny(x, y, seed: int = 0) -> TinyNet:
    """A TinyNet trained from ``seed`` to (near) perfect clean accuracy on ``(x, y)``; in eval mode, no grads."""
    torch.manual_seed(seed)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="session")
def tiny_model(tiny_data):
    """A TinyNet trained to (near) perfect clean accuracy on ``tiny_data``; returned in eval mode."""
    return train_tiny(*tiny_data, seed=0)


@pytest.fixture()
def isolated_outputs(tmp_path, monkeypatch):
    """A notebook run whose results JSON lands in ``tmp_path/results``; its MPLBACKEND is set to a
    non-interactive one on purpose: the runner must still put the figures on the page."""
    monkeypatch.setenv("ROBUSTNESS_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return tmp_path


# --------------------------------------------------------------------------- a tiny model zoo (test_zoo, reliability)

def _tiny_recipe():
    from robustness_book import zoo
    from robustness_book.train import TrainConfig

    return zoo.Recipe("tiny-synth", "smoke", "tiny", "synth", 64, TrainConfig(epochs=1, batch_size=32, seed=3),
                      "book", "a TinyNet on 64 synthetic images")


TINY = _tiny_recipe()


@pytest.fixture()
def tiny_zoo(monkeypatch, tmp_path):
    """The zoo holds one tiny synthetic recipe; the cache is a temporary folder; nothing real is loaded."""
    import robustness_book.data
    import robustness_book.models
    from robustness_book import zoo
    from robustness_book.data import ArrayDataset

    x, y = make_blobs(n=128)
    monkeypatch.setenv("ROBUSTNESS_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr(zoo, "REGISTRY", {("tiny-synth", "smoke"): TINY})
    monkeypatch.setattr(robustness_book.data, "load_dataset",
                        lambda name, split: ArrayDataset(name, split, x, y, "synthetic"))
    monkeypatch.setattr(robustness_book.models, "build_model", lambda name, dataset: TinyNet())
    return tmp_path
