"""Pinned resampling of anisotropic data (issue 16, behaviour 2): exact arrays, derived by hand.

Grid convention (voxel edges aligned): output voxel j of an axis resampled from n to m voxels
sits at input coordinate (j + 0.5) * n / m - 0.5, clamped to the edge voxels. Along the thick
axis labels and probabilities take the *nearest* slice (order 0); in-plane they are linear
(order 1; for labels: each label's indicator map, then the largest value, ties to the smaller
label).
"""

from __future__ import annotations

import numpy as np
import pytest

import autoseg.preprocessing.resample as rs
from autoseg.data.io import Geometry, Image
from autoseg.data.plans import Configuration, Normalization
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.preprocess import preprocess_image, restore_probabilities
from autoseg.preprocessing.resample import resample, resample_labels, target_shape


def _config(spacing: tuple[float, float, float], anisotropic_axis: int | None) -> Configuration:
    return Configuration(
        name="3d_fullres",
        spacing=spacing,
        patch_size=(4, 4, 4),
        batch_size=2,
        strides=((1, 1, 1),),
        kernel_sizes=((3, 3, 3),),
        features_per_stage=(4,),
        normalization=(Normalization("none"),),
        anisotropic_axis=anisotropic_axis,
    )


def _image(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> Image:
    geometry = Geometry(shape=shape, spacing=spacing, affine=tuple(map(tuple, np.eye(4))))
    return Image(np.ones((1, *shape), dtype=np.float32), geometry)


# Three thick slices (5 mm) -> five at 3 mm: Z positions -0.2, 0.4, 1.0, 1.6, 2.2, i.e. nearest
# slices 0, 0, 1, 2, 2. X: three voxels at 1 mm -> four at 0.75 mm: positions -0.125, 0.625,
# 1.375, 2.125, i.e. s[0], 0.375 s[0] + 0.625 s[1], 0.625 s[1] + 0.375 s[2], s[2].
LABEL_SLICES = np.array([[2, 1, 1], [2, 2, 2], [0, 0, 1]], dtype=np.int8)  # (Z, X), Y = 1
EXPECTED_LABELS = np.array(
    [
        [2, 1, 1, 1],  # slice 0 in-plane: 2 | (.375 of 2, .625 of 1) -> 1 | 1 | 1
        [2, 1, 1, 1],  # Z 0.4: nearest is slice 0 (linear along Z would give 2 at X = 1)
        [2, 2, 2, 2],
        [0, 0, 0, 1],  # slice 2: 0 | 0 | (.625 of 0, .375 of 1) -> 0 | 1
        [0, 0, 0, 1],
    ],
    dtype=np.int8,
)


def test_labels_take_the_nearest_thick_slice_in_preprocessing() -> None:
    label = LABEL_SLICES[:, None, :]  # (3, 1, 3)
    image = _image((3, 1, 3), (5.0, 1.0, 1.0))
    _, seg, props = preprocess_image(image, _config((3.0, 1.0, 0.75), 0), label, "c")
    assert props.shape_after_resample == (5, 1, 4) and props.anisotropic_axis == 0
    np.testing.assert_array_equal(seg[0, :, 0, :], EXPECTED_LABELS)


def test_isotropic_labels_are_linear_along_every_axis() -> None:
    """The same case without the thick-axis rule: Z 0.4 mixes slices 0 and 1 (X = 1 -> 2)."""
    label = LABEL_SLICES[:, None, :]
    image = _image((3, 1, 3), (5.0, 1.0, 1.0))
    _, seg, _ = preprocess_image(image, _config((3.0, 1.0, 0.75), None), label, "c")
    expected = EXPECTED_LABELS.copy()
    # Z 0.4, X 1: label 1 scores 0.6 * 0.625 = 0.375, label 2 0.6 * 0.375 + 0.4 * 1 = 0.625
    expected[1, 1] = 2
    # Z 1.6 = 0.4 slice 1 + 0.6 slice 2; X 2: label 2 scores 0.4, background 0.6 * 0.625 = 0.375
    expected[3, 2] = 2
    np.testing.assert_array_equal(seg[0, :, 0, :], expected)


def test_probabilities_restore_with_the_nearest_thick_slice() -> None:
    """Five preprocessed slices back to three: Z positions 1/3, 2, 11/3 -> slices 0, 2, 4."""
    rng = np.random.default_rng(0)
    fg = rng.uniform(0.0, 1.0, (5, 2, 2)).astype(np.float32)
    probs = np.stack([1 - fg, fg])  # (2, 5, 2, 2)
    props = CaseProperties(
        case_id="c",
        original_shape=(5, 4, 3),
        original_spacing=(5.0, 1.0, 1.0),
        crop_bbox=((1, 4), (1, 3), (0, 2)),
        shape_after_crop=(3, 2, 2),
        target_spacing=(3.0, 1.0, 1.0),
        shape_after_resample=(5, 2, 2),
        plans_key="k",
        anisotropic_axis=0,
    )
    out = restore_probabilities(probs, props)
    expected = np.zeros((2, 5, 4, 3), dtype=np.float32)
    expected[0] = 1.0  # outside the crop: background
    expected[:, 1:4, 1:3, 0:2] = probs[:, [0, 2, 4]]
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------- mutation survivors


def test_probabilities_are_linear_in_plane_when_restored() -> None:
    """X: 2 -> 4 voxels at positions -0.25, 0.25, 0.75, 1.25: p0, .75 p0 + .25 p1, ..., p1."""
    from autoseg.preprocessing.resample import resample_probabilities

    probs = np.array([[[[0.2, 1.0]]], [[[0.8, 0.0]]]], dtype=np.float32)  # (2, 1, 1, 2)
    out = resample_probabilities(probs, (1, 1, 4))
    expected = np.array([[0.2, 0.4, 0.8, 1.0], [0.8, 0.6, 0.2, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(out[:, 0, 0], expected, atol=1e-6)
    assert out.dtype == np.float32


def test_one_dimensional_and_default_orders() -> None:
    from scipy import ndimage

    from autoseg.preprocessing.resample import resample, resample_image

    line = np.array([0.0, 1.0, 3.0])
    np.testing.assert_allclose(
        resample(line, (6,), (1,)), [0.0, 0.25, 0.75, 1.5, 2.5, 3.0], atol=1e-6
    )
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 5, 6, 7))
    out = resample_image(image, (7, 9, 4))  # default: cubic, like scipy's zoom
    zoom = ndimage.zoom(image[0], (7 / 5, 9 / 6, 4 / 7), order=3, mode="nearest", grid_mode=True)
    np.testing.assert_allclose(out[0], zoom, atol=1e-4)
    assert out.dtype == np.float32
    same = resample_image(image, (5, 6, 7))
    assert same.dtype == np.float32 and np.array_equal(same, image.astype(np.float32))


def test_label_ties_go_to_the_smaller_label_and_the_default_order_is_linear() -> None:
    # X: 2 -> 3 voxels; the middle one lies exactly between labels 1 and 2 (0.5 each)
    line = np.array([[[1, 2]]], dtype=np.uint8)
    assert resample_labels(line, (1, 1, 3)).tolist() == [[[1, 1, 2]]]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (5, 6, 7)).astype(np.uint8)
    linear = resample_labels(labels, (9, 11, 13), order=1)
    np.testing.assert_array_equal(resample_labels(labels, (9, 11, 13)), linear)
    assert not np.array_equal(resample_labels(labels, (9, 11, 13), order=3), linear)


def test_resampled_labels_have_the_requested_dtype() -> None:
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 2
    assert resample_labels(labels, (6, 6, 6)).dtype == np.int8  # the default
    assert resample_labels(labels, (6, 6, 6), dtype=np.int16).dtype == np.int16
    assert resample_labels(np.zeros((4, 4, 4), np.uint8), (6, 6, 6)).dtype == np.int8
    assert resample_labels(labels, (4, 4, 4)).dtype == np.int8


def test_volumes_stay_float32_and_shape_mismatches_are_refused() -> None:
    ints = np.arange(8, dtype=np.int64).reshape(2, 2, 2)
    same = resample(ints, (2, 2, 2), (1, 1, 1))  # nothing to do: still float32
    assert same.dtype == np.float32 and same.tolist() == ints.tolist()
    with pytest.raises(ValueError):
        resample(ints, (2, 2), (1, 1))
    with pytest.raises(ValueError):
        target_shape((10, 10), (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))


def test_resampling_in_blocks_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    volume = rng.normal(size=(9, 11, 5)).astype(np.float32)  # Y (11) > X (5)
    for order in (1, 3):
        whole = rs.resample(volume, (13, 7, 8), (order,) * 3)
        monkeypatch.setattr(rs, "BLOCK_VOXELS", 20)  # a few rows per block
        blocks = rs.resample(volume, (13, 7, 8), (order,) * 3)
        monkeypatch.undo()
        # the same sums, but BLAS may pick other kernels for narrower blocks: float32 rounding
        np.testing.assert_allclose(blocks, whole, rtol=1e-6, atol=1e-6)
