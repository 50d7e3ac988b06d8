"""A dataset's dataset.json: read and checked, its channels, labels and file ending.

This module owns what dataset.json says, in both layouts: reading the file (with every problem
named, never a traceback), the channel names (``modality`` in MSD, ``channel_names`` in nnU-Net
v2), the labels (MSD ``{"0": "background", ...}``, nnU-Net v2 ``{"background": 0, ...}``,
region-based ones through ``autoseg.data.regions``) with their rules (background present,
consecutive values, at most ``MAX_LABEL_VALUE``, the ignore label), the nnU-Net ``file_ending``,
and ``read_label_names`` for any file that names labels. Problems are collected in a
``DatasetProblems`` and raised together. The dataset folder itself (its layout and cases) is
:mod:`autoseg.data.dataset`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autoseg.data.ignore import ignore_label_problem
from autoseg.data.io import IMAGE_ENDINGS
from autoseg.data.regions import is_region_based, parse_regions
from autoseg.errors import DatasetError, Problem
from autoseg.serial import ascii_int

MAX_LABEL_VALUE = 255  # preprocessed label maps are uint8


class DatasetProblems(list):
    """Problems collected while reading the dataset folder ``root``."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root
        self.json = str(root / "dataset.json")

    def add(self, path: str | Path, message: str) -> None:
        self.append(Problem(str(path), message))

    def meta(self, message: str) -> None:
        """A problem with dataset.json itself."""
        self.add(self.json, message)


def read_label_names(path: str | Path) -> dict[int, str]:
    """Label value -> name from a dataset.json or plans.json, or a folder holding one.

    The ``labels`` of any such file autoseg reads work: MSD
    (``{"0": "background", "1": "Anterior"}``), nnU-Net v2 (``{"background": 0, "Anterior": 1}``)
    and autoseg's plans. A folder is a dataset folder (its dataset.json) or a model folder (its
    plans.json).

    Raises:
        DatasetError: the file is missing, unreadable, or its labels are not valid.
    """
    path = label_file(path)
    problems = DatasetProblems(path.parent)
    problems.json = str(path)
    meta = read_meta(problems)
    labels = None
    if meta is not None:
        value = meta.get("labels")
        keys = value.keys() if isinstance(value, dict) else ()
        layout = "msd" if keys and all(_index(k) is not None for k in keys) else "nnunet"
        labels = parse_labels(meta, layout, problems)
    if problems or labels is None:
        raise DatasetError(problems, what="dataset.json")
    return labels


def label_file(path: str | Path) -> Path:
    """The file ``read_label_names`` reads: ``path`` itself, or a folder's dataset.json (its
    plans.json when it has only that: a model folder)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return path
    plans, meta = path / "plans.json", path / "dataset.json"
    return plans if plans.is_file() and not meta.exists() else meta


def read_meta(problems: DatasetProblems) -> dict[str, Any] | None:
    """The JSON object in ``problems.json``; None (and a problem) when the folder or the file
    is missing, unreadable, not JSON or not an object."""
    if not problems.root.is_dir():
        what = "is not a folder" if problems.root.exists() else "does not exist"
        problems.add(problems.root, f"dataset folder {what}")
        return None
    try:
        text = Path(problems.json).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        problems.meta("dataset.json not found; every dataset folder needs one")
        return None
    except (OSError, UnicodeDecodeError) as exc:
        problems.meta(f"cannot be read ({exc})")
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        problems.meta(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")
        return None
    except RecursionError:
        problems.meta("nested too deeply to be a dataset description; refused")
        return None
    if not isinstance(meta, dict):
        problems.meta(f"must hold a JSON object, found {type(meta).__name__}")
        return None
    return meta


def _index(key: Any) -> int | None:
    """A dataset.json key that is a non-negative integer in ASCII digits (``"0"``, ``"12"``)."""
    value = ascii_int(key) if isinstance(key, str) else None
    return value if value is not None and value >= 0 and "+" not in key else None


def channel_names(
    meta: dict[str, Any], key: str, problems: DatasetProblems
) -> tuple[str, ...] | None:
    """``meta[key]``: ``{"0": "CT", "1": "T2"}`` -> ``("CT", "T2")``; None (and a problem)
    when missing or malformed."""
    value = meta.get(key)
    if not isinstance(value, dict) or not value:
        what = f"missing key '{key}'" if value is None else f"'{key}' must be a non-empty object"
        problems.meta(f'{what} like {{"0": "MRI"}}')
        return None
    names: dict[int, str] = {}
    for k, v in value.items():
        index = _index(k)
        if index is None or not isinstance(v, str):
            problems.meta(f"'{key}': entry {k!r}: {v!r} must map an index to a name")
            return None
        names[index] = v
    if sorted(names) != list(range(len(names))):
        problems.meta(f"'{key}' indices must be 0..{len(names) - 1}, got {sorted(names)}")
        return None
    return tuple(names[i] for i in range(len(names)))


def parse_labels(
    meta: dict[str, Any], layout: str, problems: DatasetProblems
) -> dict[int, str] | None:
    """MSD ``{"0": "background", ...}`` or nnU-Net ``{"background": 0, ...}`` -> value: name;
    None (and a problem) when the labels break a rule."""
    value = meta.get("labels")
    example = '{"0": "background", ...}' if layout == "msd" else '{"background": 0, ...}'
    if not isinstance(value, dict) or not value:
        what = "missing key 'labels'" if value is None else "'labels' must be a non-empty object"
        problems.meta(f"{what} like {example}")
        return None
    if layout == "msd":
        pairs = [(v, k) for k, v in value.items()]
        bad = [k for k, v in value.items() if _index(k) is None or not isinstance(v, str)]
        pairs = [(n, _index(k)) for n, k in pairs if k not in bad]
    else:
        if is_region_based(meta):  # label values of the maps; the regions: parse_regions
            _, names, region_problems = parse_regions(meta)
            for problem in region_problems:
                problems.meta(problem)
            return None if region_problems else names
        pairs = list(value.items())
        bad = [k for k, v in pairs if isinstance(v, bool) or not isinstance(v, int)]
    if bad:
        problems.meta(f"'labels': entries {bad} must map like {example}")
        return None
    labels: dict[int, str] = {}
    for name, v in pairs:
        if v in labels:
            problems.meta(f"'labels': {labels[v]!r} and {name!r} share the value {v}")
            return None
        labels[v] = name
    values = sorted(labels)
    if 0 not in labels:
        problems.meta(f"'labels' has no background (value 0): {values}")
        return None
    if values != list(range(len(values))):
        problems.meta(f"label values must be consecutive 0..{len(values) - 1}, got {values}")
        return None
    if values[-1] > MAX_LABEL_VALUE:
        problems.meta(
            f"{len(values)} labels (0..{values[-1]}): at most {MAX_LABEL_VALUE + 1} are supported "
            f"(values 0..{MAX_LABEL_VALUE}, stored as 8 bits)"
        )
        return None
    ignore_problem = ignore_label_problem(labels)  # sparse annotation: autoseg.data.ignore
    if ignore_problem is not None:
        problems.meta(f"'labels': {ignore_problem}")
        return None
    return {v: labels[v] for v in values}


def nnunet_file_ending(meta: dict[str, Any], problems: DatasetProblems) -> str | None:
    """nnU-Net v2's ``file_ending``, lower case; None (and a problem) when not an image ending."""
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or ending.lower() not in IMAGE_ENDINGS:
        what = "missing key 'file_ending'" if ending is None else f"'file_ending' {ending!r}"
        problems.meta(f"{what}: must be one of {', '.join(IMAGE_ENDINGS)}")
        return None
    return ending.lower()
