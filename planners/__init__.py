"""Planners: turn a dataset fingerprint into plans, purely.

A planner is a callable ``(fingerprint: Fingerprint, budget: Budget) -> Plans`` registered by
name with :func:`register_planner`. The built-in planners (``planners.default``,
``planners.resenc``) and third-party ones (entry points of group ``"autoseg.planners"``, whose
value is a module that registers its planner when imported) are loaded on the first lookup,
never by scanning folders.

Example:
    >>> from planners import Budget, get_planner
    >>> plans = get_planner("default")(fingerprint, Budget(gpu_memory_gb=24))
"""

from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from autoseg.errors import AutosegError

if TYPE_CHECKING:
    from autoseg.fingerprint import Fingerprint
    from autoseg.plans import Plans

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "autoseg.planners"
BUILTIN_MODULES = ("planners.default", "planners.resenc")


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

_PLANNERS: dict[str, PlannerFn] = {}
_loaded = False


def register_planner(name: str) -> Callable[[PlannerFn], PlannerFn]:
    """Decorator registering a planner function under ``name``.

    Registering the same function again (a module re-import) is allowed; a different function
    under a taken name is a programming error.

    Args:
        name: the planner's name (``--planner NAME`` on the command line).

    Returns:
        The decorator; it returns the function unchanged.
    """

    def decorator(fn: PlannerFn) -> PlannerFn:
        old = _PLANNERS.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (
            fn.__module__,
            fn.__qualname__,
        ):
            raise ValueError(f"planner '{name}' is already registered by {old.__module__}")
        _PLANNERS[name] = fn
        return fn

    return decorator


def _load_all() -> None:
    """Import the built-in planner modules and the entry points, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _PLANNERS:
            continue
        try:
            ep.load()
        except Exception as exc:  # a broken plug-in must not break the built-in planners
            logger.warning("could not load planner entry point %s = %s: %s", ep.name, ep.value, exc)


def available_planners() -> list[str]:
    """Names of every registered planner, sorted."""
    _load_all()
    return sorted(_PLANNERS)


def get_planner(name: str) -> PlannerFn:
    """The planner registered as ``name``.

    Raises:
        AutosegError: no planner has that name (the message lists the available ones).
    """
    _load_all()
    if name not in _PLANNERS:
        raise AutosegError(
            f"unknown planner '{name}'; available planners: {', '.join(available_planners())}"
        )
    return _PLANNERS[name]
