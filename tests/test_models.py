"""The papers' architectures: shapes, parameter counts, normalization inside the model."""
import pytest
import torch
from torch import nn

from robustness_book.models import MODELS, Normalize, build_model


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_map_images_to_logits(name):
    dataset = MODELS[name].datasets[0]
    torch.manual_seed(0)
    model = build_model(name, dataset).eval()
    shape = (1, 28, 28) if dataset != "cifar10" else (3, 32, 32)
    out = model(torch.rand(4, *shape))
    assert out.shape == (4, 10)
    assert isinstance(model[0], Normalize)
    assert any(isinstance(m, nn.ReLU) for m in model.modules())


def test_layer_sizes_match_the_official_code():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # LeNetLike: conv(1→10,5)=260, conv(10→20,5)=5020, fc 320→120→90→10.
    assert count(build_model("lenet_like", "mnist")) == 260 + 5020 + (320 * 120 + 120) + (120 * 90 + 90) + 910
    assert count(build_model("mlp", "mnist")) == (784 * 500 + 500) + (500 * 150 + 150) + 1510
    assert count(build_model("lenet", "mnist")) == 520 + 25050 + (800 * 500 + 500) + 5010


def test_normalize_uses_the_dataset_statistics():
    model = build_model("lenet_like", "mnist")
    x = torch.full((1, 1, 2, 2), 0.1307)
    assert torch.allclose(model[0](x), torch.zeros_like(x), atol=1e-6)


def test_unknown_model_or_wrong_dataset():
    with pytest.raises(ValueError, match="allowed"):
        build_model("vgg", "mnist")
    with pytest.raises(ValueError, match="cifar10"):
        build_model("convnet", "mnist")
