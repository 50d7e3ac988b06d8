"""Preprocessed cases on disk: their properties, where they are, saving and loading them.

Per case, in ``<home>/<dataset>/preprocessed/<data_identifier>/`` (``preprocessed_folder``):

- ``<case>.img.npy``  float32 ``(C, Z, Y, X)``: cropped, resampled, normalised image;
- ``<case>.seg.npy``  uint8 ``(1, Z, Y, X)``: its labels on the same grid (values 0..255);
  (``.img.b2nd`` / ``.seg.b2nd`` with ``storage="blosc2"``: ``autoseg.preprocessing.storage``);
- ``<case>.fg.npz``   label -> int32 ``(N, 3)`` coordinates of up to 10,000 voxels of it;
- ``<case>.json``     ``CaseProperties``, written last: its presence means the case is complete;
- ``preprocessing.complete``: written after the last case (``autoseg.preprocessing.cache``).

This module owns that layout (``CaseProperties``, ``PreprocessedCase``, ``plans_key`` of the
settings the data depends on, ``save_case``, ``load_case``). Making one case is
``autoseg.preprocessing.preprocess``; a whole dataset ``autoseg.preprocessing.dataset_run``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.data.plans import Configuration
from autoseg.errors import AutosegError
from autoseg.preprocessing.storage import (
    ENDINGS,
    STORAGES,
    check_storage,
    load_array,
    load_locations,
    save_array,
    save_locations,
)
from autoseg.serial import dump_json, load_json, to_dict

FORMAT_VERSION = 2  # bump when the stored data changes for the same settings


@dataclass(frozen=True)
class CaseProperties:
    """How a preprocessed case was made from its files, enough to map predictions back.

    Attributes:
        case_id: the case's identifier.
        original_shape: spatial shape (Z, Y, X) as stored in the file.
        original_spacing: the file's spacing (Z, Y, X) in mm.
        crop_bbox: per axis ``(start, stop)`` of the nonzero crop in the original array.
        shape_after_crop: spatial shape of the crop.
        target_spacing: spacing the crop was resampled to.
        shape_after_resample: spatial shape of the stored arrays.
        plans_key: ``plans_key(config)`` of the settings it was made with.
        anisotropic_axis: axis resampled with order 0 (thick slices), or None.
        source_key: ``cache.case_key`` of the files it was made from ("" when not from files).
        storage: how its arrays are stored (``autoseg.preprocessing.storage.STORAGES``).
    """

    case_id: str
    original_shape: tuple[int, ...]
    original_spacing: tuple[float, ...]
    crop_bbox: tuple[tuple[int, int], ...]
    shape_after_crop: tuple[int, ...]
    target_spacing: tuple[float, ...]
    shape_after_resample: tuple[int, ...]
    plans_key: str
    anisotropic_axis: int | None = None
    source_key: str = ""
    storage: str = "npy"


@dataclass(frozen=True, eq=False)
class PreprocessedCase:
    """A stored case: ``image`` (C, Z, Y, X) float32, ``seg`` (1, Z, Y, X) uint8 or None,
    ``class_locations`` label -> int32 (N, 3) voxel coordinates, and its properties."""

    image: np.ndarray
    seg: np.ndarray | None
    class_locations: dict[int, np.ndarray]
    properties: CaseProperties


def plans_key(config: Configuration) -> str:
    """Short stable hash of every setting the preprocessed data depends on."""
    settings = {
        "format": FORMAT_VERSION,
        "spacing": [float(s) for s in config.spacing],
        "normalization": to_dict(config.normalization),
        "anisotropic_axis": config.anisotropic_axis,
    }
    text = json.dumps(settings, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def preprocessed_folder(home_dataset_dir: Path, config: Configuration) -> Path:
    """``<home>/<dataset>/preprocessed/<data_identifier>`` (the name if no identifier is set)."""
    return Path(home_dataset_dir) / "preprocessed" / (config.data_identifier or config.name)


def case_paths(folder: Path, case_id: str, storage: str = "npy") -> dict[str, Path]:
    """The files of a case in ``storage``: ``img``, ``seg``, ``fg`` and ``json``."""
    end = ENDINGS[storage]
    names = {"img": f".img{end}", "seg": f".seg{end}", "fg": ".fg.npz", "json": ".json"}
    return {k: folder / f"{case_id}{v}" for k, v in names.items()}


def case_array_paths(folder: Path, case_id: str) -> list[Path]:
    """The image and label paths of a case in every storage format."""
    return [case_paths(folder, case_id, s)[k] for s in STORAGES for k in ("img", "seg")]


def save_case(folder: Path, case: PreprocessedCase, storage: str = "npy") -> None:
    """Store a case in ``storage`` (each file through a temp name; the properties last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    case_id = case.properties.case_id
    paths = case_paths(folder, case_id, storage)
    paths["json"].unlink(missing_ok=True)  # an incomplete case must not look complete
    for stale in set(case_array_paths(folder, case_id)) - {paths["img"], paths["seg"]}:
        stale.unlink(missing_ok=True)  # arrays of the other format
    save_array(paths["img"], case.image.astype(np.float32, copy=False), storage)
    if case.seg is not None:
        save_array(paths["seg"], case.seg.astype(np.uint8, copy=False), storage)
    else:
        paths["seg"].unlink(missing_ok=True)
    save_locations(paths["fg"], case.class_locations)
    dump_json(dataclasses.replace(case.properties, storage=storage), paths["json"])


def load_case(folder: Path, case_id: str, mmap: bool = True) -> PreprocessedCase:
    """Read a stored case in the format its properties name; arrays are read lazily when
    ``mmap`` (a read-only memory map for npy, a lazily decompressed array for blosc2).

    Raises:
        AutosegError: the case is not (completely) preprocessed in ``folder``, or its format
            cannot be read here.
    """
    json_path = case_paths(Path(folder), case_id)["json"]
    if not json_path.is_file():
        raise AutosegError(f"{json_path}: case '{case_id}' is not preprocessed")
    try:
        props = load_json(CaseProperties, json_path)
        paths = case_paths(Path(folder), case_id, check_storage(props.storage))
        image = load_array(paths["img"], props.storage, mmap)
        seg = load_array(paths["seg"], props.storage, mmap) if paths["seg"].is_file() else None
        locations = load_locations(paths["fg"])
    except (OSError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise AutosegError(
            f"{folder}: preprocessed case '{case_id}' is damaged ({exc}); "
            "`autoseg plan` on the dataset again redoes it"
        ) from exc
    return PreprocessedCase(image=image, seg=seg, class_locations=locations, properties=props)
