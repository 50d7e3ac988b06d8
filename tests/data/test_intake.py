"""autoseg init: table first, refusals with the file and the reason, a dataset plan takes (issue 23,
item 5)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.data.dataset import load_dataset
from autoseg.data.intake import IntakeOptions, plan_intake
from autoseg.data.sources import DICOM_SERIES, list_sources
from tests.reliability_helpers import assert_clean_failure, cli, save_nifti, snapshot

SHAPE = (12, 14, 10)  # (i, j, k)


def _case(rng: np.random.Generator, value: int = 1) -> tuple[np.ndarray, np.ndarray]:
    image = rng.normal(100, 10, SHAPE).astype(np.float32)
    label = np.zeros(SHAPE, np.uint8)
    label[3:8, 4:10, 2:7] = value
    image[label > 0] += 50
    return image, label


def habits(root: Path) -> tuple[Path, Path]:
    """Images and labels as users name them: a space, _seg, -labels, _0000 on one side."""
    rng = np.random.default_rng(0)
    images, labels = root / "images", root / "labels"
    for image_name, label_name in [
        ("patient 1", "patient 1_seg"),
        ("p2", "p2-labels"),
        ("p3", "p3"),
        ("p4", "p4_mask"),
    ]:
        image, label = _case(rng)
        path = save_nifti(image, images / f"{image_name}.nii.gz", spacing=(0.8, 0.8, 2.0))
        raw = gzip.decompress(path.read_bytes())  # as another tool writes it: a gzip time
        path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=1234))
        save_nifti(label, labels / f"{label_name}.nii.gz", spacing=(0.8, 0.8, 2.0))
    return images, labels


def init(*args: object):
    return cli("init", *args)


def test_init_then_plan_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # the table's names unwrapped
    images, labels = habits(tmp_path)
    before = (snapshot(images), snapshot(labels))
    out = tmp_path / "datasets" / "Dataset007_Habits"
    result = init(images, labels, "-o", out, "--channel", "MRI", "--label", "lesion")
    assert result.exit_code == 0, result.output
    table = result.output[: result.output.index("written:")]
    for name in ("patient 1.nii.gz", "patient 1_seg.nii.gz", "p2-labels.nii.gz", "patient_1"):
        assert name in table  # the table comes before anything is written
    assert (snapshot(images), snapshot(labels)) == before  # the inputs are only read
    spec = load_dataset(out)  # autoseg's loader reads it back
    assert [c.case_id for c in spec.cases] == ["p2", "p3", "p4", "patient_1"]
    assert spec.channels == ("MRI",) and spec.labels == {0: "background", 1: "lesion"}
    copied = out / "imagesTr" / "patient_1_0000.nii.gz"
    assert copied.read_bytes() == (images / "patient 1.nii.gz").read_bytes()  # bytes copied
    assert copied.read_bytes()[4:8] == (1234).to_bytes(4, "little")  # not a rewrite
    report = json.loads((out / "init_report.json").read_text())
    sources = {c["case"]: c["label"] for c in report["cases"]}
    assert sources["p2"] == str(labels / "p2-labels.nii.gz")
    home = tmp_path / "home"
    planned = cli("plan", out, "--home", home, "--workers", 1)
    assert planned.exit_code == 0, planned.output
    assert (home / "Dataset007_Habits" / "plans.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_dry_run_prints_and_writes_nothing(tmp_path: Path) -> None:
    images, labels = habits(tmp_path)
    out = tmp_path / "Dataset001_X"
    result = init(images, labels, "-o", out, "--channel", "MRI", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "p4_mask.nii.gz" in result.output and "dry run" in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels"]


def test_unmatched_sources_stop_unless_skipped(tmp_path: Path) -> None:
    images, labels = habits(tmp_path)
    save_nifti(np.zeros(SHAPE, np.float32), images / "lonely.nii.gz")
    out = tmp_path / "Dataset002_X"
    result = init(images, labels, "-o", out, "--channel", "MRI")
    assert_clean_failure(result, "lonely.nii.gz", "image without label", "nothing written")
    assert "not matched" in result.output and not out.exists()
    result = init(images, labels, "-o", out, "--channel", "MRI", "--skip-unmatched")
    assert result.exit_code == 0, result.output
    assert len(load_dataset(out).cases) == 4
    report = json.loads((out / "init_report.json").read_text())
    assert report["unmatched"][0]["source"] == str(images / "lonely.nii.gz")


def test_mask_0_255_is_refused_and_binarized_on_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(2):
        image, label = _case(rng, value=255)
        save_nifti(image, tmp_path / "i" / f"c{i}.nii.gz")
        save_nifti(label, tmp_path / "l" / f"c{i}.nii.gz")
    out = tmp_path / "Dataset003_Mask"
    args = (tmp_path / "i", tmp_path / "l", "-o", out, "--channel", "CT")
    result = init(*args)
    assert_clean_failure(result, str(tmp_path / "l"), "0, 255", "--binarize", "c0.nii.gz")
    assert not out.exists()
    result = init(*args, "--binarize")
    assert result.exit_code == 0, result.output
    written = np.asanyarray(nib.load(str(out / "labelsTr" / "c0.nii.gz")).dataobj)
    original = np.asanyarray(nib.load(str(tmp_path / "l" / "c0.nii.gz")).dataobj)
    assert np.array_equal(written, (original > 0).astype(np.uint8))
    assert np.allclose(nib.load(str(out / "labelsTr" / "c0.nii.gz")).affine, np.eye(4))


@pytest.mark.parametrize(
    ("values", "dtype", "fragment"),
    [
        ([0.0, 0.5], np.float32, "non-integer label values (0.5"),
        ([0, -1], np.int16, "negative label values (-1"),
        ([0, 2], np.uint8, "not consecutive"),
    ],
)
def test_bad_label_values_name_the_file(tmp_path: Path, values, dtype, fragment: str) -> None:
    image, label = _case(np.random.default_rng(2))
    bad = label.astype(dtype) * np.asarray(values[1], dtype)
    save_nifti(image, tmp_path / "i" / "a.nii.gz")
    save_nifti(bad, tmp_path / "l" / "a.nii.gz")
    result = init(tmp_path / "i", tmp_path / "l", "-o", tmp_path / "D", "--channel", "CT")
    where = "l" if fragment == "not consecutive" else "a.nii.gz"
    assert_clean_failure(result, where, fragment)
    assert not (tmp_path / "D").exists()


def _mismatched(tmp_path: Path, label_affine: np.ndarray, shape=SHAPE) -> tuple[Path, Path]:
    image, label = _case(np.random.default_rng(3))
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = (-50, 20, 7)
    nib.save(nib.Nifti1Image(image, affine), str(_folder(tmp_path / "i") / "a.nii.gz"))
    label = np.zeros(shape, np.uint8) if shape != SHAPE else label
    label.flat[:5] = 1
    nib.save(nib.Nifti1Image(label, label_affine), str(_folder(tmp_path / "l") / "a.nii.gz"))
    return tmp_path / "i", tmp_path / "l"


def _folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_geometry_listed_then_fixed_with_a_report(tmp_path: Path) -> None:
    drift = np.diag([0.8, 0.8, 2.0, 1.0])
    drift[:3, 3] = (-50.2, 20, 7)  # the origin a quarter voxel off
    images, labels = _mismatched(tmp_path, drift)
    before = snapshot(labels)
    out = tmp_path / "Dataset004_Geo"
    args = (images, labels, "-o", out, "--channel", "CT")
    result = init(*args)
    assert_clean_failure(result, str(labels / "a.nii.gz"), "origin", "--fix-geometry")
    assert not out.exists()
    result = init(*args, "--fix-geometry")
    assert result.exit_code == 0, result.output
    fixed = nib.load(str(out / "labelsTr" / "a.nii.gz"))
    assert np.allclose(fixed.affine, nib.load(str(images / "a.nii.gz")).affine)
    original = np.asanyarray(nib.load(str(labels / "a.nii.gz")).dataobj)
    assert np.array_equal(np.asanyarray(fixed.dataobj), original)  # voxels untouched
    with open(out / "geometry_fixes.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["field"] == "origin" and row["source_label"] == str(labels / "a.nii.gz")
    assert row["before"].startswith("(-50.2")
    assert float(row["max_shift_voxels"]) == pytest.approx(0.25, abs=1e-4)
    assert cli("plan", out, "--home", tmp_path / "h", "--no-preprocess").exit_code == 0
    assert snapshot(labels) == before  # a new file, the source label untouched


def test_flipped_or_distant_label_is_not_fixed(tmp_path: Path) -> None:
    flipped = np.diag([-0.8, 0.8, 2.0, 1.0])
    flipped[:3, 3] = (-50, 20, 7)
    images, labels = _mismatched(tmp_path, flipped)
    result = init(images, labels, "-o", tmp_path / "D", "--channel", "CT", "--fix-geometry")
    assert_clean_failure(result, "a.nii.gz", "direction", "not fixed", "--geometry-tolerance 0.5")
    big = ("--fix-geometry", "--geometry-tolerance", 1e6)  # the user says: the header is junk
    assert init(images, labels, "-o", tmp_path / "D", "--channel", "CT", *big).exit_code == 0


def test_shape_mismatch_is_an_error(tmp_path: Path) -> None:
    images, labels = _mismatched(tmp_path, np.eye(4), shape=(12, 14, 11))
    result = init(images, labels, "-o", tmp_path / "D", "--channel", "CT", "--fix-geometry")
    assert_clean_failure(result, "a.nii.gz", "shape (11, 14, 12) differs from its image's")


def test_output_refusals(tmp_path: Path) -> None:
    images, labels = habits(tmp_path)
    assert_clean_failure(init(images, labels, "-o", tmp_path / "D"), "--channel CT")
    inside = images / "Dataset001_In"
    assert_clean_failure(init(images, labels, "-o", inside, "--channel", "CT"), "outside")
    assert_clean_failure(
        init(images, labels, "-o", tmp_path / "bad name", "--channel", "CT"), "'bad name'"
    )
    taken = tmp_path / "Dataset005_Taken"
    (taken / "keep.txt").parent.mkdir()
    (taken / "keep.txt").write_text("mine")
    result = init(images, labels, "-o", taken, "--channel", "CT")
    assert_clean_failure(result, str(taken), "not empty", "--overwrite")
    result = init(images, labels, "-o", taken, "--channel", "CT", "--overwrite")
    assert_clean_failure(result, "no dataset.json")
    assert (taken / "keep.txt").read_text() == "mine"
    # --overwrite replaces a dataset folder, in one rename
    (taken / "keep.txt").unlink()
    taken.rmdir()
    assert init(images, labels, "-o", taken, "--channel", "CT").exit_code == 0
    result = init(images, labels, "-o", taken, "--channel", "MRI", "--overwrite")
    assert result.exit_code == 0, result.output
    assert load_dataset(taken).channels == ("MRI",)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_several_channels_from_4d_files_are_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for name in ("a", "b"):
        image, label = _case(rng)
        save_nifti(np.stack([image, image * 2], -1), tmp_path / "i" / f"{name}.nii.gz")
        save_nifti(label, tmp_path / "l" / f"{name}.nii", spacing=(1, 1, 1))  # another ending
    out = tmp_path / "Dataset006_Two"
    args = (tmp_path / "i", tmp_path / "l", "-o", out)
    assert_clean_failure(init(*args, "--channel", "T1"), "2 channel(s) in the file")
    result = init(*args, "--channel", "T1", "--channel", "T2")
    assert result.exit_code == 0, result.output
    assert "split 2 channels" in result.output
    spec = load_dataset(out)
    assert [p.name for p in spec.cases[0].images] == ["a_0000.nii.gz", "a_0001.nii.gz"]
    second = np.asanyarray(nib.load(str(spec.cases[0].images[1])).dataobj)
    source = np.asanyarray(nib.load(str(tmp_path / "i" / "a.nii.gz")).dataobj)
    assert np.array_equal(second, source[..., 1])
    assert spec.cases[0].label.name == "a.nii.gz"  # .nii converted with the rest


def test_a_failure_while_writing_leaves_nothing(tmp_path: Path, monkeypatch) -> None:
    from autoseg.data import intake_write
    from autoseg.errors import AutosegError

    images, labels = habits(tmp_path)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise AutosegError("disk trouble")
        return original(*args, **kwargs)

    original = intake_write._copy
    monkeypatch.setattr(intake_write, "_copy", failing)
    out = tmp_path / "Dataset008_Half"
    assert_clean_failure(init(images, labels, "-o", out, "--channel", "CT"), "disk trouble")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels"]


def _dicom_series(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(2):  # the 128-byte preamble and "DICM": recognised, not decoded
        (folder / f"IM{i:04d}").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    return folder


def test_an_unreadable_dicom_series_folder_is_refused(tmp_path: Path) -> None:
    series = _dicom_series(tmp_path / "i" / "patient7")
    (tmp_path / "i" / "notes").mkdir()
    found, ignored = list_sources(tmp_path / "i")
    assert [(s.name, s.kind) for s in found] == [("patient7", DICOM_SERIES)]
    assert [p.name for p, _ in ignored] == ["notes"]
    save_nifti(np.zeros(SHAPE, np.uint8), tmp_path / "l" / "patient7_seg.nii.gz")
    result = init(tmp_path / "i", tmp_path / "l", "-o", tmp_path / "D", "--channel", "CT")
    assert_clean_failure(result, str(series))
    assert not (tmp_path / "D").exists()


def test_dicom_series_is_one_more_source(tmp_path: Path) -> None:
    """A series folder pairs by its name and is written as CASE_0000.nii.gz: the voxels in HU
    (int16) and the geometry of autoseg's DICOM reader; the label pairs with it; plan reads it."""
    pytest.importorskip("pydicom")
    from autoseg.data.dicom import find_dicom, read_series
    from autoseg.data.io import read_array
    from tests.synthetic_dicom import make_volume, oblique_affine, write_series

    series = tmp_path / "i" / "patient7"
    volume = make_volume(shape=(10, 14, 12))
    write_series(series, volume, oblique_affine(), suffix="")
    reference = read_series(find_dicom(series).series[0]).image
    label = np.zeros((12, 14, 10), np.uint8)  # (i, j, k) = (X, Y, Z)
    label[3:8, 4:9, 2:6] = 1
    ras = nib.Nifti1Image(label, reference.geometry.affine)
    (tmp_path / "l").mkdir()
    nib.save(ras, tmp_path / "l" / "patient7_seg.nii.gz")
    plan = plan_intake(tmp_path / "i", tmp_path / "l", tmp_path / "D", IntakeOptions(("CT",)))
    assert not plan.problems and plan.ending == ".nii.gz"
    assert plan.cases[0].pair.images[0].path == series
    out = tmp_path / "Dataset007_Dicom"
    result = init(tmp_path / "i", tmp_path / "l", "-o", out, "--channel", "CT")
    assert result.exit_code == 0, result.output
    written, geometry = read_array(out / "imagesTr" / "patient7_0000.nii.gz")
    assert written.dtype == np.int16
    np.testing.assert_array_equal(written, volume)
    assert geometry.same_grid(reference.geometry)
    assert [c.case_id for c in load_dataset(out).cases] == ["patient7"]


def test_labels_beside_images_in_one_folder(tmp_path: Path) -> None:
    """BraTS style: one folder, channels named, the label with _seg."""
    rng = np.random.default_rng(5)
    for case in ("b1", "b2"):
        image, label = _case(rng)
        for channel in ("t1", "t1ce"):
            save_nifti(image, tmp_path / "all" / f"{case}_{channel}.nii.gz")
        save_nifti(label, tmp_path / "all" / f"{case}_seg.nii.gz")
    out = tmp_path / "Dataset009_Brats"
    folder = tmp_path / "all"
    result = init(folder, folder, "-o", out, "--channel", "T1", "--channel", "T1ce")
    assert result.exit_code == 0, result.output
    spec = load_dataset(out)
    assert [c.case_id for c in spec.cases] == ["b1", "b2"]
    first = spec.cases[0].images
    assert first[1].read_bytes() == (folder / "b1_t1ce.nii.gz").read_bytes()


def test_a_4d_label_is_refused(tmp_path: Path) -> None:
    image, label = _case(np.random.default_rng(6))
    save_nifti(image, tmp_path / "i" / "a.nii.gz")
    save_nifti(np.stack([label, label], -1), tmp_path / "l" / "a.nii.gz")
    result = init(tmp_path / "i", tmp_path / "l", "-o", tmp_path / "D", "--channel", "CT")
    assert_clean_failure(
        result, str(tmp_path / "l" / "a.nii.gz"), "2 channels; a label map has one"
    )


def test_label_names_are_checked(tmp_path: Path) -> None:
    images, labels = habits(tmp_path)
    args = (images, labels, "-o", tmp_path / "D", "--channel", "CT")
    assert_clean_failure(init(*args, "--label", "a", "--label", "A"), "distinct")
    assert_clean_failure(init(*args, "--label", "background"), "'background' is label 0's")
    assert_clean_failure(init(*args, "--label", "a", "--label", "b"), "2 --label name(s) for 1")
    # a name the loader refuses (looks like the ignore label) stops before the rename
    assert_clean_failure(init(*args, "--label", "Ignore "), str(tmp_path / "D" / "dataset.json"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "labels"]


def test_nothing_to_write_is_refused(tmp_path: Path) -> None:
    save_nifti(np.zeros(SHAPE, np.float32), tmp_path / "i" / "a.nii.gz")
    (tmp_path / "l").mkdir()
    args = (tmp_path / "i", tmp_path / "l", "-o", tmp_path / "D", "--channel", "CT")
    assert_clean_failure(init(*args, "--skip-unmatched"), "no image pairs with a label")
    (tmp_path / "e").mkdir()
    empty = (tmp_path / "e", tmp_path / "l", "-o", tmp_path / "D", "--channel", "CT")
    assert_clean_failure(init(*empty), "no image sources found")
    assert not (tmp_path / "D").exists()
