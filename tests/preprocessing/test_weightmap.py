"""The U-Net border weight map: on hand-made touching discs, its truncation, its cache."""

from __future__ import annotations

import json

import numpy as np
from scipy import ndimage

from autoseg.preprocessing.weightmap import (
    SIGMA,
    W0,
    border_weight_map,
    class_weights,
    ensure_weight_maps,
    load_weight_map,
    weight_paths,
)


def two_discs(gap: int = 2) -> np.ndarray:
    """Two discs of radius 8 on a 60 x 80 image, ``gap`` background pixels apart along X."""
    yy, xx = np.mgrid[:60, :80]
    labels = np.zeros((60, 80), np.uint8)
    left = 30 - 8 - gap / 2
    labels[(yy - 30) ** 2 + (xx - left) ** 2 <= 64] = 1
    right_x = left + 16 + gap + 1
    labels[(yy - 30) ** 2 + (xx - right_x) ** 2 <= 64] = 1
    return labels


def test_the_gap_between_touching_discs_gets_the_highest_weight() -> None:
    labels = two_discs()
    assert ndimage.label(labels)[1] == 2
    weights = border_weight_map(labels)
    y, x = np.unravel_index(np.argmax(weights), weights.shape)
    assert y == 30 and labels[y, x] == 0
    assert np.all(labels[30, x - 3 : x] == 1) or np.all(labels[30, x + 1 : x + 4] == 1)
    w_bg, w_fg = class_weights(labels)[0, 0], class_weights(labels)[30, 20]
    assert weights.max() > w_bg + 0.5 * W0  # d1 + d2 of about 2 px: close to w0
    assert weights[0, 0] == w_bg  # far background: w_c only
    np.testing.assert_allclose(weights[labels == 1], w_fg)  # objects: w_c only


def test_class_weights_balance_frequencies() -> None:
    labels = two_discs()
    wc = class_weights(labels)
    assert np.isclose(wc.mean(), 1.0)
    assert np.isclose(wc[labels == 0].sum(), wc[labels == 1].sum())


def test_one_object_has_no_border_term() -> None:
    labels = np.zeros((30, 30), np.uint8)
    labels[10:20, 10:20] = 1
    np.testing.assert_array_equal(border_weight_map(labels), class_weights(labels))


def brute_force(labels: np.ndarray) -> np.ndarray:
    objects, n = ndimage.label(labels > 0)
    distances = np.sort(
        np.stack([ndimage.distance_transform_edt(objects != i) for i in range(1, n + 1)]), 0
    )
    border = W0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * SIGMA**2))
    return class_weights(labels) + np.where(labels == 0, border, 0)


def test_cropped_distance_transforms_match_the_full_ones_2d_and_3d() -> None:
    rng = np.random.default_rng(0)
    for shape in ((70, 90), (12, 40, 50)):
        blobs = ndimage.gaussian_filter(rng.normal(size=shape), 3) > 0.08
        labels = blobs.astype(np.uint8)
        assert ndimage.label(labels)[1] >= 3
        np.testing.assert_allclose(border_weight_map(labels), brute_force(labels), atol=1e-4)


def test_weight_maps_are_cached_by_content(tmp_path) -> None:
    seg = two_discs()[None, None].astype(np.int8)  # (1, Z, Y, X)
    np.save(tmp_path / "a.seg.npy", seg)
    assert ensure_weight_maps(tmp_path, ["a"]) == 1
    assert ensure_weight_maps(tmp_path, ["a"]) == 0  # current: kept
    stored = load_weight_map(tmp_path, "a")
    assert stored.shape == seg.shape
    np.testing.assert_allclose(stored[0, 0], border_weight_map(seg[0, 0]))
    assert ensure_weight_maps(tmp_path, ["a"], sigma=3.0) == 1  # other settings: redone
    changed = seg.copy()
    changed[0, 0, :5] = 1
    np.save(tmp_path / "a.seg.npy", changed)  # a re-preprocessed case
    assert ensure_weight_maps(tmp_path, ["a"], sigma=3.0) == 1
    marker = json.loads(weight_paths(tmp_path, "a")[1].read_text())
    assert marker["sigma"] == 3.0 and len(marker["key"]) == 16
