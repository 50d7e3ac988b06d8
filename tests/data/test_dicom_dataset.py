"""DICOM for training: series + DICOM SEG labels -> a new NIfTI dataset, originals untouched."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from autoseg.data.dataset import load_dataset  # noqa: E402
from autoseg.data.dicom import find_dicom, read_series  # noqa: E402
from autoseg.data.dicom_dataset import convert_dicom_dataset, dicom_training_pairs  # noqa: E402
from autoseg.data.dicom_seg import write_seg  # noqa: E402
from autoseg.errors import AutosegError, DatasetError  # noqa: E402
from tests.reliability_helpers import assert_clean_failure, cli  # noqa: E402
from tests.synthetic_dicom import make_volume, oblique_affine, write_series  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def labelled_folder(root: Path) -> dict[str, np.ndarray]:
    """Three series (one without SEG); the two SEGs name their segments in different orders."""
    truth = {}
    for number, names in ((1, {1: "liver", 2: "tumour"}), (2, {1: "tumour", 2: "liver"})):
        write_series(
            root / f"series{number}",
            make_volume(shape=(8, 16, 20), seed=number),
            oblique_affine(degrees=(10.0 * number, 0, 0), flip_x=number == 2),
            series_number=number,
            description="ct",
        )
        volume = read_series(find_dicom(root / f"series{number}").series[0])
        labels = np.zeros(volume.image.geometry.shape, np.uint8)
        labels[2:5, 3:9, 4:10] = 1
        labels[5:7, 8:12, 11:18] = 2
        write_seg(
            labels, volume.datasets, names, root / "segs" / f"seg{number}.dcm", model="manual"
        )
        by_name = {n: v for v, n in names.items()}
        truth[f"{number}_ct"] = np.select(
            [labels == by_name["liver"], labels == by_name["tumour"]], [1, 2], 0
        )
    write_series(
        root / "unlabelled",
        make_volume(shape=(8, 16, 20)),
        oblique_affine(),
        series_number=3,
        description="ct",
    )
    return truth


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_convert_writes_a_dataset_and_never_touches_the_source(tmp_path: Path) -> None:
    truth = labelled_folder(tmp_path / "dicom")
    before = digest(tmp_path / "dicom")
    pairs, problems = dicom_training_pairs(tmp_path / "dicom")
    assert [p.series.name for p in pairs] == ["1_ct", "2_ct"] and problems == []

    result = cli("init", tmp_path / "dicom", "-o", tmp_path / "Dataset001_Liver")
    assert result.exit_code == 0, result.output
    assert "2 case(s) written" in result.output
    assert digest(tmp_path / "dicom") == before  # the originals, byte for byte
    spec = load_dataset(tmp_path / "Dataset001_Liver")
    assert spec.labels == {0: "background", 1: "liver", 2: "tumour"}
    assert spec.channels == ("CT",) and [c.case_id for c in spec.cases] == ["1_ct", "2_ct"]
    sources = json.loads((tmp_path / "Dataset001_Liver" / "dicom_sources.json").read_text())
    for name, labels in truth.items():
        series = next(s for s in find_dicom(tmp_path / "dicom").series if s.name == name)
        assert sources[name]["series_instance_uid"] == series.uid
        volume = read_series(series)
        image = nib.load(str(tmp_path / "Dataset001_Liver" / "imagesTr" / f"{name}_0000.nii.gz"))
        label = nib.load(str(tmp_path / "Dataset001_Liver" / "labelsTr" / f"{name}.nii.gz"))
        for img in (image, label):
            np.testing.assert_allclose(img.affine, volume.image.geometry.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asanyarray(image.dataobj).T, volume.image.array[0])
        np.testing.assert_array_equal(np.asanyarray(label.dataobj).T, labels)


def test_refusals_leave_nothing_behind(tmp_path: Path) -> None:
    labelled_folder(tmp_path / "dicom")
    shutil.rmtree(tmp_path / "dicom" / "series2")  # seg2 now references a missing series
    shutil.copy(TEST_FILES / "rtstruct.dcm", tmp_path / "dicom" / "rtstruct.dcm")
    with pytest.raises(DatasetError) as caught:
        convert_dicom_dataset(tmp_path / "dicom", tmp_path / "out")
    message = str(caught.value)
    assert "seg2.dcm: its image series" in message and "is not in" in message
    assert "rtstruct.dcm: its image series" in message  # pydicom's RTSTRUCT, without its CT
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dicom"]  # no temp folder left

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = cli("init", tmp_path / "dicom", "-o", tmp_path / "full")
    assert_clean_failure(result, str(tmp_path / "full"), "not an empty folder")
    with pytest.raises(AutosegError, match="must not be inside the DICOM folder"):
        convert_dicom_dataset(tmp_path / "dicom", tmp_path / "dicom" / "dataset")
    (tmp_path / "none").mkdir()
    with pytest.raises(AutosegError, match="no DICOM SEG or RTSTRUCT referencing an image series"):
        convert_dicom_dataset(tmp_path / "none", tmp_path / "out")


def test_init_without_labels_refuses_the_options_of_label_folders(tmp_path: Path) -> None:
    """Without LABELS, channel and label names come from the DICOM files: asking for them (or
    for the label-folder fixes) is refused before anything is read or written."""
    (tmp_path / "dicom").mkdir()
    for extra in (["--channel", "CT"], ["--label", "liver"], ["--binarize"], ["--fix-geometry"]):
        result = cli("init", tmp_path / "dicom", "-o", tmp_path / "out", *extra)
        assert_clean_failure(result, extra[0], "only with a LABELS folder")
        assert not (tmp_path / "out").exists()
