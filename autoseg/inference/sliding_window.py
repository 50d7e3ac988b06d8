"""The sliding-window core of prediction: tensors in, logits out (no models, no files).

A volume larger than the network's patch is covered by overlapping tiles (step 0.5 of the patch
by default). Every tile's logits are weighted by a Gaussian importance map, which trusts the
tile centre more than its border, and the weighted sum is divided by the summed weights.
Mirroring test-time augmentation averages the logits over every combination of flips of the
mirror axes (8 passes in 3D): flip the tile, run the network, flip the output back.

Tiles (and their mirrored copies) are batched: one forward pass takes ``tile_batch`` inputs. The
image, the accumulators and the importance map stay on the image's device, so on a GPU nothing
goes back to the host between tiles. Autocast (bf16) is the caller's choice: the network output
is cast to float32 before it is accumulated.

Out of GPU memory (``torch.OutOfMemoryError``) while tiling, the case still finishes: the
accumulators move to host memory (logged once per process) and the tiles that were not yet added
are run again, their logits copied to the host; if memory runs out again, the tile batch is
halved down to one tile. Only an error with one tile per pass and host accumulators propagates.

The network is fully convolutional, so at inference a tile may be larger than the training
patch: ``inference_tile_size`` widens an axis that the image overruns by a little (at most
``max_scale`` of the patch; the predictor's default is ``DEFAULT_TILE_SCALE`` in 3D and 1, no
widening, in 2D) so that one tile covers it, rounded up to a multiple of the network's total
stride. A Hippocampus image just over the patch then takes one window instead of two or four
(docs/benchmarks.md: 20 windows -> 10 for the benchmark's 10 cases; fold-0 CV Dice of a trained
3d_fullres model 0.8353 with the patch, 0.8349 widened). ``max_scale=1`` keeps the patch.

A tile mask (``keep``, a bool map over the image: for CT the body, from
``autoseg.preprocessing.body_mask``) limits the tiling to its bounding box (the tiles are spread
over the box as over a cropped image, as the nonzero crop does for MRI) and skips every tile
that holds no True voxel: the network never sees them, and a voxel no run tile covers gets the
``background`` logits. Every True voxel is covered only by tiles that run.

This module owns the two entry points (``sliding_window_logits``, and
``sliding_window_logits_slices`` for a 2D network over the slices of a volume). The tile
geometry, importance map and tile mask are ``autoseg.inference.tiles``; the sums, the
out-of-memory retry and the progress ``autoseg.inference.tile_accumulation``. Model loading,
folds and folders of cases live in ``autoseg.inference.predictor``; input files in
``autoseg.inference.inputs``; devices in ``autoseg.device``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autoseg.inference.tile_accumulation import Network, TileProgress, accumulate_tiles
from autoseg.inference.tiles import (
    keep_positions,
    mirror_combinations,
    pad_keep,
    pad_to_patch,
    tile_importance,
)

__all__ = ["sliding_window_logits", "sliding_window_logits_slices"]


def sliding_window_logits(
    network: Network,
    image: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    *,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    tile_batch: int = 4,
    use_gaussian: bool = True,
    progress: TileProgress | None = None,
    keep: torch.Tensor | None = None,
    background: Sequence[float] | None = None,
) -> torch.Tensor:
    """Logits of ``network`` over a whole image by overlapping, Gaussian-weighted tiles.

    Args:
        network: maps ``(B, C, *patch)`` to ``(B, K, *patch)`` logits (eval mode, no deep
            supervision). Called under ``torch.inference_mode``.
        image: ``(C, *S)`` float tensor with ``len(S) == len(patch_size)`` (2D or 3D), on the
            device the network runs on.
        patch_size: the network's input size.
        num_classes: K, background included.
        step: tile offset as a fraction of the patch.
        mirror_axes: spatial axes (0-based, of ``S``) for mirroring test-time augmentation; the
            logits are averaged over all 2**len(mirror_axes) flip combinations.
        tile_batch: network inputs per forward pass (tiles times mirrored copies).
        use_gaussian: weight tiles by ``gaussian_importance_map``; False weights them equally.
        progress: called with ``(tiles done, tiles)`` after every forward pass (a tile is done
            when all its mirrorings are).
        keep: bool ``S`` map on the image's device (the CT body); tiles holding no True voxel
            are not run. None: every tile runs.
        background: K logits for voxels that only skipped tiles cover (default: class 0 ahead
            by ``SKIPPED_LOGIT_GAP``; give all-negative values for sigmoid regions).

    Returns:
        float32 ``(K, *S)`` logits on ``image.device``. An image smaller than the patch is padded
        with zeros (centred) and the result cropped back.
    """
    ndim = len(patch_size)
    if image.ndim != ndim + 1:
        raise ValueError(f"image {tuple(image.shape)} is not (C, *S) for a {ndim}D patch")
    if any(a < 0 or a >= ndim for a in mirror_axes):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} outside 0..{ndim - 1}")
    padded, crop = pad_to_patch(image, patch_size)
    keep = pad_keep(keep, image.shape[1:], patch_size)
    corners = keep_positions(padded.shape[1:], patch_size, step, keep)
    importance = tile_importance(patch_size, use_gaussian, image.device)
    with torch.inference_mode():
        logits = accumulate_tiles(
            network,
            padded,
            corners,
            patch_size,
            num_classes,
            mirror_combinations(mirror_axes),
            tile_batch,
            importance,
            progress,
            keep,
            background,
        )
    return logits[(slice(None), *crop)]


def sliding_window_logits_slices(
    network: Network,
    volume: torch.Tensor,
    patch_size: Sequence[int],
    num_classes: int,
    *,
    step: float = 0.5,
    mirror_axes: Sequence[int] = (),
    tile_batch: int = 4,
    use_gaussian: bool = True,
    progress: TileProgress | None = None,
    keep: torch.Tensor | None = None,
    background: Sequence[float] | None = None,
) -> torch.Tensor:
    """Logits of a 2D network over every Z-slice of a volume.

    Each slice is tiled as in ``sliding_window_logits``; tiles of several slices go through the
    network together (``tile_batch`` inputs per forward pass), so small slices do not leave the
    device idle.

    Args:
        network: 2D network, ``(B, C, Y, X)`` -> ``(B, K, Y, X)``.
        volume: ``(C, Z, Y, X)`` tensor.
        patch_size: (Y, X) patch.
        num_classes: K.
        step: tile offset as a fraction of the patch (in-plane).
        mirror_axes: in-plane axes to mirror: 0 = Y, 1 = X.
        tile_batch: network inputs per forward pass.
        use_gaussian: weight tiles by the 2D Gaussian importance map.
        progress: called with ``(tiles done, tiles)`` (over every slice) after each pass.
        keep, background: as for ``sliding_window_logits`` (``keep`` is ``(Z, Y, X)``).

    Returns:
        float32 ``(K, Z, Y, X)`` logits on ``volume.device``; identical (up to rounding) to
        running ``sliding_window_logits`` on each slice.
    """
    if len(patch_size) != 2 or volume.ndim != 4:
        raise ValueError(f"need a (C, Z, Y, X) volume and a 2D patch, got {tuple(volume.shape)}")
    if any(a not in (0, 1) for a in mirror_axes):
        raise ValueError(f"mirror axes {tuple(mirror_axes)} outside 0..1 (Y, X)")
    tile_shape = (1, *patch_size)
    padded, crop = pad_to_patch(volume, tile_shape)
    keep = pad_keep(keep, volume.shape[1:], tile_shape)
    in_plane = keep_positions(
        padded.shape[2:], patch_size, step, None if keep is None else keep.any(dim=0)
    )
    corners = [
        (z, *corner)
        for z in range(padded.shape[1])
        for corner in in_plane  # one layout for every slice: over the body's in-plane box
    ]
    importance = tile_importance(patch_size, use_gaussian, volume.device)[None]  # (1, Y, X)

    def slice_network(x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, Y, X) -> (B, K, 1, Y, X)
        out = network(x[:, :, 0])
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out[:, :, None]

    flips = [tuple(a + 1 for a in flip) for flip in mirror_combinations(mirror_axes)]
    with torch.inference_mode():
        logits = accumulate_tiles(
            slice_network,
            padded,
            corners,
            tile_shape,
            num_classes,
            flips,
            tile_batch,
            importance,
            progress,
            keep,
            background,
        )
    return logits[(slice(None), *crop)]
