"""Preprocessing: crop to the nonzero region, resample to the target spacing, normalise.

One case is made ready for training by ``preprocess_image``; ``run_preprocessing`` does it for a
whole dataset and stores, per case, in ``<home>/<dataset>/preprocessed/<data_identifier>/``:

- ``<case>.img.npy``  float32 ``(C, Z, Y, X)``: cropped, resampled, normalised image;
- ``<case>.seg.npy``  uint8 ``(1, Z, Y, X)``: its labels on the same grid (values 0..255);
  (``.img.b2nd`` / ``.seg.b2nd`` with ``storage="blosc2"``: ``autoseg.preprocessing.storage``);
- ``<case>.fg.npz``   label -> int32 ``(N, 3)`` coordinates of up to 10,000 voxels of it;
- ``<case>.json``     ``CaseProperties``, written last: its presence means the case is complete;
- ``preprocessing.complete``: written after the last case (``autoseg.preprocessing.cache``).

A stored case is reused only when its ``source_key`` (the files' content, the settings and
the autoseg version; see ``autoseg.preprocessing.cache``) is still the same.

Preprocessing depends only on the spacing, the normalisation and the anisotropic axis, so
configurations sharing a ``data_identifier`` (``2d`` and ``3d_fullres``) share the data.
``restore_probabilities`` undoes crop and resampling for predicted class probabilities.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.data.dataset import MAX_LABEL_VALUE, Case, DatasetSpec
from autoseg.data.io import Image, read_array, read_image
from autoseg.data.plans import Configuration, Plans
from autoseg.errors import AutosegError, DatasetError, Problem
from autoseg.memory import require_memory
from autoseg.preprocessing import cache
from autoseg.preprocessing.normalize import normalize_channel
from autoseg.preprocessing.resample import (
    resample_image,
    resample_labels,
    resample_probabilities,
    target_shape,
)
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
from autoseg.terminal import Heartbeat

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the stored data changes for the same settings
MAX_LOCATIONS = 10_000  # stored foreground coordinates per label and case
IMAGE_ORDER = 3
LABEL_ORDER = 1
MAX_LABEL = MAX_LABEL_VALUE  # labels are stored as uint8


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


def bounding_box(mask: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Per axis ``(start, stop)`` of the True voxels; the whole array when none is True.

    Filling holes never changes this box (a hole is enclosed, so lies inside it), hence the crop
    is computed from the raw nonzero voxels.
    """
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if len(hits) == 0:
            return tuple((0, int(n)) for n in mask.shape)
        box.append((int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def preprocess_image(
    image: Image, config: Configuration, label: np.ndarray | None = None, case_id: str = ""
) -> tuple[np.ndarray, np.ndarray | None, CaseProperties]:
    """Crop to nonzero, resample to ``config.spacing`` and normalise one case.

    Args:
        image: float32 ``(C, Z, Y, X)`` image with its geometry.
        config: the configuration (spacing, normalization, anisotropic_axis are used).
        label: optional integer ``(Z, Y, X)`` label map on the image's grid, values 0..255.
        case_id: recorded in the properties.

    Returns:
        ``(image (C, Z, Y, X) float32, seg (1, Z, Y, X) uint8 or None, properties)``.

    Raises:
        AutosegError: channel count or label shape do not fit, labels outside 0..255, or the
            resampled case would not fit in memory (checked before resampling).
    """
    array = image.array
    if len(config.normalization) != array.shape[0]:
        raise AutosegError(
            f"case {case_id}: {array.shape[0]} channel(s), but configuration '{config.name}' "
            f"normalises {len(config.normalization)}"
        )
    if label is not None and tuple(label.shape) != tuple(array.shape[1:]):
        raise AutosegError(f"case {case_id}: label shape {label.shape} != image {array.shape[1:]}")
    if label is not None and label.size and (label.min() < 0 or label.max() > MAX_LABEL):
        raise AutosegError(f"case {case_id}: label values must lie in 0..{MAX_LABEL}")
    needs_mask = any(n.scheme == "zscore" and n.use_nonzero_mask for n in config.normalization)

    raw_mask = np.any(array != 0, axis=0)
    bbox = bounding_box(raw_mask)
    crop = tuple(slice(a, b) for a, b in bbox)
    mask = ndimage.binary_fill_holes(raw_mask[crop]) if needs_mask else None
    del raw_mask
    shape_after_crop = tuple(b - a for a, b in bbox)
    new_shape = target_shape(shape_after_crop, image.geometry.spacing, config.spacing)
    axis = config.anisotropic_axis
    # the resampled image, its float scratch and the label maps: refuse before allocating
    voxels = int(np.prod(new_shape, dtype=np.float64))
    require_memory(
        voxels * (8 * array.shape[0] + 9),
        f"resampling {'x'.join(map(str, shape_after_crop))} voxels at "
        f"{tuple(float(f'{s:.6g}') for s in image.geometry.spacing)} mm to "
        f"{'x'.join(map(str, new_shape))} = {voxels:,} voxels at {tuple(config.spacing)} mm",
        f"case {case_id}" if case_id else "image",
    )

    seg = None
    if label is not None:  # first: the peak of its resampling does not add to the image's copy
        seg = resample_labels(label[crop], new_shape, LABEL_ORDER, axis, dtype=np.uint8)
        seg = np.array(seg[None], dtype=np.uint8)  # own contiguous copy, never the caller's
    if new_shape == shape_after_crop:  # e.g. 1 mm isotropic data at 1 mm: nothing to resample
        data = np.array(array[(slice(None), *crop)], dtype=np.float32, order="C")
    else:
        data = resample_image(array[(slice(None), *crop)], new_shape, IMAGE_ORDER, axis)
    if mask is not None:
        mask = resample_labels(mask, new_shape, LABEL_ORDER, axis, dtype=bool)
    for c, norm in enumerate(config.normalization):
        normalize_channel(data[c], norm, mask)

    props = CaseProperties(
        case_id=case_id,
        original_shape=tuple(int(s) for s in array.shape[1:]),
        original_spacing=tuple(float(s) for s in image.geometry.spacing),
        crop_bbox=bbox,
        shape_after_crop=shape_after_crop,
        target_spacing=tuple(float(s) for s in config.spacing),
        shape_after_resample=tuple(int(s) for s in new_shape),
        plans_key=plans_key(config),
        anisotropic_axis=axis,
    )
    return data, seg, props


def restore_probabilities(probs: np.ndarray, props: CaseProperties) -> np.ndarray:
    """Map class probabilities from the preprocessed grid back to the original image.

    Args:
        probs: float32 ``(K, *shape_after_resample)``, channel 0 the background.
        props: the case's properties.

    Returns:
        float32 ``(K, *original_shape)``: resampled with order 1 (0 along the thick axis) to the
        crop's shape and pasted at ``crop_bbox``; outside the crop background is 1, others 0.
    """
    if tuple(probs.shape[1:]) != tuple(props.shape_after_resample):
        raise ValueError(f"probabilities {probs.shape} do not fit {props.shape_after_resample}")
    out = np.zeros((probs.shape[0], *props.original_shape), dtype=np.float32)
    out[0] = 1.0
    crop = tuple(slice(a, b) for a, b in props.crop_bbox)
    for k in range(probs.shape[0]):
        out[(k, *crop)] = resample_probabilities(
            probs[k : k + 1], props.shape_after_crop, props.anisotropic_axis
        )[0]
    return out


def class_locations(
    seg: np.ndarray, case_id: str, max_per_label: int = MAX_LOCATIONS
) -> dict[int, np.ndarray]:
    """Coordinates of up to ``max_per_label`` voxels of each foreground label present.

    The sample is drawn with a seed derived from ``case_id`` (sha256), so it is reproducible.

    Args:
        seg: ``(Z, Y, X)`` label map.
        case_id: seeds the sampling.

    Returns:
        label -> int32 ``(N, 3)`` voxel coordinates (Z, Y, X), sorted in memory order.
    """
    digest = hashlib.sha256(case_id.encode("utf-8")).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    flat = seg.reshape(-1)
    locations = {}
    for value in np.unique(flat):
        if value == 0:
            continue
        index = np.flatnonzero(flat == value)
        if len(index) > max_per_label:
            index = np.sort(index[rng.choice(len(index), max_per_label, replace=False)])
        coords = np.stack(np.unravel_index(index, seg.shape), axis=1)
        locations[int(value)] = coords.astype(np.int32)
    return locations


def _paths(folder: Path, case_id: str, storage: str = "npy") -> dict[str, Path]:
    end = ENDINGS[storage]
    names = {"img": f".img{end}", "seg": f".seg{end}", "fg": ".fg.npz", "json": ".json"}
    return {k: folder / f"{case_id}{v}" for k, v in names.items()}


def _array_paths(folder: Path, case_id: str) -> list[Path]:
    """The image and label paths of a case in every storage format."""
    return [_paths(folder, case_id, s)[k] for s in STORAGES for k in ("img", "seg")]


def save_case(folder: Path, case: PreprocessedCase, storage: str = "npy") -> None:
    """Store a case in ``storage`` (each file through a temp name; the properties last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    case_id = case.properties.case_id
    paths = _paths(folder, case_id, storage)
    paths["json"].unlink(missing_ok=True)  # an incomplete case must not look complete
    for stale in set(_array_paths(folder, case_id)) - {paths["img"], paths["seg"]}:
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
    json_path = _paths(Path(folder), case_id)["json"]
    if not json_path.is_file():
        raise AutosegError(f"{json_path}: case '{case_id}' is not preprocessed")
    try:
        props = load_json(CaseProperties, json_path)
        paths = _paths(Path(folder), case_id, check_storage(props.storage))
        image = load_array(paths["img"], props.storage, mmap)
        seg = load_array(paths["seg"], props.storage, mmap) if paths["seg"].is_file() else None
        locations = load_locations(paths["fg"])
    except (OSError, EOFError, ValueError, TypeError, KeyError, zipfile.BadZipFile) as exc:
        raise AutosegError(
            f"{folder}: preprocessed case '{case_id}' is damaged ({exc}); "
            "`autoseg plan` on the dataset again redoes it"
        ) from exc
    return PreprocessedCase(image=image, seg=seg, class_locations=locations, properties=props)


def _is_done(folder: Path, case: Case, key: str, source_key: str, storage: str) -> bool:
    """Whether the case is stored completely, from the same files (content) with the settings
    ``key``, in ``storage``, and its files are readable."""
    try:
        stored = load_case(folder, case.case_id, mmap=True)  # mmap checks the sizes, reads little
    except AutosegError:
        return False
    has_seg = stored.seg is not None or case.label is None
    props = stored.properties
    same = props.plans_key == key and props.source_key == source_key
    return same and props.storage == storage and has_seg


def _read_label(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    data, geometry = read_array(path)
    if tuple(geometry.shape) != tuple(shape) or data.ndim != 3:
        raise AutosegError(f"{path}: label shape {data.shape} does not match the image {shape}")
    if np.issubdtype(data.dtype, np.floating):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise AutosegError(f"{path}: label map holds non-integer values")
        data = rounded
    if data.size and (data.min() < 0 or data.max() > MAX_LABEL):
        raise AutosegError(f"{path}: label values must lie in 0..{MAX_LABEL}")
    return data.astype(np.uint8)


def preprocess_case(
    case: Case, config: Configuration, folder: Path, source_key: str = "", storage: str = "npy"
) -> str:
    """Read, preprocess and store one case in ``storage``; returns its id (the worker task).

    ``source_key`` (``cache.case_key``) is stored in its properties.

    Raises:
        AutosegError: a file cannot be read or does not fit (the message names it).
    """
    image = read_image(case.images)
    label = _read_label(case.label, image.geometry.shape) if case.label is not None else None
    try:
        data, seg, props = preprocess_image(image, config, label, case.case_id)
    except AutosegError as exc:
        raise AutosegError(f"{case.images[0]}: {exc}") from exc
    del image, label
    props = dataclasses.replace(props, source_key=source_key)
    locations = class_locations(seg[0], case.case_id) if seg is not None else {}
    save_case(folder, PreprocessedCase(data, seg, locations, props), storage)
    return case.case_id


def _case_size(case: Case) -> int:
    try:
        return sum(p.stat().st_size for p in case.images)
    except OSError:
        return 0


def run_preprocessing(
    spec: DatasetSpec,
    plans: Plans,
    config_names: Iterable[str],
    home_dataset_dir: Path,
    workers: int,
    sources: cache.DatasetSources | None = None,
    storage: str = "npy",
) -> None:
    """Preprocess every case of ``spec`` for each distinct data identifier of ``config_names``.

    Idempotent: a case stored from the same files (content) with the current settings is kept,
    so a second run (or one after an interrupted run) only does what is missing; a case whose
    files changed is redone, and stored cases that are no longer in the dataset are removed.
    Each folder gets its completeness marker after its last case. ``workers > 1`` runs cases in
    that many spawned processes (a calling script needs the ``__main__`` guard); each task holds
    one case in memory and returns only its id.

    Args:
        sources: ``cache.dataset_sources(spec)`` when the caller has it (else computed here).
        storage: ``npy`` or ``blosc2`` (``autoseg.preprocessing.storage``); a case stored in the
        other
            format is redone.

    Raises:
        AutosegError: unknown configuration or storage, or cases that cannot be read (all of
            them listed).
    """
    check_storage(storage)
    groups: dict[Path, Configuration] = {}
    for name in config_names:
        config = plans.configuration(name)
        folder = preprocessed_folder(home_dataset_dir, config)
        known = groups.setdefault(folder, config)
        if plans_key(known) != plans_key(config):
            raise AutosegError(
                f"configurations '{known.name}' and '{config.name}' share the data identifier "
                f"'{folder.name}' but preprocess differently"
            )
    if sources is None:
        sources = cache.dataset_sources(spec, workers)
    cache.invalidate_markers(
        home_dataset_dir, {f: plans_key(c) for f, c in groups.items()}, sources
    )
    problems: list[Problem] = []
    for folder, config in groups.items():
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*.part"):
            leftover.unlink(missing_ok=True)
        if _remove_other_cases(folder, {c.case_id for c in spec.cases}):
            cache.remove_marker(folder)
        key = plans_key(config)
        keys = {c.case_id: cache.case_key(sources.keys[c.case_id], key) for c in spec.cases}
        todo = [c for c in spec.cases if not _is_done(folder, c, key, keys[c.case_id], storage)]
        todo.sort(key=_case_size, reverse=True)  # big cases first balances the workers
        reused = len(spec.cases) - len(todo)
        if todo:
            cache.remove_marker(folder)
        with Heartbeat(title="plan") as progress:
            task = progress.add_task(f"preprocess {folder.name}", total=len(todo), unit="case")
            if reused:
                logger.info("%s: %d case(s) already preprocessed", folder.name, reused)
            failed = len(problems)
            for case, error in _run_tasks(todo, config, folder, workers, keys, storage):
                if error is not None:
                    problems.append(Problem(f"case {case.case_id}", str(error)))
                progress.advance(task)
        if len(problems) == failed:  # every case of the folder is stored: mark it, last
            cache.write_marker(folder, key, sources)
        took = time.perf_counter() - start
        logger.info("%s: %d case(s) done, %d reused, %.1f s", folder, len(todo), reused, took)
    if problems:
        raise DatasetError(problems, what="preprocessing")


def _remove_other_cases(folder: Path, keep: set[str]) -> bool:
    """Remove the stored cases whose ids are not in ``keep`` (cases since removed); returns
    whether there were any."""
    removed = False
    for props in folder.glob("*.json"):
        case_id = props.name[: -len(".json")]
        if case_id not in keep:
            props.unlink(missing_ok=True)  # first: the case no longer looks complete
            for path in [*_paths(folder, case_id).values(), *_array_paths(folder, case_id)]:
                path.unlink(missing_ok=True)
            removed = True
    return removed


def _run_tasks(
    todo: list[Case],
    config: Configuration,
    folder: Path,
    workers: int,
    keys: dict[str, str],
    storage: str,
):
    """Yield ``(case, error or None)`` as cases finish, in-process or in a process pool."""
    if workers <= 1 or len(todo) <= 1:
        for case in todo:
            try:
                preprocess_case(case, config, folder, keys[case.case_id], storage)
                yield case, None
            except AutosegError as exc:
                yield case, exc
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # never fork a (possibly threaded) parent
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context)
    try:
        futures = {
            pool.submit(preprocess_case, case, config, folder, keys[case.case_id], storage): case
            for case in todo
        }
        for future in as_completed(futures):
            try:
                future.result()
                yield futures[future], None
            except AutosegError as exc:
                yield futures[future], exc
    finally:  # on an error or Ctrl-C, queued cases are dropped; running ones finish atomically
        pool.shutdown(wait=True, cancel_futures=True)
