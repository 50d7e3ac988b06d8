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

Model loading, folds and folders of cases live in ``autoseg.inference.predictor``; input files in
``autoseg.inference.inputs``; devices in ``autoseg.device``.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual torch alias

log = logging.getLogger(__name__)
_oom_logged = [False]  # one message per process, however many cases run out of memory

__all__ = [
    "CPU_VOXELS_PER_FORWARD",
    "TileProgress",
    "default_tile_batch",
    "gaussian_importance_map",
    "inference_tile_size",
    "keep_positions",
    "mirror_combinations",
    "run_corners",
    "sliding_window_logits",
    "sliding_window_logits_slices",
    "sliding_window_positions",
]

Network = Callable[[torch.Tensor], torch.Tensor]
#: ``progress(tiles_done, tiles_total)``, called after every forward pass of a sliding window
TileProgress = Callable[[int, int], None]

# On the CPU one forward pass of several inputs costs less than several passes of fewer (the
# 3d_fullres Hippocampus network: the 8 mirrorings of a 36x52x36 tile in one pass took 0.84x the
# CPU time of four passes of 2, same logits; docs/benchmarks.md); this bounds the activations.
CPU_VOXELS_PER_FORWARD = 2**20

#: a skipped voxel's logits: the background class this much above every other class
SKIPPED_LOGIT_GAP = 30.0


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


#: largest inference tile edge, as a multiple of the patch edge, by default (``--tile-scale``)
DEFAULT_TILE_SCALE = 1.25


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


def _pad_to_patch(
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


def _accumulate_tiles(
    network: Network,
    image: torch.Tensor,
    corners: Sequence[tuple[int, ...]],
    tile_shape: Sequence[int],
    num_classes: int,
    flips: Sequence[tuple[int, ...]],
    tile_batch: int,
    importance: torch.Tensor,
    progress: TileProgress | None = None,
    keep: torch.Tensor | None = None,
    background: Sequence[float] | None = None,
) -> torch.Tensor:
    """Weighted average of the network's logits over tiles of ``image``.

    Args:
        network: maps ``(B, C, *tile_shape)`` to ``(B, K, *tile_shape)`` logits.
        image: ``(C, *S)``, already at least ``tile_shape`` on every axis.
        corners: tile start corners in ``S``.
        tile_shape: the tile's shape (same number of axes as ``S``).
        num_classes: K.
        flips: tuples of tile axes (0-based, spatial) to flip; the logits are averaged over them.
        tile_batch: network inputs per forward pass (mirrored copies count).
        importance: float32 ``tile_shape`` weights on the image's device.
        progress: called with (tiles whose every flip is done, tiles) after each forward pass.
        keep: bool ``S`` map; tiles without a True voxel are skipped (None: run every tile).
        background: K logits for voxels that no run tile covers (default: 0 for class 0,
            ``-SKIPPED_LOGIT_GAP`` for the others).

    Returns:
        float32 ``(K, *S)`` logits on the image's device (in host memory after an
        out-of-memory error on the device).
    """
    corners = run_corners(corners, tile_shape, keep)
    spatial = tuple(image.shape[1:])
    logits, weight = _accumulators(num_classes, spatial, image.device)
    jobs = [(corner, flip) for corner in corners for flip in flips]  # tile-major
    batch, first, on_host = max(1, tile_batch), 0, False
    while first < len(jobs):
        chunk = jobs[first : first + batch]
        try:
            for _ in _add_tiles(network, image, chunk, tile_shape, num_classes, logits, weight,
                                importance, len(flips)):  # fmt: skip
                first += 1  # this tile is in the sums: a retry starts after it
            if progress is not None:
                progress(first // len(flips), len(corners))
        except torch.OutOfMemoryError:
            if on_host and batch == 1:
                raise
            if not on_host:
                logits, weight = _to_host(logits, weight)
                on_host = True
            else:
                batch = max(1, batch // 2)
                log.debug("out of memory again: %d tile(s) per pass", batch)
    if keep is None:
        return logits.div_(weight)  # in place: no second (K, *S) array
    empty = weight == 0  # covered by skipped tiles only
    weight[empty] = 1.0
    logits.div_(weight)
    if background is None:
        background = [0.0] + [-SKIPPED_LOGIT_GAP] * (num_classes - 1)
    if len(background) != num_classes:
        raise ValueError(f"{len(background)} background logits for {num_classes} classes")
    for k, value in enumerate(background):
        logits[k].masked_fill_(empty, float(value))
    return logits


def _accumulators(
    num_classes: int, spatial: tuple[int, ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zeroed logits ``(K, *S)`` and weights ``(*S)`` on ``device``, on the host when the
    device has no room for them."""
    try:
        logits = torch.zeros((num_classes, *spatial), dtype=torch.float32, device=device)
        return logits, torch.zeros(spatial, dtype=torch.float32, device=device)
    except torch.OutOfMemoryError:
        return _to_host(torch.zeros((num_classes, *spatial)), torch.zeros(spatial))


def _to_host(logits: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """After an out-of-memory error: the accumulators in host memory, logged once."""
    device = logits.device
    logits, weight = logits.cpu(), weight.cpu()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not _oom_logged[0]:
        _oom_logged[0] = True
        megabytes = (logits.numel() + weight.numel()) * 4 / 2**20
        log.warning(
            "out of memory on %s while predicting: the sums of the tiles (%s, %.0f MB) are kept "
            "in host memory from now on; the case finishes, more slowly (logged once)",
            device, "x".join(map(str, logits.shape)), megabytes,
        )  # fmt: skip
    return logits, weight


def _add_tiles(
    network: Network,
    image: torch.Tensor,
    chunk: Sequence[tuple[tuple[int, ...], tuple[int, ...]]],
    tile_shape: Sequence[int],
    num_classes: int,
    logits: torch.Tensor,
    weight: torch.Tensor,
    importance: torch.Tensor,
    num_flips: int,
):
    """Run one forward pass over ``chunk`` (corner, flip) and add each tile to the sums,
    yielding after each one (what may run out of memory comes before a tile's sums change)."""
    windows = [
        tuple(slice(c, c + t) for c, t in zip(corner, tile_shape, strict=True))
        for corner, _ in chunk
    ]
    inputs = []
    for window, (_, flip) in zip(windows, chunk, strict=True):
        tile = image[(slice(None), *window)]  # (C, *tile)
        inputs.append(tile.flip([a + 1 for a in flip]) if flip else tile)
    out = network(torch.stack(inputs))  # (B, K, *tile)
    if isinstance(out, (list, tuple)):  # a network left in deep-supervision mode
        out = out[0]
    if tuple(out.shape) != (len(chunk), num_classes, *tile_shape):
        raise ValueError(
            f"network returned {tuple(out.shape)}, expected "
            f"{(len(chunk), num_classes, *tile_shape)}"
        )
    out = out.float().to(logits.device)
    importance = importance.to(logits.device)
    share = importance / num_flips  # each flip contributes its share of the tile's weight
    for b, (window, (_, flip)) in enumerate(zip(windows, chunk, strict=True)):
        tile_logits = out[b].flip([a + 1 for a in flip]) if flip else out[b]  # (K, *tile)
        contribution = tile_logits * share
        logits[(slice(None), *window)] += contribution
        if not flip:
            weight[window] += importance
        yield


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
    padded, crop = _pad_to_patch(image, patch_size)
    keep = _pad_keep(keep, image.shape[1:], patch_size)
    corners = keep_positions(padded.shape[1:], patch_size, step, keep)
    importance = _importance(patch_size, use_gaussian, image.device)
    with torch.inference_mode():
        logits = _accumulate_tiles(
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
    padded, crop = _pad_to_patch(volume, tile_shape)
    keep = _pad_keep(keep, volume.shape[1:], tile_shape)
    in_plane = keep_positions(
        padded.shape[2:], patch_size, step, None if keep is None else keep.any(dim=0)
    )
    corners = [
        (z, *corner)
        for z in range(padded.shape[1])
        for corner in in_plane  # one layout for every slice: over the body's in-plane box
    ]
    importance = _importance(patch_size, use_gaussian, volume.device)[None]  # (1, Y, X)

    def slice_network(x: torch.Tensor) -> torch.Tensor:  # (B, C, 1, Y, X) -> (B, K, 1, Y, X)
        out = network(x[:, :, 0])
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out[:, :, None]

    flips = [tuple(a + 1 for a in flip) for flip in mirror_combinations(mirror_axes)]
    with torch.inference_mode():
        logits = _accumulate_tiles(
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


def _pad_keep(
    keep: torch.Tensor | None, spatial: Sequence[int], tile_shape: Sequence[int]
) -> torch.Tensor | None:
    """``keep`` padded (with False) as ``_pad_to_patch`` pads the image."""
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
    )  # where _pad_to_patch puts the image
    padded[place] = keep
    return padded


def _importance(
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
