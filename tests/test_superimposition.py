"""Superimposition training (Seiler et al., IJCNN 2020): its reductions to cross-entropy, a hand computation of
the KL term (direction, no detach), its reproducible randomness, and one training run (a few seconds on CPU)."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TinyNet
from robustness_book.data import ArrayDataset
from robustness_book.defenses import SuperimpositionLoss
from robustness_book.defenses.superimposition import beta_sample
from robustness_book.train import TrainConfig, loss_spec, train


@pytest.fixture()
def model(tiny_model):
    m = copy.deepcopy(tiny_model).train()  # the loss is called in training mode
    return m


def bn_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 4)).train()


def test_fixed_a_zero_is_cross_entropy(model, tiny_data):
    x, y = tiny_data
    for net in (model, bn_net()):  # BatchNorm in train mode: each branch has its own batch statistics
        loss = SuperimpositionLoss(a=0.0)(net, x[:64], y[:64])
        assert torch.equal(loss, F.cross_entropy(net(x[:64]), y[:64]))


def test_lam_zero_is_cross_entropy(model, tiny_data):
    x, y = tiny_data
    loss_fn = SuperimpositionLoss(lam=0.0, seed=3)
    assert torch.equal(loss_fn(model, x[:64], y[:64]), F.cross_entropy(model(x[:64]), y[:64]))
    assert 0 < loss_fn.last_a < 1  # the draw happened: λ = 0 runs the same path, only the weight is 0


def test_loss_matches_hand_computation_with_kl_from_clean_to_superimposed(model, tiny_data):
    x, y = tiny_data
    x, y = x[:32], y[:32]
    loss_fn, twin = SuperimpositionLoss(lam=10.0, seed=7), SuperimpositionLoss(lam=10.0, seed=7)
    value = loss_fn(model, x, y)
    x_imp, a = twin.superimposed(x)  # the same draws from the same seed
    assert a == loss_fn.last_a

    def by_hand(detach_clean=False, detach_mixed=False):
        p, q = F.softmax(model(x), 1), F.softmax(model(x_imp), 1)
        p_kl = p.detach() if detach_clean else p
        q_kl = q.detach() if detach_mixed else q
        kl = (p_kl * (p_kl / q_kl).log()).sum(1).mean()  # KL(f(x) ‖ f(x_imp)), batch mean (Keras)
        return F.cross_entropy(model(x), y) + 10.0 * kl

    assert torch.allclose(value, by_hand(), atol=1e-6)
    reverse = F.cross_entropy(model(x), y) + 10.0 * F.kl_div(F.log_softmax(model(x), 1), F.softmax(model(x_imp), 1),
                                                             reduction="batchmean")
    assert not torch.allclose(value, reverse, atol=1e-6)  # KL(f(x_imp) ‖ f(x)) is another number

    # gradient: reaches every weight, and flows through both branches (neither is detached)
    params = list(model.parameters())

    def grads(v):
        return torch.autograd.grad(v, params)

    got = grads(value)
    assert all(bool(g.abs().sum() > 0) for g in got)
    flat = torch.cat([g.flatten() for g in got])
    assert torch.allclose(flat, torch.cat([g.flatten() for g in grads(by_hand())]), atol=1e-6)
    for detached in (by_hand(detach_clean=True), by_hand(detach_mixed=True)):
        assert not torch.allclose(flat, torch.cat([g.flatten() for g in grads(detached)]), atol=1e-6)


def test_superimposed_pairs_each_image_with_another_of_the_batch(tiny_data):
    x = tiny_data[0][:50]
    x_r, a = SuperimpositionLoss(a=1.0, seed=2).superimposed(x)
    assert a == 1.0
    rows = [int(((x - row).abs().flatten(1).amax(1) == 0).nonzero()[0]) for row in x_r]
    assert sorted(rows) == list(range(50))  # a permutation of the batch ...
    assert all(i != j for i, j in enumerate(rows))  # ... that moves every image
    mixed, a = SuperimpositionLoss(seed=2).superimposed(x)
    assert mixed.min() >= 0 and mixed.max() <= 1


def test_a_is_beta_2_10_and_reproducible_with_the_seed(model, tiny_data):
    x, y = tiny_data

    def draws(seed, n=5):
        loss_fn = SuperimpositionLoss(seed=seed)
        out = []
        for _ in range(n):
            loss_fn(model, x[:16], y[:16])
            out.append(loss_fn.last_a)
        return out

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)
    assert len(set(draws(3))) == 5  # resampled per batch
    g = torch.Generator().manual_seed(0)
    sample = torch.tensor([beta_sample(2, 10, g) for _ in range(4000)])
    mean, var = 2 / 12, 2 * 10 / (12 ** 2 * 13)  # Beta(2, 10)
    assert abs(sample.mean().item() - mean) < 5 * math.sqrt(var / 4000)
    assert abs(sample.var().item() - var) < 0.1 * var
    assert 0 < sample.min() and sample.max() < 1


def test_spec_names_every_hyper_parameter():
    spec = loss_spec(SuperimpositionLoss())
    assert spec == {"name": "superimposition", "lam": 10.0, "seed": 0, "a": "beta", "beta": [2, 10]}
    assert json.loads(json.dumps(spec)) == spec
    fixed = loss_spec(SuperimpositionLoss(lam=5, a=0.3, seed=1))
    assert fixed == {"name": "superimposition", "lam": 5.0, "seed": 1, "a": 0.3}


@pytest.mark.parametrize("kwargs, name", [({"lam": -1.0}, "lam"), ({"a": 1.5}, "a="), ({"beta": (2.5, 10)}, "beta"),
                                          ({"beta": (0, 10)}, "beta"), ({"beta": (2,)}, "beta")])
def test_bad_arguments_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SuperimpositionLoss(**kwargs)


def test_trains_with_the_training_loop(tiny_data):
    x, y = tiny_data
    torch.manual_seed(0)
    net = TinyNet()
    history = train(net, ArrayDataset("blobs", "train", x, y, "synthetic"), TrainConfig(epochs=2, batch_size=64),
                    loss=SuperimpositionLoss(seed=1), device="cpu")
    losses = [e["loss"] for e in history["epochs"]]
    assert all(math.isfinite(v) for v in losses) and losses[1] < losses[0]
