"""The default planner (plain U-Net) and the planning procedure every planner family shares.

:func:`plan_with_settings` turns a fingerprint, a budget and a :class:`PlannerSettings` into
:class:`Plans` with the rules of :mod:`planners.rules`; a planner family is only a settings
value (see :mod:`planners.resenc`). Configurations:

* ``2d``: Z-slices at the 3d_fullres target spacing (shares its preprocessed data).
* ``3d_fullres``: planned unless the median image is a single slice (a 2D dataset).
* ``3d_lowres``: only when the 3d_fullres patch covers < 25% of the median image. The spacing
  grows in 3% steps (only the axes > 2x finer than the coarsest while there are such axes)
  until the patch planned at it covers >= 25% of the median image; dropped, as nnU-Net does,
  when its median image is not at least 2x smaller than the 3d_fullres one.
* ``3d_cascade_fullres``: with every 3d_lowres, the 3d_fullres network taking the 3d_lowres
  segmentation as extra input channels (``autoseg.inference.cascade``).

``batch_dice`` follows nnU-Net v2: True for 2d, False for 3d_lowres, and for 3d_fullres True
only when a 3d_lowres exists (a cascade trains on larger images, few per batch).
``data_identifier`` is ``"3d_"`` plus the spacing: configurations (and planners) with the same
spacing share the preprocessed data, which does not depend on the network.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from autoseg.data.ignore import predicted_labels
from autoseg.data.plans import Configuration, Normalization, Plans
from autoseg.errors import AutosegError
from autoseg.planners import Budget, register_planner
from autoseg.planners.rules import (
    GIB,
    PlannedNetwork,
    PlannerSettings,
    anisotropic_axis,
    median_shape,
    next_lowres_spacing,
    plan_network,
    resampled_shapes,
    round_spacing,
    target_spacing,
)
from autoseg.planning.fingerprint import Fingerprint

log = logging.getLogger(__name__)

SETTINGS = PlannerSettings(name="default", network="unet", encoder_blocks=(2,))
CASCADE = "3d_cascade_fullres"

NONZERO_MASK_THRESHOLD = 0.75
MAX_LOWRES_STEPS = 1000


def _case_arrays(fingerprint: Fingerprint) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) spacings and shapes after cropping; AutosegError when they cannot be planned."""
    where = f"fingerprint of {fingerprint.dataset_name}"
    if not fingerprint.cases:
        raise AutosegError(f"{where}: no training cases to plan from")
    if len(fingerprint.intensities) != len(fingerprint.channels):
        raise AutosegError(
            f"{where}: {len(fingerprint.channels)} channel(s) but intensity statistics for "
            f"{len(fingerprint.intensities)}"
        )
    for case in fingerprint.cases:
        if len(case.spacing) != 3 or len(case.shape_after_crop) != 3:
            raise AutosegError(f"{where}: case {case.case_id} is not 3D (Z, Y, X)")
        if not all(math.isfinite(s) and s > 0 for s in case.spacing):
            raise AutosegError(f"{where}: case {case.case_id} has spacing {case.spacing}")
        if min(case.shape_after_crop) < 1:
            raise AutosegError(f"{where}: case {case.case_id} is empty after cropping")
    spacings = np.array([c.spacing for c in fingerprint.cases], dtype=np.float64)
    shapes = np.array([c.shape_after_crop for c in fingerprint.cases], dtype=np.float64)
    return spacings, shapes


def normalization(fingerprint: Fingerprint) -> tuple[Normalization, ...]:
    """One scheme per channel: ``ct`` for channels named CT, else per-image ``zscore``."""
    median_kept = float(np.median([c.relative_size_after_crop for c in fingerprint.cases]))
    use_mask = median_kept < NONZERO_MASK_THRESHOLD
    schemes = []
    for name, stats in zip(fingerprint.channels, fingerprint.intensities, strict=True):
        if name.strip().lower() == "ct":
            schemes.append(
                Normalization(
                    "ct",
                    clip_low=float(stats.percentile_00_5),
                    clip_high=float(stats.percentile_99_5),
                    mean=float(stats.mean),
                    std=float(stats.std),
                )
            )
        else:
            schemes.append(Normalization("zscore", use_nonzero_mask=use_mask))
    return tuple(schemes)


def data_identifier(spacing: tuple[float, ...]) -> str:
    """Preprocessed-data folder name for a spacing, e.g. ``3d_1.000x0.781250x0.781250``."""
    parts = [f"{s:.3f}" if round(s, 3) == s else f"{s:.6f}" for s in spacing]
    return "3d_" + "x".join(parts)


@dataclass(frozen=True)
class _Planning:
    """One planning run: the cases, the planner family and the budget."""

    spacings: np.ndarray  # (N, 3) case spacings
    shapes: np.ndarray  # (N, 3) case shapes after cropping
    settings: PlannerSettings
    budget: Budget
    in_channels: int
    num_classes: int

    def plan_at(
        self, spacing: tuple[float, ...], ndim: int
    ) -> tuple[tuple[int, ...], PlannedNetwork]:
        """Median (Z, Y, X) shape at ``spacing`` and the ``ndim``-D network planned there."""
        new_shapes = resampled_shapes(self.spacings, self.shapes, spacing)
        median = median_shape(new_shapes)
        planned = plan_network(
            spacing[-ndim:],
            median[-ndim:],
            float(np.prod(new_shapes, axis=1).sum()),
            self.settings,
            self.budget.gpu_memory_gb,
            self.budget.min_feature_map,
            self.in_channels,
            self.num_classes,
        )
        return median, planned

    def lowres(
        self, fullres_median: tuple[int, ...], fullres: PlannedNetwork, spacing: tuple[float, ...]
    ) -> tuple[tuple[float, ...], tuple[int, ...], PlannedNetwork] | None:
        """(spacing, median shape, network) of 3d_lowres, or None when it is not needed."""
        threshold = self.settings.lowres_threshold
        full_voxels = math.prod(fullres_median)
        if math.prod(fullres.topology.patch_size) >= threshold * full_voxels:
            return None
        for _ in range(MAX_LOWRES_STEPS):
            spacing = next_lowres_spacing(spacing, self.settings.lowres_step)
            median, planned = self.plan_at(spacing, 3)
            if math.prod(planned.topology.patch_size) >= threshold * math.prod(median):
                break
        if full_voxels < 2 * math.prod(median):
            return None
        return spacing, median, planned


def plan_with_settings(
    fingerprint: Fingerprint, budget: Budget, settings: PlannerSettings
) -> Plans:
    """Plans for every configuration of ``fingerprint`` within ``budget``.

    Args:
        fingerprint: the dataset's fingerprint.
        budget: GPU memory and minimum feature-map size.
        settings: the planner family.

    Returns:
        Plans with ``2d``, ``3d_fullres`` (3D datasets) and ``3d_lowres`` (large images).

    Raises:
        AutosegError: the fingerprint has no cases or inconsistent entries.
    """
    spacings, shapes = _case_arrays(fingerprint)
    run = _Planning(
        spacings,
        shapes,
        settings,
        budget,
        len(fingerprint.channels),
        # network outputs: one per region, else per class (the ignore label has none)
        len(fingerprint.regions) or max(2, len(predicted_labels(fingerprint.labels))),
    )
    norms = normalization(fingerprint)
    aniso = anisotropic_axis(round_spacing(np.median(spacings, axis=0)))

    def configuration(
        name: str,
        spacing: tuple[float, ...],
        median: tuple[int, ...],
        planned: PlannedNetwork,
        batch_dice: bool,
    ) -> Configuration:
        topo = planned.topology
        if planned.memory_bytes > budget.gpu_memory_gb * GIB:
            log.warning(
                "%s: even the smallest %s patch %s needs about %.2f GB (budget %.2f GB)",
                fingerprint.dataset_name,
                name,
                topo.patch_size,
                planned.memory_bytes / GIB,
                budget.gpu_memory_gb,
            )
        return Configuration(
            name=name,
            spacing=spacing,
            patch_size=topo.patch_size,
            batch_size=planned.batch_size,
            strides=topo.strides,
            kernel_sizes=topo.kernel_sizes,
            features_per_stage=planned.features,
            normalization=norms,
            network=settings.network,
            blocks_per_stage=settings.blocks_per_stage(topo.num_stages),
            median_shape=median,
            data_identifier=data_identifier(spacing),
            anisotropic_axis=aniso,
            batch_dice=batch_dice,
            estimated_memory_gb=round(planned.memory_bytes / GIB, 3),
            augmentations=settings.augmentations,
        )

    spacing = target_spacing(spacings, shapes)
    median, planned_2d = run.plan_at(spacing, 2)
    configs = {"2d": configuration("2d", spacing, median, planned_2d, True)}
    if median[0] > 1:  # a 3D dataset
        _, fullres = run.plan_at(spacing, 3)
        lowres = run.lowres(median, fullres, spacing)
        configs["3d_fullres"] = configuration(
            "3d_fullres", spacing, median, fullres, lowres is not None
        )
        if lowres is not None:
            configs["3d_lowres"] = configuration("3d_lowres", *lowres, False)
            # the cascade's second stage: 3d_fullres with the low-resolution segmentation as
            # extra input channels (autoseg.inference.cascade); it shares 3d_fullres' preprocessed
            # data
            configs[CASCADE] = dataclasses.replace(
                configs["3d_fullres"], name=CASCADE, previous_stage="3d_lowres"
            )
    return Plans(
        dataset_name=fingerprint.dataset_name,
        planner=settings.name,
        gpu_memory_gb=float(budget.gpu_memory_gb),
        min_feature_map=budget.min_feature_map,
        channels=tuple(fingerprint.channels),
        labels=dict(fingerprint.labels),
        regions=fingerprint.regions,
        configurations=configs,
    )


@register_planner("default")
def plan(fingerprint: Fingerprint, budget: Budget | None = None) -> Plans:
    """Plans for a plain U-Net with two convolutions per stage.

    Args:
        fingerprint: the dataset's fingerprint.
        budget: GPU memory and minimum feature-map size (default: 8 GiB, 8 voxels).
    """
    return plan_with_settings(fingerprint, budget or Budget(), SETTINGS)


plan.settings = SETTINGS  # type: ignore[attr-defined] - read by planner_settings
