"""The CT body mask: body voxels always in it, air far from it out, a separate table dropped,
holes (gas) filled, and the mask mapped onto the resampled grid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from autoseg.preprocessing.body_mask import body_mask


def _phantom() -> np.ndarray:
    """(1, Z, Y, X) HU at 2 mm: air, a body box with a gas hole, a thin table below it."""
    hu = np.full((1, 20, 48, 48), -1000.0, dtype=np.float32)
    hu[0, :, 6:32, 8:40] = 40.0  # body (every slice)
    hu[0, 5:15, 12:20, 16:26] = -950.0  # gas inside the body
    hu[0, :, 40, 10:38] = 300.0  # patient table, 16 mm below the body: a small component
    return hu


def test_body_is_kept_air_far_away_dropped_and_table_dropped() -> None:
    hu = _phantom()
    full = tuple((0, n) for n in hu.shape[1:])
    mask = body_mask(hu, (2.0, 2.0, 2.0), (0,), full, hu.shape[1:], margin_mm=4.0)
    body = np.zeros(hu.shape[1:], dtype=bool)
    body[:, 6:32, 8:40] = True
    assert mask[body].all()  # the gas hole included
    # further than the margin + 1.5 coarse voxel diagonals (4 + 1.5 * 6.9 mm < 16 mm): air
    far = ndimage.distance_transform_edt(~body, sampling=2.0) >= 16.0
    assert far.any() and not (mask & far).any()
    assert not mask[:, 40].any()  # the table, 16 mm from the body: its component was dropped


def test_mask_follows_crop_and_resampling() -> None:
    hu = _phantom()
    crop = ((2, 18), (4, 44), (0, 48))
    out_shape = (8, 20, 24)  # the crop at half the resolution
    mask = body_mask(hu, (2.0, 2.0, 2.0), (0,), crop, out_shape, margin_mm=0.0)
    assert mask.shape == out_shape
    # body y 6:32 -> crop 2:28 -> grid 1:14; x 8:40 -> grid 4:20
    assert mask[:, 1:14, 4:20].all()
    assert not mask[:, 18:, :].any() and not mask[:, :, :1].any()


def test_all_air_gives_an_empty_mask() -> None:
    hu = np.full((1, 4, 8, 8), -1000.0, dtype=np.float32)
    mask = body_mask(hu, (1.0, 1.0, 1.0), (0,), ((0, 4), (0, 8), (0, 8)), (4, 8, 8))
    assert mask.shape == (4, 8, 8) and not mask.any()


def test_any_ct_channel_counts() -> None:
    hu = np.full((2, 4, 16, 16), -1000.0, dtype=np.float32)
    hu[1, :, 6:10, 6:10] = 50.0  # body only in the second channel
    box = ((0, 4), (0, 16), (0, 16))
    assert body_mask(hu, (1.0,) * 3, (0, 1), box, (4, 16, 16)).any()
    assert not body_mask(hu, (1.0,) * 3, (0,), box, (4, 16, 16)).any()
