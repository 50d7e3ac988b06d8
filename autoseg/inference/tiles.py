"""Where the tiles of a sliding window go, and how much each voxel of a tile counts.

Owns the tile geometry of ``autoseg.inference.sliding_window``: the tile starts over an image
(``sliding_window_positions``, step 0.5 of the patch by default), the tile widened at inference
(``inference_tile_size``: an axis the image overruns by a little, at most ``max_scale`` of the
patch, gets one tile rounded up to the network's total stride), the Gaussian importance map, the
mirroring combinations, padding an image smaller than the patch, the tile batch per forward
pass, and the body-mask tile selection: with a tile mask (``keep``, for CT the body from
``autoseg.preprocessing.body_mask``) the tiles are spread over its bounding box
(``keep_positions``) and only those holding a True voxel run (``run_corners``).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

__all__ = [
    "CPU_VOXELS_PER_FORWARD",
    "DEFAULT_TILE_SCALE",
    "default_tile_batch",
    "gaussian_importance_map",
    "inference_tile_size",
    "keep_positions",
    "mirror_combinations",
    "pad_keep",
    "pad_to_patch",
    "run_corners",
    "sliding_window_positions",
    "tile_importance",
]

# On the CPU one forward pass of several inputs costs less than several passes of fewer (the
# 3d_fullres Hippocampus network: the 8 mirrorings of a 36x52x36 tile in one pass took 0.84x the
# CPU time of four passes of 2, same logits; docs/benchmarks.md); this bounds the activations.
CPU_VOXELS_PER_FORWARD = 2**20

#: largest inference tile edge, as a multiple of the patch edge, by default (``--tile-scale``)
DEFAULT_TILE_SCALE = 1.25


def default_tile_batch(tile: Sequence[int], device: torch.device) -> int:
    """Network inputs per forward pass: 8 on CUDA; on the CPU as many tiles as keep a pass
    within ``CPU_VOXELS_PER_FORWARD`` input voxels, between 1 and 8 (a 3D tile's mirrorings)."""
    if device.type == "cuda":
        return 8
    return max(1, min(8, CPU_VOXELS_PER_FORWARD // math.prod(tile)))


def gaussian_importance_map(patch_size: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Separable Gaussian weights over one patch, 1 at the centre.

    Args:
        patch_size: the patch's shape, e.g. (Z, Y, X) or (Y, X).
        sigma_scale: sigma per axis as a fraction of the patch edge (nnU-Net: 1/8).

    Returns:
        float32 array of shape ``patch_size``; maximum 1, symmetric under a flip of any axis and
        strictly positive (values that underflow are clamped to the smallest non-zero one).
    """
    weights = np.ones((), dtype=np.float64)
    for size in patch_size:
        centre = (size - 1) / 2.0
        sigma = max(size * sigma_scale, 1e-6)
        axis = np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2)
        weights = np.multiply.outer(weights, axis)
    weights = (weights / weights.max()).astype(np.float32)
    positive = weights[weights > 0]
    weights[weights <= 0] = positive.min()
    return weights


def inference_tile_size(
    image_shape: Sequence[int],
    patch_size: Sequence[int],
    divisor: Sequence[int],
    max_scale: float = DEFAULT_TILE_SCALE,
) -> tuple[int, ...]:
    """The tile to predict ``image_shape`` with: the patch, widened where one tile can cover.

    Per axis: an image no larger than the patch keeps the patch (the network sees what it was
    trained on); an image larger than the patch but within ``max_scale`` of it gets a tile of
    the image's size rounded up to a multiple of ``divisor`` (one window instead of two);
    a larger image keeps the patch and is tiled.

    Args:
        image_shape: spatial shape of the (preprocessed) image.
        patch_size: the training patch, a multiple of ``divisor`` on every axis.
        divisor: the network's total stride per axis.
        max_scale: largest tile edge as a multiple of the patch edge; 1 = always the patch.

    Returns:
        The tile's shape, ``>= patch_size`` and a multiple of ``divisor`` where widened.
    """
    if not len(image_shape) == len(patch_size) == len(divisor):
        raise ValueError(f"shapes {image_shape}, {patch_size}, {divisor} differ in length")
    tile = []
    for size, patch, div in zip(image_shape, patch_size, divisor, strict=True):
        widened = math.ceil(size / div) * div
        tile.append(widened if patch < size and widened <= patch * max_scale else patch)
    return tuple(tile)


def _axis_starts(size: int, patch: int, step: float) -> list[int]:
    """Tile start indices along one axis (a single 0 when the axis fits in one patch)."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    actual = (size - patch) / (n - 1)
    return [int(round(i * actual)) for i in range(n)]


def sliding_window_positions(
    image_shape: Sequence[int], patch_size: Sequence[int], step: float = 0.5
) -> list[tuple[int, ...]]:
    """Start corners of the tiles covering an image.

    Per axis the number of tiles is ``ceil((size - patch) / (patch * step)) + 1``, spread evenly
    so that the first starts at 0 and the last ends at the border. An axis no larger than the
    patch gets one tile at 0 (the image is padded to the patch before tiling).

    Args:
        image_shape: spatial shape of the image.
        patch_size: spatial shape of one tile, same number of axes.
        step: tile offset as a fraction of the patch, in (0, 1].

    Returns:
        Tile corners in C order (last axis fastest).
    """
    if len(image_shape) != len(patch_size):
        raise ValueError(f"image shape {tuple(image_shape)} and patch {tuple(patch_size)} differ")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    per_axis = [_axis_starts(s, p, step) for s, p in zip(image_shape, patch_size, strict=True)]
    return list(itertools.product(*per_axis))


def keep_positions(
    image_shape: Sequence[int],
    tile_shape: Sequence[int],
    step: float,
    keep: torch.Tensor | np.ndarray | None,
) -> list[tuple[int, ...]]:
    """Tile corners laid over the bounding box of ``keep`` (the whole image without it).

    The box is widened to at least a tile per axis (inside the image); the tiles are spread
    over it as ``sliding_window_positions`` spreads them over an image, then shifted to it. An
    empty ``keep`` gives no tiles.
    """
    if keep is None:
        return sliding_window_positions(image_shape, tile_shape, step)
    box = []
    for axis in range(len(image_shape)):
        others = tuple(a for a in range(len(image_shape)) if a != axis)
        hits = torch.as_tensor(keep).any(dim=others) if others else torch.as_tensor(keep)
        found = torch.nonzero(hits).flatten()
        if found.numel() == 0:
            return []
        lo, hi, size, tile = int(found[0]), int(found[-1]) + 1, image_shape[axis], tile_shape[axis]
        if size <= tile:  # one tile covers the axis (the image is padded to it)
            lo, hi = 0, size
        elif hi - lo < tile:  # widen around the box's centre, inside the image
            lo = min(max(0, (lo + hi - tile) // 2), size - tile)
            hi = lo + tile
        box.append((lo, hi))
    extent = [hi - lo for lo, hi in box]
    return [
        tuple(c + lo for c, (lo, _) in zip(corner, box, strict=True))
        for corner in sliding_window_positions(extent, tile_shape, step)
    ]


def run_corners(
    corners: Sequence[tuple[int, ...]],
    tile_shape: Sequence[int],
    keep: torch.Tensor | np.ndarray | None,
) -> list[tuple[int, ...]]:
    """The tile corners whose tile holds at least one True voxel of ``keep`` (all without it).

    Args:
        corners: tile start corners over the image.
        tile_shape: the tile's shape.
        keep: bool map of the image's spatial shape, or None.
    """
    if keep is None:
        return list(corners)
    return [
        corner
        for corner in corners
        if keep[tuple(slice(c, c + t) for c, t in zip(corner, tile_shape, strict=True))].any()
    ]


def mirror_combinations(mirror_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every subset of ``mirror_axes`` (the empty one first): 2**len(mirror_axes) flips."""
    axes = tuple(sorted(set(mirror_axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def pad_to_patch(
    image: torch.Tensor, patch_size: Sequence[int]
) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """Pad the trailing axes of ``image`` (constant 0, centred) up to ``patch_size``.

    Returns:
        The padded image and the slices (over the padded axes) that cut the original back out.
    """
    spatial = image.shape[-len(patch_size) :]
    before = [max(p - s, 0) // 2 for s, p in zip(spatial, patch_size, strict=True)]
    after = [max(p - s, 0) - b for s, p, b in zip(spatial, patch_size, before, strict=True)]
    crop = tuple(slice(b, b + s) for b, s in zip(before, spatial, strict=True))
    if not any(before) and not any(after):
        return image, crop
    pad: list[int] = []
    for b, a in zip(reversed(before), reversed(after), strict=True):  # F.pad: last axis first
        pad += [b, a]
    return F.pad(image, pad, mode="constant", value=0.0), crop


def pad_keep(
    keep: torch.Tensor | None, spatial: Sequence[int], tile_shape: Sequence[int]
) -> torch.Tensor | None:
    """``keep`` padded (with False) as ``pad_to_patch`` pads the image."""
    if keep is None:
        return None
    if tuple(keep.shape) != tuple(spatial):
        raise ValueError(f"keep {tuple(keep.shape)} does not match the image {tuple(spatial)}")
    keep = keep.bool()
    if all(s >= t for s, t in zip(spatial, tile_shape, strict=True)):
        return keep
    shape = [max(s, t) for s, t in zip(spatial, tile_shape, strict=True)]
    padded = torch.zeros(shape, dtype=torch.bool, device=keep.device)
    place = tuple(
        slice((n - s) // 2, (n - s) // 2 + s) for n, s in zip(shape, spatial, strict=True)
    )  # where pad_to_patch puts the image
    padded[place] = keep
    return padded


def tile_importance(
    patch_size: Sequence[int], use_gaussian: bool, device: torch.device
) -> torch.Tensor:
    """The tile weights on ``device``, made once per (tile, device) and never written to."""
    return _cached_importance(tuple(int(p) for p in patch_size), use_gaussian, str(device))


@functools.lru_cache(maxsize=16)
def _cached_importance(
    patch_size: tuple[int, ...], use_gaussian: bool, device: str
) -> torch.Tensor:
    if use_gaussian:
        return torch.from_numpy(gaussian_importance_map(patch_size)).to(device)
    return torch.ones(patch_size, dtype=torch.float32, device=device)
