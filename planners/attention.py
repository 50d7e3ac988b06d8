"""The Attention U-Net planner (``"attention"``): the default planner's rules and settings with
the ``attention`` network (``autoseg.networks.attention``: an additive gate on each skip)."""

from __future__ import annotations

import dataclasses

from autoseg.data.plans import Plans
from autoseg.planners import Budget, register_planner
from autoseg.planners.default import SETTINGS as DEFAULT_SETTINGS
from autoseg.planners.default import plan_with_settings
from autoseg.planning.fingerprint import Fingerprint

SETTINGS = dataclasses.replace(DEFAULT_SETTINGS, name="attention", network="attention")


@register_planner("attention")
def plan(fingerprint: Fingerprint, budget: Budget | None = None) -> Plans:
    """Plans for an Attention U-Net (2D and 3D configurations as the default planner's).

    Args:
        fingerprint: the dataset's fingerprint.
        budget: GPU memory and minimum feature-map size (default: 8 GiB, 8 voxels).
    """
    return plan_with_settings(fingerprint, budget or Budget(), SETTINGS)


plan.settings = SETTINGS  # type: ignore[attr-defined] - read by planner_settings
