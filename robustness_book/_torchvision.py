"""The one place where torchvision is imported.

PyPI's torchvision 0.28.0 wheel is a CUDA build. Imported next to a CPU-only
torch, its ``_meta_registrations`` module registers fake kernels for C++
operators (``torchvision::nms`` ...) that the CPU torch does not have, and
``import torchvision`` dies with ``RuntimeError: operator torchvision::nms does
not exist``. Datasets, transforms and models never need those registrations,
so when the plain import fails for that reason we put empty stand-ins for the
two registration modules into ``sys.modules`` and import again. Only the
compiled ops (``torchvision.ops`` / ``torchvision.io``) stay unusable, and the
book does not use them.
"""
from __future__ import annotations

import sys
import types

_REGISTRATION_MODULES = ("torchvision._meta_registrations", "torchvision._autograd_registrations")

#: True when the stand-ins had to be installed (CPU torch + CUDA torchvision).
patched = False


def _forget_partial_import() -> None:
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]


def import_torchvision():
    """Return the ``torchvision`` module, working around the CUDA/CPU mismatch."""
    global patched
    if "torchvision" in sys.modules and hasattr(sys.modules["torchvision"], "datasets"):
        return sys.modules["torchvision"]
    try:
        import torchvision
    except RuntimeError as err:
        if "does not exist" not in str(err):
            raise
        _forget_partial_import()
        for name in _REGISTRATION_MODULES:
            sys.modules[name] = types.ModuleType(name)
        import torchvision

        patched = True
    return torchvision
