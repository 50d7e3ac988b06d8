"""Adding up the tiles of a sliding window: the weighted sums, out-of-memory retry, progress.

``accumulate_tiles`` runs the network over batches of tiles (mirrored copies included) and adds
each tile's logits, weighted by the importance map, to sums on the image's device; it divides by
the summed weights at the end. Out of GPU memory (``torch.OutOfMemoryError``) the case still
finishes: the sums move to host memory (logged once per process) and the tiles not yet added are
run again, their logits copied to the host; if memory runs out again, the tile batch is halved
down to one tile. Voxels that only skipped tiles (outside a tile mask) cover get the
``background`` logits. Where the tiles go is ``autoseg.inference.tiles``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch

from autoseg.inference.tiles import run_corners

log = logging.getLogger(__name__)
_oom_logged = [False]  # one message per process, however many cases run out of memory

__all__ = ["SKIPPED_LOGIT_GAP", "Network", "TileProgress", "accumulate_tiles"]

Network = Callable[[torch.Tensor], torch.Tensor]
#: ``progress(tiles_done, tiles_total)``, called after every forward pass of a sliding window
TileProgress = Callable[[int, int], None]

#: a skipped voxel's logits: the background class this much above every other class
SKIPPED_LOGIT_GAP = 30.0


def accumulate_tiles(
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
