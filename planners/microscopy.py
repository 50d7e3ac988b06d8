"""The microscopy planner (``"microscopy"``): the default U-Net plans with the U-Net paper's
elastic deformation switched on (``Configuration.augmentations``), for small 2D datasets of
cells and membranes where that augmentation matters most."""

from __future__ import annotations

import dataclasses

from autoseg.data.plans import Plans
from autoseg.planners import Budget, register_planner
from autoseg.planners.default import SETTINGS as DEFAULT_SETTINGS
from autoseg.planners.default import plan_with_settings
from autoseg.planning.fingerprint import Fingerprint

SETTINGS = dataclasses.replace(DEFAULT_SETTINGS, name="microscopy", augmentations=("elastic",))


@register_planner("microscopy")
def plan(fingerprint: Fingerprint, budget: Budget | None = None) -> Plans:
    """Plans for a plain U-Net trained with elastic deformation.

    Args:
        fingerprint: the dataset's fingerprint.
        budget: GPU memory and minimum feature-map size (default: 8 GiB, 8 voxels).
    """
    return plan_with_settings(fingerprint, budget or Budget(), SETTINGS)


plan.settings = SETTINGS  # type: ignore[attr-defined] - read by planner_settings
