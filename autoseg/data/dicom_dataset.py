"""DICOM for training: series with DICOM SEG or RTSTRUCT labels -> an nnU-Net v2 dataset.

``dicom_training_pairs`` pairs each DICOM SEG (ReferencedSeriesSequence) and RTSTRUCT
(RTReferencedSeriesSequence) of a folder with the image series it references;
``convert_dicom_dataset`` reads each pair (``read_series``, then ``read_seg_labels`` or
``read_rtstruct_labels``, which rasterises the contours) and writes a new dataset folder in
the nnU-Net v2 layout: ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``,
``dataset.json`` (labels by segment label or ROI name, the same value for the same name in
every case) and ``dicom_sources.json`` (case -> series UID, label file). The source folder is
only read; the dataset is written to a temporary folder beside the destination and renamed
into place when every case is converted, so a refused case leaves nothing behind.

Not read: several series per case (one channel per case), label objects referencing several
series.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data.dicom import DicomSeries, find_dicom, read_series
from autoseg.data.dicom_rtstruct import read_rtstruct_labels, referenced_series_uids
from autoseg.data.dicom_seg import read_seg_labels
from autoseg.data.io import nifti_image, write_label
from autoseg.errors import AutosegError, DatasetError, Problem

log = logging.getLogger(__name__)

__all__ = ["DicomTrainingPair", "convert_dicom_dataset", "dicom_training_pairs"]

_MODALITY_CHANNEL = {"CT": "CT", "MR": "MRI", "PT": "PET"}


@dataclass(frozen=True)
class DicomTrainingPair:
    """One training case: an image series and the DICOM SEG or RTSTRUCT that labels it."""

    series: DicomSeries
    labels: Path
    kind: str = "seg"  # "seg" or "rtstruct"


def dicom_training_pairs(folder: Path | str) -> tuple[list[DicomTrainingPair], list[Problem]]:
    """Pair every DICOM SEG and RTSTRUCT of ``folder`` with the image series it references.

    Series without labels are left out (logged); a label file whose series is not in the
    folder, one referencing several series, and a series labelled twice are problems.

    Returns:
        The pairs (sorted by case name) and the problems found.

    Raises:
        AutosegError: the folder does not exist.
    """
    import pydicom

    folder = Path(folder)
    found = find_dicom(folder)
    by_uid = {s.uid: s for s in found.series}
    problems: list[Problem] = []
    labelled: dict[str, list[tuple[Path, str]]] = {}
    for path, kind in [(p, "seg") for p in found.segs] + [(p, "rtstruct") for p in found.rtstructs]:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if kind == "seg":
            refs = [str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])]
        else:
            refs = referenced_series_uids(ds)
        if len(refs) != 1:
            problems.append(Problem(str(path), f"references {len(refs)} series; expected one"))
        elif refs[0] not in by_uid:
            problems.append(Problem(str(path), f"its image series {refs[0]} is not in {folder}"))
        else:
            labelled.setdefault(refs[0], []).append((path, kind))
    pairs = []
    for uid, files in labelled.items():
        if len(files) > 1:
            names = ", ".join(str(f) for f, _ in files)
            problems.append(
                Problem(str(files[1][0]), f"series {uid} is labelled {len(files)} times ({names})")
            )
        else:
            pairs.append(DicomTrainingPair(by_uid[uid], *files[0]))
    for item in found.series:
        if item.uid not in labelled:
            log.info(
                "series %s (%s) has no SEG or RTSTRUCT: not a training case", item.name, item.uid
            )
    return sorted(pairs, key=lambda p: p.series.name), problems


def convert_dicom_dataset(
    source: Path | str, destination: Path | str, *, name: str | None = None
) -> Path:
    """Convert a folder of DICOM series and their SEGs into a new nnU-Net v2 dataset folder.

    Args:
        source: the DICOM folder (any nesting); never modified.
        destination: the dataset folder to create (must not exist, or be empty; not inside
            ``source``).
        name: dataset.json's ``name`` (default: the destination folder's name).

    Returns:
        ``destination``, holding imagesTr/, labelsTr/, dataset.json and dicom_sources.json.

    Raises:
        DatasetError: every pair that cannot be converted (with file and reason).
        AutosegError: no pairs, a bad destination, or mixed modalities.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise AutosegError(f"{destination}: exists and is not an empty folder; choose a new one")
    if source.resolve() in (destination.resolve(), *destination.resolve().parents):
        raise AutosegError(f"{destination}: must not be inside the DICOM folder {source}")
    pairs, problems = dicom_training_pairs(source)
    if not pairs and not problems:
        raise AutosegError(
            f"{source}: no DICOM SEG or RTSTRUCT referencing an image series was found"
        )
    modalities = Counter(p.series.modality for p in pairs)
    if len(modalities) > 1:
        raise AutosegError(
            f"{source}: series of several modalities ({dict(modalities)}); one dataset, one kind "
            "of image"
        )
    labels: dict[str, int] = {}  # segment label -> dataset label value, first seen first
    sources: dict[str, dict[str, str]] = {}
    destination.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        for pair in pairs:
            try:
                _convert_pair(pair, work, labels)
            except AutosegError as exc:
                problems.append(
                    Problem(str(pair.labels), str(exc).removeprefix(f"{pair.labels}: "))
                )
                continue
            sources[pair.series.name] = {
                "series_instance_uid": pair.series.uid,
                pair.kind: str(pair.labels.resolve()),
            }
        if problems:
            raise DatasetError(problems, what=f"DICOM folder {source}")
        channel = _MODALITY_CHANNEL.get(next(iter(modalities)), next(iter(modalities)) or "image")
        meta = {
            "name": name or destination.name,
            "description": f"converted from the DICOM series and SEGs of {source.resolve()}",
            "channel_names": {"0": channel},
            "labels": {"background": 0, **labels},
            "numTraining": len(sources),
            "file_ending": ".nii.gz",
        }
        (work / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
        (work / "dicom_sources.json").write_text(json.dumps(sources, indent=2, sort_keys=True))
        if destination.exists():
            destination.rmdir()  # empty (checked above)
        work.rename(destination)
    finally:
        if work.exists():
            shutil.rmtree(work)
    log.info("%d case(s) converted to %s", len(sources), destination)
    return destination


def _convert_pair(pair: DicomTrainingPair, work: Path, labels: dict[str, int]) -> None:
    import nibabel as nib

    volume = read_series(pair.series)
    if pair.kind == "rtstruct":
        seg_labels, names = read_rtstruct_labels(pair.labels, volume)
    else:
        seg_labels, names = read_seg_labels(pair.labels, volume.datasets)
    lookup = np.zeros(max(names, default=0) + 1, dtype=np.uint16)
    for number, label in names.items():
        lookup[number] = labels.setdefault(label, len(labels) + 1)
    if len(labels) > 255:
        raise AutosegError(f"{pair.labels}: more than 255 distinct label names in the folder")
    label_map = lookup[seg_labels].astype(np.uint8)
    case = pair.series.name
    image = volume.image.array[0]
    integral = np.array_equal(image, np.round(image))
    small = integral and image.min(initial=0) >= -(2**15) and image.max(initial=0) < 2**15
    data: Any = image.astype(np.int16) if small else image
    (work / "imagesTr").mkdir(exist_ok=True)
    nib.save(
        nifti_image(data, volume.image.geometry), str(work / "imagesTr" / f"{case}_0000.nii.gz")
    )
    write_label(label_map, volume.image.geometry, work / "labelsTr" / f"{case}.nii.gz")
