"""Cubic B-spline resampling in torch: the ``order=3`` interpolation batchgenerators uses.

torch has no cubic interpolation in 3D, and linear interpolation smooths: on the Hippocampus
training batches the device path's images came out measurably smoother than batchgenerators'
(docs/benchmarks.md, "Accuracy of the training paths"). These functions interpolate as
``scipy.ndimage.map_coordinates(order=3)`` does:

- ``spline_coefficients``: the cubic B-spline prefilter (the image becomes the coefficients of
  the spline that passes through it), as a separable FIR truncation of the exact recursive
  filter (pole ``sqrt(3) - 2``; 8 taps each side: errors of about 1e-4 of the signal), with
  mirrored edges;
- ``cubic_grid_sample``: the spline at arbitrary points of a ``grid_sample`` grid, computed as
  ``2^ndim`` linear fetches of the coefficients at shifted points (Sigg & Hadwiger, "Fast
  third-order texture filtering", GPU Gems 2, 2005), so it costs ``2^ndim`` ``grid_sample``
  calls plus the prefilter;
- ``cubic_resize``: ``skimage.transform.resize(order=3, mode="edge", anti_aliasing=False)``
  (batchgenerators' upsampling in the low-resolution simulation) as one matrix per axis.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

_POLE = math.sqrt(3.0) - 2.0
_TAPS = 8  # |pole|^8 < 3e-5 per tap pair dropped
_FIR = [math.sqrt(3.0) * _POLE**k for k in range(_TAPS + 1)]  # the exact filter's taps


def _mirror_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``radius`` with whole-sample mirroring (c b |
    a b c d | c b), scipy's ``mirror``."""
    i = torch.arange(-radius, n + radius, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * n - 2
    i = i % period
    return torch.where(i >= n, period - i, i)


def spline_coefficients(x: torch.Tensor) -> torch.Tensor:
    """Cubic B-spline coefficients of ``x (n, C, *spatial)`` (2 or 3 spatial axes).

    Returns:
        Same shape and dtype: the coefficients ``c`` with ``sum_k c[k] B3(i - k) = x[i]``.
    """
    out = x
    for dim in range(2, x.dim()):
        n = out.shape[dim]
        padded = out.index_select(dim, _mirror_index(n, _TAPS, x.device))
        acc = padded.narrow(dim, _TAPS, n) * _FIR[0]
        for k in range(1, _TAPS + 1):  # symmetric taps: one multiply per pair of shifts
            acc += (padded.narrow(dim, _TAPS + k, n) + padded.narrow(dim, _TAPS - k, n)) * _FIR[k]
        out = acc
    return out


def cubic_grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(x, grid, align_corners=True, padding_mode="zeros")`` with cubic
    B-spline interpolation instead of linear.

    Only the part of each sample that its grid reads (plus the prefilter's reach) is
    prefiltered, so a patch read from a larger region costs about as much as the patch.

    Args:
        x: ``(n, C, *spatial)`` float, 2 or 3 spatial axes.
        grid: ``(n, *out, ndim)`` normalised (x, y[, z]) coordinates, as ``grid_sample``.

    Returns:
        ``(n, C, *out)``: as scipy's ``constant`` mode, the spline with mirrored edges inside
        the input's extent and 0 at points outside it.
    """
    ndim = grid.shape[-1]
    sizes = torch.tensor(x.shape[2:][::-1], dtype=grid.dtype, device=grid.device)  # (x, y, z)
    v = (grid + 1) * ((sizes - 1) / 2)  # voxel coordinates in the input
    inside = ((v > -1e-4) & (v < sizes - 1 + 1e-4)).all(-1)
    margin = _TAPS + 3  # the fetches reach 2 voxels out, the prefilter _TAPS more
    outs = []
    for k in range(len(x)):
        flat = v[k].reshape(-1, ndim)
        top = (sizes - 1).long()
        lo = torch.minimum((flat.amin(0).floor() - margin).long().clamp_min(0), top)
        hi = torch.maximum(torch.minimum((flat.amax(0).ceil() + margin).long(), top), lo)
        lo_l, hi_l = lo.tolist(), hi.tolist()
        crop = [slice(lo_l[a], hi_l[a] + 1) for a in reversed(range(ndim))]  # (z, y, x)
        part = x[(slice(k, k + 1), slice(None), *crop)]
        outs.append(_cubic_sample(part, v[k : k + 1] - lo.to(v.dtype)))
    return torch.cat(outs) * inside[:, None]


def _cubic_sample(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The spline of ``x (n, C, *spatial)`` at voxel coordinates ``v (n, *out, ndim)`` (x, y,
    z order), by ``2^ndim`` linear fetches of its coefficients."""
    coeffs = spline_coefficients(x)
    for dim in range(2, x.dim()):  # two mirrored coefficients each side feed the edge voxels
        coeffs = coeffs.index_select(dim, _mirror_index(coeffs.shape[dim], 2, x.device))
    padded = torch.tensor(coeffs.shape[2:][::-1], dtype=v.dtype, device=v.device)
    i = torch.floor(v)
    t = v - i
    w0, w1 = (1 - t) ** 3 / 6, (3 * t**3 - 6 * t**2 + 4) / 6
    w2, w3 = (-3 * t**3 + 3 * t**2 + 3 * t + 1) / 6, t**3 / 6
    g = (w0 + w1, w2 + w3)
    # the two linear fetch points per axis, normalised on the padded coefficients
    h = tuple((p + 2) * 2 / (padded - 1) - 1 for p in (i - 1 + w1 / g[0], i + 1 + w3 / g[1]))
    ndim = v.shape[-1]
    out = None
    for corner in range(2**ndim):
        bits = [(corner >> a) & 1 for a in range(ndim)]
        point = torch.stack([h[b][..., a] for a, b in enumerate(bits)], -1)
        weight = math.prod(g[b][..., a] for a, b in enumerate(bits))
        fetch = F.grid_sample(
            coeffs, point, mode="bilinear", padding_mode="zeros", align_corners=True
        )
        term = fetch * weight[:, None]
        out = term if out is None else out + term
    return out


@lru_cache(maxsize=256)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)``: skimage's cubic ``resize`` of a length-``n_in`` signal, edges
    repeated, without its clipping (a linear map, so the resize of the unit vectors)."""
    from skimage.transform import resize

    eye = np.eye(n_in)
    return resize(eye, (n_out, n_in), order=3, mode="edge", anti_aliasing=False, clip=False)


def cubic_resize(x: torch.Tensor, size: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Resize one image ``x (*spatial)`` to ``size`` as ``skimage.transform.resize(order=3,
    mode="edge", anti_aliasing=False)`` does, its clipping to the input's range included."""
    out = x
    for axis, n_out in enumerate(size):
        matrix = torch.from_numpy(_resize_matrix(out.shape[axis], int(n_out)))
        out = torch.tensordot(matrix.to(x.device, x.dtype), out.movedim(axis, 0), dims=1)
        out = out.movedim(0, axis)
    return out.clamp(x.min(), x.max())
