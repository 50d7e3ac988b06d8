"""predict --stats: volume, voxels, components and intensity per case and label (issue 23, 6)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.evaluation.statistics import case_statistics, label_statistics
from tests.reliability_helpers import cli, make_model, save_nifti


def _by_label(rows):
    return {r.label: r for r in rows}


def test_volume_count_and_intensity_by_hand() -> None:
    labels = np.zeros((6, 8, 10), np.uint8)  # (Z, Y, X)
    labels[1:3, 2:5, 3:7] = 1  # a 2x3x4 box: 24 voxels
    image = np.full((1, 6, 8, 10), -1000.0, np.float32)
    image[0, 1, 2:5, 3:7] = 10.0  # half the box 10, half 20: mean 15, std 5
    image[0, 2, 2:5, 3:7] = 20.0
    rows = _by_label(label_statistics(labels, image, (2.0, 1.5, 0.5), {1: "liver", 2: "spleen"}))
    box = rows[1]
    assert (box.name, box.voxel_count, box.components) == ("liver", 24, 1)
    assert box.volume_ml == pytest.approx(24 * 2.0 * 1.5 * 0.5 / 1000)  # 0.036 ml
    assert box.intensity_mean == pytest.approx((15.0,))
    assert box.intensity_std == pytest.approx((5.0,))
    absent = rows[2]  # named but not predicted: a row all the same, with nothing inside
    assert (absent.voxel_count, absent.volume_ml, absent.components) == (0, 0.0, 0)
    assert absent.intensity_mean == (None,) and absent.intensity_std == (None,)


def test_components_are_26_connected() -> None:
    labels = np.zeros((5, 5, 5), np.uint8)
    labels[0, 0, 0] = labels[4, 4, 4] = 1  # two blobs apart
    labels[0, 0, 4] = labels[1, 1, 3] = 2  # touching at a corner only: one object
    labels[3, 0, 0] = 3
    labels[4, 0, 1] = 3  # touching at an edge only: one object
    rows = _by_label(label_statistics(labels, np.zeros((5, 5, 5)), (1, 1, 1), {}))
    assert {v: r.components for v, r in rows.items()} == {1: 2, 2: 1, 3: 1}
    assert rows[3].name == "label_3"  # found but not named


def test_every_channel_and_float_precision() -> None:
    labels = np.zeros((2, 3, 4), np.int16)
    labels[:, :, :2] = 1
    rng = np.random.default_rng(0)
    image = (3000.0 + rng.normal(0, 1e-3, size=(2, 2, 3, 4))).astype(np.float32)
    (row,) = label_statistics(labels, image, (1, 1, 1), {1: "a"})
    inside = image[:, labels == 1].astype(np.float64)
    assert row.intensity_mean == pytest.approx(tuple(inside.mean(axis=1)), rel=1e-9)
    assert row.intensity_std == pytest.approx(tuple(inside.std(axis=1)), rel=1e-6)


def test_ct_intensity_is_in_hounsfield_units(tmp_path: Path) -> None:
    """A CT stored as unsigned values with scl_inter -1024: the mean is in HU, not stored units."""
    stored = np.full((4, 5, 6), 1024, np.uint16)  # (i, j, k): 0 HU, water
    stored[:2] += 40  # 40 HU inside the label
    img = nib.Nifti1Image(stored, np.diag([0.8, 0.8, 2.5, 1]))
    img.header.set_slope_inter(1.0, -1024.0)
    nib.save(img, str(tmp_path / "ct.nii.gz"))
    label = np.zeros((4, 5, 6), np.uint8)
    label[:2] = 1
    save_nifti(label, tmp_path / "pred.nii.gz", spacing=(0.8, 0.8, 2.5))
    (row,) = case_statistics(tmp_path / "pred.nii.gz", [tmp_path / "ct.nii.gz"], {1: "x"}, "ct")
    assert row.intensity_mean == pytest.approx((40.0,))
    assert row.volume_ml == pytest.approx(60 * 0.8 * 0.8 * 2.5 / 1000)


def _inputs(folder: Path, n: int = 3) -> None:
    rng = np.random.default_rng(1)
    for i in range(n):
        image = rng.normal(100, 20, size=(16, 20, 16)).astype(np.float32)
        save_nifti(image, folder / f"case_{i}.nii.gz", spacing=(1.0, 0.5, 2.0))


def _expected(prediction: Path, image: Path, value: int) -> dict:
    """The numbers recomputed from the two files with nibabel and numpy alone."""
    pred = nib.load(str(prediction))
    labels = np.asanyarray(pred.dataobj)
    mask = labels == value
    voxels = int(mask.sum())
    intensity = np.asanyarray(nib.load(str(image)).dataobj).astype(np.float64)[mask]
    return {
        "voxel_count": voxels,
        "volume_ml": voxels * float(np.prod(pred.header.get_zooms()[:3])) / 1000,
        "mean": float(intensity.mean()) if voxels else None,
    }


def test_predict_stats_end_to_end(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    _inputs(tmp_path / "in")
    out = tmp_path / "out"
    args = ("predict", "-i", tmp_path / "in", "-o", out, "-m", model, "--device", "cpu")
    result = cli(*args, "--no-tta", "--stats")
    assert result.exit_code == 0, result.output
    assert "statistics.csv" in result.output
    with open(out / "statistics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    document = json.loads((out / "statistics.json").read_text())
    assert [(r["case"], r["name"]) for r in rows] == [
        (f"case_{i}", name) for i in range(3) for name in ("anterior", "posterior")
    ]
    assert document["connectivity"] == 26 and document["channels"] == ["MRI"]
    for row in rows:
        prediction = out / f"{row['case']}.nii.gz"
        want = _expected(prediction, tmp_path / "in" / prediction.name, int(row["label"]))
        assert int(row["voxel_count"]) == want["voxel_count"]
        assert float(row["volume_ml"]) == pytest.approx(want["volume_ml"], rel=1e-5)
        entry = document["cases"][row["case"]][row["name"]]
        assert entry["voxel_count"] == want["voxel_count"]
        if want["mean"] is None:
            assert row["intensity_mean"] == "" and entry["intensity_mean"] == [None]
        else:
            assert entry["intensity_mean"][0] == pytest.approx(want["mean"], rel=1e-6)
    assert any(int(r["voxel_count"]) for r in rows)  # the random model predicts something
    # outputs already there (skipped) are measured too: the statistics cover the folder
    (out / "statistics.csv").unlink()
    result = cli(*args, "--no-tta", "--stats")
    assert result.exit_code == 0 and "3 skipped" in result.output, result.output
    with open(out / "statistics.csv", newline="") as fh:
        assert list(csv.DictReader(fh)) == rows

    # a share of a --parts run writes its own pair, with its cases only
    shared = tmp_path / "shared"
    result = cli(*args[:4], shared, *args[5:], "--no-tta", "--stats", "--part", 1, "--parts", 2)
    assert result.exit_code == 0, result.output
    assert not (shared / "statistics.csv").exists()
    with open(shared / "statistics.part1of2.csv", newline="") as fh:
        part_cases = {r["case"] for r in csv.DictReader(fh)}
    predicted = {p.name.removesuffix(".nii.gz") for p in shared.glob("case_*.nii.gz")}
    assert part_cases == predicted and 0 < len(predicted) < 3


def test_predict_without_stats_writes_none(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    _inputs(tmp_path / "in", n=1)
    out = tmp_path / "out"
    result = cli("predict", "-i", tmp_path / "in", "-o", out, "-m", model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert not list(out.glob("statistics*"))


def test_a_prediction_on_another_grid_is_refused(tmp_path: Path) -> None:
    from autoseg.errors import AutosegError

    save_nifti(np.zeros((4, 5, 6), np.float32), tmp_path / "image.nii.gz")
    save_nifti(np.zeros((4, 5, 7), np.uint8), tmp_path / "pred.nii.gz")
    with pytest.raises(AutosegError, match="pred.nii.gz: grid .* differs from its input"):
        case_statistics(tmp_path / "pred.nii.gz", [tmp_path / "image.nii.gz"], {1: "a"}, "c")
