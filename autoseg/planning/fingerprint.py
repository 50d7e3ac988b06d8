"""Dataset fingerprint: what the planner needs to know about the data.

``inspect_case`` reads one case and checks its content (readable files, matching grids, finite
intensities, declared integer labels, channel count); ``compute_fingerprint`` runs it over all
cases (in worker processes if asked), reports every problem of every case together, and
reduces the per-case results to a ``Fingerprint``. Written as
``<home>/<dataset>/fingerprint.json``.

Only the foreground samples of a case outlive its inspection, so memory stays bounded by the
sample budget (about 1e7 voxels per channel over the dataset), whatever the dataset's size.
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from rich.progress import MofNCompleteColumn, Progress

from autoseg.data.bitmaps import ENDINGS as MICROSCOPY_ENDINGS
from autoseg.data.dataset import Case, DatasetSpec
from autoseg.data.ignore import ignore_label
from autoseg.data.io import Geometry, file_ending, read_array
from autoseg.data.regions import Region
from autoseg.errors import AutosegError, DatasetError, Problem
from autoseg.serial import dump_json, load_json
from autoseg.terminal import Heartbeat

logger = logging.getLogger(__name__)

#: Foreground voxels sampled per channel over the whole dataset.
SAMPLES_PER_CHANNEL = 10_000_000


@dataclass(frozen=True)
class CaseFingerprint:
    """One training case.

    Attributes:
        case_id: the case's identifier.
        spacing: voxel spacing (Z, Y, X) in mm.
        shape_before_crop: spatial shape as stored.
        shape_after_crop: spatial shape after cropping to the nonzero region.
        relative_size_after_crop: voxels after / before cropping.
    """

    case_id: str
    spacing: tuple[float, ...]
    shape_before_crop: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    relative_size_after_crop: float


@dataclass(frozen=True)
class IntensityStats:
    """Foreground (label > 0) intensity statistics of one channel over the dataset."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class Fingerprint:
    """Everything measured about a dataset.

    Attributes:
        dataset_name: the dataset folder's name.
        channels: channel (modality) names, e.g. ``("CT",)`` or ``("T1", "T2")``.
        labels: label value -> name, background included.
        cases: one entry per training case, sorted by case id.
        intensities: one entry per channel.
        regions: the regions of a region-based dataset, else empty.
    """

    dataset_name: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[CaseFingerprint, ...]
    intensities: tuple[IntensityStats, ...]
    regions: tuple[Region, ...] = ()

    def to_json(self, path: str | Path) -> None:
        dump_json(self, path)

    @classmethod
    def from_json(cls, path: str | Path) -> Fingerprint:
        return load_json(cls, path)


@dataclass(frozen=True, eq=False)
class CaseInspection:
    """What ``inspect_case`` found in one case.

    Attributes:
        case_id: the case's identifier.
        problems: everything wrong with the case's files; empty when the case is usable.
        fingerprint: the case's measurements, None when there are problems.
        samples: per channel, float32 intensities of sampled foreground voxels (label > 0);
            empty when there are problems.
    """

    case_id: str
    problems: tuple[Problem, ...]
    fingerprint: CaseFingerprint | None
    samples: tuple[np.ndarray, ...]


def case_seed(case_id: str) -> int:
    """A stable seed from a case id (sha256; Python's ``hash`` changes between runs)."""
    return int.from_bytes(hashlib.sha256(case_id.encode("utf-8")).digest()[:8], "little")


def inspect_case(case: Case, spec: DatasetSpec, sample_budget: int) -> CaseInspection:
    """Read one case fully, check its content and measure it.

    Problems found: unreadable, empty or truncated files; channel files on different grids;
    a channel count other than dataset.json declares; NaN or Inf image voxels; a 4D label;
    a label whose shape, spacing or affine differs from the image's; non-integer label values;
    label values not declared in dataset.json.

    Args:
        case: the case's files.
        spec: the dataset (declared channels and labels).
        sample_budget: at most this many foreground voxels are sampled per channel.

    Returns:
        The inspection: problems, or the case fingerprint and foreground samples.
    """
    problems: list[Problem] = []
    arrays, geometry = _read_channels(case, len(spec.channels), problems)
    label = _read_label(case, spec, geometry, problems)
    if problems or geometry is None or label is None:
        return CaseInspection(case.case_id, tuple(problems), None, ())
    # nonzero region: any channel != 0; its bounding box is the crop (filling holes inside the
    # region, as nnU-Net does, cannot change the bounding box, so no fill is needed here)
    nonzero = np.zeros(geometry.shape, dtype=bool)
    for channel in arrays:
        nonzero |= channel != 0
    if nonzero.any():
        bbox = [
            np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != ax)))
            for ax in range(3)
        ]
        cropped = tuple(int(b[-1] - b[0] + 1) for b in bbox)
    else:
        cropped = geometry.shape
    fingerprint = CaseFingerprint(
        case_id=case.case_id,
        spacing=tuple(float(s) for s in geometry.spacing),
        shape_before_crop=tuple(int(s) for s in geometry.shape),
        shape_after_crop=cropped,
        relative_size_after_crop=float(np.prod(cropped) / np.prod(geometry.shape)),
    )
    foreground = label > 0
    ignore = ignore_label(spec.labels)
    if ignore is not None:  # unannotated voxels are not foreground
        foreground &= label != ignore
    count = int(np.count_nonzero(foreground))
    pick = None
    if count > sample_budget:
        rng = np.random.default_rng(case_seed(case.case_id))
        pick = np.sort(rng.choice(count, size=sample_budget, replace=False))
    samples = []
    for channel in arrays:
        values = channel[foreground]
        values = values[pick] if pick is not None else values
        samples.append(np.ascontiguousarray(values, dtype=np.float32))
    return CaseInspection(case.case_id, (), fingerprint, tuple(samples))


def _mm(geometry: Geometry) -> tuple[float, ...]:
    """Spacing rounded for messages: (1.2, 1.0, 1.0), not (1.2000000476837158, 1.0, 1.0)."""
    return tuple(float(f"{s:.6g}") for s in geometry.spacing)


def _read(path: Path, problems: list[Problem]) -> tuple[np.ndarray, Geometry] | None:
    try:
        return read_array(path)
    except AutosegError as exc:
        message = str(exc)
        prefix = f"{path}: "
        problems.append(Problem(str(path), message.removeprefix(prefix)))
        return None


def _read_channels(
    case: Case, n_channels: int, problems: list[Problem]
) -> tuple[list[np.ndarray], Geometry | None]:
    """The case's channels as (Z, Y, X) arrays in their stored dtype, and their grid."""
    channels: list[np.ndarray] = []
    geometry: Geometry | None = None
    first, four_d = len(problems), False
    for path in case.images:
        read = _read(path, problems)
        if read is None:
            continue
        data, geo = read
        where = str(path)  # type, spacing and size were checked by read_array (io.check_header)
        if data.ndim == 4 and len(case.images) > 1:
            message = f"4D image ({data.shape[0]} volumes); expected one 3D volume per channel file"
            problems.append(Problem(where, message))
            continue
        if geometry is None:
            geometry = geo
        elif not geo.same_grid(geometry):
            message = f"grid {geo.shape} @ {_mm(geo)} differs from {case.images[0].name}'s"
            problems.append(Problem(where, f"{message} ({geometry.shape} @ {_mm(geometry)})"))
            continue
        if data.dtype.kind == "f" and not np.isfinite(data.sum(dtype=np.float64)):
            bad = data.size - int(np.count_nonzero(np.isfinite(data)))
            problems.append(Problem(where, f"{bad} NaN or Inf voxel(s) in the image"))
        four_d = four_d or data.ndim == 4
        channels.extend(data if data.ndim == 4 else (data,))
    if len(problems) == first and len(channels) != n_channels:
        kind = "4D" if four_d else "3D"
        hint = ""
        if file_ending(case.images[0]) in MICROSCOPY_ENDINGS:
            kind = "RGB" if four_d else "grayscale"
            hint = " (an RGB file holds 3 channels, e.g. R, G, B; a grayscale file 1)"
        message = f"{kind} image with {len(channels)} channel(s), but dataset.json declares"
        problems.append(Problem(str(case.images[0]), f"{message} {n_channels}{hint}"))
    return channels, geometry


def _multichannel_label_message(path: Path, label: np.ndarray) -> str:
    """Why a label file with several channels is refused (RGB label images are common)."""
    if file_ending(path) in MICROSCOPY_ENDINGS:
        return (
            f"label image with {label.shape[0]} colour channels (RGB); a label map must hold one "
            "integer value per pixel: save it as 8/16-bit grayscale or as a palette PNG"
        )
    return f"4D label ({label.shape[0]} volumes); expected a 3D label map"


def _read_label(
    case: Case, spec: DatasetSpec, image: Geometry | None, problems: list[Problem]
) -> np.ndarray | None:
    """The case's label map, checked against the image grid and the declared labels."""
    if case.label is None:
        problems.append(Problem(str(case.images[0]), "image without label"))
        return None
    read = _read(case.label, problems)
    if read is None:
        return None
    label, geo = read
    where = str(case.label)
    if label.ndim == 4:
        problems.append(Problem(where, _multichannel_label_message(case.label, label)))
        return None
    if image is not None:
        if geo.shape != image.shape:
            problems.append(
                Problem(where, f"shape {geo.shape} differs from the image's {image.shape}")
            )
        elif not np.allclose(geo.spacing, image.spacing, rtol=1e-4, atol=1e-4):
            problems.append(
                Problem(where, f"spacing {_mm(geo)} differs from the image's {_mm(image)}")
            )
        elif not geo.same_grid(image):
            problems.append(Problem(where, "affine (orientation/origin) differs from the image's"))
    values = np.unique(label)
    if label.dtype.kind == "f":
        fractional = values[~np.isfinite(values) | (values != np.round(values))]
        if fractional.size:
            examples = [float(f"{v:.6g}") for v in fractional[:3]]
            problems.append(Problem(where, f"non-integer label values, e.g. {examples}"))
            return None
    undeclared = sorted({int(v) for v in values} - set(spec.labels))
    if undeclared:
        declared = ", ".join(str(v) for v in spec.labels)
        problems.append(
            Problem(
                where,
                f"label values {undeclared} not declared in dataset.json (declared: {declared})",
            )
        )
    return label


def compute_fingerprint(spec: DatasetSpec, workers: int = 1) -> Fingerprint:
    """Inspect every case of ``spec`` and summarise the dataset.

    Cases are read one at a time per worker; only their foreground samples are kept (about
    ``SAMPLES_PER_CHANNEL`` per channel in total). The result does not depend on ``workers``.

    Args:
        spec: the dataset, from ``autoseg.data.dataset.load_dataset``.
        workers: worker processes; 1 or less inspects in this process.

    Returns:
        The fingerprint: per-case measurements and per-channel foreground intensity statistics.

    Raises:
        DatasetError: the dataset has no cases, or any case has problems (all of them listed).
    """
    if not spec.cases:
        raise DatasetError([Problem(str(spec.root), "no training cases")], f"dataset {spec.root}")
    start = time.perf_counter()
    budget = math.ceil(SAMPLES_PER_CHANNEL / len(spec.cases))
    inspect = partial(inspect_case, spec=spec, sample_budget=budget)
    workers = min(workers, len(spec.cases))
    if workers > 1:
        # fork (Linux) starts workers in milliseconds; processes start here, before the
        # progress bar's thread exists
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else None)
        chunk = max(1, math.ceil(len(spec.cases) / (workers * 8)))
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            results = _with_progress(pool.map(inspect, spec.cases, chunksize=chunk), spec)
    else:
        results = _with_progress(map(inspect, spec.cases), spec)
    problems = [p for r in results for p in r.problems]
    if problems:
        raise DatasetError(problems, what=f"dataset {spec.root}")
    channels = list(zip(*(r.samples for r in results), strict=True))
    if not any(s.size for s in channels[0]):
        problem = Problem(str(spec.root), "no case has foreground (label > 0) voxels")
        raise DatasetError([problem], what=f"dataset {spec.root}")
    fingerprint = Fingerprint(
        dataset_name=spec.name,
        channels=spec.channels,
        labels=dict(spec.labels),
        regions=spec.regions,
        cases=tuple(r.fingerprint for r in results if r.fingerprint is not None),
        intensities=tuple(_intensity_stats(np.concatenate(c)) for c in channels),
    )
    elapsed = time.perf_counter() - start
    logger.info("fingerprint of %d cases in %.1f s", len(spec.cases), elapsed)
    return fingerprint


def _with_progress(results: Iterator[CaseInspection], spec: DatasetSpec) -> list[CaseInspection]:
    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with Heartbeat(*columns, title="plan", transient=True) as progress:
        task = progress.add_task(f"fingerprint {spec.name}", total=len(spec.cases), unit="case")
        out = []
        for result in results:
            out.append(result)
            progress.advance(task)
    return out


def _intensity_stats(samples: np.ndarray) -> IntensityStats:
    """Statistics of one channel's foreground samples, in float64."""
    x = samples.astype(np.float64)
    low, median, high = np.percentile(x, [0.5, 50.0, 99.5])
    return IntensityStats(
        mean=float(x.mean()),
        median=float(median),
        std=float(x.std()),
        min=float(x.min()),
        max=float(x.max()),
        percentile_00_5=float(low),
        percentile_99_5=float(high),
    )
