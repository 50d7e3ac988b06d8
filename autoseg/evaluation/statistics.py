"""Numbers a clinician reads: per case and label, volume, voxels, objects and intensity.

``predict --stats`` writes, beside the predictions, one row per case and label (TotalSegmentator's
``--statistics`` is the anchor users cite):

- ``voxel_count``: voxels carrying the label;
- ``volume_ml``: ``voxel_count`` x the voxel volume of the prediction's grid (the input's grid:
  predictions are written with the input's geometry), mm^3 / 1000;
- ``components``: connected components of the label with full connectivity (26 neighbours in
  3D, 8 in 2D): two voxels touching at an edge or a corner are one object;
- ``intensity_mean`` / ``intensity_std`` (population std, ddof 0) of channel 0 of the input
  image inside the label, on the input's own grid, in the file's units after its scaling
  (Hounsfield units for a CT NIfTI with ``scl_slope``/``scl_inter``); for a multi-channel input,
  ``intensity_mean_ch1``, ``intensity_std_ch1``, ... for the other channels. Empty for a label
  with no voxel.

Every label the model predicts gets a row in every case, also when absent (0 voxels, 0 ml).
The statistics of a folder go to ``statistics.csv`` and ``statistics.json``, written
atomically once every case is measured.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from autoseg.data.dataset_json import MAX_LABEL_VALUE
from autoseg.data.io import read_array, read_image, strip_ending
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError
from autoseg.serial import atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "CONNECTIVITY",
    "LabelStatistics",
    "case_statistics",
    "label_statistics",
    "output_label_names",
    "predicted_statistics",
    "statistics_paths",
    "write_statistics",
]

#: Neighbours that join voxels into one component (3D; 8 in 2D): faces, edges and corners.
CONNECTIVITY = 26


@dataclass(frozen=True)
class LabelStatistics:
    """The numbers of one label in one case.

    Attributes:
        case: case id.
        label: label value in the prediction.
        name: the label's name (dataset.json / plans).
        voxel_count: voxels with this label.
        volume_ml: voxel_count x voxel volume (mm^3) / 1000.
        components: connected components (full connectivity).
        intensity_mean: per input channel, the mean intensity inside the label (None: empty).
        intensity_std: per input channel, the population std inside the label (None: empty).
    """

    case: str
    label: int
    name: str
    voxel_count: int
    volume_ml: float
    components: int
    intensity_mean: tuple[float | None, ...]
    intensity_std: tuple[float | None, ...]


def output_label_names(plans: Plans) -> dict[int, str]:
    """Foreground value -> name of what a model writes: its regions' values and names for a
    region-based model, else its predicted foreground labels."""
    if plans.regions:
        return {r.value: r.name for r in plans.regions}
    return {v: plans.labels[v] for v in plans.foreground_labels}


def label_statistics(
    labels: np.ndarray,
    image: np.ndarray,
    spacing: Sequence[float],
    names: Mapping[int, str],
    case: str = "",
) -> list[LabelStatistics]:
    """Statistics of every label of ``names`` (and any other foreground value found).

    Each label is measured inside its bounding box (``scipy.ndimage.find_objects``), so the
    memory beyond the two arrays is that of the largest label's box.

    Args:
        labels: ``(Z, Y, X)`` integer label map.
        image: ``(C, Z, Y, X)`` (or ``(Z, Y, X)``) intensities on the same grid.
        spacing: voxel size in mm along (Z, Y, X).
        names: foreground label value -> name; values found but not named are reported as
            ``label_<value>``.
        case: the case id written in each row.

    Returns:
        One ``LabelStatistics`` per label, by label value.

    Raises:
        ValueError: the image and the label map have different grids; labels that are not
            integers from 0 to ``MAX_LABEL_VALUE``.
    """
    labels = np.asarray(labels)
    image = np.asarray(image)
    if image.ndim == labels.ndim:
        image = image[None]
    if image.shape[1:] != labels.shape:
        raise ValueError(f"image grid {image.shape[1:]} differs from the labels' {labels.shape}")
    if labels.dtype.kind not in "biu":
        raise ValueError(f"label values of type {labels.dtype}; expected integers")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > MAX_LABEL_VALUE:
        raise ValueError(f"label values {low}..{high}; expected 0..{MAX_LABEL_VALUE}")
    boxes = ndimage.find_objects(labels.view(np.uint8) if labels.dtype == bool else labels)
    found = {i + 1 for i, box in enumerate(boxes) if box is not None}
    voxel_ml = math.prod(float(s) for s in spacing) / 1000.0
    structure = np.ones((3,) * labels.ndim, dtype=bool)  # full connectivity
    rows: list[LabelStatistics] = []
    for value in sorted(set(names) | found):
        count, components = 0, 0
        means: list[float | None] = [None] * image.shape[0]
        stds: list[float | None] = [None] * image.shape[0]
        if value in found:
            box = boxes[value - 1]
            mask = labels[box] == value
            count = int(np.count_nonzero(mask))
            components = int(ndimage.label(mask, structure=structure)[1])
            for c, channel in enumerate(image):
                inside = channel[box][mask].astype(np.float64)  # two-pass std in float64
                means[c], stds[c] = float(inside.mean()), float(inside.std())
        rows.append(
            LabelStatistics(
                case=case,
                label=value,
                name=names.get(value, f"label_{value}"),
                voxel_count=count,
                volume_ml=count * voxel_ml,
                components=components,
                intensity_mean=tuple(means),
                intensity_std=tuple(stds),
            )
        )
    return rows


def case_statistics(
    prediction: Path, image_files: Sequence[Path], names: Mapping[int, str], case: str
) -> list[LabelStatistics]:
    """Statistics of one predicted case, its intensities read from its input image files.

    The prediction is on the input's grid (``predict`` writes it with the input's geometry),
    so the two are compared voxel by voxel; the volume uses the prediction's spacing.

    Raises:
        AutosegError: a file cannot be read, or the prediction's grid is not the image's.
    """
    labels, geometry = read_array(prediction)
    if labels.ndim != 3:
        raise AutosegError(f"{prediction}: not a label map (expected one channel)")
    image = read_image(list(image_files))
    if image.array.shape[1:] != labels.shape:
        raise AutosegError(
            f"{prediction}: grid {labels.shape} differs from its input {image_files[0]} "
            f"({image.array.shape[1:]}); statistics need the prediction on the input's grid"
        )
    try:
        return label_statistics(labels, image.array, geometry.spacing, names, case)
    except ValueError as exc:
        raise AutosegError(f"{prediction}: {exc}") from exc


def predicted_statistics(
    inputs: Mapping[Path, Sequence[Path]],
    plans: Plans,
    folder: Path,
    part: int = 0,
    parts: int = 1,
) -> tuple[Path, Path] | None:
    """Measure every prediction of a ``predict`` run and write the statistics beside them.

    Args:
        inputs: prediction file -> its input image files (``PredictionReport.inputs``).
        plans: the model's plans (label names, channel names).
        folder: the output folder of the predictions.
        part, parts: the share of a ``--part/--parts`` run (names the files).

    Returns:
        The CSV and JSON written, or None when there was no prediction to measure.
    """
    if not inputs:
        log.warning("no prediction to measure: no statistics written")
        return None
    names = output_label_names(plans)
    log.info("statistics of %d case(s)", len(inputs))
    rows: list[LabelStatistics] = []
    for prediction in sorted(inputs, key=lambda p: p.name):
        rows += case_statistics(prediction, inputs[prediction], names, strip_ending(prediction))
    return write_statistics(rows, plans.channels, statistics_paths(folder, part, parts))


def statistics_paths(folder: Path, part: int = 0, parts: int = 1) -> tuple[Path, Path]:
    """``folder/statistics.csv`` and ``.json``; with ``parts > 1``, one pair per part:
    ``statistics.part<i>of<n>.csv`` (shares of one output folder never write the same file)."""
    stem = "statistics" if parts <= 1 else f"statistics.part{part}of{parts}"
    return folder / f"{stem}.csv", folder / f"{stem}.json"


def write_statistics(
    rows: Sequence[LabelStatistics],
    channels: Sequence[str],
    paths: tuple[Path, Path],
) -> tuple[Path, Path]:
    """Write the rows as a CSV (one line per case and label) and a JSON (by case, then label
    name), each atomically.

    Args:
        rows: the statistics of every case.
        channels: the input channel names (the JSON says which intensity is which).
        paths: the CSV and JSON to write (``statistics_paths``).

    Returns:
        The two paths written.
    """
    csv_path, json_path = paths
    n_channels = max((len(r.intensity_mean) for r in rows), default=len(channels))
    intensity = ["intensity_mean", "intensity_std"]
    for c in range(1, n_channels):
        intensity += [f"intensity_mean_ch{c}", f"intensity_std_ch{c}"]
    header = ["case", "label", "name", "voxel_count", "volume_ml", "components", *intensity]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    cases: dict[str, dict[str, Any]] = {}
    for r in rows:
        # mean and std of channel 0, then of channel 1, ...
        pairs = [_number(v) for c in range(n_channels) for v in _channel(r, c)]
        row = [r.case, r.label, r.name, r.voxel_count, f"{r.volume_ml:.6g}", r.components]
        writer.writerow(row + pairs)
        key = r.name if r.name not in cases.get(r.case, {}) else f"{r.name} ({r.label})"
        cases.setdefault(r.case, {})[key] = {
            "label": r.label,
            "voxel_count": r.voxel_count,
            "volume_ml": r.volume_ml,
            "components": r.components,
            "intensity_mean": list(r.intensity_mean),
            "intensity_std": list(r.intensity_std),
        }
    document = {
        "cases": cases,
        "channels": list(channels),
        "connectivity": CONNECTIVITY,
        "units": {
            "volume_ml": "millilitres (voxel count x voxel volume in mm^3 / 1000)",
            "intensity": "the input image's values inside the label, per channel (HU for CT)",
        },
    }
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv_path, buffer.getvalue())
    atomic_write_text(json_path, json.dumps(document, indent=2) + "\n")
    return csv_path, json_path


def _channel(row: LabelStatistics, c: int) -> tuple[float | None, float | None]:
    if c >= len(row.intensity_mean):
        return None, None
    return row.intensity_mean[c], row.intensity_std[c]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"
