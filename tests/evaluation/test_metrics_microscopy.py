"""Pixel error, Rand error and detection F1 (2D label maps) and their place in evaluate."""

from __future__ import annotations

import numpy as np
from PIL import Image as PILImage

from autoseg.evaluation.evaluate import evaluate_arrays, evaluate_folders
from autoseg.evaluation.metrics_microscopy import matched_objects, object_metrics
from autoseg.evaluation.report import Evaluation


def discs(centres: list[tuple[int, int]], radius: int = 5, shape=(40, 60)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for cy, cx in centres:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    return mask


def test_identical_masks_are_perfect() -> None:
    ref = discs([(10, 10), (25, 40)])
    m = object_metrics(ref, ref)
    assert (m.pixel_error, m.rand_error, m.detection_f1) == (0.0, 0.0, 1.0)


def test_pixel_error_is_the_fraction_of_differing_pixels() -> None:
    ref = np.zeros((10, 10), bool)
    pred = ref.copy()
    pred[0, :5] = True
    assert object_metrics(pred, ref).pixel_error == 0.05


def test_detection_f1_counts_objects_matched_at_iou_half() -> None:
    ref = discs([(10, 10), (10, 30), (30, 50)])
    pred = discs([(10, 10), (10, 30), (30, 12)])  # two found, one missed, one spurious
    m = object_metrics(pred, ref)
    assert (m.matched, m.n_pred_objects, m.n_ref_objects) == (2, 3, 3)
    assert np.isclose(m.detection_f1, 4 / 6)


def test_a_shifted_object_below_iou_half_is_not_matched() -> None:
    ref = discs([(20, 20)], radius=6)
    assert object_metrics(discs([(20, 22)], radius=6), ref).detection_f1 == 1.0  # IoU ~0.8
    assert object_metrics(discs([(20, 28)], radius=6), ref).detection_f1 == 0.0  # IoU < 0.5


def test_merging_two_cells_is_seen_by_rand_error_and_f1_not_by_pixels() -> None:
    ref = discs([(20, 20), (20, 32)])  # two cells, a 1-pixel gap between them
    merged = ref.copy()
    merged[18:23, 25:28] = True  # a bridge: one object
    m = object_metrics(merged, ref)
    assert object_metrics(ref, ref).n_ref_objects == 2
    assert m.n_pred_objects == 1 and m.detection_f1 == 0.0
    assert m.rand_error > 0.2 and m.pixel_error < 0.01


def test_empty_cases_give_no_nan() -> None:
    empty = np.zeros((8, 8), bool)
    one = empty.copy()
    one[2:4, 2:4] = True
    assert object_metrics(empty, empty).detection_f1 == 1.0
    m = object_metrics(empty, one)
    assert (m.rand_error, m.detection_f1) == (1.0, 0.0)
    assert matched_objects(np.zeros((3, 3), int), np.ones((3, 3), int)) == 0


def test_single_pixel_objects_give_no_nan() -> None:
    """No two pixels in one object: skimage's Rand error divides 0 by 0 (was NaN)."""
    spots = np.zeros((5, 5), bool)
    spots[1, 1] = spots[3, 3] = True
    same = object_metrics(spots, spots)
    assert (same.pixel_error, same.rand_error, same.detection_f1) == (0.0, 0.0, 1.0)
    half = spots.copy()
    half[3, 3] = False  # one spot missed: seen by F1 and pixel error, no pair split or merged
    missed = object_metrics(half, spots)
    assert (missed.pixel_error, missed.rand_error) == (1 / 25, 0.0)
    assert missed.detection_f1 == 2 * 1 / (1 + 2)
    merged = spots.copy()
    merged[1:4, 1] = merged[3, 1:4] = True  # one object joining both spots: a merge
    assert object_metrics(merged, spots).rand_error == 1.0


def test_evaluate_adds_object_metrics_for_2d_maps_only() -> None:
    ref = discs([(10, 10), (25, 40)]).astype(np.uint8)[None]
    pred = discs([(10, 10)]).astype(np.uint8)[None]
    result = evaluate_arrays([("a", pred, ref, (1.0, 1.0, 1.0))], [1])
    assert np.isclose(result.cases[0].objects[1].detection_f1, 2 / 3)
    assert np.isclose(result.object_means[1].detection_f1, 2 / 3)
    volume = np.repeat(ref, 3, axis=0)
    assert evaluate_arrays([("v", volume, volume, (1.0, 1.0, 1.0))], [1]).object_means == {}


def test_evaluate_folders_of_pngs_writes_object_columns(tmp_path) -> None:
    for folder, mask in (("pred", discs([(10, 10)])), ("ref", discs([(10, 10), (25, 40)]))):
        (tmp_path / folder).mkdir()
        PILImage.fromarray(mask.astype(np.uint8)).save(tmp_path / folder / "c.png")
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    evaluation.to_csv(tmp_path / "e.csv")
    header, row = (tmp_path / "e.csv").read_text().splitlines()[:2]
    assert header.endswith("pixel_error,rand_error,detection_f1")
    assert np.isclose(float(row.split(",")[-1]), 2 / 3)
    evaluation.to_json(tmp_path / "e.json")
    assert Evaluation.from_json(tmp_path / "e.json") == evaluation
