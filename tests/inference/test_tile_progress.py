"""Tiles done within a case: the sliding window's progress callback, over folds and slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoseg.inference.sliding_window import sliding_window_logits, sliding_window_logits_slices
from autoseg.inference.tiles import sliding_window_positions
from tests.inference.test_predictor import predictor


def constant_net(x: torch.Tensor) -> torch.Tensor:  # (B, C, *tile) -> (B, 2, *tile)
    return torch.cat([x[:, :1], -x[:, :1]], dim=1)


@pytest.mark.parametrize(("mirror", "tile_batch"), [((), 1), ((), 3), ((0, 1, 2), 3)])
def test_tiles_are_counted_once_each_whatever_the_mirroring_and_batch(mirror, tile_batch) -> None:
    image = torch.zeros(1, 20, 20, 12)
    calls: list[tuple[int, int]] = []
    logits = sliding_window_logits(
        constant_net,
        image,
        (8, 8, 8),
        2,
        mirror_axes=mirror,
        tile_batch=tile_batch,
        progress=lambda done, total: calls.append((done, total)),
    )
    tiles = len(sliding_window_positions((20, 20, 12), (8, 8, 8)))
    flips = 2 ** len(mirror)
    assert len(calls) == -(-tiles * flips // tile_batch)  # one call per forward pass
    assert {t for _, t in calls} == {tiles}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == tiles and done[0] == tile_batch // flips
    assert logits.shape == (2, 20, 20, 12)


def test_slices_count_every_tile_of_every_slice() -> None:
    calls: list[tuple[int, int]] = []
    sliding_window_logits_slices(
        lambda x: torch.cat([x, -x], dim=1),
        torch.zeros(1, 3, 12, 12),
        (8, 8),
        2,
        tile_batch=2,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (3 * 4, 3 * 4)  # 3 slices of 2x2 tiles


def test_predictor_reports_tiles_of_all_folds_in_one_count() -> None:
    p = predictor(folds=2, tta=False, tile_batch=1, max_tile_scale=1.0)
    calls: list[tuple[int, int]] = []
    array = np.zeros((1, 12, 8, 8), dtype=np.float32)  # 2 tiles of 8x8x8 per fold
    p.predict_preprocessed(array, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
