"""``autoseg predict`` on DICOM studies: series as cases, --series, NIfTI or DICOM SEG out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from autoseg.data.dicom import find_dicom, read_series  # noqa: E402
from autoseg.data.dicom_seg import read_seg_labels  # noqa: E402
from tests.inference.test_predict import make_model, oblique_nifti  # noqa: E402
from tests.reliability_helpers import assert_clean_failure, cli  # noqa: E402
from tests.synthetic_dicom import make_volume, oblique_affine, write_series  # noqa: E402

_ANATOMY = ["SCT", "91723000", "Anatomical Structure"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("home"), folds=("0",))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """Two series of 8 slices of 20x24 in one study, nested, files without ending."""
    root = tmp_path / "study"
    study_uid = pydicom.uid.generate_uid()
    vol = make_volume(shape=(8, 20, 24))
    write_series(
        root / "a" / "1",
        vol,
        oblique_affine(),
        series_number=1,
        description="ax",
        study_uid=study_uid,
        suffix="",
    )
    write_series(
        root / "b",
        make_volume(shape=(8, 20, 24), seed=2),
        oblique_affine(degrees=(0, 0, 0), flip_x=True),
        series_number=2,
        description="flipped",
        study_uid=study_uid,
    )
    return root


def test_each_series_is_a_case_with_its_geometry(tmp_path: Path, model: Path, study: Path) -> None:
    result = cli("predict", "-i", study, "-o", tmp_path / "out", "-m", model)
    assert result.exit_code == 0, result.output
    assert "2 written" in result.output and "1_ax" in result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "1_ax.nii.gz",
        "2_flipped.nii.gz",
    ]
    series = {s.name: s for s in find_dicom(study).series}
    for name, item in series.items():
        written = nib.load(str(tmp_path / "out" / f"{name}.nii.gz"))
        geometry = read_series(item).image.geometry
        np.testing.assert_allclose(written.affine, geometry.affine, atol=1e-5)
        assert written.shape == tuple(reversed(geometry.shape))
        assert int(written.header["sform_code"]) == 1


def test_dicom_seg_out_equals_the_nifti_prediction(
    tmp_path: Path, model: Path, study: Path
) -> None:
    uid = next(s.uid for s in find_dicom(study).series if s.name == "2_flipped")
    nifti = cli("predict", "-i", study, "-o", tmp_path / "n", "-m", model, "--series", uid)
    assert nifti.exit_code == 0, nifti.output
    assert [p.name for p in (tmp_path / "n").iterdir()] == ["2_flipped.nii.gz"]
    codes = tmp_path / "codes.json"
    hippocampus = ["SCT", "5366008", "Hippocampus"]
    codes.write_text(json.dumps({"posterior": {"category": _ANATOMY, "type": hippocampus}}))
    seg = cli(
        "predict",
        "-i",
        study,
        "-o",
        tmp_path / "s",
        "-m",
        model,
        "--series",
        uid,
        "--output-format",
        "dicom-seg",
        "--save-probabilities",
        "--seg-codes",
        codes,
    )
    assert seg.exit_code == 0, seg.output
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [
        "2_flipped.npz",
        "2_flipped.seg.dcm",
    ]
    with np.load(tmp_path / "s" / "2_flipped.npz") as probs:
        assert probs["probabilities"].shape[1:] == (8, 20, 24)  # (K, Z, Y, X) on the series' grid
    volume = read_series(next(s for s in find_dicom(study).series if s.uid == uid))
    labels, names = read_seg_labels(tmp_path / "s" / "2_flipped.seg.dcm", volume.datasets)
    expected = np.asanyarray(nib.load(str(tmp_path / "n" / "2_flipped.nii.gz")).dataobj).T
    np.testing.assert_array_equal(labels, expected)  # segment numbers 1, 2 = labels 1, 2
    assert names == {1: "anterior", 2: "posterior"}
    ds = pydicom.dcmread(tmp_path / "s" / "2_flipped.seg.dcm")
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeValue for s in ds.SegmentSequence]
    assert types == ["85756007", "5366008"]  # anterior: tissue; posterior: from --seg-codes
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert (
        ds.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmSource
        == "Task99_Synthetic/default/3d_fullres"
    )


def test_refusals_exit_2_naming_file_and_reason(tmp_path: Path, model: Path, study: Path) -> None:
    result = cli("predict", "-i", study, "-o", tmp_path / "o", "-m", model, "--series", "1.2.3")
    assert_clean_failure(result, "--series 1.2.3", "no such SeriesInstanceUID", "1_ax")

    broken = tmp_path / "broken"
    shutil.copytree(study, broken)
    files = sorted((broken / "b").iterdir())
    victim = next(f for f in files if int(pydicom.dcmread(f).InstanceNumber) == 4)
    victim.unlink()  # a missing slice in series 2: series 1 is still predicted
    result = cli("predict", "-i", broken, "-o", tmp_path / "o2", "-m", model)
    assert_clean_failure(result, "1 series failed", "gap(s)", "slice(s) missing", str(broken / "b"))
    assert [p.name for p in (tmp_path / "o2").iterdir()] == ["1_ax.nii.gz"]

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("nothing")
    result = cli("predict", "-i", empty, "-o", tmp_path / "o3", "-m", model)
    assert_clean_failure(result, str(empty), "no image files or DICOM image series found")

    result = cli("predict", "-i", study, "-o", study / "out", "-m", model)
    assert_clean_failure(result, "must not be (inside) the DICOM input folder")

    nifti = tmp_path / "nifti"
    oblique_nifti(nifti / "case.nii.gz", (16, 16, 8))
    for extra in (["--output-format", "dicom-seg"], ["--send", "dicom://PACS@localhost:104"]):
        result = cli("predict", "-i", nifti, "-o", tmp_path / "o4", "-m", model, *extra)
        assert_clean_failure(result, "only for DICOM input", str(nifti))
    result = cli(
        "predict", "-i", study, "-o", tmp_path / "o5", "-m", model, "--output-format", "dicom"
    )
    assert_clean_failure(result, "--output-format 'dicom'", "nifti, dicom-seg")
    result = cli(
        "predict",
        "-i",
        study,
        "-o",
        tmp_path / "o6",
        "-m",
        model,
        "--send",
        "http://localhost:8042",
    )
    assert_clean_failure(result, "--send http://localhost:8042", "dicomweb://HOST:PORT/PATH")
    assert not any((tmp_path / f"o{i}").exists() for i in (3, 4, 5, 6))


def test_without_pydicom_a_folder_without_images_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from autoseg.errors import AutosegError
    from autoseg.inference.dicom_predict import list_series

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "pydicom" else real(n, *a)
    )
    with pytest.raises(
        AutosegError, match=r"no image files found .*pip install 'autoseg\[dicom\]'"
    ):
        list_series([tmp_path])


def test_a_multi_frame_series_gives_a_seg(tmp_path: Path, model: Path) -> None:
    from tests.data.test_dicom_series import multiframe

    files = write_series(tmp_path / "frames", make_volume(shape=(8, 20, 24)), oblique_affine())
    source = pydicom.dcmread(multiframe(tmp_path / "study", files))
    result = cli(
        "predict",
        "-i",
        tmp_path / "study",
        "-o",
        tmp_path / "out",
        "-m",
        model,
        "--output-format",
        "dicom-seg",
    )
    assert result.exit_code == 0, result.output
    [path] = (tmp_path / "out").iterdir()
    assert path.name.endswith(".seg.dcm")
    seg = pydicom.dcmread(path)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
