"""Scores of one predicted label map against its reference: Dice, IoU, precision, recall, HD95, NSD.

The definitions are MONAI's (``monai.metrics``: ``compute_dice``,
``compute_hausdorff_distance(percentile=95)``, ``compute_surface_dice``), so results compare
directly with the library most users check against; ``tests/evaluation/test_metrics_monai.py`` holds
them to it. Per case and label, with ``P`` the predicted and ``R`` the reference voxels:

- ``dice = 2TP / (2TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``,
  ``precision = TP / |P|``, ``recall = TP / |R|``.
- Surface of a mask: the mask minus its erosion by the face-connected structure (6 neighbours
  in 3D, scipy's default, as MONAI's ``get_mask_edges``); voxels on the image border count as
  surface. Distances between surfaces are Euclidean in mm between voxel centres
  (``distance_transform_edt`` with ``sampling=spacing``).
- ``hd95``: the larger of the two directed 95th percentiles (linear interpolation): of the
  distances of the predicted surface voxels to the reference surface, and of the reference
  surface voxels to the predicted surface.
- ``nsd`` (normalised surface Dice, Nikolov et al. 2021) at tolerance ``tau`` mm:
  ``(|S_P within tau of S_R| + |S_R within tau of S_P|) / (|S_P| + |S_R|)``, counting surface
  voxels (MONAI's ``use_subvoxels=False``), not surface areas.

Empty masks never give NaN (MONAI gives NaN or inf there):

- both empty: dice, iou, precision, recall and nsd are 1, hd95 is 0 (nothing to find, nothing
  found).
- exactly one empty: dice, iou, nsd, precision and recall are 0 (the one of precision / recall
  that is 0/0 is set to 0 too: either the whole object was missed or everything predicted is
  wrong), and hd95 is the diagonal of the whole image in mm,
  ``sqrt(sum((shape * spacing)^2))``, which bounds every distance inside the image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoseg.data.ignore import mask_ignored
from autoseg.data.regions import Region

METRIC_NAMES = ("dice", "iou", "precision", "recall", "hd95", "nsd")
COUNT_NAMES = ("tp", "fp", "fn", "n_pred", "n_ref")


@dataclass(frozen=True)
class LabelMetrics:
    """The scores of one label in one case (hd95 in mm; counts in voxels)."""

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    nsd: float
    tp: int
    fp: int
    fn: int
    n_pred: int
    n_ref: int


def surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face-neighbour outside it (the image border counts as outside)."""
    face = ndimage.generate_binary_structure(mask.ndim, 1)  # 6 neighbours in 3D
    return mask & ~ndimage.binary_erosion(mask, structure=face)


#: Above this label value, boxes are found per label: ``find_objects`` keeps a list entry for
#: every value up to the largest, so one voxel of value 2e9 would cost gigabytes.
_DENSE_BOXES = 4096


def _label_boxes(array: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box of each positive label value in ``labels`` (None where absent)."""
    array = array.view(np.uint8) if array.dtype == bool else array
    wanted = [int(v) for v in labels if int(v) > 0]
    if not wanted:
        return {}
    top = max(wanted)
    if top <= _DENSE_BOXES:
        boxes = ndimage.find_objects(array, max_label=top)
        return {v: boxes[v - 1] for v in wanted}
    found: dict[int, tuple[slice, ...] | None] = {}
    for v in wanted:
        mask = array == v
        found[v] = tuple(slice(a, b) for a, b in _mask_box(mask)) if mask.any() else None
    return found


def _mask_box(mask: np.ndarray) -> list[tuple[int, int]]:
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return box


def _union_box(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    """Smallest box holding every given box (None when none is given)."""
    present = [box for box in boxes if box is not None]
    if not present:
        return None
    return tuple(
        slice(min(s.start for s in axis), max(s.stop for s in axis))
        for axis in zip(*present, strict=True)
    )


def _metrics_of_masks(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tol: float, worst: float
) -> LabelMetrics:
    """Scores of two boolean masks (cropped to their bounding box)."""
    n_pred, n_ref = int(pred.sum()), int(ref.sum())
    tp = int(np.count_nonzero(pred & ref))
    fp, fn = n_pred - tp, n_ref - tp
    if n_pred == 0 and n_ref == 0:
        return LabelMetrics(1.0, 1.0, 1.0, 1.0, 0.0, 1.0, tp, fp, fn, n_pred, n_ref)
    if n_pred == 0 or n_ref == 0:
        return LabelMetrics(0.0, 0.0, 0.0, 0.0, worst, 0.0, tp, fp, fn, n_pred, n_ref)
    surf_pred, surf_ref = surface(pred), surface(ref)
    pred_to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=spacing)[surf_pred]
    ref_to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)[surf_ref]
    within = np.count_nonzero(pred_to_ref <= tol) + np.count_nonzero(ref_to_pred <= tol)
    dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    hd95 = max(float(np.percentile(pred_to_ref, 95)), float(np.percentile(ref_to_pred, 95)))
    nsd = float(within / (pred_to_ref.size + ref_to_pred.size))
    return LabelMetrics(dice, iou, tp / n_pred, tp / n_ref, hd95, nsd, tp, fp, fn, n_pred, n_ref)


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: tuple[float, ...],
    nsd_tolerance_mm: float = 1.0,
    ignore_label: int | None = None,
    regions: Sequence[Region] = (),
) -> dict[int, LabelMetrics]:
    """Score each label of one case (rules in the module docstring).

    Everything is computed on the bounding box of both masks: the same values as on the whole
    image (outside the box is background, which is also what the erosion assumes beyond the
    array's edge), at a fraction of the cost.

    Args:
        pred: predicted label map ``(Z, Y, X)``, integers.
        ref: reference label map of the same shape.
        labels: label values to score.
        spacing: voxel size in mm per axis, ``(Z, Y, X)``.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        ignore_label: voxels the reference labels so are background in both maps (they count
            as neither TP, FP nor FN); the value itself is not scored.
        regions: score these regions (``autoseg.data.regions``) instead of ``labels``: region i
            (1-based) is the set of voxels holding any of its values.

    Returns:
        label value -> its metrics, in the order of ``labels``; with ``regions``, region
        number (1, 2, ...) -> its metrics.

    Raises:
        ValueError: shapes differ, the arrays are not integers or spacing has the wrong length.
    """
    pred, ref = np.asarray(pred), np.asarray(ref)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {spacing} does not match {pred.ndim} dimensions")
    for name, array in (("prediction", pred), ("reference", ref)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(f"{name} must hold integers, found {array.dtype}")
    pred, ref = mask_ignored(pred, ref, ignore_label)
    labels = [v for v in labels if ignore_label is None or int(v) != ignore_label]
    spacing = tuple(float(s) for s in spacing)
    worst = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True)))
    if regions:
        return _region_metrics(pred, ref, regions, spacing, nsd_tolerance_mm, worst)
    pred_boxes, ref_boxes = _label_boxes(pred, labels), _label_boxes(ref, labels)
    whole = tuple(slice(0, n) for n in pred.shape)
    result: dict[int, LabelMetrics] = {}
    for label in (int(v) for v in labels):
        # find_objects has no boxes for background (0) or negative values: use the whole image
        box = _union_box(pred_boxes[label], ref_boxes[label]) if label > 0 else whole
        if box is None:  # absent from both
            result[label] = LabelMetrics(1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 0)
            continue
        result[label] = _metrics_of_masks(
            pred[box] == label, ref[box] == label, spacing, nsd_tolerance_mm, worst
        )
    return result


def _region_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    regions: Sequence[Region],
    spacing: tuple[float, ...],
    tol: float,
    worst: float,
) -> dict[int, LabelMetrics]:
    """Region number (1-based) -> metrics of the voxels holding any of the region's values."""
    values = sorted({v for r in regions for v in r.values})
    pred_boxes, ref_boxes = _label_boxes(pred, values), _label_boxes(ref, values)
    result: dict[int, LabelMetrics] = {}
    for number, region in enumerate(regions, start=1):
        box = _union_box(*[b.get(v) for b in (pred_boxes, ref_boxes) for v in region.values])
        if box is None:
            result[number] = LabelMetrics(1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 0)
            continue
        result[number] = _metrics_of_masks(
            np.isin(pred[box], region.values), np.isin(ref[box], region.values), spacing, tol, worst
        )
    return result
