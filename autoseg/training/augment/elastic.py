"""Elastic deformation, the U-Net paper's key augmentation for microscopy (CPU path).

A smooth random displacement field: standard-normal displacements on a coarse grid of
``GRID_POINTS`` per axis (3x3 in 2D, as in the paper), scaled to ``DISPLACEMENT_STD`` voxels
(at most 1/8 of the patch edge along each axis, so a thin 3D patch is not torn apart) and
interpolated to every voxel with cubic splines. Images are resampled with cubic splines
(order 3), label maps and weight maps with nearest neighbour (order 0), so no label value is
invented; at the border the patch is mirrored.

Off by default, as in nnU-Net; on with ``autoseg train --augment elastic`` or a planner that
sets it (``Configuration.augmentations``). Each sample is deformed with probability
``P_ELASTIC``, after the rotation/scaling step. ``autoseg.training.augment.elastic_device`` does
the same on the
training device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy import ndimage

GRID_POINTS = 3
DISPLACEMENT_STD = 10.0
P_ELASTIC = 0.5
ELASTIC = "elastic"
AUGMENTATIONS = (ELASTIC,)  # the optional augmentations (``--augment``)


def displacement_stds(shape: Sequence[int], std: float = DISPLACEMENT_STD) -> np.ndarray:
    """Displacement std per axis: ``std``, at most 1/8 of the patch edge."""
    return np.array([min(std, s / 8) for s in shape], dtype=np.float64)


def displacement_field(
    coarse: np.ndarray, shape: Sequence[int], std: float = DISPLACEMENT_STD
) -> np.ndarray:
    """Dense displacement (voxels) from standard-normal values on the coarse grid.

    Args:
        coarse: ``(ndim, G, G[, G])`` standard-normal draws.
        shape: the patch, ``ndim`` values.
        std: displacement std in voxels (capped per axis by ``displacement_stds``).

    Returns:
        ``(ndim, *shape)`` float64: per axis, the displacement of every voxel.
    """
    stds = displacement_stds(shape, std)
    zoom = [s / g for s, g in zip(shape, coarse.shape[1:], strict=True)]
    return np.stack(
        [
            ndimage.zoom(coarse[a] * stds[a], zoom, order=3, mode="nearest", grid_mode=False)
            for a in range(len(shape))
        ]
    )


def warp(array: np.ndarray, field: np.ndarray, order: int) -> np.ndarray:
    """Resample every channel of ``array`` ``(C, *S)`` at ``identity + field``."""
    grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in array.shape[1:]], indexing="ij")
    coords = np.stack(grid) + field  # (ndim, *S)
    out = np.empty_like(array)
    for c in range(array.shape[0]):
        out[c] = ndimage.map_coordinates(
            array[c].astype(np.float64, copy=False), coords, order=order, mode="mirror"
        )
    return out


class ElasticTransform(AbstractTransform):
    """batchgenerators transform: elastic deformation of ``data`` and ``seg`` (every seg
    channel, nearest), per sample with probability ``p_per_sample``.

    Draws from numpy's global random state, like the other batchgenerators transforms (the
    loader swaps a per-loader state in).
    """

    def __init__(
        self,
        p_per_sample: float = P_ELASTIC,
        std: float = DISPLACEMENT_STD,
        grid_points: int = GRID_POINTS,
    ) -> None:
        self.p, self.std, self.points = p_per_sample, std, grid_points

    def __call__(self, **data_dict: np.ndarray) -> dict[str, np.ndarray]:
        data, seg = data_dict["data"], data_dict.get("seg")
        shape = data.shape[2:]
        for b in range(data.shape[0]):
            if np.random.uniform() >= self.p:
                continue
            coarse = np.random.normal(size=(len(shape), *([self.points] * len(shape))))
            field = displacement_field(coarse, shape, self.std)
            data[b] = warp(data[b], field, order=3)
            if seg is not None:
                seg[b] = warp(seg[b], field, order=0)
        return data_dict
