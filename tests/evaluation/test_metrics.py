"""autoseg.evaluation.metrics by hand: 1D masks with known surfaces, regions, the ignore label,
label
values beyond the dense-box limit, background and negative values (test_evaluate.py and
test_metrics_monai.py hold the 3D and MONAI comparisons)."""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.data.regions import Region
from autoseg.evaluation.metrics import LabelMetrics, case_metrics, surface


def line(n: int, *runs: tuple[int, int], value: int = 1) -> np.ndarray:
    out = np.zeros(n, dtype=np.int32)
    for start, stop in runs:
        out[start:stop] = value
    return out


def test_one_dimensional_distances_and_their_95th_percentile() -> None:
    ref, pred = line(40, (10, 20)), line(40, (12, 26))  # surfaces {10, 19} and {12, 25}
    np.testing.assert_array_equal(np.flatnonzero(surface(ref == 1)), [10, 19])
    m = case_metrics(pred, ref, [1], (0.5,), nsd_tolerance_mm=1.0)[1]
    assert (m.tp, m.fp, m.fn, m.n_pred, m.n_ref) == (8, 6, 2, 14, 10)
    assert m.dice == pytest.approx(16 / 24) and m.iou == pytest.approx(8 / 16)
    assert m.precision == pytest.approx(8 / 14) and m.recall == pytest.approx(8 / 10)
    # directed distances (mm): pred -> ref [1, 3], ref -> pred [1, 3]: 95th percentile, linear
    assert m.hd95 == pytest.approx(0.5 * (2 + 0.95 * 4))
    assert m.nsd == pytest.approx(2 / 4)  # 12 -> 10 and 10 -> 12 are within 1 mm
    wider = case_metrics(pred, ref, [1], (0.5,), nsd_tolerance_mm=3.0)[1]
    assert wider.nsd == 1.0


def test_hd95_is_the_larger_directed_distance() -> None:
    ref = line(40, (10, 20))
    pred = ref.copy()
    pred[30] = 1  # a stray voxel: pred -> ref distances [0, 0, 11], ref -> pred [0, 0]
    m = case_metrics(pred, ref, [1], (1.0,))[1]
    assert m.hd95 == pytest.approx(0.9 * 11)
    assert m.nsd == pytest.approx(4 / 5)
    swapped = case_metrics(ref, pred, [1], (1.0,))[1]
    assert swapped.hd95 == pytest.approx(0.9 * 11)
    assert (swapped.precision, swapped.recall) == (m.recall, m.precision)


def test_results_follow_the_order_of_the_labels_and_absent_labels_are_perfect() -> None:
    pred = line(20, (2, 5)) + line(20, (10, 12), value=2)
    ref = line(20, (3, 6)) + line(20, (10, 13), value=2)
    result = case_metrics(pred, ref, [2, 9, 1], (1.0,))
    assert list(result) == [2, 9, 1]
    assert result[9] == LabelMetrics(1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 0)
    assert (result[2].tp, result[2].n_ref, result[1].tp, result[1].n_pred) == (2, 3, 2, 3)


def test_label_values_beyond_the_dense_limit_score_as_small_ones() -> None:
    rng = np.random.default_rng(0)
    small = rng.integers(0, 3, size=(6, 7, 8)).astype(np.int64)
    other = rng.integers(0, 3, size=(6, 7, 8)).astype(np.int64)
    small[0], other[:, 0] = 0, 0  # boxes that do not start at 0 on every axis
    small[:, :, -1] = 0
    big = {0: 0, 1: 5000, 2: 2_000_000}
    as_big = np.vectorize(big.get)
    spacing = (1.5, 1.0, 0.5)
    want = case_metrics(small, other, [1, 2], spacing)
    got = case_metrics(as_big(small), as_big(other), [5000, 2_000_000, 4097], spacing)
    assert got[5000] == want[1] and got[2_000_000] == want[2]
    assert got[4097].n_pred == got[4097].n_ref == 0 and got[4097].dice == 1.0
    # a box that starts and ends inside the image on every axis
    corner = np.zeros((5, 5, 5), dtype=np.int64)
    corner[1:3, 2:4, 3:5] = 5000
    m = case_metrics(corner, corner, [5000], (1.0, 1.0, 1.0))[5000]
    assert (m.tp, m.dice, m.hd95) == (8, 1.0, 0.0)


def test_background_and_negative_values_are_scored_on_the_whole_image() -> None:
    pred = np.array([0, 0, 1, 1, -1, -1, 0, 0])
    ref = np.array([0, 1, 1, 1, -1, 0, 0, -1])
    result = case_metrics(pred, ref, [0, -1, 1], (1.0,))
    assert (result[0].tp, result[0].n_pred, result[0].n_ref) == (2, 4, 3)
    assert (result[-1].tp, result[-1].n_pred, result[-1].n_ref) == (1, 2, 2)
    assert (result[1].tp, result[1].n_pred, result[1].n_ref) == (2, 2, 3)


def test_regions_score_the_union_of_their_values() -> None:
    ref = line(30, (5, 15)) + line(30, (15, 20), value=2)  # whole 5..19, core 15..19
    pred = line(30, (6, 12)) + line(30, (12, 18), value=2)  # whole 6..17, core 12..17
    regions = (
        Region("whole", (1, 2), 1),
        Region("none", (7,), 7),  # absent from both: perfect, and the next is still scored
        Region("core", (2,), 2),
        Region("missed", (3,), 3),
    )
    ref[25:27] = 3  # region "missed": in the reference only
    result = case_metrics(pred, ref, [1, 2], (0.5,), regions=regions)
    assert list(result) == [1, 2, 3, 4]  # region numbers, not label values
    whole, none, core, missed = result[1], result[2], result[3], result[4]
    assert (whole.tp, whole.n_pred, whole.n_ref) == (12, 12, 15)
    assert (core.tp, core.n_pred, core.n_ref) == (3, 6, 5)
    assert whole.hd95 == pytest.approx(0.5 * (0.05 * 1 + 0.95 * 2))  # [1, 2] voxels both ways
    assert none == LabelMetrics(1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 0)
    assert (missed.dice, missed.n_ref, missed.hd95) == (0.0, 2, 15.0)  # worst: 30 x 0.5 mm


def test_background_absent_from_both_maps_is_perfect() -> None:
    full = np.ones((3, 4), dtype=np.int32)
    (m,) = case_metrics(full, full, [0], (1.0, 2.0)).values()
    assert m == LabelMetrics(1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0, 0, 0, 0, 0)
    half = full.copy()
    half[0] = 0
    m = case_metrics(half, full, [0], (1.0, 2.0))[0]  # background predicted, none there
    assert (m.dice, m.n_pred, m.n_ref, m.fp) == (0.0, 4, 0, 4)
    assert m.hd95 == pytest.approx(np.hypot(3.0, 8.0))


def test_ignored_voxels_count_as_neither_hit_nor_miss() -> None:
    ref = line(20, (2, 8)) + line(20, (8, 12), value=3)  # 3 = the ignore label
    pred = line(20, (2, 11))  # predicts label 1 over the ignored voxels too
    result = case_metrics(pred, ref, [1, 3], (1.0,), ignore_label=3)
    assert list(result) == [1]  # the ignore label itself is not scored
    m = result[1]
    assert (m.tp, m.fp, m.fn, m.dice) == (6, 0, 0, 1.0)
    plain = case_metrics(pred, ref, [1], (1.0,))[1]
    assert plain.fp == 3  # without it, they are false positives


def test_inputs_are_checked() -> None:
    a = np.zeros((3, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"spacing \(1.0,\) does not match 2 dimensions"):
        case_metrics(a, a, [1], (1.0,))
    with pytest.raises(ValueError, match="prediction must hold integers, found float32"):
        case_metrics(a.astype(np.float32), a, [1], (1.0, 1.0))
    with pytest.raises(ValueError, match="reference must hold integers, found float64"):
        case_metrics(a, a.astype(np.float64), [1], (1.0, 1.0))
    with pytest.raises(ValueError, match=r"prediction shape \(3, 3\) differs from reference"):
        case_metrics(a, a[:2], [1], (1.0, 1.0))
    mask = np.eye(3, dtype=bool)
    m = case_metrics(mask, mask, [1], (1, 1))[1]  # bool maps: True is label 1
    assert (m.tp, m.dice) == (3, 1.0)
