"""Preprocessing one case: crop to the nonzero region, resample to the target spacing, normalise.

``preprocess_image`` makes one case ready for training (and for prediction),
``restore_probabilities`` undoes crop and resampling for predicted class probabilities,
``class_locations`` samples the foreground voxels the training loader oversamples, and
``preprocess_case`` (the worker task) reads, preprocesses and stores one case of a dataset.

Preprocessing depends only on the spacing, the normalisation and the anisotropic axis, so
configurations sharing a ``data_identifier`` (``2d`` and ``3d_fullres``) share the data. How a
case is stored is ``autoseg.preprocessing.case_store``; a whole dataset (idempotent, in worker
processes) ``autoseg.preprocessing.dataset_run``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.data.dataset import Case
from autoseg.data.dataset_json import MAX_LABEL_VALUE
from autoseg.data.io import Image, read_array, read_image
from autoseg.data.plans import Configuration
from autoseg.errors import AutosegError
from autoseg.memory import require_memory
from autoseg.preprocessing.case_store import (
    CaseProperties,
    PreprocessedCase,
    plans_key,
    save_case,
)
from autoseg.preprocessing.normalize import normalize_channel
from autoseg.preprocessing.resample import (
    resample_image,
    resample_labels,
    resample_probabilities,
    target_shape,
)

MAX_LOCATIONS = 10_000  # stored foreground coordinates per label and case
IMAGE_ORDER = 3
LABEL_ORDER = 1


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
    if label is not None and label.size and (label.min() < 0 or label.max() > MAX_LABEL_VALUE):
        raise AutosegError(f"case {case_id}: label values must lie in 0..{MAX_LABEL_VALUE}")
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


def _read_label(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    data, geometry = read_array(path)
    if tuple(geometry.shape) != tuple(shape) or data.ndim != 3:
        raise AutosegError(f"{path}: label shape {data.shape} does not match the image {shape}")
    if np.issubdtype(data.dtype, np.floating):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise AutosegError(f"{path}: label map holds non-integer values")
        data = rounded
    if data.size and (data.min() < 0 or data.max() > MAX_LABEL_VALUE):
        raise AutosegError(f"{path}: label values must lie in 0..{MAX_LABEL_VALUE}")
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
