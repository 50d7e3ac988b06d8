"""The checks of ``autoseg init`` on what it reads: label values, label names, label grids.

Used by ``autoseg.data.intake.plan_intake``; each adds ``Problem`` items (file and reason)
instead of raising, so that every problem of every case is listed at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.data.dataset_json import MAX_LABEL_VALUE
from autoseg.data.io import Geometry
from autoseg.errors import Problem

__all__ = [
    "GeometryDifference",
    "compare_grids",
    "geometry_difference",
    "label_names",
    "label_values",
]


@dataclass(frozen=True)
class GeometryDifference:
    """How a label's header differs from its image's (same shape).

    Attributes:
        changes: ``(field, label's value, image's value)`` for spacing, origin, direction.
        shift_voxels: the largest distance, in image voxels along any axis, between where a
            label voxel lies and the image voxel it would be put on.
        fixable: ``shift_voxels`` is within the tolerance.
    """

    changes: tuple[tuple[str, str, str], ...]
    shift_voxels: float
    fixable: bool


def label_values(where: str, label: np.ndarray, problems: list[Problem]) -> tuple[int, ...]:
    """The values of a label map; () and a problem when they are not non-negative integers or
    the map has several channels."""
    if label.ndim == 4:
        problems.append(Problem(where, f"{label.shape[0]} channels; a label map has one"))
        return ()
    values = np.unique(label)
    if label.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            examples = ", ".join(f"{v:.6g}" for v in bad[:3])
            problems.append(Problem(where, f"non-integer label values ({examples}, ...)"))
            return ()
    if values.size and values[0] < 0:
        problems.append(Problem(where, f"negative label values ({values[0]:.6g}, ...)"))
        return ()
    return tuple(int(v) for v in values)


def compare_grids(
    where: str,
    label: Geometry,
    image: Geometry,
    fix: bool,
    tolerance: float,
    problems: list[Problem],
) -> GeometryDifference | None:
    """None when ``autoseg plan`` accepts the label's grid as the image's; else the difference
    (a problem unless ``fix`` and within ``tolerance`` image voxels)."""
    if label.shape != image.shape:
        problems.append(
            Problem(where, f"shape {label.shape} differs from its image's {image.shape}")
        )
        return None
    close = np.allclose(label.spacing, image.spacing, rtol=1e-4, atol=1e-4)
    if close and label.same_grid(image):  # the rule of autoseg.planning.fingerprint
        return None
    difference = geometry_difference(label, image, tolerance)
    listed = "; ".join(f"{f} {a} vs image's {b}" for f, a, b in difference.changes)
    shift = f"label voxels up to {difference.shift_voxels:.3g} image voxels away"
    if not fix:
        problems.append(
            Problem(
                where,
                f"header differs from its image's: {listed} ({shift}); "
                "--fix-geometry gives the label its image's header",
            )
        )
    elif not difference.fixable:
        problems.append(
            Problem(
                where,
                f"header differs from its image's: {listed}; {shift}, more than "
                f"--geometry-tolerance {tolerance:g}: not fixed (the "
                "label may be flipped or drawn on another grid; resample it onto the image)",
            )
        )
    return difference


def geometry_difference(label: Geometry, image: Geometry, tolerance: float) -> GeometryDifference:
    """How far the label's voxels lie from the image voxels of the same index, and what in the
    headers differs (spacing, origin, direction)."""
    a_label, a_image = np.array(label.affine), np.array(image.affine)
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (0, image.shape[2] - 1)
            for j in (0, image.shape[1] - 1)
            for k in (0, image.shape[0] - 1)
        ]
    ).T  # (4, 8): voxel (i, j, k) of the 8 corners
    try:
        moved = np.linalg.solve(a_image, a_label @ corners)
        shift = float(np.abs(moved[:3] - corners[:3]).max())
    except np.linalg.LinAlgError:
        shift = math.inf
    changes = []
    if not np.allclose(label.spacing, image.spacing, rtol=1e-4, atol=1e-4):
        changes.append(("spacing", _numbers(label.spacing), _numbers(image.spacing)))
    if not np.allclose(a_label[:3, 3], a_image[:3, 3], atol=1e-3):
        changes.append(("origin", _numbers(a_label[:3, 3]), _numbers(a_image[:3, 3])))
    d_label = a_label[:3, :3] / np.linalg.norm(a_label[:3, :3], axis=0)
    d_image = a_image[:3, :3] / np.linalg.norm(a_image[:3, :3], axis=0)
    if not np.allclose(d_label, d_image, atol=1e-4):
        changes.append(("direction", _numbers(d_label.T.ravel()), _numbers(d_image.T.ravel())))
    return GeometryDifference(tuple(changes), shift, shift <= tolerance)


def _numbers(values: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def label_names(
    holders: Mapping[int, Sequence[str]],
    folder: Path,
    binarize: bool,
    names: Sequence[str],
    problems: list[Problem],
) -> dict[int, str]:
    """The dataset.json labels from the values found (value -> the label files holding it).

    Args:
        holders: every label value found -> names of the files holding it.
        folder: the label folder (where a problem about all labels is reported).
        binarize: every non-zero value becomes 1.
        names: the names of labels 1..N (``--label``), or empty.
        problems: where problems are added.

    Returns:
        value -> name, background included; empty when there is a problem.
    """
    values = sorted(holders)
    if binarize:
        values = [0, 1] if any(v for v in values) else [0]
    elif values and values[-1] > MAX_LABEL_VALUE and values == list(range(len(values))):
        problems.append(
            Problem(str(folder), f"{len(values)} label values: at most {MAX_LABEL_VALUE + 1}")
        )
        return {}
    elif values != list(range(len(values))):
        odd = [v for i, v in enumerate(values) if v != i]
        files = sorted({f for v in odd for f in holders[v]})
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        message = (
            f"label values {', '.join(map(str, values[:8]))}{' ...' if len(values) > 8 else ''}"
            f" are not consecutive 0..N (in {shown})"
        )
        if 255 in values:
            message += (
                "; 0/255 looks like a binary mask saved as an 8-bit picture: --binarize writes "
                "every non-zero value as 1"
            )
        else:
            message += "; relabel them to 0, 1, 2, ... (a dataset.json declares 0..N)"
        problems.append(Problem(str(folder), message))
        return {}
    if values[-1:] == [0]:
        problems.append(Problem(str(folder), "every label map is empty (only 0)"))
        return {}
    foreground = values[1:]
    if names and len(names) != len(foreground):
        problems.append(
            Problem(
                str(folder),
                f"{len(names)} --label name(s) for {len(foreground)} label value(s) "
                f"found ({', '.join(map(str, foreground))})",
            )
        )
        return {}
    given = list(names) or [f"label_{v}" for v in foreground]
    return {0: "background", **dict(zip(foreground, given, strict=True))}
