"""robustness_book._torchvision: torchvision imports (datasets, transforms, models) next to CPU torch."""
from __future__ import annotations

import json
import subprocess
import sys

import torch

from robustness_book._torchvision import import_torchvision


def test_import_gives_datasets_transforms_models():
    tv = import_torchvision()
    assert hasattr(tv.datasets, "MNIST") and hasattr(tv.datasets, "CIFAR10")
    assert hasattr(tv.transforms, "ToTensor")
    model = tv.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_import_twice_gives_the_same_module():
    assert import_torchvision() is import_torchvision()
    assert sys.modules["torchvision"] is import_torchvision()


def test_fresh_interpreter(tmp_path):
    """A clean process imports it too; when patched, the two stand-ins are in sys.modules."""
    script = (
        "import json, sys\n"
        "import robustness_book._torchvision as m\n"
        "tv = m.import_torchvision()\n"
        "print(json.dumps({'patched': m.patched, 'has_mnist': hasattr(tv.datasets, 'MNIST'),\n"
        "    'stand_ins': [n in sys.modules for n in m._REGISTRATION_MODULES]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"torchvision import in a fresh interpreter: patched={report['patched']}")
    assert report["has_mnist"]
    if report["patched"]:
        assert all(report["stand_ins"])
