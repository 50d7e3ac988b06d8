"""Datasets as users have them: MSD layout or nnU-Net v2 layout, read in place.

``load_dataset`` checks the folder's structure (dataset.json, which files exist, how they are
named) and returns a ``DatasetSpec``; it never opens an image. What is *inside* each file is
checked later, case by case, by ``autoseg.fingerprint.inspect_case``. Both collect every
problem they find and raise them together as one ``DatasetError``.

MSD layout: dataset.json lists ``training: [{"image": "./imagesTr/x.nii.gz", "label": ...}]``,
``modality: {"0": "MRI"}`` and ``labels: {"0": "background", "1": ...}``; a multi-channel case is
one 4D file. nnU-Net v2 layout: dataset.json holds ``channel_names``, ``labels: {"background":
0, ...}`` and ``file_ending``; cases are found by listing ``imagesTr/CASE_0000<ending>`` (one
file per channel) and ``labelsTr/CASE<ending>``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg.errors import DatasetError, Problem
from autoseg.io import IMAGE_ENDINGS, file_ending, strip_ending

logger = logging.getLogger(__name__)

_CHANNEL_SUFFIX = re.compile(r"(.+)_(\d{4})")


class _Problems(list):
    """Problems collected while reading a dataset; ``add(path, message)``."""

    def add(self, path: str | Path, message: str) -> None:
        self.append(Problem(str(path), message))


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
    """

    name: str
    root: Path
    layout: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]
    file_ending: str = ".nii.gz"

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
    problems = _Problems()
    meta = _read_meta(root, problems)
    if meta is None:
        raise DatasetError(problems, what=f"dataset {root}")
    json_path = str(root / "dataset.json")
    if "channel_names" in meta:
        layout = "nnunet"
        channels = _channel_names(meta, "channel_names", json_path, problems)
        labels = _nnunet_labels(meta, json_path, problems)
        ending = _nnunet_file_ending(meta, json_path, problems)
        cases = _nnunet_cases(root, ending, len(channels or ()), problems) if ending else ()
    elif "modality" in meta or "training" in meta:
        layout = "msd"
        channels = _channel_names(meta, "modality", json_path, problems)
        labels = _msd_labels(meta, json_path, problems)
        cases = _msd_cases(root, meta, problems)
        ending = file_ending(cases[0].images[0]) if cases else ".nii.gz"
    else:
        problems.add(
            json_path,
            "cannot tell the layout: expected 'channel_names', 'labels' and 'file_ending' (nnU-Net v2) or 'modality', 'labels' and 'training' (MSD)",
        )
        raise DatasetError(problems, what=f"dataset {root}")
    if not cases and not problems:
        problems.add(root / "imagesTr", "no training cases found")
    _check_num_training(meta, len(cases), json_path, problems)
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
    )


# --- dataset.json ------------------------------------------------------------------------------


def _read_meta(root: Path, problems: _Problems) -> dict[str, Any] | None:
    json_path = root / "dataset.json"
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        problems.add(root, f"dataset folder {what}")
        return None
    try:
        text = json_path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.add(json_path, "dataset.json not found; every dataset folder needs one")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(json_path, f"cannot be read ({exc})")
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.add(json_path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
        return None
    if not isinstance(meta, dict):
        problems.add(json_path, f"must hold a JSON object, found {type(meta).__name__}")
        return None
    return meta


def _channel_names(
    meta: dict[str, Any], key: str, json_path: str, problems: _Problems
) -> tuple[str, ...] | None:
    """``{"0": "CT", "1": "T2"}`` -> ``("CT", "T2")``."""
    value = meta.get(key)
    if value is None:
        problems.add(json_path, f'missing key \'{key}\' (e.g. {{"0": "MRI"}})')
        return None
    if not isinstance(value, dict) or not value:
        problems.add(json_path, f'\'{key}\' must be a non-empty object like {{"0": "MRI"}}')
        return None
    names: dict[int, str] = {}
    for k, v in value.items():
        index = _as_index(k)
        if index is None or not isinstance(v, str):
            problems.add(json_path, f"'{key}': entry {k!r}: {v!r} must map an index to a name")
            return None
        names[index] = v
    if sorted(names) != list(range(len(names))):
        problems.add(json_path, f"'{key}' indices must be 0..{len(names) - 1}, got {sorted(names)}")
        return None
    return tuple(names[i] for i in range(len(names)))


def _as_index(key: Any) -> int | None:
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    return None


def _msd_labels(meta: dict[str, Any], json_path: str, problems: _Problems) -> dict | None:
    """MSD: ``{"0": "background", "1": "tumour"}`` (value -> name)."""
    value = meta.get("labels")
    if not isinstance(value, dict) or not value:
        what = "missing key 'labels'" if value is None else "'labels' must be a non-empty object"
        problems.add(json_path, f'{what} (MSD: {{"0": "background", ...}})')
        return None
    labels: dict[int, str] = {}
    for k, v in value.items():
        index = _as_index(k)
        if index is None or not isinstance(v, str):
            problems.add(json_path, f"'labels': entry {k!r}: {v!r} must map a value to a name")
            return None
        labels[index] = v
    return _check_labels(labels, json_path, problems)


def _nnunet_labels(meta: dict[str, Any], json_path: str, problems: _Problems) -> dict | None:
    """nnU-Net v2: ``{"background": 0, "tumour": 1}`` (name -> value)."""
    value = meta.get("labels")
    if not isinstance(value, dict) or not value:
        what = "missing key 'labels'" if value is None else "'labels' must be a non-empty object"
        problems.add(json_path, f'{what} (nnU-Net v2: {{"background": 0, ...}})')
        return None
    if "regions_class_order" in meta or any(isinstance(v, (list, tuple)) for v in value.values()):
        problems.add(
            json_path,
            "region-based labels (lists of values / 'regions_class_order') are not supported; give each label one integer value",
        )
        return None
    labels: dict[int, str] = {}
    for name, v in value.items():
        if isinstance(v, bool) or not isinstance(v, int):
            problems.add(json_path, f"'labels': {name!r}: {v!r} must be an integer label value")
            return None
        if v in labels:
            problems.add(json_path, f"'labels': {labels[v]!r} and {name!r} share the value {v}")
            return None
        labels[v] = name
    return _check_labels(labels, json_path, problems)


def _check_labels(
    labels: dict[int, str], json_path: str, problems: _Problems
) -> dict[int, str] | None:
    values = sorted(labels)
    if 0 not in labels:
        problems.add(json_path, f"'labels' has no background (value 0): {values}")
        return None
    if values != list(range(len(values))):
        problems.add(json_path, f"label values must be consecutive 0..{len(values) - 1}: {values}")
        return None
    return {v: labels[v] for v in values}


def _nnunet_file_ending(meta: dict[str, Any], json_path: str, problems: _Problems) -> str | None:
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or ending.lower() not in IMAGE_ENDINGS:
        what = "missing key 'file_ending'" if ending is None else f"'file_ending' {ending!r}"
        problems.add(json_path, f"{what}: must be one of {', '.join(IMAGE_ENDINGS)}")
        return None
    return ending.lower()


def _check_num_training(
    meta: dict[str, Any], found: int, json_path: str, problems: _Problems
) -> None:
    declared = meta.get("numTraining")
    if declared is None:
        return
    if isinstance(declared, bool) or not isinstance(declared, int):
        problems.add(json_path, f"'numTraining' must be an integer, got {declared!r}")
    elif declared != found:
        logger.warning("%s: numTraining is %d but %d cases were found", json_path, declared, found)


# --- MSD layout --------------------------------------------------------------------------------


def _msd_cases(root: Path, meta: dict[str, Any], problems: _Problems) -> tuple[Case, ...]:
    json_path = str(root / "dataset.json")
    training = meta.get("training")
    if not isinstance(training, list):
        what = "missing key 'training'" if training is None else "'training' must be a list"
        problems.add(json_path, f'{what} of {{"image": ..., "label": ...}}')
        return ()
    cases: list[Case] = []
    first_entry: dict[str, int] = {}
    listed: set[Path] = set()
    for i, entry in enumerate(training):
        where = f"training[{i}]"
        if not isinstance(entry, dict):
            problems.add(json_path, f"{where} must be an object with image and label")
            continue
        image = _listed_file(root, entry, "image", where, problems)
        label = _listed_file(root, entry, "label", where, problems)
        if "image" not in entry and label is not None:
            problems.add(label, f"label without image ({where} has no 'image')")
        if "label" not in entry and image is not None:
            problems.add(image, f"image without label ({where} has no 'label')")
        if image is None or label is None:
            continue
        listed.update((image, label))
        case_id = strip_ending(image)
        if case_id in first_entry:
            problems.add(
                json_path,
                f"duplicate case id {case_id!r} in training[{first_entry[case_id]}] and {where}",
            )
            continue
        first_entry[case_id] = i
        cases.append(Case(case_id=case_id, images=(image,), label=label))
    for folder in ("imagesTr", "labelsTr"):
        unlisted = [f.name for f in _image_files(root / folder) if f not in listed]
        if unlisted:
            logger.warning(
                "%s: %d image file(s) not listed in dataset.json 'training', ignored: %s",
                root / folder,
                len(unlisted),
                ", ".join(unlisted[:5]) + (" ..." if len(unlisted) > 5 else ""),
            )
    return tuple(cases)


def _listed_file(
    root: Path, entry: dict[str, Any], key: str, where: str, problems: _Problems
) -> Path | None:
    """The file ``entry[key]`` names, if it is a safe, existing image path inside ``root``."""
    json_path = str(root / "dataset.json")
    if key not in entry:
        return None
    rel = entry[key]
    if not isinstance(rel, str) or not rel.strip():
        problems.add(json_path, f"{where}: '{key}' must be a path, got {rel!r}")
        return None
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        problems.add(
            json_path, f"{where}: '{key}' {rel!r} points outside the dataset folder; refused"
        )
        return None
    path = root / norm
    if file_ending(path) is None:
        problems.add(path, f"{where}: not an image file ({', '.join(IMAGE_ENDINGS)})")
        return None
    if not path.is_file():
        problems.add(path, f"listed in dataset.json ({where}) but missing")
        return None
    return path


# --- nnU-Net v2 layout -------------------------------------------------------------------------


def _nnunet_cases(
    root: Path, ending: str, n_channels: int, problems: _Problems
) -> tuple[Case, ...]:
    folders = {name: root / name for name in ("imagesTr", "labelsTr")}
    for folder in folders.values():
        if not folder.is_dir():
            problems.add(folder, "folder missing")
    if any(not f.is_dir() for f in folders.values()):
        return ()
    images: dict[str, dict[int, Path]] = {}
    for f in _image_files(folders["imagesTr"]):
        stem = _stem_with_ending(f, ending, problems)
        if stem is None:
            continue
        match = _CHANNEL_SUFFIX.fullmatch(stem)
        if match is None:
            problems.add(f, f"image names must be CASE_XXXX{ending} (XXXX = channel, 0000..)")
            continue
        case_id, channel = match.group(1), int(match.group(2))
        if n_channels and channel >= n_channels:
            problems.add(f, f"channel {channel} but dataset.json declares {n_channels}")
            continue
        if channel in images.setdefault(case_id, {}):
            problems.add(f, f"duplicate file for case {case_id!r} channel {channel}")
            continue
        images[case_id][channel] = f
    labels: dict[str, Path] = {}
    for f in _image_files(folders["labelsTr"]):
        stem = _stem_with_ending(f, ending, problems)
        if stem is None:
            continue
        if stem in labels:
            problems.add(f, f"duplicate label file for case {stem!r}")
            continue
        labels[stem] = f
    cases: list[Case] = []
    for case_id in sorted(set(images) | set(labels)):
        channels = images.get(case_id, {})
        if case_id not in labels:
            for f in channels.values():
                expected = folders["labelsTr"] / f"{case_id}{ending}"
                problems.add(f, f"image without label (expected {expected})")
            continue
        if not channels:
            expected = folders["imagesTr"] / f"{case_id}_0000{ending}"
            problems.add(labels[case_id], f"label without image (expected {expected})")
            continue
        missing = [c for c in range(n_channels) if c not in channels]
        for c in missing:
            expected = folders["imagesTr"] / f"{case_id}_{c:04d}{ending}"
            problems.add(expected, f"channel file missing for case {case_id!r}")
        if missing:
            continue
        cases.append(
            Case(
                case_id=case_id,
                images=tuple(channels[c] for c in range(n_channels)),
                label=labels[case_id],
            )
        )
    return tuple(cases)


def _stem_with_ending(path: Path, ending: str, problems: _Problems) -> str | None:
    found = file_ending(path.name)
    if found != ending:
        problems.add(path, f"file ending {found} differs from file_ending {ending!r}")
        return None
    return path.name[: -len(ending)]


# --- shared ------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    """Image files in ``folder``, sorted; stray entries are logged and skipped."""
    if not folder.is_dir():
        return []
    files: list[Path] = []
    stray: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file() or file_ending(entry.name) is None:
            stray.append(entry.name)
        else:
            files.append(entry)
    if stray:
        logger.warning(
            "%s: ignoring %d entr%s that are not image files: %s",
            folder,
            len(stray),
            "y" if len(stray) == 1 else "ies",
            ", ".join(stray[:5]) + (" ..." if len(stray) > 5 else ""),
        )
    return files
