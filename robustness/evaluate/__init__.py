"""The Evaluate layer: measurements shared by two or more chapters.

Accuracy and attack runners (:mod:`.core`), the health table (:mod:`.health`). Everything works in
batches on the model's device and returns plain Python numbers or CPU tensors, ready for a results JSON.
Never imports a defense or a chapter.
"""
from .core import (accuracy, accuracy_curve, min_norm_summary, model_device, predict, relative_norms, run_attack,
                   timed, zero_gradient_fraction)
from .health import health_checks

__all__ = ["accuracy", "accuracy_curve", "health_checks", "min_norm_summary", "model_device", "predict",
           "relative_norms", "run_attack", "timed", "zero_gradient_fraction"]
