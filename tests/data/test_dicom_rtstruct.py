"""RTSTRUCT labels: contours rasterised on the series' grid, holes, overlaps, refusals."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from autoseg.data.dicom import DicomVolume, find_dicom, read_series  # noqa: E402
from autoseg.data.dicom_dataset import convert_dicom_dataset  # noqa: E402
from autoseg.data.dicom_rtstruct import read_rtstruct_labels  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from tests.synthetic_dicom import make_volume, oblique_affine, write_series  # noqa: E402


def square(i0: float, i1: float, j0: float, j1: float) -> np.ndarray:
    return np.array([[i0, j0], [i1, j0], [i1, j1], [i0, j1]])


def write_rtstruct(path: Path, volume: DicomVolume, rois: dict, kinds: dict | None = None) -> Path:
    """``rois``: name -> [(slice k, polygon (n, 2) in voxel (i, j))]; corners in voxel units."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    source = volume.datasets[0]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(volume.image.geometry.affine)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTStructureSetStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = RTStructureSetStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "RTSTRUCT", generate_uid()
    ds.StudyInstanceUID, ds.PatientID = source.StudyInstanceUID, source.PatientID
    series = Dataset()
    series.SeriesInstanceUID = source.SeriesInstanceUID
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = source.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    frame = Dataset()
    frame.FrameOfReferenceUID = source.FrameOfReferenceUID
    frame.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [frame]
    ds.StructureSetROISequence, ds.ROIContourSequence = [], []
    for number, (name, contours) in enumerate(rois.items(), start=10):  # numbers need not be 1..
        roi = Dataset()
        roi.ROINumber, roi.ROIName = number, name
        roi.ReferencedFrameOfReferenceUID = source.FrameOfReferenceUID
        ds.StructureSetROISequence.append(roi)
        item = Dataset()
        item.ReferencedROINumber = number
        item.ContourSequence = []
        for k, polygon in contours:
            points = np.c_[polygon, np.full(len(polygon), k), np.ones(len(polygon))]
            world = (lps @ points.T).T[:, :3]
            contour = Dataset()
            contour.ContourGeometricType = (kinds or {}).get(name, "CLOSED_PLANAR")
            contour.NumberOfContourPoints = len(world)
            contour.ContourData = [f"{v:.4f}" for v in world.ravel()]
            item.ContourSequence.append(contour)
        ds.ROIContourSequence.append(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_series(tmp_path / "dicom" / "ct", make_volume(shape=(8, 16, 20)), oblique_affine())
    return tmp_path / "dicom"


def expected_labels(shape: tuple[int, ...]) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[2:5, 3:8, 4:10] = 1  # "liver": i 3.5..9.5, j 2.5..7.5 on slices 2-4
    labels[3, 5, 6:8] = 0  # its hole on slice 3: i 5.5..7.5, j 4.5..5.5
    labels[3:5, 6:10, 8:12] = 2  # "tumour", smaller: kept where it overlaps the liver
    return labels


def test_contours_are_filled_on_their_slices(folder: Path, tmp_path: Path) -> None:
    volume = read_series(find_dicom(folder).series[0])
    liver = [(k, square(3.5, 9.5, 2.5, 7.5)) for k in (2, 3, 4)] + [(3, square(5.5, 7.5, 4.5, 5.5))]
    tumour = [(k, square(7.5, 11.5, 5.5, 9.5)) for k in (3, 4)]
    write_rtstruct(
        folder / "rs.dcm",
        volume,
        {"liver": liver, "tumour": tumour, "marker": [(1, np.array([[1.0, 1.0]]))]},
        kinds={"marker": "POINT"},
    )
    labels, names = read_rtstruct_labels(folder / "rs.dcm", volume)
    assert names == {1: "liver", 2: "tumour", 3: "marker"}
    np.testing.assert_array_equal(labels, expected_labels(volume.image.geometry.shape))

    dataset = convert_dicom_dataset(folder, tmp_path / "Dataset002_RT")
    written = nib.load(str(dataset / "labelsTr" / "1_synthetic.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(written.dataobj).T, labels)


def test_contour_off_the_slices_is_refused(folder: Path) -> None:
    volume = read_series(find_dicom(folder).series[0])
    write_rtstruct(folder / "rs.dcm", volume, {"liver": [(2.5, square(3.5, 9.5, 2.5, 7.5))]})
    with pytest.raises(AutosegError, match="ROI 'liver' does not lie on a slice"):
        read_rtstruct_labels(folder / "rs.dcm", volume)
    write_series(folder.parent / "other", make_volume(shape=(8, 16, 20)), oblique_affine())
    other = read_series(find_dicom(folder.parent / "other").series[0])
    with pytest.raises(AutosegError, match="does not reference series"):
        read_rtstruct_labels(folder / "rs.dcm", other)
