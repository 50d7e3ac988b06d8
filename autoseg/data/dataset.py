"""Datasets as users have them: MSD layout or nnU-Net v2 layout, read in place.

``load_dataset`` checks the folder's structure (dataset.json, which files exist, how they are
named) and returns a ``DatasetSpec``; it never opens an image. What is *inside* each file is
checked later, case by case, by ``autoseg.planning.fingerprint.inspect_case``. Both collect every
problem they find and raise them together as one ``DatasetError``.

MSD layout: dataset.json lists ``training: [{"image": "./imagesTr/x.nii.gz", "label": ...}]``,
``modality: {"0": "MRI"}`` and ``labels: {"0": "background", "1": ...}``; a multi-channel case is
one 4D file. nnU-Net v2 layout: dataset.json holds ``channel_names``, ``labels: {"background":
0, ...}`` and ``file_ending``; cases are found by listing ``imagesTr/CASE_0000<ending>`` (one
file per channel) and ``labelsTr/CASE<ending>``.

This module owns the folder: the layout, its cases and their files. What dataset.json itself
says (its channels, labels and their rules, ``read_label_names``) is
:mod:`autoseg.data.dataset_json`.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.data.bitmaps import ENDINGS as MICROSCOPY_ENDINGS
from autoseg.data.bitmaps import is_sidecar
from autoseg.data.dataset_json import (
    DatasetProblems,
    channel_names,
    nnunet_file_ending,
    parse_labels,
    read_meta,
)
from autoseg.data.io import IMAGE_ENDINGS, file_ending, strip_ending
from autoseg.data.regions import Region, is_region_based, parse_regions
from autoseg.errors import DatasetError
from autoseg.serial import NAME_MAX

log = logging.getLogger(__name__)

_CHANNEL_SUFFIX = re.compile(r"(.+)_([0-9]{4})")
# the longest name autoseg gives a case's files is CASE.img.b2nd / CASE.seg.b2nd (preprocessed)
LONGEST_CASE_SUFFIX = ".img.b2nd"


def split_channel_suffix(stem: str) -> tuple[str, int] | None:
    """``"CASE_0003"`` -> ``("CASE", 3)``; None when the name has no 4-digit channel suffix.

    The one channel-suffix rule, shared by the dataset check and by ``predict``'s input files.
    """
    match = _CHANNEL_SUFFIX.fullmatch(stem)
    return None if match is None else (match.group(1), int(match.group(2)))


@dataclass(frozen=True)
class Case:
    """One case: its image file(s) and, for training cases, its label file.

    Attributes:
        case_id: identifier (file name without ending and channel suffix).
        images: one file per channel (nnU-Net layout) or one 3D/4D file (MSD layout).
        label: the label map, or None for an unlabelled case.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset folder as described by its dataset.json.

    Attributes:
        name: the folder's name; everything autoseg writes lives in ``<home>/<name>/``.
        root: absolute path of the folder.
        layout: ``"msd"`` or ``"nnunet"``.
        channels: channel (modality) names in input order.
        labels: label value -> name, background (0) included.
        cases: training cases, sorted by case id.
        file_ending: the image file ending (``.nii.gz``, ``.nrrd``, ...).
        regions: the regions of a region-based dataset (``autoseg.data.regions``), else empty.
    """

    name: str
    root: Path
    layout: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]
    file_ending: str = ".nii.gz"
    regions: tuple[Region, ...] = ()

    @property
    def is_ct(self) -> tuple[bool, ...]:
        """Per channel: does the modality name say CT?"""
        return tuple(c.strip().upper() == "CT" for c in self.channels)


def load_dataset(path: str | Path) -> DatasetSpec:
    """Read a dataset folder in the MSD or nnU-Net v2 layout, as it is.

    The layout is told from dataset.json: ``channel_names`` means nnU-Net v2, ``modality`` or
    ``training`` means MSD. Stray files in imagesTr/labelsTr (hidden files, .DS_Store,
    README.txt, anything without an image ending) are ignored with a warning.

    Args:
        path: the dataset folder (the one holding dataset.json).

    Returns:
        The dataset's description, cases sorted by case id.

    Raises:
        DatasetError: every structural problem found (missing or invalid dataset.json, wrongly
            typed keys, missing or unpaired files, paths outside the folder, duplicate ids).
    """
    root = Path(os.path.abspath(Path(path).expanduser()))
    problems = DatasetProblems(root)
    meta = read_meta(problems)
    regions: tuple[Region, ...] = ()
    if meta is not None and "channel_names" in meta:
        layout = "nnunet"
        channels = channel_names(meta, "channel_names", problems)
        labels = parse_labels(meta, layout, problems)
        ending = nnunet_file_ending(meta, problems)
        regions = parse_regions(meta)[0] if is_region_based(meta) else ()
        cases = _nnunet_cases(ending, len(channels or ()), problems) if ending else ()
    elif meta is not None and ("modality" in meta or "training" in meta):
        layout = "msd"
        channels = channel_names(meta, "modality", problems)
        labels = parse_labels(meta, layout, problems)
        cases = _msd_cases(meta, problems)
        ending = file_ending(cases[0].images[0]) if cases else ".nii.gz"
    else:
        if meta is not None:
            problems.meta(
                "cannot tell the layout: expected 'channel_names', 'labels', 'file_ending' "
                "(nnU-Net v2) or 'modality', 'labels', 'training' (MSD)"
            )
        raise DatasetError(problems, what=f"dataset {root}")
    if not cases and not problems:
        problems.add(root / "imagesTr", "no training cases found")
    for case in cases:
        _check_case_id_length(case, problems)
    declared = meta.get("numTraining")
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)):
        problems.meta(f"'numTraining' must be an integer, got {declared!r}")
    elif declared is not None and declared != len(cases) and not problems:
        log.warning("%s: numTraining is %d, found %d cases", problems.json, declared, len(cases))
    if problems or channels is None or labels is None:
        raise DatasetError(problems, what=f"dataset {root}")
    return DatasetSpec(
        name=root.name,
        root=root,
        layout=layout,
        channels=channels,
        labels=labels,
        cases=tuple(sorted(cases, key=lambda c: c.case_id)),
        file_ending=ending or ".nii.gz",
        regions=regions,
    )


def _check_case_id_length(case: Case, problems: DatasetProblems) -> None:
    """A case id must leave room for the longest file name autoseg derives from it."""
    size = len(case.case_id.encode("utf-8", "surrogateescape"))
    if size + len(LONGEST_CASE_SUFFIX) > NAME_MAX:
        problems.add(
            case.images[0],
            f"case id is {size} bytes long; autoseg's preprocessed files "
            f"(CASE{LONGEST_CASE_SUFFIX}) need at most {NAME_MAX - len(LONGEST_CASE_SUFFIX)} "
            f"to stay within the {NAME_MAX}-byte file-name limit: give the case a shorter name",
        )


# --- MSD layout --------------------------------------------------------------------------------


def _msd_cases(meta: dict[str, Any], problems: DatasetProblems) -> tuple[Case, ...]:
    training = meta.get("training")
    if not isinstance(training, list):
        what = "missing key 'training'" if training is None else "'training' must be a list"
        problems.meta(f'{what} of {{"image": ..., "label": ...}}')
        return ()
    cases: list[Case] = []
    first_entry: dict[str, int] = {}
    listed: set[Path] = set()
    for i, entry in enumerate(training):
        where = f"training[{i}]"
        if not isinstance(entry, dict):
            problems.meta(f"{where} must be an object with 'image' and 'label'")
            continue
        image = _listed_file(entry, "image", where, problems)
        label = _listed_file(entry, "label", where, problems)
        if "image" not in entry and label is not None:
            problems.add(label, f"label without image ({where} has no 'image')")
        if "label" not in entry and image is not None:
            problems.add(image, f"image without label ({where} has no 'label')")
        if image is None or label is None:
            continue
        listed.update((image, label))
        case_id = strip_ending(image)
        if case_id in first_entry:
            first = first_entry[case_id]
            problems.meta(f"duplicate case id {case_id!r} in training[{first}] and {where}")
            continue
        first_entry[case_id] = i
        if strip_ending(label) != case_id:
            log.warning(
                "%s: %s pairs image %s with label %s (different names); check that they belong "
                "together",
                problems.json,
                where,
                image.name,
                label.name,
            )
        cases.append(Case(case_id=case_id, images=(image,), label=label))
    for folder in ("imagesTr", "labelsTr"):
        unlisted = [f.name for f in _image_files(problems.root / folder) if f not in listed]
        if unlisted:
            log.warning(
                "%s: %d image file(s) not listed in dataset.json 'training', ignored: %s",
                problems.root / folder,
                len(unlisted),
                _some(unlisted),
            )
    return tuple(cases)


def _listed_file(
    entry: dict[str, Any], key: str, where: str, problems: DatasetProblems
) -> Path | None:
    """The file ``entry[key]`` names, if it is a safe, existing image path inside the folder."""
    if key not in entry:
        return None
    rel = entry[key]
    if not isinstance(rel, str) or not rel.strip():
        problems.meta(f"{where}: '{key}' must be a path, got {rel!r}")
        return None
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        problems.meta(f"{where}: '{key}' {rel!r} points outside the dataset folder; refused")
        return None
    path = problems.root / norm
    if file_ending(path) is None:
        problems.add(path, f"{where}: not an image file ({', '.join(IMAGE_ENDINGS)})")
        return None
    if not path.is_file():
        problems.add(path, f"listed in dataset.json ({where}) but missing")
        return None
    return path


# --- nnU-Net v2 layout -------------------------------------------------------------------------


def _nnunet_cases(ending: str, n_channels: int, problems: DatasetProblems) -> tuple[Case, ...]:
    images_dir, labels_dir = problems.root / "imagesTr", problems.root / "labelsTr"
    for folder in (images_dir, labels_dir):
        if not folder.is_dir():
            problems.add(folder, "folder missing")
    if not (images_dir.is_dir() and labels_dir.is_dir()):
        return ()
    images: dict[str, dict[int, Path]] = {}
    for f in _image_files(images_dir):
        split = split_channel_suffix(_stem(f, ending, problems) or "")
        if split is None:
            if file_ending(f) == ending:
                problems.add(f, f"image names must be CASE_XXXX{ending}, XXXX = channel 0000..")
            continue
        case_id, channel = split
        if n_channels and channel >= n_channels:
            problems.add(f, f"channel {channel}, but dataset.json declares {n_channels} channel(s)")
        elif channel in images.setdefault(case_id, {}):
            problems.add(f, f"second file for case {case_id!r} channel {channel}")
        else:
            images[case_id][channel] = f
    labels: dict[str, Path] = {}
    for f in _image_files(labels_dir):
        stem = _stem(f, ending, problems)
        if stem is not None and stem in labels:
            problems.add(f, f"second label file for case {stem!r}")
        elif stem is not None:
            labels[stem] = f
    cases: list[Case] = []
    for case_id in sorted(set(images) | set(labels)):
        channels = images.get(case_id, {})
        if case_id not in labels:
            for f in channels.values():
                problems.add(f, f"image without label (expected {labels_dir / case_id}{ending})")
            continue
        if not channels:
            expected = images_dir / f"{case_id}_0000{ending}"
            problems.add(labels[case_id], f"label without image (expected {expected})")
            continue
        if ending in MICROSCOPY_ENDINGS and set(channels) == {0} and n_channels > 1:
            # one RGB file holds every channel (nnU-Net's natural images); the fingerprint
            # checks that it has as many as dataset.json declares
            cases.append(Case(case_id=case_id, images=(channels[0],), label=labels[case_id]))
            continue
        missing = [c for c in range(n_channels) if c not in channels]
        for c in missing:
            expected = images_dir / f"{case_id}_{c:04d}{ending}"
            problems.add(expected, f"channel file missing for case {case_id!r}")
        if not missing:
            files = tuple(channels[c] for c in range(n_channels))
            cases.append(Case(case_id=case_id, images=files, label=labels[case_id]))
    return tuple(cases)


def _stem(path: Path, ending: str, problems: DatasetProblems) -> str | None:
    """File name without ``ending``; None (and a problem) if it has another image ending."""
    found = file_ending(path.name)
    if found != ending:
        problems.add(path, f"file ending {found} differs from dataset.json file_ending {ending}")
        return None
    return path.name[: -len(ending)]


# --- shared ------------------------------------------------------------------------------------


def _some(names: list[str]) -> str:
    return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")


def _image_files(folder: Path) -> list[Path]:
    """Image files in ``folder``, sorted; stray entries are logged and skipped."""
    if not folder.is_dir():
        return []
    files: list[Path] = []
    stray: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or file_ending(entry.name) is None:
            if not is_sidecar(entry):
                stray.append(entry.name)
        else:
            files.append(entry)
    if stray:
        log.warning(
            "%s: ignoring %d entries that are not image files: %s", folder, len(stray), _some(stray)
        )
    return files
