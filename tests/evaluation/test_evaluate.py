from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console
from scipy.spatial.distance import cdist

from autoseg.errors import DatasetError
from autoseg.evaluation.evaluate import evaluate_arrays, evaluate_folders
from autoseg.evaluation.metrics import case_metrics
from autoseg.evaluation.report import Evaluation


def _brute_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels with a face-neighbour outside the mask (or outside the image), by plain shifts."""
    padded = np.pad(mask, 1)
    surface = np.zeros_like(mask)
    z, y, x = mask.shape
    for dz, dy, dx in ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)):
        neighbour = padded[1 + dz : 1 + dz + z, 1 + dy : 1 + dy + y, 1 + dx : 1 + dx + x]
        surface |= mask & ~neighbour
    return surface


def _brute_distances(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[np.ndarray, np.ndarray]:
    sp = np.argwhere(_brute_surface(pred)) * np.asarray(spacing)
    sr = np.argwhere(_brute_surface(ref)) * np.asarray(spacing)
    d = cdist(sp, sr)
    return d.min(axis=1), d.min(axis=0)


def test_overlap_metrics_from_known_counts():
    ref = np.zeros((3, 4, 5), dtype=np.uint8)
    pred = np.zeros_like(ref)
    ref[1, 1, 0:5] = 1  # 5 voxels along X
    ref[1, 2, 0] = 1  # 6 reference voxels
    pred[1, 1, 0:3] = 1  # 3 true positives
    pred[0, 0, 0] = 1  # 1 false positive
    m = case_metrics(pred, ref, [1], (1.0, 1.0, 1.0))[1]
    assert (m.tp, m.fp, m.fn, m.n_pred, m.n_ref) == (3, 1, 3, 4, 6)
    assert m.dice == pytest.approx(2 * 3 / (2 * 3 + 1 + 3))
    assert m.iou == pytest.approx(3 / 7)
    assert m.precision == pytest.approx(0.75)
    assert m.recall == pytest.approx(0.5)


def test_identical_masks_are_perfect():
    ref = np.zeros((8, 8, 8), dtype=np.int16)
    ref[2:6, 3:7, 1:5] = 2
    m = case_metrics(ref.copy(), ref, [2], (1.5, 0.5, 0.5))[2]
    assert (m.dice, m.iou, m.precision, m.recall, m.hd95, m.nsd) == (1, 1, 1, 1, 0, 1)


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"), [(0, (2.0, 0.7, 0.9), 6.0), (1, (2.0, 0.7, 0.9), 2.1)]
)
def test_planes_a_known_distance_apart(axis, spacing, expected):
    shape = (10, 9, 8)
    ref = np.zeros(shape, dtype=np.uint8)
    pred = np.zeros_like(ref)
    index_ref = [slice(None)] * 3
    index_pred = [slice(None)] * 3
    index_ref[axis], index_pred[axis] = 2, 5  # single-voxel-thick planes, 3 voxels apart
    ref[tuple(index_ref)] = 1
    pred[tuple(index_pred)] = 1
    m = case_metrics(pred, ref, [1], spacing)[1]
    assert m.hd95 == pytest.approx(expected)
    assert m.dice == 0.0
    below = case_metrics(pred, ref, [1], spacing, nsd_tolerance_mm=expected - 0.1)[1]
    above = case_metrics(pred, ref, [1], spacing, nsd_tolerance_mm=expected + 0.1)[1]
    assert below.nsd == 0.0
    assert above.nsd == 1.0


def test_surface_metrics_match_brute_force_including_image_border():
    rng = np.random.default_rng(0)
    shape = (12, 14, 10)
    spacing = (2.5, 0.8, 1.1)
    grid = np.indices(shape).transpose(1, 2, 3, 0) * np.asarray(spacing)
    for trial in range(4):
        centre_r = rng.uniform(0, 1, 3) * np.asarray(shape) * spacing
        centre_p = centre_r + rng.normal(0, 2.0, 3)
        ref_mask = np.linalg.norm(grid - centre_r, axis=-1) < rng.uniform(4, 9)
        pred_mask = np.linalg.norm(grid - centre_p, axis=-1) < rng.uniform(4, 9)
        pred_mask |= rng.random(shape) < 0.01  # scattered false positives anywhere
        ref = ref_mask.astype(np.uint8) * 3
        pred = pred_mask.astype(np.uint8) * 3
        tol = 2.0
        m = case_metrics(pred, ref, [3], spacing, nsd_tolerance_mm=tol)[3]
        d_pr, d_rp = _brute_distances(pred_mask, ref_mask, spacing)
        hd95 = max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))
        assert m.hd95 == pytest.approx(hd95), trial
        expected_nsd = ((d_pr <= tol).sum() + (d_rp <= tol).sum()) / (d_pr.size + d_rp.size)
        assert m.nsd == pytest.approx(expected_nsd), trial


def test_empty_cases_follow_the_documented_rules():
    shape, spacing = (4, 5, 6), (3.0, 1.0, 2.0)
    diagonal = math.sqrt(12**2 + 5**2 + 12**2)
    empty = np.zeros(shape, dtype=np.uint8)
    full = empty.copy()
    full[1:3, 1:3, 1:3] = 1
    both = case_metrics(empty, empty, [1], spacing)[1]
    assert (both.dice, both.iou, both.precision, both.recall, both.nsd, both.hd95) == (
        1,
        1,
        1,
        1,
        1,
        0,
    )
    for pred, ref in ((empty, full), (full, empty)):
        one = case_metrics(pred, ref, [1], spacing)[1]
        assert (one.dice, one.iou, one.precision, one.recall, one.nsd) == (0, 0, 0, 0, 0)
        assert one.hd95 == pytest.approx(diagonal)

    evaluation = evaluate_arrays(
        [("a", empty, empty, spacing), ("b", empty, full, spacing), ("c", full, full, spacing)],
        labels={1: "organ", 0: "background"},
    )
    assert list(evaluation.labels) == [1]  # background never scored
    means = evaluation.label_means[1]
    for name in ("dice", "iou", "precision", "recall", "hd95", "nsd"):
        assert math.isfinite(getattr(means, name)), name
    assert means.dice == pytest.approx(2 / 3)
    assert means.hd95 == pytest.approx(diagonal / 3)
    assert evaluation.mean_dice == pytest.approx(2 / 3)


def test_case_metrics_rejects_mismatched_inputs():
    a = np.zeros((3, 3, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape"):
        case_metrics(a, np.zeros((3, 3, 4), dtype=np.uint8), [1], (1, 1, 1))
    with pytest.raises(ValueError, match="integers"):
        case_metrics(a.astype(np.float32), a, [1], (1, 1, 1))


def _save(array_zyx: np.ndarray, path: Path, spacing_zyx=(2.0, 1.0, 1.0)) -> None:
    xyz = np.transpose(array_zyx, (2, 1, 0))  # file order (i, j, k) = (X, Y, Z)
    spacing_xyz = tuple(reversed(spacing_zyx))
    img = nib.Nifti1Image(xyz.astype(np.uint8), np.diag([*spacing_xyz, 1.0]))
    img.header.set_zooms(spacing_xyz)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _pair(shape=(6, 7, 8)) -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros(shape, dtype=np.uint8)
    ref[1:4, 2:5, 2:6] = 1
    ref[4, 2:5, 2:6] = 2
    pred = ref.copy()
    pred[1, 2:5, 2:6] = 0  # misses one slice of label 1
    return pred, ref


def test_evaluate_folders_scores_and_writes(tmp_path: Path):
    pred, ref = _pair()
    for case in ("c1", "c2"):
        _save(pred, tmp_path / "pred" / f"{case}.nii.gz")
        _save(ref, tmp_path / "ref" / f"{case}.nii.gz")
    (tmp_path / "pred" / "summary.json").write_text("{}")  # not an image: ignored
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert list(evaluation.labels) == [1, 2]
    assert [c.case_id for c in evaluation.cases] == ["c1", "c2"]
    expected = case_metrics(pred, ref, [1, 2], (2.0, 1.0, 1.0))
    assert evaluation.cases[0].metrics == expected
    # by hand, not by the same function: label 1 lost one of its three 12-voxel slices
    for case in evaluation.cases:
        one, two = case.metrics[1], case.metrics[2]
        assert (one.tp, one.fp, one.fn, one.n_pred, one.n_ref) == (24, 0, 12, 24, 36)
        assert one.dice == pytest.approx(0.8) and one.iou == pytest.approx(24 / 36)
        assert one.precision == 1.0 and one.recall == pytest.approx(24 / 36)
        assert (two.tp, two.fp, two.fn) == (12, 0, 0)
        assert (two.dice, two.hd95, two.nsd) == (1.0, 0.0, 1.0)
    assert expected[1].dice == pytest.approx(2 * 24 / (24 + 36))
    assert evaluation.mean_dice == pytest.approx((expected[1].dice + 1.0) / 2)
    parallel = evaluate_folders(tmp_path / "pred", tmp_path / "ref", workers=2)
    assert parallel == evaluation

    evaluation.to_json(tmp_path / "out" / "summary.json")
    assert Evaluation.from_json(tmp_path / "out" / "summary.json") == evaluation
    assert "NaN" not in (tmp_path / "out" / "summary.json").read_text()
    json.loads((tmp_path / "out" / "summary.json").read_text())

    evaluation.to_csv(tmp_path / "out" / "metrics.csv")
    with open(tmp_path / "out" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 2  # case x label
    assert [r["case"] for r in rows] == ["c1", "c1", "c2", "c2"]
    assert float(rows[0]["dice"]) == pytest.approx(expected[1].dice)
    assert int(rows[0]["tp"]) == 24

    console = Console(record=True, width=120)
    evaluation.print_table(console)
    text = console.export_text()
    assert "HD95" in text and "NSD" in text and f"{expected[1].dice:.4f}" in text


def test_evaluate_folders_with_named_labels(tmp_path: Path):
    pred, ref = _pair()
    _save(pred, tmp_path / "pred" / "c1.nii.gz")
    _save(ref, tmp_path / "ref" / "c1.nii.gz")
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "ref", labels={2: "b", 3: "c"})
    assert evaluation.labels == {2: "b", 3: "c"}
    assert evaluation.label_means[3].dice == 1.0  # absent from both


def test_evaluate_folders_reports_every_problem_together(tmp_path: Path):
    pred, ref = _pair()
    _save(ref, tmp_path / "ref" / "ok.nii.gz")
    _save(pred, tmp_path / "pred" / "ok.nii.gz")
    _save(ref, tmp_path / "ref" / "missing.nii.gz")  # no prediction
    _save(pred, tmp_path / "pred" / "extra.nii.gz")  # no reference
    _save(ref, tmp_path / "ref" / "shape.nii.gz")
    _save(pred[:, :, :-1], tmp_path / "pred" / "shape.nii.gz")
    _save(ref, tmp_path / "ref" / "spacing.nii.gz")
    _save(pred, tmp_path / "pred" / "spacing.nii.gz", spacing_zyx=(3.0, 1.0, 1.0))
    _save(ref, tmp_path / "ref" / "broken.nii.gz")
    (tmp_path / "pred" / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetError) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    problems = {
        Path(p.path).relative_to(tmp_path).as_posix(): p.message for p in info.value.problems
    }
    assert set(problems) == {
        "ref/missing.nii.gz",
        "pred/extra.nii.gz",
        "pred/shape.nii.gz",
        "pred/spacing.nii.gz",
        "pred/broken.nii.gz",
    }
    assert "no prediction" in problems["ref/missing.nii.gz"]
    assert "no reference" in problems["pred/extra.nii.gz"]
    assert "shape" in problems["pred/shape.nii.gz"]
    assert "ref/shape.nii.gz" in problems["pred/shape.nii.gz"]
    assert "spacing" in problems["pred/spacing.nii.gz"]
    assert "evaluation inputs" in str(info.value)


def test_one_empty_mask_keeps_its_counts_and_worst_distance():
    """Mutation survivor: the counts of a missed label, and HD95 = the image diagonal."""
    ref = np.zeros((4, 5, 6), dtype=np.uint8)
    ref[1:2, 1:3, 1:4] = 1  # 6 voxels
    m = case_metrics(np.zeros_like(ref), ref, [1], (2.0, 1.0, 1.0))[1]
    assert (m.tp, m.fp, m.fn, m.n_pred, m.n_ref) == (0, 0, 6, 0, 6)
    assert (m.dice, m.nsd) == (0.0, 0.0)
    assert m.hd95 == pytest.approx(np.sqrt(8.0**2 + 5.0**2 + 6.0**2))
    swapped = case_metrics(ref, np.zeros_like(ref), [1], (2.0, 1.0, 1.0))[1]
    assert (swapped.tp, swapped.fp, swapped.fn, swapped.n_pred, swapped.n_ref) == (0, 6, 0, 6, 0)


def test_nsd_counts_surface_points_exactly_at_the_tolerance():
    """A cube shifted by one 1 mm voxel: every surface distance is 0 or exactly 1 mm."""
    ref = np.zeros((8, 8, 8), dtype=np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    pred = np.roll(ref, 1, axis=2)
    assert case_metrics(pred, ref, [1], (1.0, 1.0, 1.0), nsd_tolerance_mm=1.0)[1].nsd == 1.0
    assert case_metrics(pred, ref, [1], (1.0, 1.0, 1.0), nsd_tolerance_mm=0.999)[1].nsd < 1.0


def test_label_maps_that_are_not_non_negative_integers_are_named(tmp_path: Path):
    pred, ref = _pair()

    def save_raw(array_zyx: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = np.moveaxis(array_zyx, (0, 1, 2), (2, 1, 0)) if array_zyx.ndim == 3 else array_zyx
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), str(path))

    for case in ("half", "negative", "four_d", "whole_floats"):
        _save(ref, tmp_path / "ref" / f"{case}.nii.gz")
    save_raw(pred.astype(np.float32) + 0.5, tmp_path / "pred" / "half.nii.gz")
    save_raw(pred.astype(np.int16) - 1, tmp_path / "pred" / "negative.nii.gz")
    save_raw(np.zeros((8, 7, 6, 2), dtype=np.uint8), tmp_path / "pred" / "four_d.nii.gz")
    save_raw(pred.astype(np.float32), tmp_path / "pred" / "whole_floats.nii.gz")  # accepted
    with pytest.raises(DatasetError) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    problems = {Path(p.path).name: p.message for p in info.value.problems}
    assert problems == {
        "half.nii.gz": "label map holds non-integer values",
        "negative.nii.gz": "label map holds negative values",
        "four_d.nii.gz": "expected a 3D label map, found shape (2, 6, 7, 8)",
    }
    for case in ("half", "negative", "four_d"):
        (tmp_path / "pred" / f"{case}.nii.gz").unlink()
        (tmp_path / "ref" / f"{case}.nii.gz").unlink()
    floats = evaluate_folders(tmp_path / "pred", tmp_path / "ref").cases[0].metrics
    assert floats == case_metrics(pred, ref, [1, 2], (2.0, 1.0, 1.0))
