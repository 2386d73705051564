"""Entropic retraining: the entropy estimates on known inputs, the loss against hand computations, its
gradient, the hooks' cleanup, and the anchor CNN."""
import copy
import json
import math

import pytest
import torch
from torch import nn

from robustness_book.data import ArrayDataset
from robustness_book.defenses.entropic import (
    MIN_VARIANCE, EntropicLoss, EntropyEstimator, entropy_layers, layer_entropies, recorded_activations,
)
from robustness_book.models import build_model
from robustness_book.train import TrainConfig, loss_spec, train


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks for m in model.modules())


def _gaussian_quantiles(n: int, sigma: float) -> torch.Tensor:
    """n samples of N(0, σ²) placed at the (i + ½)/n quantiles: a deterministic 'sample'."""
    q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return sigma * math.sqrt(2) * torch.erfinv(2 * q - 1)


# --- the estimators on known inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("kernel", ["triangular", "gaussian"])
def test_a_constant_unit_has_zero_histogram_entropy(kernel):
    samples = torch.full((50, 3), 0.7)
    est = EntropyEstimator(bins=10, kernel=kernel)
    assert torch.equal(est.unit_entropy(samples), torch.zeros(3))
    # with a fixed range, a constant on a bin centre fills that one bin (the triangular kernel is exact there)
    fixed = EntropyEstimator(bins=11, value_range=(0.0, 1.0))
    assert fixed.unit_entropy(torch.full((50, 2), 0.3)).abs().max() < 1e-6
    # the Gaussian estimator's minimum is its variance floor
    gauss = EntropyEstimator("gaussian").unit_entropy(samples.double())
    assert torch.allclose(gauss, torch.full((3,), 0.5 * math.log(2 * math.pi * math.e * MIN_VARIANCE)).double())


@pytest.mark.parametrize("bins", [2, 7, 16])
def test_values_spread_evenly_over_the_bins_give_log_bins_the_maximum(bins):
    # every bin centre equally often (the batch range puts the outer centres at the min and max)
    centres = torch.linspace(-1.0, 3.0, bins, dtype=torch.float64).repeat(5)[:, None]
    est = EntropyEstimator(bins=bins)
    assert float(est.unit_entropy(centres)) == pytest.approx(math.log(bins), abs=1e-7)
    # any other data stay at or below the maximum, for both kernels
    noise = torch.randn(200, 20, generator=torch.Generator().manual_seed(0))
    for kernel in ("triangular", "gaussian"):
        h = EntropyEstimator(bins=bins, kernel=kernel).unit_entropy(noise)
        assert (h >= 0).all() and (h <= math.log(bins) + 1e-6).all()


def test_the_gaussian_estimator_is_the_closed_form():
    x = torch.randn(500, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * torch.tensor(
        [0.1, 1.0, 3.0, 10.0], dtype=torch.float64)
    expected = 0.5 * torch.log(2 * math.pi * math.e * x.var(0, correction=0))
    assert torch.allclose(EntropyEstimator("gaussian").unit_entropy(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel, bandwidth", [("triangular", 0.5), ("gaussian", 0.5), ("gaussian", 1.0)])
def test_the_histogram_matches_the_differential_entropy_of_a_gaussian_up_to_the_bin_width(kernel, bandwidth):
    # Differential entropy ≈ discrete entropy + log(bin width w). The soft assignment smooths the density by the
    # kernel, adding its variance v (w²/6 for the triangle, (bandwidth·w)² for the Gaussian), so
    # H + log w = ½·log(2πe(σ² + v)) up to the Riemann-sum error, and the plain closed form ½·log(2πe·σ²)
    # lies below it by ½·log(1 + v/σ²), a tolerance that shrinks with w².
    sigma, bins = 2.0, 16
    z = _gaussian_quantiles(20_000, sigma)[:, None]
    h_est = float(EntropyEstimator(bins=bins, kernel=kernel, bandwidth=bandwidth).unit_entropy(z))
    w = float(z.max() - z.min()) / (bins - 1)
    v = w ** 2 / 6 if kernel == "triangular" else (bandwidth * w) ** 2
    closed = 0.5 * math.log(2 * math.pi * math.e * sigma ** 2)
    assert h_est + math.log(w) == pytest.approx(0.5 * math.log(2 * math.pi * math.e * (sigma ** 2 + v)), abs=1e-3)
    assert 0 <= h_est + math.log(w) - closed <= 0.5 * math.log(1 + v / sigma ** 2) + 1e-3


def test_channel_units_pool_the_spatial_positions():
    # channel 0 takes 4 values evenly over the 4 positions of every image; channel 1 is constant
    a = torch.zeros(3, 2, 2, 2)
    a[:, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    est = EntropyEstimator(bins=4, units="channel")
    assert est.as_units(a).shape == (12, 2)
    assert torch.allclose(est.unit_entropy(est.as_units(a)), torch.tensor([math.log(4), 0.0]))
    # per neuron every coordinate is constant across the batch
    assert float(EntropyEstimator(bins=4).layer_entropy([a])) == 0.0


# --- the loss -------------------------------------------------------------------------------------------------

def test_lambda_zero_is_cross_entropy_exactly(tiny_model, tiny_data):
    x, y = tiny_data
    assert torch.equal(EntropicLoss(lam=0.0)(tiny_model, x, y), nn.functional.cross_entropy(tiny_model(x), y))


def test_the_loss_is_cross_entropy_plus_lambda_times_the_hand_computed_term(tiny_model, tiny_data):
    x, y = tiny_data[0][:200], tiny_data[1][:200]
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(tiny_model(x), y))
    h = layer_entropies(tiny_model, x, bins=8)  # TinyNet has no dropout or BN: eval mode is the same function
    assert list(h) == ["net.2", "net.4"] and all(0 < v < math.log(8) for v in h.values())
    with torch.no_grad():
        raise_all = float(EntropicLoss(lam=0.3, bins=8)(tiny_model, x, y))
        mixed = float(EntropicLoss(lam=0.3, bins=8, direction={"net.2": 1, "net.4": -1})(tiny_model, x, y))
        toward = float(EntropicLoss(lam=0.3, bins=8, targets={"net.2": 1.0, "net.4": 0.5})(tiny_model, x, y))
    assert raise_all == pytest.approx(ce - 0.3 * (h["net.2"] + h["net.4"]), rel=1e-5)
    assert mixed == pytest.approx(ce - 0.3 * (h["net.2"] - h["net.4"]), rel=1e-5)
    assert toward == pytest.approx(ce + 0.3 * ((h["net.2"] - 1.0) ** 2 + (h["net.4"] - 0.5) ** 2), rel=1e-5)


@pytest.mark.parametrize("estimator", ["histogram", "gaussian"])
def test_the_entropy_term_alone_reaches_the_first_conv_and_leaves_no_hooks(estimator):
    torch.manual_seed(0)
    model = build_model("entropic_cnn", "cifar10")
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = EntropicLoss(lam=1.0, estimator=estimator, layers=["16", "18"])  # two dense ReLUs, far from conv1
    loss.term(model, x).backward()
    grad = model[1].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert _no_hooks(model)


def test_a_small_step_on_the_term_moves_the_entropy_toward_the_target(tiny_data):
    from conftest import train_tiny

    model = train_tiny(*tiny_data, seed=1).train()
    x = tiny_data[0][:256]
    before = layer_entropies(model, x, layers=["net.4"])["net.4"]
    loss = EntropicLoss(lam=1.0, targets={"net.4": before + 0.5})
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss.term(model, x).backward()
    opt.step()
    after = layer_entropies(model, x, layers=["net.4"])["net.4"]
    assert before < after < before + 0.5


def test_hooks_are_removed_after_an_error():
    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), Boom())
    with pytest.raises(RuntimeError, match="boom"):
        EntropicLoss(lam=1.0)(model, torch.rand(5, 4), torch.zeros(5, dtype=torch.long))
    assert _no_hooks(model)
    with pytest.raises(ValueError, match="'9' is not a submodule.*activation modules are: 2"):
        with recorded_activations(model, ["2", "9"]):
            pass
    assert _no_hooks(model)


def test_a_layer_called_twice_contributes_the_units_of_both_calls():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Linear(3, 3), relu, nn.Linear(3, 3), relu)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    with recorded_activations(model, ["1"]) as outputs:
        model(x)
    est = EntropyEstimator(bins=6)
    both = torch.cat([est.unit_entropy(a) for a in outputs["1"]]).mean()
    assert len(outputs["1"]) == 2 and layer_entropies(model, x, layers=["1"], bins=6)["1"] == pytest.approx(float(both.detach()))


def test_it_trains_in_the_one_training_loop_and_its_spec_keys_the_cache(tiny_data):
    from conftest import TinyNet

    x, y = tiny_data
    loss = EntropicLoss(lam=0.05, targets={"net.2": 1.5})
    torch.manual_seed(0)
    model = TinyNet()
    history = train(model, ArrayDataset("blobs", "train", x, y, "synthetic"), TrainConfig(epochs=1, batch_size=64),
                    loss=loss, device="cpu")
    assert math.isfinite(history["epochs"][0]["loss"]) and _no_hooks(model)
    spec = loss_spec(loss)
    assert json.loads(json.dumps(spec)) == spec
    assert spec == {"name": "entropic", "lam": 0.05, "layers": ["net.2"], "targets": {"net.2": 1.5},
                    "estimator": "histogram", "bins": 16, "kernel": "triangular", "range": "batch", "units": "neuron"}
    others = [EntropicLoss(lam=0.1), EntropicLoss(lam=0.1, direction=-1), EntropicLoss(lam=0.1, bins=8),
              EntropicLoss(lam=0.1, kernel="gaussian"), EntropicLoss(lam=0.1, kernel="gaussian", bandwidth=1.0),
              EntropicLoss(lam=0.1, value_range=(0, 4)), EntropicLoss(lam=0.1, units="channel"),
              EntropicLoss(lam=0.1, estimator="gaussian"), EntropicLoss(lam=0.1, layers=["net.2"])]
    specs = [json.dumps(loss_spec(o), sort_keys=True) for o in others]
    assert len(set(specs)) == len(specs)


@pytest.mark.parametrize("kwargs, match", [
    ({"lam": -1.0}, "lam=-1.0"),
    ({"estimator": "knn"}, "estimator='knn'.*histogram, gaussian"),
    ({"kernel": "box"}, "kernel='box'.*triangular, gaussian"),
    ({"units": "pixel"}, "units='pixel'.*neuron, channel"),
    ({"bins": 1}, "bins=1"),
    ({"bandwidth": 0.0}, "bandwidth=0.0"),
    ({"value_range": (1.0, 1.0)}, "value_range=.*lo < hi"),
    ({"value_range": "fixed"}, "value_range='fixed'"),
    ({"direction": 2}, "direction=2.*\\+1 \\(raise\\) or -1 \\(lower\\)"),
    ({"layers": ["a"], "targets": {"b": 1.0}}, "targets names layers \\['b'\\] but layers=\\['a'\\]"),
    ({"targets": {}}, "targets="),
])
def test_bad_arguments_raise_one_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EntropicLoss(**kwargs)


# --- the anchor architecture ----------------------------------------------------------------------------------

def test_the_anchor_cnn_shapes_parameters_and_default_layers():
    cifar = build_model("entropic_cnn", "cifar10").eval()
    assert cifar(torch.rand(5, 3, 32, 32)).shape == (5, 10)
    assert build_model("entropic_cnn", "mnist")(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    # convs 896 + 9,248 + 18,496 + 36,928; dense (2304·512 + 512) + 131,328 + 32,896 + 16,512 + 10,836 + 850
    assert sum(p.numel() for p in cifar.parameters()) == 1_438_150
    names = entropy_layers(cifar)
    assert len(names) == 9 and all(isinstance(cifar.get_submodule(n), nn.ReLU) for n in names)
    # in forward order: the four conv ReLUs follow convs, the five dense ReLUs follow linears
    before = [type(cifar[int(n) - 1]).__name__ for n in names]
    assert before == ["Conv2d"] * 4 + ["Linear"] * 5
    profile = layer_entropies(cifar, torch.rand(16, 3, 32, 32), bins=4)
    assert list(profile) == names and all(0 <= v <= math.log(4) + 1e-6 for v in profile.values())
    assert _no_hooks(cifar) and all(p.grad is None for p in cifar.parameters())


def test_layer_entropies_restores_the_training_flags(tiny_data):
    model = copy.deepcopy(nn.Sequential(nn.Flatten(), nn.Linear(36, 8), nn.ReLU(), nn.Dropout(0.5))).train()
    layer_entropies(model, tiny_data[0][:32])
    assert all(m.training for m in model.modules())


# --- precision ------------------------------------------------------------------------------------------------

def test_the_term_is_computed_in_float32_under_bfloat16_autocast():
    # the training recipe runs its forward pass under bfloat16 autocast: the activations are bfloat16 values, and
    # the term must be the float32 estimate of exactly those values, not a bfloat16 computation
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.rand(64, 1, 3, 4)
    loss = EntropicLoss(lam=1.0, direction={"2": -1, "4": 1}, bins=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with recorded_activations(net, ["2", "4"]) as outputs:
            net(x)
        _, entropies = loss.entropies(net, x)
    assert all(outputs[name][0].dtype == torch.bfloat16 for name in ("2", "4"))
    est = EntropyEstimator(bins=8)
    for name in ("2", "4"):
        assert entropies[name].dtype == torch.float32
        by_hand = est.unit_entropy(outputs[name][0].float()).mean()
        assert torch.equal(entropies[name], by_hand)
    # the bfloat16 rounding of the activations is the only difference from a float32 forward pass, and it is small
    fp32 = loss.entropies(net, x)[1]
    assert all(abs(float((fp32[k] - entropies[k]).detach())) < 0.05 for k in fp32)
