"""Named plans: one configuration of a planner's plans with a patch, batch or spacing of your own.

``autoseg plan D --patch-size 128 128 128 --batch-size 2 --spacing 1 1 1 --name p128`` asks
:func:`override_plans` for plans named ``p128``: the automatic plans of the planner with one
configuration changed and checked by the planner's own rules, purely (no disk, no torch):

* the spacing: 3 positive, finite values (Z, Y, X);
* the patch: the network is re-derived for it with the planner's pooling rules; the patch must
  already be a multiple of that network's total stride (the planner would round it up);
* the batch and patch must fit the budget by the planner's memory estimate
  (``rules.estimate_memory``); without ``--batch-size`` the planner's batch rule picks one.

A new spacing without a new patch takes the patch the planner plans at that spacing. Only the
chosen configuration is kept in the named plans; a cascade's second stage (it depends on two
other configurations) is refused.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from autoseg.data.plans import Configuration, Plans
from autoseg.errors import AutosegError
from autoseg.planners.default import _case_arrays, _Planning, data_identifier
from autoseg.planners.rules import (
    GIB,
    PlannerSettings,
    Topology,
    derive_topology,
    estimate_memory,
    median_shape,
    resampled_shapes,
    round_spacing,
)
from autoseg.planning.fingerprint import Fingerprint

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class Overrides:
    """What ``autoseg plan --name`` changes.

    Attributes:
        name: the named plans' name (file ``plans_<name>.json``, models ``models/<name>/``).
        configuration: the configuration to change; None: ``3d_fullres`` (``2d`` for a
            2-value patch or a 2D dataset).
        patch_size: (Z, Y, X) or (Y, X) for ``2d``; None keeps the planner's.
        batch_size: None lets the planner's rule choose for the patch.
        spacing: (Z, Y, X) target spacing in mm; None keeps the planner's.
    """

    name: str
    configuration: str | None = None
    patch_size: tuple[int, ...] | None = None
    batch_size: int | None = None
    spacing: tuple[float, ...] | None = None


def check_name(name: str, planners: list[str]) -> str:
    """``name`` if it can name a plan: a short file-name-safe word that no planner uses.

    Raises:
        AutosegError: an unsafe name, or a planner's (its automatic plans own that name).
    """
    if not NAME.match(name):
        raise AutosegError(
            f"--name {name!r}: use letters, digits, '_', '-' or '.' (at most 64, first a letter "
            "or digit)"
        )
    if name in planners:
        raise AutosegError(
            f"--name {name}: the name of a planner (its automatic plans); choose another name"
        )
    return name


def _choose(automatic: Plans, overrides: Overrides) -> Configuration:
    name = overrides.configuration
    if name is None:
        three_d = "3d_fullres" in automatic.configurations
        name = "2d" if not three_d or len(overrides.patch_size or ()) == 2 else "3d_fullres"
    config = automatic.configuration(name)
    if config.previous_stage:
        raise AutosegError(
            f"-c {name}: a cascade stage cannot be overridden (it is built on "
            f"{config.previous_stage}); override 3d_fullres or 3d_lowres instead"
        )
    return config


def _check_values(config: Configuration, overrides: Overrides) -> None:
    spacing, patch, batch = overrides.spacing, overrides.patch_size, overrides.batch_size
    if spacing is not None and (
        len(spacing) != 3 or not all(math.isfinite(s) and 0 < s < 1e4 for s in spacing)
    ):
        raise AutosegError(
            f"--spacing {' '.join(map(str, spacing))}: give 3 positive, finite values (Z Y X, mm)"
        )
    if patch is not None and (len(patch) != config.ndim or min(patch) < 1):
        raise AutosegError(
            f"--patch-size {' '.join(map(str, patch))}: {config.name} takes {config.ndim} "
            f"positive values ({'Z Y X' if config.ndim == 3 else 'Y X'})"
        )
    if batch is not None and batch < 1:
        raise AutosegError(f"--batch-size {batch}: at least 1")


def _topology(
    run: _Planning, config: Configuration, spacing: tuple[float, ...], overrides: Overrides
) -> Topology:
    """The network for the new patch (or for the planner's patch at a new spacing)."""
    ndim, patch = config.ndim, overrides.patch_size
    if patch is None:
        if spacing == config.spacing:
            return Topology(config.patch_size, config.strides, config.kernel_sizes)
        return run.plan_at(spacing, ndim)[1].topology
    topo = derive_topology(
        spacing[-ndim:], tuple(patch), run.budget.min_feature_map, run.settings.max_stages(ndim)
    )
    text = "x".join(map(str, patch))
    if topo.patch_size != tuple(patch):
        stride = "x".join(map(str, topo.total_stride()))
        raise AutosegError(
            f"--patch-size {text}: not divisible by the network's strides (the planner's "
            f"{topo.num_stages}-stage network for it has a total stride of {stride}); "
            f"{'x'.join(map(str, topo.patch_size))} would be"
        )
    if topo.num_stages < 2:
        raise AutosegError(f"--patch-size {text}: too small for a network with one pooling")
    return topo


def override_plans(
    fingerprint: Fingerprint,
    automatic: Plans,
    settings: PlannerSettings,
    overrides: Overrides,
) -> Plans:
    """Named plans: ``automatic`` with one configuration changed as ``overrides`` ask.

    Args:
        fingerprint: the dataset's fingerprint (case shapes and spacings).
        automatic: the planner's plans for the same fingerprint and budget.
        settings: the planner's settings (its rules: pooling, features, memory).
        overrides: the name and the values to change.

    Raises:
        AutosegError: a value that is invalid, not divisible by the network's strides, or over
            the GPU budget by the planner's estimate (naming the option).
    """
    config = _choose(automatic, overrides)
    _check_values(config, overrides)
    from autoseg.planners import Budget

    budget = Budget(automatic.gpu_memory_gb, automatic.min_feature_map)
    spacings, shapes = _case_arrays(fingerprint)
    in_channels = len(fingerprint.channels)
    num_classes = automatic.num_classes
    run = _Planning(spacings, shapes, settings, budget, in_channels, num_classes)
    spacing = round_spacing(overrides.spacing) if overrides.spacing else config.spacing
    topo = _topology(run, config, spacing, overrides)
    new_shapes = resampled_shapes(spacings, shapes, spacing)

    def memory(batch: int) -> float:
        return estimate_memory(topo, settings, in_channels, num_classes, batch)

    batch = overrides.batch_size
    if batch is None:  # the planner's batch rule for this patch
        per_sample = memory(1) - memory(0)
        fit = int((budget.gpu_memory_gb * GIB - memory(0)) // per_sample)
        voxels = float(new_shapes.prod(axis=1).sum())
        cap = round(settings.max_dataset_fraction * voxels / math.prod(topo.patch_size))
        batch = max(settings.min_batch, min(fit, cap))
    if memory(batch) > budget.gpu_memory_gb * GIB:
        raise AutosegError(
            f"{config.name} with patch {'x'.join(map(str, topo.patch_size))} and batch {batch} "
            f"needs about {memory(batch) / GIB:.1f} GB of GPU memory by the planner's estimate, "
            f"more than the {budget.gpu_memory_gb:g} GB budget (--gpu-memory); choose a smaller "
            "--patch-size or --batch-size, or state a larger --gpu-memory"
        )
    changed = dataclasses.replace(
        config,
        spacing=spacing,
        patch_size=topo.patch_size,
        batch_size=batch,
        strides=topo.strides,
        kernel_sizes=topo.kernel_sizes,
        features_per_stage=settings.features_per_stage(topo.num_stages, config.ndim),
        blocks_per_stage=settings.blocks_per_stage(topo.num_stages),
        median_shape=median_shape(new_shapes),
        data_identifier=data_identifier(spacing),
        estimated_memory_gb=round(memory(batch) / GIB, 3),
    )
    return dataclasses.replace(
        automatic, name=overrides.name, configurations={config.name: changed}
    )


_SHOWN = (
    "spacing",
    "patch_size",
    "batch_size",
    "strides",
    "features_per_stage",
    "estimated_memory_gb",
    "data_identifier",
)


def plans_diff(automatic: Plans, named: Plans) -> list[str]:
    """``configuration.field: old -> new`` for every shown field the named plans change."""
    lines = []
    for name, new in named.configurations.items():
        old = automatic.configurations.get(name)
        for field in _SHOWN:
            before, after = getattr(old, field, None), getattr(new, field)
            if before != after:
                lines.append(f"{name}.{field}: {_show(before)} -> {_show(after)}")
    return lines


def _show(value: object) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return f"{len(value)} stages " + " ".join("x".join(map(str, v)) for v in value)
    if isinstance(value, tuple):
        return "x".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)
