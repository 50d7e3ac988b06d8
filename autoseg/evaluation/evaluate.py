"""Scoring folders (or in-memory lists) of label maps against references, and the report.

The metrics of one case (Dice, IoU, precision, recall, HD95, NSD) and their definitions, which
are MONAI's, live in :mod:`autoseg.evaluation.metrics`. Here: reading and checking the files,
scoring every
case (in worker processes), the means per label, and the report (JSON, CSV, a table).

Means over cases always exist (no metric is ever NaN). Background (0) is never scored by
:func:`evaluate_folders` or :func:`evaluate_arrays`.

For 2D label maps (a single slice) each case also gets the object metrics of
``autoseg.evaluation.metrics_microscopy`` per label (pixel error, Rand error, detection F1 at IoU
0.5), in
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

from autoseg.data.ignore import IGNORE_NAME, ignore_label, mask_ignored
from autoseg.data.io import (
    Geometry,
    as_label_map,
    file_ending,
    grid_difference,
    read_array,
    strip_ending,
)
from autoseg.data.regions import Region
from autoseg.errors import AutosegError, DatasetError, Problem
from autoseg.evaluation.metrics import COUNT_NAMES, METRIC_NAMES, LabelMetrics, case_metrics
from autoseg.evaluation.metrics_microscopy import (
    OBJECT_METRIC_NAMES,
    ObjectMeans,
    ObjectMetrics,
    case_objects,
    check_objects,
    mean_object_metrics,
    object_table,
)
from autoseg.serial import (
    atomic_write_text,
    check_output_folder,
    dump_json,
    load_json,
    remove_temp_files,
    to_dict,
)

if TYPE_CHECKING:
    from rich.console import Console

logger = logging.getLogger(__name__)
T = TypeVar("T")

REPORT_FILES = ("evaluation.json", "evaluation_cases.csv", "evaluation_summary.csv")
METRIC_DEFINITIONS = "monai"


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
        command: the command line that produced it ("" when called from Python).
        metrics: whose metric definitions were used: ``"monai"`` (``autoseg.evaluation.metrics``);
        ``""``
            in a file written before autoseg recorded it (other surface definitions).
        regions: for a region-based dataset, the regions scored: then the keys of ``labels``
            and of the metrics are region numbers (1, 2, ... in this order), not label values.
    """

    cases: tuple[CaseResult, ...]
    labels: dict[int, str]
    label_means: dict[int, MeanMetrics]
    mean_dice: float
    nsd_tolerance_mm: float
    object_means: dict[int, ObjectMeans] = field(default_factory=dict)
    command: str = ""
    metrics: str = ""
    regions: tuple[Region, ...] = ()

    def to_json(self, path: str | Path) -> None:
        """Write as deterministic JSON (atomically): per case, per-label means, the command
        (and the regions, only when regions were scored)."""
        record = to_dict(self)
        if not self.regions:
            del record["regions"]
        dump_json(record, path)

    @property
    def _kind(self) -> str:
        return "region" if self.regions else "label"

    @classmethod
    def from_json(cls, path: str | Path) -> Evaluation:
        """Read an evaluation written by :meth:`to_json`."""
        return load_json(cls, path)

    def to_csv(self, path: str | Path) -> None:
        """Write one row per case and label (atomically): ``case, label, name``, metrics, counts
        (and the object metrics of 2D label maps); ``case, region, name`` for regions."""
        extra = OBJECT_METRIC_NAMES if self.object_means else ()
        rows = [
            [case.case_id, label, self.labels.get(label, str(label))]
            + [getattr(m, n) for n in METRIC_NAMES + COUNT_NAMES]
            + [getattr(case.objects[label], n) for n in extra]
            for case in self.cases
            for label, m in case.metrics.items()
        ]
        _write_csv(path, ["case", self._kind, "name", *METRIC_NAMES, *COUNT_NAMES, *extra], rows)

    def summary_to_csv(self, path: str | Path) -> None:
        """Write one row of means per label (or region), then a ``mean`` row of their means."""
        extra = OBJECT_METRIC_NAMES if self.object_means else ()
        rows = [
            [label, self.labels[label], len(self.cases)]
            + [getattr(mean, n) for n in METRIC_NAMES]
            + [getattr(self.object_means[label], n) for n in extra]
            for label, mean in self.label_means.items()
        ]
        if self.label_means:
            overall = [
                float(np.mean([getattr(m, n) for m in self.label_means.values()]))
                for n in METRIC_NAMES
            ]
            overall += [
                float(np.mean([getattr(m, n) for m in self.object_means.values()])) for n in extra
            ]
            rows.append(["mean", f"all {self._kind}s", len(self.cases), *overall])
        _write_csv(path, [self._kind, "name", "cases", *METRIC_NAMES, *extra], rows)

    def write_report(self, folder: str | Path) -> tuple[Path, ...]:
        """Write ``evaluation.json``, ``evaluation_cases.csv`` and ``evaluation_summary.csv``.

        Returns:
            The three paths, in that order (each written atomically).
        """
        folder = Path(folder)
        check_output_folder(folder, "-o")
        folder.mkdir(parents=True, exist_ok=True)
        paths = tuple(folder / n for n in REPORT_FILES)
        remove_temp_files(*paths)  # of a killed run
        self.to_json(paths[0])
        self.to_csv(paths[1])
        self.summary_to_csv(paths[2])
        return paths

    def print_table(self, console: Console) -> None:
        """Print the per-label means as a rich table."""
        from rich.table import Table

        table = Table(
            title=f"Evaluation of {len(self.cases)} case(s)",
            caption=f"NSD tolerance {self.nsd_tolerance_mm:g} mm; HD95 in mm",
        )
        table.add_column(self._kind)
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


def _write_csv(path: str | Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _summarise(
    cases: list[CaseResult],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float,
    regions: Sequence[Region] = (),
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
        metrics=METRIC_DEFINITIONS,
        regions=tuple(regions),
    )


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
    return _summarise(cases, names, nsd_tolerance_mm, regions)


@dataclass(frozen=True)
class _FileInfo:
    path: Path
    problem: Problem | None
    geometry: Geometry | None = None
    values: tuple[int, ...] = ()


def _inspect(path: Path) -> _FileInfo:
    """Read one file: its geometry and label values, or the problem with it."""
    try:
        array, geometry = read_array(path)
        array = as_label_map(array, path)
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


def _warn_never_predicted(
    infos: Mapping[Path, _FileInfo], refs: list[Path], preds: list[Path], ignore: int | None
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
        labels: value -> name of the labels to score (``autoseg.data.dataset.read_label_names``);
            other values in the files are not scored (with a warning). Default: every non-zero
            value found in the references or the predictions, named by its value. Reference
            voxels of a label named ``ignore`` are left out of every score.
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
            detail = (  # the same spacing twice would not say what differs
                f"spacing {rg.spacing}"
                if not np.allclose(pg.spacing, rg.spacing, atol=1e-3, rtol=1e-4)
                else grid_difference(pg, rg)
            )
            problems.append(Problem(str(preds[case_id]), f"{message} ({detail})"))
    if problems:
        raise DatasetError(problems, what="evaluation inputs")

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
    cases = _map(_score_files, args, workers)
    evaluation = _summarise(cases, names, nsd_tolerance_mm, regions)
    logger.info("mean Dice over labels: %.4f", evaluation.mean_dice)
    return evaluation
