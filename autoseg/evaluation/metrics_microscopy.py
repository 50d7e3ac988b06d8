"""Metrics microscopists use, for 2D label maps: pixel error, Rand error, detection F1.

Per foreground label of a case, with objects = connected components (face connectivity) of the
label's mask in the prediction and in the reference:

- ``pixel_error``: fraction of the image's pixels whose membership in the label differs
  (the ISBI 2012 EM challenge's pixel error on binary maps).
- ``rand_error``: the adapted Rand error (``skimage.metrics.adapted_rand_error``, 1 - the
  F-score of the Rand index, background excluded) between the two object labelings: it counts
  merged and split objects, which Dice barely sees.
- ``detection_f1``: objects matched one-to-one at IoU > 0.5 (at that threshold a match is
  unique); ``2 TP / (2 TP + FP + FN)`` over the objects.

``objects="background"`` (``evaluate --objects background``) reads the objects the other way
round, as the ISBI 2012 challenge scores membrane maps: the objects of label ``v`` are the
connected components of the pixels that are *not* ``v`` (the cells between the membranes), and
the label's own pixels (the membranes) separate them. The pixel error is the same either way.

Empty cases never give NaN: both without objects: errors 0, F1 1; one side empty: Rand error 1,
F1 0; objects of single pixels (no pixel pair in one object): Rand error 0.
``autoseg.evaluation.evaluate`` computes these next to Dice, IoU and HD95 when the label maps are
2D (a
single slice); scikit-image is imported only then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from autoseg.errors import AutosegError

if TYPE_CHECKING:
    from rich.table import Table

OBJECT_METRIC_NAMES = ("pixel_error", "rand_error", "detection_f1")
#: how a label's objects are read: its connected components, or those of what it separates
OBJECT_READINGS = ("foreground", "background")
IOU_THRESHOLD = 0.5


@dataclass(frozen=True)
class ObjectMetrics:
    """The object metrics of one label in one case (counts: objects)."""

    pixel_error: float
    rand_error: float
    detection_f1: float
    n_pred_objects: int = 0
    n_ref_objects: int = 0
    matched: int = 0


@dataclass(frozen=True)
class ObjectMeans:
    """Means over cases of the object metrics of one label."""

    pixel_error: float
    rand_error: float
    detection_f1: float


def matched_objects(pred_objects: np.ndarray, ref_objects: np.ndarray) -> int:
    """Pairs of objects with IoU > 0.5 (each object in at most one pair).

    Args:
        pred_objects, ref_objects: integer labelings of the same shape, 0 = background.
    """
    n_pred, n_ref = int(pred_objects.max(initial=0)), int(ref_objects.max(initial=0))
    if n_pred == 0 or n_ref == 0:
        return 0
    both = (pred_objects > 0) & (ref_objects > 0)
    pair_index = pred_objects[both].astype(np.int64) * (n_ref + 1) + ref_objects[both]
    pairs, overlap = np.unique(pair_index, return_counts=True)
    p, r = pairs // (n_ref + 1), pairs % (n_ref + 1)
    pred_sizes = np.bincount(pred_objects.ravel(), minlength=n_pred + 1)
    ref_sizes = np.bincount(ref_objects.ravel(), minlength=n_ref + 1)
    iou = overlap / (pred_sizes[p] + ref_sizes[r] - overlap)
    return int(np.count_nonzero(iou > IOU_THRESHOLD))


def _rand_error(pred_objects: np.ndarray, ref_objects: np.ndarray) -> float:
    try:
        from skimage.metrics import adapted_rand_error  # lazily: only for 2D label maps
    except ImportError as exc:
        raise AutosegError(
            "the Rand error of 2D label maps needs scikit-image (pip install 'autoseg[microscopy]')"
        ) from exc
    # no two reference pixels share an object in either labeling (single-pixel objects, and
    # only those in the prediction where the reference has objects): skimage divides 0 by 0.
    # No pair of pixels is then merged or split, so the error is 0 (a missed or extra object
    # still shows in the detection F1 and the pixel error)
    with np.errstate(invalid="ignore", divide="ignore"):
        error, _, _ = adapted_rand_error(ref_objects, pred_objects)
    return 0.0 if np.isnan(error) else float(error)


def object_metrics(pred: np.ndarray, ref: np.ndarray) -> ObjectMetrics:
    """Pixel error, Rand error and detection F1 of two boolean masks of one label.

    Args:
        pred, ref: masks of the same shape (2D, or a single slice ``(1, Y, X)``).
    """
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    pixel_error = float(np.count_nonzero(pred != ref) / max(pred.size, 1))
    pred_objects, n_pred = ndimage.label(pred)
    ref_objects, n_ref = ndimage.label(ref)
    if n_pred == 0 and n_ref == 0:
        return ObjectMetrics(pixel_error, 0.0, 1.0)
    if n_pred == 0 or n_ref == 0:
        return ObjectMetrics(pixel_error, 1.0, 0.0, n_pred, n_ref)
    matched = matched_objects(pred_objects, ref_objects)
    f1 = 2 * matched / (n_pred + n_ref)
    rand = _rand_error(pred_objects, ref_objects)
    return ObjectMetrics(pixel_error, rand, f1, n_pred, n_ref, matched)


def check_objects(objects: str) -> str:
    """``objects`` if it is a known reading (``OBJECT_READINGS``).

    Raises:
        AutosegError: any other value, naming ``--objects``.
    """
    if objects not in OBJECT_READINGS:
        raise AutosegError(f"--objects {objects}: choose {' or '.join(OBJECT_READINGS)}")
    return objects


def label_object_metrics(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], objects: str = "foreground"
) -> dict[int, ObjectMetrics]:
    """``object_metrics`` of each label in ``labels`` of two label maps (same shape).

    Args:
        pred, ref: label maps.
        labels: the label values to score.
        objects: ``foreground``: a label's objects are its connected components;
            ``background``: those of the pixels that are not that label (cells between
            membranes).
    """
    if check_objects(objects) == "background":
        return {int(v): object_metrics(pred != v, ref != v) for v in labels}
    return {int(v): object_metrics(pred == v, ref == v) for v in labels}


def mean_object_metrics(per_case: Sequence[dict[int, ObjectMetrics]]) -> dict[int, ObjectMeans]:
    """Per label, the means over the cases (that all have object metrics)."""
    if not per_case or any(not c for c in per_case):
        return {}
    return {
        label: ObjectMeans(
            *(float(np.mean([getattr(c[label], n) for c in per_case])) for n in OBJECT_METRIC_NAMES)
        )
        for label in per_case[0]
    }


def case_objects(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], objects: str = "foreground"
) -> dict[int, ObjectMetrics]:
    """The object metrics of a case whose ``(Z, Y, X)`` label maps are 2D (Z = 1), else none
    (``objects``: as ``label_object_metrics``)."""
    if pred.ndim != 3 or pred.shape[0] != 1:
        return {}
    return label_object_metrics(pred[0], ref[0], labels, objects)


def object_table(means: Mapping[int, ObjectMeans], names: Mapping[int, str]) -> Table:
    """The per-label means as a rich table (``autoseg evaluate`` prints it for 2D data)."""
    from rich.table import Table  # lazily, as the evaluation's own table

    table = Table(title="Objects (2D label maps)", caption="detection F1 at IoU 0.5")
    table.add_column("label")
    for header in ("pixel error", "Rand error", "detection F1"):
        table.add_column(header, justify="right")
    for label, mean in means.items():
        row = (f"{getattr(mean, n):.4f}" for n in OBJECT_METRIC_NAMES)
        name = names.get(label, str(label))
        table.add_row(str(label) if name == str(label) else f"{label} {name}", *row)
    return table
