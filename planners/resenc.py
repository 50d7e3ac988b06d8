"""The residual-encoder U-Net planners: ``"resenc"`` and the presets ``resenc-m/l/xl``.

Same rules as the default planner; only the settings differ: encoder stages of
(1, 3, 4, 6, 6, 6, ...) residual blocks of two convolutions each, every block also keeping its
residual sum for backward, so deeper stages cost more memory and the planner picks smaller
patches or batches for the same budget.

``resenc`` plans for the budget it is given (the detected GPU or ``--gpu-memory``). The presets
are nnU-Net's ResEnc M, L and XL: the same settings planned for a fixed budget of 8, 24 or 40 GiB
whatever GPU plans them (so the same dataset gets the same plans on any machine), and, as
nnU-Net's presets do, without the 5% cap on the voxels a batch covers: the budget alone bounds
the batch.
"""

from __future__ import annotations

import dataclasses
import logging

from autoseg.data.plans import Plans
from autoseg.planners import Budget, register_planner
from autoseg.planners.default import plan_with_settings
from autoseg.planners.rules import PlannerSettings
from autoseg.planning.fingerprint import Fingerprint

SETTINGS = PlannerSettings(
    name="resenc",
    network="resenc",
    encoder_blocks=(1, 3, 4, 6),
    convs_per_block=2,
    extra_tensors_per_block=1,
)

#: preset name -> its fixed GPU budget in GiB (nnU-Net's ResEnc M, L, XL)
PRESETS = {"resenc-m": 8.0, "resenc-l": 24.0, "resenc-xl": 40.0}

log = logging.getLogger(__name__)


@register_planner("resenc")
def plan(fingerprint: Fingerprint, budget: Budget | None = None) -> Plans:
    """Plans for a residual-encoder U-Net.

    Args:
        fingerprint: the dataset's fingerprint.
        budget: GPU memory and minimum feature-map size (default: 8 GiB, 8 voxels).
    """
    return plan_with_settings(fingerprint, budget or Budget(), SETTINGS)


plan.settings = SETTINGS  # type: ignore[attr-defined] - read by planner_settings


def _register_preset(name: str, gpu_memory_gb: float) -> None:
    settings = dataclasses.replace(SETTINGS, name=name, max_dataset_fraction=1.0)

    def plan_preset(fingerprint: Fingerprint, budget: Budget | None = None) -> Plans:
        budget = budget or Budget()
        if budget.gpu_memory_gb != gpu_memory_gb:
            log.info(
                "planner %s plans for its fixed %g GiB (not %g GiB)",
                name,
                gpu_memory_gb,
                budget.gpu_memory_gb,
            )
        fixed = Budget(gpu_memory_gb, budget.min_feature_map)
        return plan_with_settings(fingerprint, fixed, settings)

    plan_preset.__qualname__ = plan_preset.__name__ = f"plan_{name.replace('-', '_')}"
    plan_preset.__doc__ = (
        f"Plans for a residual-encoder U-Net on a {gpu_memory_gb:g} GiB GPU, whatever the "
        "budget passed (only its minimum feature-map size is used)."
    )
    plan_preset.settings = settings  # type: ignore[attr-defined]
    register_planner(name)(plan_preset)


for _name, _gb in PRESETS.items():
    _register_preset(_name, _gb)
