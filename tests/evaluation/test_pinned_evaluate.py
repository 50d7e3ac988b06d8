"""evaluate pinned by hand: which files of a folder are cases, label values found in the files,
the report of 2D label maps (object metrics in both CSVs, the summary's ``mean`` row),
``evaluate_arrays`` with label lists, an ignore label and regions, and the table a user reads.

Written against the survivors of ``benchmarks/mutation.py evaluate`` (docs/testing.md)."""

from __future__ import annotations

import csv
import dataclasses
import math
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from rich.console import Console

from autoseg.data.regions import Region
from autoseg.errors import DatasetError
from autoseg.evaluation.evaluate import evaluate_arrays, evaluate_folders
from autoseg.evaluation.report import Evaluation, MeanMetrics

SPACING = (1.0, 1.0, 1.0)


def _save(array_zyx: np.ndarray, path: Path, dtype=np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    xyz = np.ascontiguousarray(np.transpose(array_zyx, (2, 1, 0)).astype(dtype))
    nib.save(nib.Nifti1Image(xyz, np.eye(4)), str(path))


def _cube() -> np.ndarray:
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    return ref


def _problems(info: pytest.ExceptionInfo[DatasetError], root: Path) -> dict[str, str]:
    return {Path(p.path).relative_to(root).as_posix(): p.message for p in info.value.problems}


# ------------------------------------------------------------------------- folders and files
def test_hidden_files_folders_and_other_files_are_not_cases(tmp_path: Path) -> None:
    for folder in ("pred", "ref"):
        _save(_cube(), tmp_path / folder / "c1.nii.gz")
    # macOS leaves "._<name>" resource files beside copied images: not readable label maps
    (tmp_path / "pred" / "._c1.nii.gz").write_bytes(b"\x00\x05\x16\x07 Mac OS X")
    _save(_cube(), tmp_path / "pred" / ".c2.nii.gz")  # hidden: no reference, yet not a problem
    (tmp_path / "pred" / "notes.txt").write_text("not an image")
    (tmp_path / "pred" / "c3.nii.gz").mkdir()  # a folder with an image ending
    evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert [c.case_id for c in evaluation.cases] == ["c1"]
    assert evaluation.label_means[1].dice == 1.0


def test_a_second_file_for_a_case_and_missing_or_empty_folders_are_named(tmp_path: Path) -> None:
    _save(_cube(), tmp_path / "pred" / "c1.nii")
    _save(_cube(), tmp_path / "pred" / "c1.nii.gz")  # the same case id, found second
    for folder in ("pred", "ref"):
        _save(_cube(), tmp_path / folder / "c2.nii.gz")  # read on after the second file
    _save(_cube(), tmp_path / "ref" / "c1.nii.gz")
    with pytest.raises(DatasetError) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert _problems(info, tmp_path) == {"pred/c1.nii.gz": "second prediction for case 'c1'"}
    assert str(info.value).splitlines()[0] == "1 problem(s) found in the evaluation inputs:"

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no images here")
    with pytest.raises(DatasetError) as info:
        evaluate_folders(tmp_path / "empty", tmp_path / "nowhere")
    assert _problems(info, tmp_path) == {
        "empty": "no prediction files found",
        "nowhere": "reference folder not found",
    }


def test_a_reference_without_prediction_is_an_error_unless_chill(tmp_path: Path) -> None:
    for folder in ("pred", "ref"):
        _save(_cube(), tmp_path / folder / "c1.nii.gz")
    _save(_cube(), tmp_path / "ref" / "c2.nii.gz")
    with pytest.raises(DatasetError) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert _problems(info, tmp_path) == {"ref/c2.nii.gz": "no prediction for case 'c2'"}
    chill = evaluate_folders(tmp_path / "pred", tmp_path / "ref", chill=True)
    assert [c.case_id for c in chill.cases] == ["c1"]


def test_a_prediction_on_another_grid_names_both_spacings(tmp_path: Path) -> None:
    _save(_cube(), tmp_path / "ref" / "c.nii.gz")
    path = tmp_path / "pred" / "c.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(_cube(), np.diag([2.0, 1.0, 1.0, 1.0])), str(path))  # X: 2 mm
    with pytest.raises(DatasetError) as info:
        evaluate_folders(tmp_path / "pred", tmp_path / "ref")
    assert _problems(info, tmp_path) == {
        "pred/c.nii.gz": f"spacing (1.0, 1.0, 2.0) or affine differs from the reference "
        f"{tmp_path / 'ref' / 'c.nii.gz'} (spacing (1.0, 1.0, 1.0))"
    }


def test_label_values_found_in_the_files_include_large_ones(tmp_path: Path) -> None:
    """Values at and above 2**16 are found (without a bin per value) and scored by default."""
    ref = np.zeros((4, 4, 4), np.int32)
    ref[0, 0, :2], ref[1, :2, 0], ref[3, 3, 3] = 3, 1 << 16, 1 << 24
    pred = ref.copy()
    pred[3, 3, 3] = 0  # misses the one voxel of the largest value
    _save(ref, tmp_path / "ref" / "c.nii.gz", np.int32)
    _save(pred, tmp_path / "pred" / "c.nii.gz", np.int32)
    one = np.full((1, 1, 1), 1 << 24, np.int32)  # a single voxel, of a large value
    for folder in ("pred", "ref"):
        _save(one, tmp_path / folder / "one.nii.gz", np.int32)
    tracemalloc.start()
    try:
        evaluation = evaluate_folders(tmp_path / "pred", tmp_path / "ref")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert evaluation.labels == {3: "3", 1 << 16: "65536", 1 << 24: "16777216"}
    assert [c.metrics[1 << 24].dice for c in evaluation.cases] == [0.0, 1.0]
    # one bin per value up to 2**24 would be 128 MiB of int64 counts
    assert peak < 32 * 2**20, peak


# ---------------------------------------------------------------- 2D label maps and the report
def _two_d_cases() -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
    """Case a: label 1 right (and predicted on ignored voxels), label 2 missed; case b: label 1
    right, label 2 in neither map."""
    ref = np.zeros((1, 4, 6), np.uint8)
    ref[0, :2, :2] = 1
    ref[0, 1, 4:] = 2
    ref[0, 3, :2] = 3  # ignore
    pred = np.zeros_like(ref)
    pred[0, :2, :2] = 1
    pred[0, 3, :2] = 1  # on ignored voxels: neither a false positive nor a second object
    b = np.zeros_like(ref)
    b[0, :2, :2] = 1
    return [("a", pred, ref, SPACING), ("b", b, b.copy(), SPACING)]


LABELS_2D = {0: "background", 1: "cell", 2: "debris", 3: "ignore"}


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def test_a_2d_report_holds_object_metrics_and_the_mean_row(tmp_path: Path) -> None:
    evaluation = evaluate_arrays(_two_d_cases(), LABELS_2D)
    assert evaluation.labels == {1: "cell", 2: "debris"}
    a = evaluation.cases[0]
    assert (a.metrics[1].tp, a.metrics[1].fp, a.metrics[1].fn) == (4, 0, 0)
    assert (a.objects[1].pixel_error, a.objects[1].detection_f1) == (0.0, 1.0)
    assert (a.objects[1].n_pred_objects, a.objects[1].n_ref_objects) == (1, 1)
    assert a.objects[2].pixel_error == pytest.approx(2 / 24)
    diagonal = math.sqrt(1**2 + 4**2 + 6**2)  # missed label: HD95 is the image diagonal
    assert a.metrics[2].hd95 == pytest.approx(diagonal)

    # written twice into a folder that does not exist yet, then does
    for _ in range(2):
        paths = evaluation.write_report(tmp_path / "out" / "report")
    assert [p.name for p in paths] == [
        "evaluation.json",
        "evaluation_cases.csv",
        "evaluation_summary.csv",
    ]
    assert Evaluation.from_json(paths[0]) == evaluation
    for path in paths[1:]:
        assert "\r" not in path.read_bytes().decode()  # plain "\n" line ends

    # the same from files: scores, objects and the ignore label alike
    for case_id, pred, ref, _ in _two_d_cases():
        _save(pred, tmp_path / "pred" / f"{case_id}.nii.gz")
        _save(ref, tmp_path / "ref" / f"{case_id}.nii.gz")
    from_files = evaluate_folders(tmp_path / "pred", tmp_path / "ref", LABELS_2D)
    assert from_files == evaluation

    cases = _rows(paths[1])
    assert cases[0] == [
        "case", "label", "name", "dice", "iou", "precision", "recall", "hd95", "nsd",
        "tp", "fp", "fn", "n_pred", "n_ref", "pixel_error", "rand_error", "detection_f1",
    ]  # fmt: skip
    assert [r[:3] for r in cases[1:]] == [
        ["a", "1", "cell"],
        ["a", "2", "debris"],
        ["b", "1", "cell"],
        ["b", "2", "debris"],
    ]
    assert [float(v) for v in cases[2][3:9]] == pytest.approx([0, 0, 0, 0, diagonal, 0])
    assert [int(v) for v in cases[2][9:14]] == [0, 0, 2, 0, 2]
    assert [float(v) for v in cases[2][14:]] == pytest.approx([2 / 24, 1.0, 0.0])
    assert [float(v) for v in cases[4][3:]] == [1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]

    summary = _rows(paths[2])
    assert summary[0] == [
        "label", "name", "cases", "dice", "iou", "precision", "recall", "hd95", "nsd",
        "pixel_error", "rand_error", "detection_f1",
    ]  # fmt: skip
    assert [r[:3] for r in summary[1:]] == [
        ["1", "cell", "2"],
        ["2", "debris", "2"],
        ["mean", "all labels", "2"],
    ]
    assert [float(v) for v in summary[1][3:]] == [1, 1, 1, 1, 0, 1, 0, 0, 1]
    label_2 = [0.5, 0.5, 0.5, 0.5, diagonal / 2, 0.5, 1 / 24, 0.5, 0.5]
    assert [float(v) for v in summary[2][3:]] == pytest.approx(label_2)
    mean = [0.75, 0.75, 0.75, 0.75, diagonal / 4, 0.75, 1 / 48, 0.25, 0.75]
    assert [float(v) for v in summary[3][3:]] == pytest.approx(mean)

    # on the terminal: the label means, then the object metrics' table
    rows = _table(evaluation)
    assert rows[:4] == [
        ["label", "Dice", "IoU", "precision", "recall", "HD95", "NSD"],
        ["1 cell", "1.0000", "1.0000", "1.0000", "1.0000", "0.00", "1.0000"],
        ["2 debris", "0.5000", "0.5000", "0.5000", "0.5000", f"{diagonal / 2:.2f}", "0.5000"],
        ["mean", "0.7500", "", "", "", "", ""],
    ]
    assert rows[4:] == [
        ["label", "pixel error", "Rand error", "detection F1"],
        ["1 cell", "0.0000", "0.0000", "1.0000"],
        ["2 debris", "0.0417", "0.5000", "0.5000"],
    ]


# --------------------------------------------------------------------------- evaluate_arrays
def test_evaluate_arrays_with_a_label_list_and_its_defaults() -> None:
    ref = np.zeros((8, 8, 8), np.uint8)
    ref[2:5, 2:5, 2:5] = 1
    pred = np.roll(ref, 2, axis=2)  # two 1 mm voxels off: NSD depends on the tolerance
    pairs = [(7, pred, ref, SPACING)]
    evaluation = evaluate_arrays(pairs, [2, 0, 1])  # a list: sorted, background left out
    assert evaluation.labels == {1: "1", 2: "2"}
    assert [c.case_id for c in evaluation.cases] == ["7"]
    assert evaluation.nsd_tolerance_mm == 1.0
    assert evaluation.cases[0].objects == {}  # 3D: no object metrics
    assert evaluation == evaluate_arrays(pairs, [1, 2], nsd_tolerance_mm=1.0)
    wider = evaluate_arrays(pairs, [1, 2], nsd_tolerance_mm=2.0)
    assert wider.label_means[1].nsd == 1.0 > evaluation.label_means[1].nsd
    # label 1: a 3x3x3 cube moved by 2 along X: 3x3x1 voxels overlap
    assert evaluation.label_means[1].dice == pytest.approx(2 * 9 / 54)
    with pytest.raises(ValueError, match="^no cases to evaluate$"):
        evaluate_arrays([], [1])


def test_evaluate_arrays_scores_regions_on_the_union_of_their_values(tmp_path: Path) -> None:
    """Along X: reference 1 1 2 2 0 0, prediction 2 1 1 2 2 0 (a 2D map)."""
    ref = np.array([1, 1, 2, 2, 0, 0], np.uint8).reshape(1, 1, 6)
    pred = np.array([2, 1, 1, 2, 2, 0], np.uint8).reshape(1, 1, 6)
    regions = (Region("whole", (1, 2), 1), Region("core", (2,), 2))
    labels = {0: "background", 1: "edge", 2: "core label"}
    evaluation = evaluate_arrays([("c", pred, ref, SPACING)], labels, regions=regions)
    assert evaluation.labels == {1: "whole", 2: "core"}
    assert evaluation.regions == regions
    whole, core = evaluation.cases[0].metrics[1], evaluation.cases[0].metrics[2]
    assert (whole.tp, whole.fp, whole.fn) == (4, 1, 0)
    assert (core.tp, core.fp, core.fn) == (1, 2, 1)
    assert evaluation.mean_dice == pytest.approx((8 / 9 + 2 / 5) / 2)
    assert evaluation.cases[0].objects == {} and evaluation.object_means == {}
    for folder, array in (("pred", pred), ("ref", ref)):
        _save(array, tmp_path / folder / "c.nii.gz")
    from_files = evaluate_folders(tmp_path / "pred", tmp_path / "ref", labels, regions=regions)
    assert from_files == evaluation


def test_no_label_to_score_gives_a_mean_dice_of_zero() -> None:
    evaluation = evaluate_arrays([("c", _cube(), _cube(), SPACING)], [0])
    assert evaluation.labels == {} and evaluation.label_means == {}
    assert evaluation.mean_dice == 0.0


# ------------------------------------------------------------------------------ the table
def _evaluation(labels: dict[int, str]) -> Evaluation:
    means = {
        1: MeanMetrics(0.123456, 0.5, 0.99996, 1.0, 3.14159, 0.87654),
        2: MeanMetrics(0.8, 0.66667, 0.25, 0.125, 12.006, 0.0),
    }
    return Evaluation((), labels, means, 0.461728, 1.5)


def _table(evaluation: Evaluation) -> list[list[str]]:
    console = Console(record=True, width=160)
    evaluation.print_table(console)
    return [
        [cell.strip() for cell in line.strip()[1:-1].split("┃" if "┃" in line else "│")]
        for line in console.export_text().splitlines()
        if "│" in line or "┃" in line
    ]


def test_the_table_shows_each_mean_rounded_in_its_column() -> None:
    rows = _table(_evaluation({1: "liver", 2: "2"}))
    assert rows == [
        ["label", "Dice", "IoU", "precision", "recall", "HD95", "NSD"],
        ["1 liver", "0.1235", "0.5000", "1.0000", "1.0000", "3.14", "0.8765"],
        ["2", "0.8000", "0.6667", "0.2500", "0.1250", "12.01", "0.0000"],
        ["mean", "0.4617", "", "", "", "", ""],
    ]
    console = Console(record=True, width=160)
    _evaluation({1: "liver", 2: "2"}).print_table(console)
    text = console.export_text()
    assert "Evaluation of 0 case(s)" in text
    assert "NSD tolerance 1.5 mm; HD95 in mm" in text
    regions = (Region("whole", (1, 2), 1), Region("core", (2,), 2))
    by_region = _table(dataclasses.replace(_evaluation({1: "whole", 2: "core"}), regions=regions))
    assert [row[0] for row in by_region] == ["region", "1 whole", "2 core", "mean"]
