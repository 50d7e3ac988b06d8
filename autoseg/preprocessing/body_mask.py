"""The body of a CT image: where prediction has something to look at.

Cropping to the nonzero region (``preprocess_image``) removes nothing from CT: air is -1000 HU,
not 0, and it is often a third to a half of an abdominal CT volume. ``body_mask`` finds the
body on the raw HU values, before normalisation clips them (the clip floor is usually above
fat): voxels above ``BODY_THRESHOLD_HU`` in any CT-normalised channel, on a coarse grid of
about ``COARSE_MM`` per voxel; connected components of at least ``KEEP_FRACTION`` of the
largest one (the body, or both legs; a patient table apart from the body goes); holes filled
in 3D and slice by slice along every axis (lungs and bowel gas are inside the body); dilated
by ``BODY_MARGIN_MM`` plus the coarse grid's own uncertainty. The result is mapped onto the
network grid of the preprocessed image, where the sliding window skips every tile that holds
no body voxel (``autoseg.inference.tiles``: ``keep_positions``, ``run_corners``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from autoseg.data.plans import Configuration

__all__ = [
    "BODY_MARGIN_MM",
    "BODY_THRESHOLD_HU",
    "body_mask",
    "ct_channels",
]

#: HU above which a voxel is body (air -1000, lung about -850, fat about -100)
BODY_THRESHOLD_HU = -500.0
#: dilation of the body in mm: tiles this close to the body still run
BODY_MARGIN_MM = 10.0
#: edge of the coarse grid the body is found on, in mm (the mask is a tile filter, not a label)
COARSE_MM = 4.0
#: connected components kept, as a fraction of the largest one's size
KEEP_FRACTION = 0.1


def ct_channels(config: Configuration) -> tuple[int, ...]:
    """The input channels of ``config`` normalised as CT (HU values)."""
    return tuple(c for c, norm in enumerate(config.normalization) if norm.scheme == "ct")


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D, then in every 2D slice along every axis (a lung open to the airway
    in 3D is closed in its axial slices)."""
    mask = ndimage.binary_fill_holes(mask)
    for axis in range(mask.ndim):
        moved = np.moveaxis(mask, axis, 0)  # a view: filled slices are written back
        for i in range(moved.shape[0]):
            if moved[i].any():
                moved[i] = ndimage.binary_fill_holes(moved[i])
    return mask


def body_mask(
    array: np.ndarray,
    spacing: Sequence[float],
    channels: Sequence[int],
    crop_bbox: Sequence[tuple[int, int]],
    out_shape: Sequence[int],
    *,
    threshold: float = BODY_THRESHOLD_HU,
    margin_mm: float = BODY_MARGIN_MM,
) -> np.ndarray:
    """The dilated body of a raw CT image, on the preprocessed (network) grid.

    Args:
        array: the raw image ``(C, Z, Y, X)`` in HU, as read (before cropping).
        spacing: its voxel size (Z, Y, X) in mm.
        channels: the CT channels to threshold (a voxel is body if any of them is above).
        crop_bbox: per axis ``(start, stop)`` of the nonzero crop (``CaseProperties``).
        out_shape: the preprocessed image's spatial shape (the crop resampled).
        threshold: HU above which a voxel is body.
        margin_mm: dilation of the body in mm.

    Returns:
        bool array of ``out_shape``: True on and near the body; all False when no voxel is
        above ``threshold``.
    """
    if not channels:
        raise ValueError("body_mask needs at least one CT channel")
    strides = [max(1, int(COARSE_MM // s)) if s > 0 else 1 for s in spacing]
    coarse_window = tuple(slice(a, b, st) for (a, b), st in zip(crop_bbox, strides, strict=True))
    coarse = array[(channels[0], *coarse_window)] > threshold
    for c in channels[1:]:
        coarse |= array[(c, *coarse_window)] > threshold
    out = tuple(int(n) for n in out_shape)
    if not coarse.any():
        return np.zeros(out, dtype=bool)
    labelled, count = ndimage.label(coarse)
    sizes = np.bincount(labelled.ravel())[1:]
    keep = np.flatnonzero(sizes >= KEEP_FRACTION * sizes.max()) + 1
    coarse = _fill_holes(np.isin(labelled, keep))
    del labelled
    coarse_mm = [st * s for st, s in zip(strides, spacing, strict=True)]
    # a body voxel lies up to half a coarse voxel from its sample, and the mapping below rounds
    # by up to another half: add the coarse voxel's diagonal to the margin
    reach = margin_mm + math.sqrt(sum(m * m for m in coarse_mm))
    distance = ndimage.distance_transform_edt(~coarse, sampling=coarse_mm)
    coarse = distance <= reach
    del distance
    index = []
    for (a, b), st, n_out, n_coarse in zip(crop_bbox, strides, out, coarse.shape, strict=True):
        centres = (np.arange(n_out) + 0.5) * ((b - a) / n_out) - 0.5  # crop voxel coordinates
        index.append(np.clip(np.rint(centres / st), 0, n_coarse - 1).astype(np.intp))
    return coarse[np.ix_(*index)]
