"""Planners: turn a dataset fingerprint into plans, purely.

A planner is a callable ``(fingerprint: Fingerprint, budget: Budget) -> Plans`` registered by
name with :func:`register_planner`. The built-in planners (``planners.default``,
``planners.resenc``) and third-party ones (entry points of group ``"autoseg.planners"``, whose
value is a module that registers its planner when imported) are loaded on the first lookup,
never by scanning folders (``autoseg.registry``, the rule networks follow too).

This folder is installed as the package ``autoseg.planners``.

Example:
    >>> from autoseg.planners import Budget, get_planner
    >>> plans = get_planner("default")(fingerprint, Budget(gpu_memory_gb=24))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoseg.errors import AutosegError
from autoseg.registry import Registry

if TYPE_CHECKING:
    from autoseg.data.plans import Plans
    from autoseg.planners.rules import PlannerSettings
    from autoseg.planning.fingerprint import Fingerprint

ENTRY_POINT_GROUP = "autoseg.planners"
BUILTIN_MODULES = (
    "autoseg.planners.default",
    "autoseg.planners.resenc",
    "autoseg.planners.attention",
    "autoseg.planners.microscopy",
)


@dataclass(frozen=True)
class Budget:
    """What the planner may use.

    Attributes:
        gpu_memory_gb: GPU memory for training, in GiB (2**30 bytes).
        min_feature_map: smallest feature-map edge (voxels) an axis may be pooled down to.
    """

    gpu_memory_gb: float = 8.0
    min_feature_map: int = 8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.gpu_memory_gb) and self.gpu_memory_gb > 0):
            raise AutosegError(
                f"GPU memory budget must be a positive number of GB, got {self.gpu_memory_gb!r}"
            )
        if (
            isinstance(self.min_feature_map, bool)
            or not isinstance(self.min_feature_map, int)
            or self.min_feature_map < 1
        ):
            raise AutosegError(
                f"minimum feature-map size must be a positive integer, got {self.min_feature_map!r}"
            )


PlannerFn = Callable[["Fingerprint", Budget], "Plans"]

PLANNERS: Registry[PlannerFn] = Registry("planner", ENTRY_POINT_GROUP, BUILTIN_MODULES)


def register_planner(name: str) -> Callable[[PlannerFn], PlannerFn]:
    """Decorator registering a planner function under ``name`` (``--planner NAME``).

    Registering the same function again (a module re-import) is allowed; a different function
    under a taken name is a programming error.
    """
    return PLANNERS.register(name)


def available_planners() -> list[str]:
    """Names of every registered planner, sorted."""
    return PLANNERS.names()


def get_planner(name: str) -> PlannerFn:
    """The planner registered as ``name``.

    Raises:
        AutosegError: no planner has that name (the message lists the available ones).
    """
    return PLANNERS.get(name)


def planner_settings(name: str) -> PlannerSettings:
    """The settings (``planners.rules.PlannerSettings``) of planner ``name``, which named plans
    re-plan with; a planner exposes them as the attribute ``settings`` of its function.

    Raises:
        AutosegError: unknown planner, or one without settings (its plans cannot be overridden).
    """
    settings = getattr(get_planner(name), "settings", None)
    if settings is None:
        raise AutosegError(
            f"planner {name} does not expose its rules (a 'settings' attribute): its plans "
            "cannot be overridden with --patch-size/--batch-size/--spacing"
        )
    return settings
