"""The papers' small architectures, built by name from a registry.

Every model takes images in [0, 1] and starts with a :class:`Normalize` layer,
so attacks work in pixel space and always clip to [0, 1]. Activations are
``nn.ReLU`` *modules* (never ``F.relu``) so that a defense such as JumpReLU can
swap them, and an attack can wrap them (BPDA).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from .data import dataset_info


class Normalize(nn.Module):
    """(x - mean) / std per channel; the buffers travel with the state dict."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def lenet_like(dataset: str = "mnist") -> nn.Sequential:
    """JumpReLU's LeNetLike (official code, models/LeNetLike.py): conv5-10, pool, ReLU,
    conv5-20, pool, ReLU, dropout 0.5, fc120, ReLU, fc90, ReLU, fc10. 28x28 grayscale input."""
    info = dataset_info(dataset)
    return nn.Sequential(
        Normalize(info.mean, info.std),
        nn.Conv2d(info.shape[0], 10, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(10, 20, 5), nn.MaxPool2d(2), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(320, 120), nn.ReLU(),
        nn.Linear(120, 90), nn.ReLU(),
        nn.Linear(90, info.num_classes),
    )


def alex_like(dataset: str = "cifar10") -> nn.Sequential:
    """JumpReLU's AlexLike (official code, models/AlexLike.py): four unpadded 3x3 convs
    (64, 64, pool, 128, 128, pool), dropout, fc256, ReLU, fc256, ReLU, fc10. 32x32 RGB input."""
    info = dataset_info(dataset)
    return nn.Sequential(
        Normalize(info.mean, info.std),
        nn.Conv2d(info.shape[0], 64, 3), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3), nn.ReLU(),
        nn.Conv2d(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(128 * 5 * 5, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, info.num_classes),
    )


def mlp(dataset: str = "mnist") -> nn.Sequential:
    """Deep Defense's (and DeepFool's) fully connected net 784-500-150-10 with ReLUs."""
    info = dataset_info(dataset)
    c, h, w = info.shape
    return nn.Sequential(
        Normalize(info.mean, info.std), nn.Flatten(),
        nn.Linear(c * h * w, 500), nn.ReLU(),
        nn.Linear(500, 150), nn.ReLU(),
        nn.Linear(150, info.num_classes),
    )


def lenet(dataset: str = "mnist") -> nn.Sequential:
    """Deep Defense's matconvnet LeNet: conv5-20, pool, conv5-50, pool, fc500, ReLU, fc10.
    As in the official code there is no ReLU after the convolutions."""
    info = dataset_info(dataset)
    return nn.Sequential(
        Normalize(info.mean, info.std),
        nn.Conv2d(info.shape[0], 20, 5), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * 4 * 4, 500), nn.ReLU(),
        nn.Linear(500, info.num_classes),
    )


def convnet(dataset: str = "cifar10") -> nn.Sequential:
    """Deep Defense's CIFAR-10 ConvNet (official code, models/cifar10.py): conv5-32 (pad 2),
    maxpool, ReLU, conv5-32, ReLU, avgpool, conv5-64, ReLU, avgpool, conv4-64, ReLU, conv1-10.
    Kaiming-normal weights and zero biases, as the official code initializes them."""
    info = dataset_info(dataset)
    net = nn.Sequential(
        Normalize(info.mean, info.std),
        nn.Conv2d(info.shape[0], 32, 5, padding=2), nn.MaxPool2d(2), nn.ReLU(),
        nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(64, 64, 4), nn.ReLU(),
        nn.Conv2d(64, info.num_classes, 1),
        nn.Flatten(),
    )
    for layer in net:
        if isinstance(layer, nn.Conv2d):
            nn.init.kaiming_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
    return net


class _BasicBlock(nn.Module):
    """CIFAR ResNet basic block (He et al. 2016, option-A-free: 1x1 conv shortcut when shapes change)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


def resnet20(dataset: str = "cifar10") -> nn.Sequential:
    """ResNet-20 for CIFAR (He et al. 2016; 3 stages of 3 basic blocks, 16/32/64 channels),
    the depth JumpReLU's official code uses. Meant for the GPU (paper) profile."""
    info = dataset_info(dataset)
    layers: list[nn.Module] = [
        Normalize(info.mean, info.std),
        nn.Conv2d(info.shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
    ]
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for block in range(3):
            layers.append(_BasicBlock(cin, cout, stride if block == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, info.num_classes)]
    return nn.Sequential(*layers)


def entropic_cnn(dataset: str = "cifar10") -> nn.Sequential:
    """Sperl & Böttinger's entropic-retraining CNN, as their AutoAttack submission describes it (auto-attack
    issues #41/#42): conv 32-32, max-pool, conv 64-64, max-pool, dense 512-256-128-128-84-10, ReLU after every
    layer but the last. Not given there, so the book's choice: 3x3 kernels and the padding of Keras'
    ``cifar10_cnn`` example (the first conv of each pair ``same``, the second ``valid``), whose conv widths the
    submission's match (the first author's A3 code points to the keras.io examples); no dropout.
    CIFAR-10: 32→32→30→15→15→13→6, so 64·6·6 = 2304 features; 28x28 input gives 64·5·5."""
    info = dataset_info(dataset)
    side = info.shape[1]
    for _ in range(2):  # each pair: a same conv, a valid conv (−2), then pool (÷2, floored)
        side = (side - 2) // 2
    return nn.Sequential(
        Normalize(info.mean, info.std),
        nn.Conv2d(info.shape[0], 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * side * side, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, 128), nn.ReLU(),
        nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 84), nn.ReLU(),
        nn.Linear(84, info.num_classes),
    )


def resnet18(dataset: str = "cifar10") -> nn.Sequential:
    """torchvision's ResNet-18 (ImageNet stem: 7x7 stride-2 conv and max-pool), trained from scratch, as the
    fragile-neurons authors' later code builds it (``torchvision.models.resnet18(num_classes=10)``, the first
    conv replaced by a 1-channel one for MNIST). Meant for the GPU (paper) profile."""
    from ._torchvision import import_torchvision

    info = dataset_info(dataset)
    net = import_torchvision().models.resnet18(num_classes=info.num_classes)
    if info.shape[0] != 3:
        net.conv1 = nn.Conv2d(info.shape[0], 64, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(Normalize(info.mean, info.std), net)


@dataclass(frozen=True)
class ModelSpec:
    builder: Callable[[str], nn.Module]
    datasets: tuple[str, ...]


MODELS: dict[str, ModelSpec] = {
    "lenet_like": ModelSpec(lenet_like, ("mnist", "fashion_mnist")),  # JumpReLU (Erichson et al.)
    "alex_like": ModelSpec(alex_like, ("cifar10",)),  # JumpReLU (Erichson et al.)
    "mlp": ModelSpec(mlp, ("mnist", "fashion_mnist")),  # Deep Defense (Yan et al.) / DeepFool
    "lenet": ModelSpec(lenet, ("mnist", "fashion_mnist")),  # Deep Defense (Yan et al.)
    "convnet": ModelSpec(convnet, ("cifar10",)),  # Deep Defense (Yan et al.)
    "resnet20": ModelSpec(resnet20, ("cifar10",)),  # He et al.; JumpReLU's CIFAR ResNet
    "resnet18": ModelSpec(resnet18, ("mnist", "fashion_mnist", "cifar10")),  # fragile neurons (Pravin et al.)
    "entropic_cnn": ModelSpec(entropic_cnn, ("cifar10", "mnist", "fashion_mnist")),  # entropic retraining (Sperl & Böttinger)
}


def check_model(name: str, dataset: str) -> None:
    """Raise ValueError unless ``name`` is a registered model that accepts ``dataset``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    if dataset not in MODELS[name].datasets:
        raise ValueError(
            f"model {name!r} is built for {', '.join(MODELS[name].datasets)}, not {dataset!r}"
        )


def build_model(name: str, dataset: str) -> nn.Module:
    """A freshly initialized model ``name`` for ``dataset`` (use torch.manual_seed before for determinism)."""
    check_model(name, dataset)
    return MODELS[name].builder(dataset)
