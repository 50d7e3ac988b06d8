"""The residual-encoder U-Net planner (``"resenc"``, as nnU-Net's ResEnc presets).

Same rules as the default planner; only the settings differ: encoder stages of
(1, 3, 4, 6, 6, 6, ...) residual blocks of two convolutions each, every block also keeping its
residual sum for backward, so deeper stages cost more memory and the planner picks smaller
patches or batches for the same budget.
"""

from __future__ import annotations

from autoseg.fingerprint import Fingerprint
from autoseg.planners import Budget, register_planner
from autoseg.planners.default import plan_with_settings
from autoseg.planners.rules import PlannerSettings
from autoseg.plans import Plans

SETTINGS = PlannerSettings(
    name="resenc",
    network="resenc",
    encoder_blocks=(1, 3, 4, 6),
    convs_per_block=2,
    extra_tensors_per_block=1,
)


@register_planner("resenc")
def plan(fingerprint: Fingerprint, budget: Budget | None = None) -> Plans:
    """Plans for a residual-encoder U-Net.

    Args:
        fingerprint: the dataset's fingerprint.
        budget: GPU memory and minimum feature-map size (default: 8 GiB, 8 voxels).
    """
    return plan_with_settings(fingerprint, budget or Budget(), SETTINGS)
