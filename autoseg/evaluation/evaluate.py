"""Scoring folders (or in-memory lists) of label maps against references.

The metrics of one case (Dice, IoU, precision, recall, HD95, NSD) and their definitions, which
are MONAI's, live in :mod:`autoseg.evaluation.metrics`. Here: which labels are scored, scoring
every case (in worker processes) and summarising them into an ``Evaluation``. Reading and
checking the files is :mod:`autoseg.evaluation.case_files`; the ``Evaluation``, its means per
label and its report (JSON, CSV, a table) are :mod:`autoseg.evaluation.report`.

Means over cases always exist (no metric is ever NaN). Background (0) is never scored by
:func:`evaluate_folders` or :func:`evaluate_arrays`.

For 2D label maps (a single slice) each case also gets the object metrics of
``autoseg.evaluation.metrics_microscopy`` per label (pixel error, Rand error, detection F1 at IoU
0.5), in
``CaseResult.objects`` and ``Evaluation.object_means``, and as extra CSV columns.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from autoseg.data.ignore import IGNORE_NAME, ignore_label, mask_ignored
from autoseg.data.io import as_label_map, read_array
from autoseg.data.regions import Region
from autoseg.errors import AutosegError
from autoseg.evaluation.case_files import FileInfo, map_cases, pair_files
from autoseg.evaluation.metrics import case_metrics
from autoseg.evaluation.metrics_microscopy import ObjectMetrics, case_objects, check_objects
from autoseg.evaluation.report import CaseResult, Evaluation, summarise

logger = logging.getLogger(__name__)


def _label_names(labels: Sequence[int] | Mapping[int, str]) -> dict[int, str]:
    """value -> name of the labels to score: background and the ignore label left out."""
    if isinstance(labels, Mapping):
        named = {int(k): str(v) for k, v in labels.items()}
    else:
        named = {int(v): str(int(v)) for v in labels}
    return {k: named[k] for k in sorted(named) if k != 0 and named[k] != IGNORE_NAME}


def _region_names(regions: Sequence[Region]) -> dict[int, str]:
    return {i: r.name for i, r in enumerate(regions, start=1)}


def _ignore_of(labels: Sequence[int] | Mapping[int, str] | None) -> int | None:
    return ignore_label(labels) if isinstance(labels, Mapping) else None


def evaluate_arrays(
    pairs: Iterable[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]],
    labels: Sequence[int] | Mapping[int, str],
    nsd_tolerance_mm: float = 1.0,
    regions: Sequence[Region] = (),
    objects: str = "foreground",
) -> Evaluation:
    """Score in-memory predictions (the trainer's validation cases, for instance).

    Args:
        pairs: ``(case_id, pred, ref, spacing)`` per case; consumed once, so a generator that
            loads one case at a time keeps memory bounded.
        labels: label values, or value -> name; background (0) is ignored, and so are the
            voxels of a label named ``ignore`` (see ``case_metrics``).
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        regions: score regions instead of labels (named by the regions).
        objects: how 2D maps' objects are read (``metrics_microscopy.label_object_metrics``).

    Returns:
        The evaluation.

    Raises:
        ValueError: no cases, or a case's arrays do not fit together.
    """
    names, ignore = _label_names(labels), _ignore_of(labels)
    if regions:
        names = _region_names(regions)
    cases = [
        CaseResult(
            str(case_id),
            case_metrics(pred, ref, list(names), spacing, nsd_tolerance_mm, ignore, regions),
            _objects(pred, ref, list(names), ignore, regions, objects),
        )
        for case_id, pred, ref, spacing in pairs
    ]
    return summarise(cases, names, nsd_tolerance_mm, regions)


def _score_files(
    case_id: str,
    pred_path: Path,
    ref_path: Path,
    labels: list[int],
    tol: float,
    ignore: int | None = None,
    regions: tuple[Region, ...] = (),
    objects: str = "foreground",
) -> CaseResult:
    pred, _ = read_array(pred_path)
    ref, geometry = read_array(ref_path)
    pred, ref = as_label_map(pred, pred_path), as_label_map(ref, ref_path)
    metrics = case_metrics(pred, ref, labels, geometry.spacing, tol, ignore, regions)
    return CaseResult(case_id, metrics, _objects(pred, ref, labels, ignore, regions, objects))


def _objects(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    ignore: int | None,
    regions: Sequence[Region],
    objects: str = "foreground",
) -> dict[int, ObjectMetrics]:
    """The object metrics of a 2D case, ignored voxels background in both maps; none for
    region-based labels (the object metrics score label values, not regions)."""
    if regions:
        return {}
    pred, ref = mask_ignored(pred, ref, ignore)
    return case_objects(pred, ref, [v for v in labels if v != ignore], objects)


def _warn_never_predicted(
    infos: Mapping[Path, FileInfo], refs: list[Path], preds: list[Path], ignore: int | None
) -> None:
    """Warn about label values of the references that no prediction holds (an ignore label
    scored as a class looks like this)."""
    in_refs = {v for path in refs for v in infos[path].values}
    in_preds = {v for path in preds for v in infos[path].values}
    never = sorted(in_refs - in_preds - {0} - ({ignore} if ignore is not None else set()))
    if never:
        logger.warning(
            "label value(s) %s are in the references but in no prediction: scored as classes "
            "(Dice 0). If one is an ignore label (sparse annotation), pass --dataset-json with "
            "the dataset.json that names it 'ignore', so that its voxels are left out",
            never,
        )


def evaluate_folders(
    pred_dir: str | Path,
    ref_dir: str | Path,
    labels: dict[int, str] | None = None,
    nsd_tolerance_mm: float = 1.0,
    workers: int = 1,
    chill: bool = False,
    regions: Sequence[Region] = (),
    ignore: int | None = None,
    objects: str = "foreground",
) -> Evaluation:
    """Score every prediction in ``pred_dir`` against the reference of the same case id.

    All files are first read and checked (readable, 3D, non-negative integer labels, matching
    pairs on the same grid); every problem is collected and reported together before anything
    is scored. The files are then read again to score them, one case per worker at a time.

    Args:
        pred_dir: folder of predicted label maps.
        ref_dir: folder of reference label maps (file names ``<case_id><ending>``).
        labels: value -> name of the labels to score
            (``autoseg.data.dataset_json.read_label_names``); other values in the files are not
            scored (with a warning). Default: every non-zero value found in the references or
            the predictions, named by its value. Reference voxels of a label named ``ignore``
            are left out of every score.
        nsd_tolerance_mm: tolerance of the normalised surface Dice.
        workers: processes reading and scoring cases.
        chill: score only the references that have a prediction (nnU-Net's ``--chill``);
            otherwise a reference without prediction is an error. A prediction without
            reference is always one.
        regions: score these regions instead of labels (``case_metrics``).
        ignore: without ``labels``, a label value to leave out as the ignore label (its
            reference voxels are not scored, the value is not a class).
        objects: how the objects of 2D maps are read: ``foreground`` (a label's connected
            components) or ``background`` (the components of what the label separates: cells
            between membranes); ``metrics_microscopy``.

    Without ``labels``, a value found in the references but in no prediction is logged as a
    warning: it is scored as a class, and if it is an ignore label it should not be.

    Returns:
        The evaluation.

    Raises:
        AutosegError: ``nsd_tolerance_mm`` is not a positive, finite number; or, without
            ``labels``, no file holds a label other than 0 (nothing to score).
        DatasetError: every problem with the inputs, each naming its file.
    """
    check_objects(objects)  # before anything is read
    if not (math.isfinite(nsd_tolerance_mm) and nsd_tolerance_mm > 0):
        raise AutosegError(
            f"NSD tolerance {nsd_tolerance_mm:g} mm: must be a positive, finite number"
        )
    pred_dir, ref_dir = Path(pred_dir), Path(ref_dir)
    files = pair_files(pred_dir, ref_dir, chill, workers)
    preds, refs, common, infos = files.preds, files.refs, files.common, files.infos
    if labels is None:
        found = {v for info in infos.values() for v in info.values}
        names = {v: str(v) for v in sorted(found) if v not in (0, ignore)}
        if not names:
            raise AutosegError(
                f"{ref_dir}, {pred_dir}: nothing to score: no reference or prediction holds a "
                "label other than 0 (background); name the labels to score with --dataset-json"
            )
        _warn_never_predicted(infos, [refs[c] for c in common], [preds[c] for c in common], ignore)
    else:
        names = _label_names(labels)
        unscored = sorted({v for i in infos.values() for v in i.values} - set(names) - {0})
        if unscored:
            logger.warning("label value(s) %s are in the files but not scored", unscored)
    logger.info("evaluating %d case(s), labels %s", len(common), list(names))
    ignore = _ignore_of(labels) if labels is not None else ignore
    if regions:
        names = _region_names(regions)
    regions = tuple(regions)
    args = [
        (c, preds[c], refs[c], list(names), nsd_tolerance_mm, ignore, regions, objects)
        for c in common
    ]
    cases = map_cases(_score_files, args, workers)
    evaluation = summarise(cases, names, nsd_tolerance_mm, regions)
    logger.info("mean Dice over labels: %.4f", evaluation.mean_dice)
    return evaluation
