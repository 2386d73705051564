"""The Evaluate layer: measurements shared by two or more chapters.

Accuracy and attack runners (:mod:`.core`), the health table (:mod:`.health`), the adaptive worst case over
an ensemble of attacks (:mod:`.worst_case`; the attacks, or members, are described in :mod:`.members`),
AutoAttack (:mod:`.autoattack`), the adaptive minimum-norm measurement (:mod:`.min_norm`) and Wilson
intervals (:mod:`.stats`). Everything works in batches on the model's device and returns plain Python
numbers or CPU tensors, ready for a results JSON.
Never imports a defense or a chapter.
"""
from .autoattack import autoattack_accuracy, run_autoattack
from .core import (accuracy, accuracy_curve, gradient_norms, min_norm_summary, model_device, predict,
                   run_attack, timed)
from .health import health_checks
from .min_norm import min_norm
from .stats import (accuracy_record, clearly_greater, compare, holm, intervals_overlap, mcnemar_exact, pack_mask,
                    paired_test, ranks, spearman, unpack_mask, wilson_interval)
from . import members
from .members import MEMBER_NAMES, NORMS, Member, check_members, default_members, members_from_names
from .worst_case import member_robust_masks, to_record, worst_case, worst_case_curve
from .rho import deep_defense_rho, jumprelu_rho, mean_image_rho, normalized_rho, pixel_rho  # noqa: F401

__all__ = ["MEMBER_NAMES", "Member", "NORMS", "accuracy", "accuracy_curve", "accuracy_record", "autoattack_accuracy",
           "check_members", "clearly_greater", "compare", "default_members", "gradient_norms", "health_checks",
           "intervals_overlap", "members", "members_from_names", "min_norm", "min_norm_summary", "model_device",
           "predict", "ranks", "run_attack", "run_autoattack", "spearman", "timed", "to_record", "wilson_interval", "member_robust_masks",
           "holm", "mcnemar_exact", "pack_mask", "paired_test", "unpack_mask",
           "worst_case", "worst_case_curve"]
