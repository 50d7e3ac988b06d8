"""Scoring label maps against references: Dice, IoU, precision, recall, HD95 and NSD.

Per case and label, with ``P`` the predicted and ``R`` the reference voxels of the label:

- ``dice = 2TP / (2TP + FP + FN)``, ``iou = TP / (TP + FP + FN)``,
  ``precision = TP / |P|``, ``recall = TP / |R|``.
- Surfaces: a mask minus its erosion (3x3x3 full-connectivity structure; voxels on the image
  border count as surface). Distances between surfaces are Euclidean in mm
  (``distance_transform_edt`` with ``sampling=spacing``), measured between voxel centres.
- ``hd95``: the 95th percentile (linear interpolation) of the *pooled* symmetric surface
  distances, i.e. of the distances of every predicted surface voxel to the reference surface
  together with those of every reference surface voxel to the predicted surface. (MedPy and
  MONAI instead take the larger of the two directed 95th percentiles; the values agree when the
  two directions are alike, and the pooled one is at most that larger value, up to
  interpolation.)
- ``nsd`` (normalised surface Dice, Nikolov et al. 2021) at tolerance ``tau`` mm:
  ``(|S_P within tau of S_R| + |S_R within tau of S_P|) / (|S_P| + |S_R|)``, counting surface
  voxels (not surface areas).

Empty masks never give NaN:

- both empty: dice, iou, precision, recall and nsd are 1, hd95 is 0 (nothing to find, nothing
  found).
- exactly one empty: dice, iou, nsd, precision and recall are 0 (the one of precision / recall
  that is 0/0 is set to 0 too: either the whole object was missed or everything predicted is
  wrong), and hd95 is the diagonal of the whole image in mm,
  ``sqrt(sum((shape * spacing)^2))``, which bounds every distance inside the image.

Means over cases therefore always exist. Background (0) is never scored by
:func:`evaluate_folders` or :func:`evaluate_arrays`.

For 2D label maps (a single slice) each case also gets the object metrics of
``autoseg.metrics_micro`` per label (pixel error, Rand error, detection F1 at IoU 0.5), in
``CaseResult.objects`` and ``Evaluation.object_means``, and as extra CSV columns.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from scipy import ndimage

from autoseg.errors import AutosegError, DatasetError, Problem
from autoseg.io import Geometry, file_ending, read_array, strip_ending
from autoseg.metrics_micro import (
    OBJECT_METRIC_NAMES,
    ObjectMeans,
    ObjectMetrics,
    case_objects,
    mean_object_metrics,
    object_table,
)
from autoseg.serial import atomic_write_text, dump_json, load_json

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)
T = TypeVar("T")

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


@dataclass(frozen=True)
class MeanMetrics:
    """Means over cases of the metrics of one label."""

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    nsd: float


@dataclass(frozen=True)
class CaseResult:
    """The scores of every evaluated label in one case (``objects``: 2D label maps only)."""

    case_id: str
    metrics: dict[int, LabelMetrics]
    objects: dict[int, ObjectMetrics] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """Per-case scores, their per-label means and the mean Dice over labels.

    Attributes:
        cases: one result per case, sorted by case id.
        labels: label value -> name, the labels that were scored.
        label_means: label value -> means over cases of every metric.
        mean_dice: mean over labels of ``label_means[label].dice`` (0.0 when no label).
        nsd_tolerance_mm: the NSD tolerance used.
        object_means: label value -> means of the object metrics (2D label maps; else empty).
    """

    cases: tuple[CaseResult, ...]
    labels: dict[int, str]
    label_means: dict[int, MeanMetrics]
    mean_dice: float
    nsd_tolerance_mm: float
    object_means: dict[int, ObjectMeans] = field(default_factory=dict)

    def to_json(self, path: str | Path) -> None:
        """Write as deterministic JSON (atomically)."""
        dump_json(self, path)

    @classmethod
    def from_json(cls, path: str | Path) -> Evaluation:
        """Read an evaluation written by :meth:`to_json`."""
        return load_json(cls, path)

    def to_csv(self, path: str | Path) -> None:
        """Write one row per case and label, then one ``mean`` row per label (atomically)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        extra = OBJECT_METRIC_NAMES if self.object_means else ()
        writer.writerow(["case", "label", "name", *METRIC_NAMES, *COUNT_NAMES, *extra])
        for case in self.cases:
            for label, m in case.metrics.items():
                values = [getattr(m, n) for n in METRIC_NAMES + COUNT_NAMES]
                values += [getattr(case.objects[label], n) for n in extra]
                writer.writerow([case.case_id, label, self.labels.get(label, str(label)), *values])
        for label, mean in self.label_means.items():
            values = [getattr(mean, n) for n in METRIC_NAMES] + [""] * len(COUNT_NAMES)
            values += [getattr(self.object_means[label], n) for n in extra]
            writer.writerow(["mean", label, self.labels[label], *values])
        atomic_write_text(path, buffer.getvalue())

    def print_table(self, console: Console) -> None:
        """Print the per-label means as a rich table."""
        from rich.table import Table

        table = Table(
            title=f"Evaluation of {len(self.cases)} case(s)",
            caption=f"NSD tolerance {self.nsd_tolerance_mm:g} mm; HD95 in mm",
        )
        table.add_column("label")
        for header in ("Dice", "IoU", "precision", "recall", "HD95", "NSD"):
            table.add_column(header, justify="right")
        for label, mean in self.label_means.items():
            name = self.labels[label]
            table.add_row(
                str(label) if name == str(label) else f"{label} {name}",
                *(f"{getattr(mean, n):.4f}" for n in ("dice", "iou", "precision", "recall")),
                f"{mean.hd95:.2f}",
                f"{mean.nsd:.4f}",
            )
        table.add_section()
        table.add_row("mean", f"{self.mean_dice:.4f}", *[""] * 5)
        console.print(table)
        if self.object_means:
            console.print(object_table(self.object_means, self.labels))


def _full_structure(ndim: int) -> np.ndarray:
    return ndimage.generate_binary_structure(ndim, ndim)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` that have a background neighbour (the image border counts as one)."""
    return mask & ~ndimage.binary_erosion(mask, structure=_full_structure(mask.ndim))


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
    surf_pred, surf_ref = _surface(pred), _surface(ref)
    pred_to_ref = ndimage.distance_transform_edt(~surf_ref, sampling=spacing)[surf_pred]
    ref_to_pred = ndimage.distance_transform_edt(~surf_pred, sampling=spacing)[surf_ref]
    pooled = np.concatenate([pred_to_ref, ref_to_pred])
    within = np.count_nonzero(pred_to_ref <= tol) + np.count_nonzero(ref_to_pred <= tol)
    dice, iou = 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)
    hd95, nsd = float(np.percentile(pooled, 95)), float(within / pooled.size)
    return LabelMetrics(dice, iou, tp / n_pred, tp / n_ref, hd95, nsd, tp, fp, fn, n_pred, n_ref)


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    spacing: tuple[float, ...],
    nsd_tolerance_mm: float = 1.0,
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

    Returns:
        label value -> its metrics, in the order of ``labels``.

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
    spacing = tuple(float(s) for s in spacing)
    worst = math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True)))
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


def _summarise(
    cases: list[CaseResult], labels: Mapping[int, str], nsd_tolerance_mm: float
) -> Evaluation:
    if not cases:
        raise ValueError("no cases to evaluate")
    means = {
        label: MeanMetrics(
            **{
                name: float(np.mean([getattr(c.metrics[label], name) for c in cases]))
                for name in METRIC_NAMES
            }
        )
        for label in labels
    }
    mean_dice = float(np.mean([m.dice for m in means.values()])) if means else 0.0
    return Evaluation(
        cases=tuple(sorted(cases, key=lambda c: c.case_id)),
        labels=dict(labels),
        label_means=means,
        mean_dice=mean_dice,
        nsd_tolerance_mm=float(nsd_tolerance_mm),
        object_means=mean_object_metrics([c.objects for c in cases]),
    )


def _label_names(labels: Sequence[int] | Mapping[int, str]) -> dict[int, str]:
    if isinstance(labels, Mapping):
        named = {int(k): str(v) for k, v in labels.items()}
    else:
        named = {int(v): str(int(v)) for v in labels}
    return {k: named[k] for k in sorted(named) if k != 0}


def evaluate_arrays(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]],
    labels: Sequence[int] | Mapping[int, str],
    nsd_tolerance_mm: float = 1.0,
) -> Evaluation:
    """Score in-memory predictions (the trainer's validation cases, for instance).

    Args:
        pairs: ``(case_id, pred, ref, spacing)`` per case; consumed once, so a generator that
            loads one case at a time keeps memory bounded.
        labels: label values, or value -> name; background (0) is ignored.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.

    Returns:
        The evaluation.

    Raises:
        ValueError: no cases, or a case's arrays do not fit together.
    """
    names = _label_names(labels)
    cases = [
        CaseResult(
            str(case_id),
            case_metrics(pred, ref, list(names), spacing, nsd_tolerance_mm),
            case_objects(pred, ref, list(names)),
        )
        for case_id, pred, ref, spacing in pairs
    ]
    return _summarise(cases, names, nsd_tolerance_mm)


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    problem: Problem | None
    geometry: Geometry | None = None
    values: tuple[int, ...] = ()


def _as_labels(array: np.ndarray, path: Path) -> np.ndarray:
    """The array as integers, or an AutosegError naming the file."""
    if array.ndim != 3:
        raise AutosegError(f"{path}: expected a 3D label map, found shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise AutosegError(f"{path}: label map holds non-integer values")
        array = rounded.astype(np.int32)
    if array.size and array.min() < 0:
        raise AutosegError(f"{path}: label map holds negative values")
    return array


def _inspect(path: Path) -> _FileInfo:
    """Read one file: its geometry and label values, or the problem with it."""
    try:
        array, geometry = read_array(path)
        array = _as_labels(array, path)
    except AutosegError as exc:
        return _FileInfo(path, Problem(str(path), str(exc).removeprefix(f"{path}: ")))
    # bincount only for small values: one voxel of value 2e9 would make it allocate 16 GB
    small = array.size == 0 or int(array.max()) < 1 << 16
    flat = array.ravel()
    values = (
        np.flatnonzero(np.bincount(flat.astype(np.int64, copy=False))) if small else np.unique(flat)
    )
    geometry = Geometry(geometry.shape, geometry.spacing, geometry.affine)  # drop the header
    return _FileInfo(path, None, geometry, tuple(int(v) for v in values))


def _score_files(
    case_id: str, pred_path: Path, ref_path: Path, labels: list[int], tol: float
) -> CaseResult:
    pred, _ = read_array(pred_path)
    ref, geometry = read_array(ref_path)
    pred, ref = _as_labels(pred, pred_path), _as_labels(ref, ref_path)
    metrics = case_metrics(pred, ref, labels, geometry.spacing, tol)
    return CaseResult(case_id, metrics, case_objects(pred, ref, labels))


def _image_files(folder: Path, role: str, problems: list[Problem]) -> dict[str, Path]:
    if not folder.is_dir():
        problems.append(Problem(str(folder), f"{role} folder not found"))
        return {}
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or file_ending(path) is None:
            continue
        case_id = strip_ending(path)
        if case_id in files:
            problems.append(Problem(str(path), f"second {role} for case {case_id!r}"))
            continue
        files[case_id] = path
    if not files:
        problems.append(Problem(str(folder), f"no {role} files found"))
    return files


def _map(fn: Callable[..., T], args: list[tuple], workers: int) -> list[T]:
    """``[fn(*a) for a in args]``, in ``workers`` processes when more than one."""
    if workers <= 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    with ProcessPoolExecutor(max_workers=min(workers, len(args))) as pool:
        return list(pool.map(fn, *zip(*args, strict=True)))


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | None = None,
    nsd_tolerance_mm: float = 1.0,
    workers: int = 1,
    chill: bool = False,
) -> Evaluation:
    """Score every prediction in ``pred_dir`` against the reference of the same case id.

    All files are first read and checked (readable, 3D, non-negative integer labels, matching
    pairs on the same grid); every problem is collected and reported together before anything
    is scored. The files are then read again to score them, one case per worker at a time.

    Args:
        pred_dir: folder of predicted label maps.
        ref_dir: folder of reference label maps (file names ``<case_id><ending>``).
        labels: value -> name of the labels to score; default: every non-zero value found in
            the references or the predictions, named by its value.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        workers: processes reading and scoring cases.
        chill: score only the references that have a prediction (nnU-Net's ``--chill``);
            otherwise a reference without prediction is an error. A prediction without
            reference is always one.

    Returns:
        The evaluation.

    Raises:
        DatasetError: every problem with the inputs, each naming its file.
    """
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    problems: list[Problem] = []
    preds = _image_files(pred_dir, "prediction", problems)
    refs = _image_files(ref_dir, "reference", problems)
    missing = sorted(refs.keys() - preds.keys())
    if chill and missing:
        logger.warning("%d reference(s) without prediction not scored (--chill)", len(missing))
    for case_id in () if chill else missing:
        problems.append(Problem(str(refs[case_id]), f"no prediction for case {case_id!r}"))
    for case_id in sorted(preds.keys() - refs.keys()):
        problems.append(Problem(str(preds[case_id]), f"no reference for case {case_id!r}"))
    common = sorted(preds.keys() & refs.keys())
    paths = [preds[c] for c in common] + [refs[c] for c in common]
    infos = dict(zip(paths, _map(_inspect, [(p,) for p in paths], workers), strict=True))
    problems += [info.problem for info in infos.values() if info.problem is not None]
    for case_id in common:
        pred_info, ref_info = infos[preds[case_id]], infos[refs[case_id]]
        if pred_info.geometry is None or ref_info.geometry is None:
            continue
        pg, rg = pred_info.geometry, ref_info.geometry
        if pg.shape != rg.shape:
            message = f"shape {pg.shape} differs from the reference {refs[case_id]} {rg.shape}"
            problems.append(Problem(str(preds[case_id]), message))
        elif not pg.same_grid(rg):
            message = f"spacing {pg.spacing} or affine differs from the reference {refs[case_id]}"
            problems.append(Problem(str(preds[case_id]), f"{message} (spacing {rg.spacing})"))
    if problems:
        raise DatasetError(problems, what="evaluation inputs")

    if labels is None:
        found = {v for info in infos.values() for v in info.values}
        names = {v: str(v) for v in sorted(found) if v != 0}
    else:
        names = _label_names(labels)
    logger.info("evaluating %d case(s), labels %s", len(common), list(names))
    args = [(c, preds[c], refs[c], list(names), nsd_tolerance_mm) for c in common]
    cases = _map(_score_files, args, workers)
    evaluation = _summarise(cases, names, nsd_tolerance_mm)
    logger.info("mean Dice over labels: %.4f", evaluation.mean_dice)
    return evaluation
