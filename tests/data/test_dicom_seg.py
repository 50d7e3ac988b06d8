"""DICOM SEG out: frames on their source slices, pixels equal to the label map, codes, UIDs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

import autoseg  # noqa: E402
from autoseg.data.dicom import DicomVolume, find_dicom, read_series  # noqa: E402
from autoseg.data.dicom_seg import load_code_map, read_seg_labels, write_seg  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from tests.synthetic_dicom import make_volume, oblique_affine, write_series  # noqa: E402

NAMES = {0: "background", 1: "Liver", 2: "left thing", 4: "tumour"}


@pytest.fixture
def volume(tmp_path: Path) -> DicomVolume:
    write_series(tmp_path / "s", make_volume(), oblique_affine(degrees=(0, 15, 0), flip_x=True))
    return read_series(find_dicom(tmp_path / "s").series[0])


def labels_for(volume: DicomVolume) -> np.ndarray:
    labels = np.zeros(volume.image.geometry.shape, dtype=np.uint8)
    labels[2:6, 4:12, 3:9] = 1
    labels[5:8, 10:16, 12:20] = 4  # overwrites part of 1; asymmetric in every axis
    labels[9, 0, 0] = 2
    return labels


def test_frames_sit_on_their_source_slices(tmp_path: Path, volume: DicomVolume) -> None:
    labels = labels_for(volume)
    path = write_seg(labels, volume.datasets, NAMES, tmp_path / "out" / "x.seg.dcm", model="M/d/3d")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert ds.SegmentationType == "BINARY"
    source = {str(s.SOPInstanceUID): z for z, s in enumerate(volume.datasets)}
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), *labels.shape[1:])
    numbers = {1: 1, 2: 2, 3: 4}  # segment number -> label value
    seen = 0
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        z = source[str(ref)]
        np.testing.assert_array_equal(frame, labels[z] == numbers[segment])
        ipp = item.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            [float(v) for v in ipp],
            [float(v) for v in volume.datasets[z].ImagePositionPatient],
            atol=1e-3,
        )
        seen += 1
    # every slice that holds a label has its frame (empty frames may be left out)
    expected = sum(int((labels[z] == v).any()) for z in range(len(labels)) for v in (1, 2, 4))
    assert seen == expected
    # and highdicom reads back the very label map, segment numbers 1..3
    back, names = read_seg_labels(path, volume.datasets)
    np.testing.assert_array_equal(back, np.array([0, 1, 2, 0, 3], np.uint8)[labels])
    assert names == {1: "Liver", 2: "left thing", 3: "tumour"}


def test_references_codes_and_algorithm(tmp_path: Path, volume: DicomVolume) -> None:
    path = write_seg(labels_for(volume), volume.datasets, NAMES, tmp_path / "x.dcm", model="M/d/3d")
    ds = pydicom.dcmread(path)
    source = volume.datasets[0]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesInstanceUID != source.SeriesInstanceUID
    segments = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    codes = {
        n: (
            s.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodeValue,
            s.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
        )
        for n, s in segments.items()
    }
    assert codes == {
        1: ("91723000", "10200004", "SCT"),  # anatomical structure: liver
        2: ("85756007", "85756007", "SCT"),  # unknown name: tissue
        3: ("49755003", "108369006", "SCT"),  # morphologically abnormal: neoplasm
    }
    algorithm = segments[1].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "autoseg"
    assert algorithm.AlgorithmVersion == autoseg.__version__
    assert algorithm.AlgorithmSource == "M/d/3d"
    assert segments[1].SegmentAlgorithmType == "AUTOMATIC"


def test_code_map_overrides(tmp_path: Path, volume: DicomVolume) -> None:
    codes = tmp_path / "codes.json"
    entry = {
        "category": ["SCT", "91723000", "Anatomical Structure"],
        "type": ["SCT", "18639004", "Left kidney"],
        "modifier": ["SCT", "255549009", "Anterior"],
    }
    codes.write_text(json.dumps({"left thing": entry}))
    path = write_seg(
        labels_for(volume),
        volume.datasets,
        NAMES,
        tmp_path / "x.dcm",
        model="m",
        codes=load_code_map(codes),
    )
    seg = pydicom.dcmread(path).SegmentSequence[1]
    assert seg.SegmentedPropertyTypeCodeSequence[0].CodeValue == "18639004"
    assert seg.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Left kidney"
    modifier = seg.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence
    assert modifier[0].CodeValue == "255549009"

    codes.write_text(json.dumps({"left thing": {"type": ["SCT", "1"]}}))
    with pytest.raises(AutosegError, match="'left thing' must be"):
        load_code_map(codes)
    codes.write_text("{not json")
    with pytest.raises(AutosegError, match="codes.json: cannot be read"):
        load_code_map(codes)


def test_seg_of_another_series_is_refused(tmp_path: Path, volume: DicomVolume) -> None:
    path = write_seg(labels_for(volume), volume.datasets, NAMES, tmp_path / "x.dcm", model="m")
    write_series(tmp_path / "t", make_volume(), oblique_affine())
    other = read_series(find_dicom(tmp_path / "t").series[0])
    with pytest.raises(AutosegError, match="references none of the 10 slices"):
        read_seg_labels(path, other.datasets)


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_jp2klossless.dcm"])
def test_seg_of_real_public_files(tmp_path: Path, name: str) -> None:
    """pydicom's NEMA-derived CT and (JPEG 2000) MR slices: real headers, as highdicom wants."""
    pytest.importorskip("openjpeg")
    import shutil

    (tmp_path / "in").mkdir()
    shutil.copy(Path(pydicom.__file__).parent / "data" / "test_files" / name, tmp_path / "in")
    volume = read_series(find_dicom(tmp_path / "in").series[0])
    labels = (volume.image.array[0] > np.median(volume.image.array)).astype(np.uint8)
    path = write_seg(labels, volume.datasets, {1: "brain"}, tmp_path / "x.dcm", model="m")
    back, names = read_seg_labels(path, volume.datasets)
    np.testing.assert_array_equal(back, labels)
    assert names == {1: "brain"} and labels.any() and not labels.all()


def test_overlapping_segments_are_refused(tmp_path: Path, volume: DicomVolume) -> None:
    from pydicom.sr.codedict import codes

    masks = np.zeros((*volume.image.geometry.shape, 2), dtype=bool)
    masks[2:5, 3:9, 3:9, 0] = True
    masks[4:6, 5:12, 5:12, 1] = True  # overlaps segment 1 on slice 4
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n,
            segment_label=f"s{n}",
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n in (1, 2)
    ]
    seg = hd.seg.Segmentation(
        source_images=list(volume.datasets),
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="tests",
        manufacturer_model_name="tests",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(tmp_path / "overlap.dcm")
    with pytest.raises(AutosegError, match="overlap.dcm: segments cannot be read as one label map"):
        read_seg_labels(tmp_path / "overlap.dcm", volume.datasets)


def test_laterality_is_a_modifier_of_the_type(tmp_path: Path, volume: DicomVolume) -> None:
    from autoseg.data.dicom_seg import segment_code

    for name in ("left kidney", "Kidney_Left", "kidney-left"):
        assert segment_code(name).type[1] == "64033007"
        assert segment_code(name).modifier == ("SCT", "7771000", "Left")
    assert segment_code("right lung").modifier == ("SCT", "24028007", "Right")
    assert segment_code("left thing").type[1] == "85756007"  # unknown: tissue, no modifier
    assert segment_code("left thing").modifier is None
    labels = np.zeros(volume.image.geometry.shape, np.uint8)
    labels[3:5, 4:8, 4:8] = 1
    path = write_seg(labels, volume.datasets, {1: "kidney_right"}, tmp_path / "x.dcm", model="m")
    item = pydicom.dcmread(path).SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
    assert (item.CodeValue, item.CodeMeaning) == ("64033007", "Kidney")
    modifier = item.SegmentedPropertyTypeModifierCodeSequence[0]
    assert (modifier.CodeValue, modifier.CodeMeaning) == ("24028007", "Right")
    back, _ = read_seg_labels(path, volume.datasets)  # highdicom reads it back
    np.testing.assert_array_equal(back, labels)


def test_seg_of_a_multi_frame_image(tmp_path: Path) -> None:
    """One enhanced CT file: frames placed by geometry, each on its source frame's position."""
    from tests.data.test_dicom_series import multiframe

    files = write_series(tmp_path / "single", make_volume(), oblique_affine(degrees=(0, 0, 30)))
    source = pydicom.dcmread(multiframe(tmp_path / "multi", files))
    volume = read_series(find_dicom(tmp_path / "multi").series[0])
    labels = labels_for(volume)
    path = write_seg(
        labels,
        volume.datasets,
        NAMES,
        tmp_path / "x.dcm",
        model="m",
        affine=volume.image.geometry.affine,
    )
    ds = pydicom.dcmread(path)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.array(volume.image.geometry.affine)
    to_voxel = np.linalg.inv(lps)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), *labels.shape[1:])
    numbers = {1: 1, 2: 2, 3: 4}
    for frame, item in zip(frames, ds.PerFrameFunctionalGroupsSequence, strict=True):
        ipp = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        i, j, k = (to_voxel @ [*ipp, 1.0])[:3]
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frame, labels[round(k)] == numbers[segment])
        ref = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
        position = source.PerFrameFunctionalGroupsSequence[int(ref.ReferencedFrameNumber) - 1]
        np.testing.assert_allclose(
            [float(v) for v in position.PlanePositionSequence[0].ImagePositionPatient],
            ipp,
            atol=1e-3,
        )
    with pytest.raises(AutosegError, match="labels of a multi-frame image are not read"):
        read_seg_labels(path, volume.datasets)
