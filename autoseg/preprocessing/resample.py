"""Resampling volumes to a new voxel grid: images, label maps and class probabilities.

A volume of ``n`` voxels along an axis covering ``n * spacing`` mm becomes ``m`` voxels at the
target spacing, with voxel edges aligned (scikit-image's ``resize`` convention, scipy's
``grid_mode=True``; borders repeat the edge voxel, as nnU-Net's ``mode="edge"``).

Spline interpolation on a regular grid is separable, so resampling is done one axis at a time.
Along one axis it is a linear map ``(n,) -> (m,)``; its ``(m, n)`` matrix is obtained by letting
``scipy.ndimage.zoom`` resample the unit impulses (the columns of an identity matrix), and is
then applied to the whole volume as one matrix product (sparse for orders 0 and 1). The result
equals ``scipy.ndimage.zoom`` on the full volume (spline prefilter included) to float32
precision, is several times faster than ``zoom`` (order 3 in 3D is 64 taps per voxel, here 3
passes) and allows a different order per axis, which the anisotropic rule needs (order 0 along
the thick axis). An axis whose size does not change is left alone:
with aligned voxel edges that resampling is exactly the identity.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
from scipy import ndimage, sparse
from threadpoolctl import ThreadpoolController


def target_shape(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float]
) -> tuple[int, ...]:
    """Shape after resampling: ``round(shape * spacing / target_spacing)``, at least 1 per axis."""
    return tuple(
        max(1, int(round(n * s / t)))
        for n, s, t in zip(shape, spacing, target_spacing, strict=True)
    )


def axis_orders(ndim: int, order: int, anisotropic_axis: int | None) -> tuple[int, ...]:
    """Interpolation order per axis: ``order`` everywhere, 0 along the thick axis if any."""
    return tuple(0 if axis == anisotropic_axis else order for axis in range(ndim))


@functools.lru_cache(maxsize=64)
def _axis_matrix(n: int, m: int, order: int) -> np.ndarray | sparse.csr_array:
    """``(m, n)`` float32 matrix resampling ``n`` samples to ``m`` with spline ``order``.

    Orders 0 and 1 give at most 2 nonzeros per row and are returned as a sparse matrix; the
    cubic spline's prefilter makes every weight nonzero, so that matrix stays dense (BLAS).
    """
    impulses = np.eye(n, dtype=np.float64)
    weights = ndimage.zoom(
        impulses, (m / n, 1.0), order=order, mode="nearest", grid_mode=True, prefilter=order > 1
    )
    if weights.shape != (m, n):  # zoom rounds n * (m / n); never expected to miss
        raise RuntimeError(f"resampling matrix {weights.shape} != {(m, n)}")
    weights = weights.astype(np.float32)
    if order <= 1:
        return sparse.csr_array(weights)
    weights.setflags(write=False)
    return weights


#: BLAS is held to one thread while resampling: a multi-threaded dense product splits its sums
#: differently per thread count, so the same case would give other bytes on another machine or
#: with another ``--workers`` (processes, not BLAS threads, are the parallelism of preprocessing).
_BLAS = ThreadpoolController()


#: Voxels per block of ``_resample_axis``: the float32 copy it makes of its input is this big
#: (16 MB), not as big as the volume.
BLOCK_VOXELS = 1 << 22


def _resample_axis(array: np.ndarray, axis: int, m: int, order: int) -> np.ndarray:
    """Resample ``array`` along ``axis`` to ``m`` samples; float32, maybe a strided view.

    The work goes in blocks along the next axis, so the input is never copied whole (as
    float32, transposed) besides the output.
    """
    with _BLAS.limit(limits=1, user_api="blas"):
        return _resample_axis_blocks(array, axis, m, order)


def _resample_axis_blocks(array: np.ndarray, axis: int, m: int, order: int) -> np.ndarray:
    n = array.shape[axis]
    front = np.moveaxis(array, axis, 0)  # (n, *rest)
    matrix = _axis_matrix(n, m, order)
    out = np.empty((m, *front.shape[1:]), dtype=np.float32)
    if front.ndim == 1:
        out[:] = matrix @ np.asarray(front, dtype=np.float32)
        return out
    per_row = max(1, front[:, 0].size)
    step = max(1, BLOCK_VOXELS // per_row)
    for start in range(0, front.shape[1], step):
        block = np.ascontiguousarray(front[:, start : start + step], dtype=np.float32)
        product = matrix @ block.reshape(n, -1)  # (m, n) @ (n, block)
        out[:, start : start + step] = product.reshape(m, *block.shape[1:])
        del block, product
    return np.moveaxis(out, 0, axis)


def resample(array: np.ndarray, new_shape: Sequence[int], orders: Sequence[int]) -> np.ndarray:
    """Resample one spatial volume to ``new_shape`` with a spline order per axis.

    Args:
        array: ``(Z, Y, X)`` volume (any real dtype; computed in float32).
        new_shape: spatial shape to produce.
        orders: interpolation order per axis (0 nearest, 1 linear, 3 cubic).

    Returns:
        float32 array of ``new_shape``; ``array`` itself (as float32) when no axis changes.
    """
    out = array
    changes = [
        (m / n, axis)
        for axis, (n, m) in enumerate(zip(out.shape, new_shape, strict=True))
        if n != m
    ]
    # shrink first (later products run on fewer voxels); on ties axis 0 last (no final copy)
    for _, axis in sorted(changes, key=lambda c: (c[0], -c[1])):
        out = _resample_axis(out, axis, int(new_shape[axis]), int(orders[axis]))
    return np.ascontiguousarray(out, dtype=np.float32)


def resample_image(
    image: np.ndarray, new_shape: Sequence[int], order: int = 3, anisotropic_axis: int | None = None
) -> np.ndarray:
    """Resample every channel of a ``(C, Z, Y, X)`` image; float32 ``(C, *new_shape)``."""
    orders = axis_orders(image.ndim - 1, order, anisotropic_axis)
    if tuple(image.shape[1:]) == tuple(new_shape):
        return np.asarray(image, dtype=np.float32)
    out = np.empty((image.shape[0], *new_shape), dtype=np.float32)
    for c in range(image.shape[0]):
        out[c] = resample(image[c], new_shape, orders)
    return out


def resample_labels(
    labels: np.ndarray,
    new_shape: Sequence[int],
    order: int = 1,
    anisotropic_axis: int | None = None,
    dtype: np.dtype | type = np.int8,
) -> np.ndarray:
    """Resample a ``(Z, Y, X)`` label map without ever interpolating label values.

    Each present label becomes a float map (1 inside, 0 outside) resampled with ``order``
    (0 along the thick axis); every output voxel takes the label with the largest value (ties go
    to the smaller label). The output holds only labels of the input.

    Returns:
        ``new_shape`` array of ``dtype``.
    """
    if tuple(labels.shape) == tuple(new_shape):
        return labels.astype(dtype, copy=False)
    orders = axis_orders(labels.ndim, order, anisotropic_axis)
    values = np.unique(labels)
    out = np.full(new_shape, values[0], dtype=dtype)
    if len(values) == 1:
        return out
    best = resample(labels == values[0], new_shape, orders)
    for value in values[1:]:
        score = resample(labels == value, new_shape, orders)
        better = score > best
        out[better] = value
        np.maximum(best, score, out=best)
        del score, better
    return out


def resample_probabilities(
    probs: np.ndarray, new_shape: Sequence[int], anisotropic_axis: int | None = None
) -> np.ndarray:
    """Resample class probabilities ``(K, Z, Y, X)`` with order 1 (0 along the thick axis)."""
    return resample_image(probs, new_shape, order=1, anisotropic_axis=anisotropic_axis)
