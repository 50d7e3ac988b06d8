"""Intensity normalisation of one channel: CT clipping with dataset values, or per-image z-score.

Used by ``autoseg.preprocessing.preprocess`` for training data and for every image predicted.
"""

from __future__ import annotations

import numpy as np

from autoseg.data.plans import Normalization
from autoseg.errors import AutosegError


def _mean_std(values: np.ndarray, chunk: int = 1 << 22) -> tuple[float, float]:
    """Mean and std of a 1D float32 array, accumulated in float64 chunk by chunk (no copy)."""
    mean = float(values.mean(dtype=np.float64))
    squares = sum(
        float(np.square(values[i : i + chunk].astype(np.float64) - mean).sum())
        for i in range(0, values.size, chunk)
    )
    return mean, float(np.sqrt(squares / values.size))


def normalize_channel(
    channel: np.ndarray, norm: Normalization, mask: np.ndarray | None = None
) -> None:
    """Normalise one float32 ``(Z, Y, X)`` channel in place.

    Args:
        channel: the channel, modified in place.
        norm: ``"ct"`` clips to ``[clip_low, clip_high]`` then z-scores with the dataset's
            mean/std; ``"zscore"`` clips to the image's own 0.5/99.5 percentiles, then z-scores
            with its own mean/std (statistics from ``mask`` only when ``use_nonzero_mask``, and
            voxels outside it set to 0); ``"none"`` leaves it alone.
        mask: the nonzero mask on the channel's grid (needed with ``use_nonzero_mask``).

    Raises:
        AutosegError: an unknown scheme, or a CT scheme without its dataset values.
    """
    if norm.scheme == "none":
        return
    if norm.scheme == "ct":
        if None in (norm.clip_low, norm.clip_high, norm.mean, norm.std):
            raise AutosegError(f"ct normalization needs clip_low, clip_high, mean, std: {norm}")
        np.clip(channel, norm.clip_low, norm.clip_high, out=channel)
        channel -= np.float32(norm.mean)
        channel /= np.float32(max(norm.std, 1e-8))
        return
    if norm.scheme != "zscore":
        raise AutosegError(f"unknown normalization scheme '{norm.scheme}' (ct, zscore, none)")
    use_mask = norm.use_nonzero_mask and mask is not None
    flat = channel.reshape(-1)
    selected = channel[mask] if use_mask else flat
    if selected.size == 0:
        channel[...] = 0
        return
    low, high = np.percentile(selected, [0.5, 99.5])
    np.clip(channel, float(low), float(high), out=channel)
    selected = channel[mask] if use_mask else flat
    mean, std = _mean_std(selected)
    channel -= np.float32(mean)
    channel /= np.float32(max(std, 1e-8))
    if use_mask:
        channel[~mask] = 0
