"""DICOM series in: discovery, geometry (against dcm2niix's conversion) and every refusal."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from autoseg.data.dicom import find_dicom, read_series  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from tests.synthetic_dicom import make_volume, oblique_affine, write_series  # noqa: E402

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def dcm2niix(folder: Path, out: Path) -> nib.Nifti1Image:
    """dcm2niix's conversion of the one series in ``folder`` (the reference, tests only)."""
    exe = shutil.which("dcm2niix") or str(Path(sys.executable).parent / "dcm2niix")
    if not Path(exe).is_file():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("dcm2niix not installed (the test extra installs it)")
        pytest.skip("dcm2niix not installed (pip install dcm2niix)")
    out.mkdir(parents=True)
    subprocess.run(
        [exe, "-z", "n", "-o", str(out), "-f", "ref", str(folder)], check=True, capture_output=True
    )
    return nib.load(str(out / "ref.nii"))


def world_equal(volume, reference: nib.Nifti1Image) -> None:
    """Same voxel-to-world mapping and voxels, whatever the axis order and flips of each."""
    ours = nib.Nifti1Image(
        np.transpose(volume.image.array[0], (2, 1, 0)), np.array(volume.image.geometry.affine)
    )
    a, b = nib.as_closest_canonical(ours), nib.as_closest_canonical(reference)
    assert a.shape == b.shape
    np.testing.assert_allclose(a.affine, b.affine, atol=2e-3)
    np.testing.assert_allclose(a.get_fdata(), b.get_fdata(), atol=1e-3)


@pytest.mark.parametrize(
    "affine",
    [
        oblique_affine(),
        oblique_affine(degrees=(0, 0, 0), flip_x=True),
        oblique_affine(degrees=(90, 0, 30)),
    ],
    ids=["oblique", "flipped", "sagittal-ish"],
)
def test_geometry_equals_dcm2niix(tmp_path: Path, affine: np.ndarray) -> None:
    vol = make_volume()
    write_series(tmp_path / "study" / "a" / "b", vol, affine, suffix="")  # nested, no .dcm
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    found = find_dicom(tmp_path / "study")
    assert len(found.series) == 1 and len(found.series[0].files) == vol.shape[0]
    volume = read_series(found.series[0])
    world_equal(volume, dcm2niix(tmp_path / "study", tmp_path / "ref"))
    # and the world position of every voxel is the one the series was written with
    written = nib.Nifti1Image(np.transpose(vol, (2, 1, 0)).astype(np.float32), affine)
    world_equal(volume, written)
    assert volume.image.geometry.spacing == pytest.approx((2.0, 0.9, 0.8), abs=1e-5)


@pytest.mark.parametrize("name", ["MR_small.dcm", "CT_small.dcm"])
def test_real_public_files_equal_dcm2niix(tmp_path: Path, name: str) -> None:
    """pydicom's NEMA WG04-derived test images (one slice each)."""
    (tmp_path / "in").mkdir()
    shutil.copy(TEST_FILES / name, tmp_path / "in" / name)
    volume = read_series(find_dicom(tmp_path / "in").series[0])
    assert volume.image.array.shape[:2] == (1, 1)
    world_equal(volume, dcm2niix(tmp_path / "in", tmp_path / "ref"))


@pytest.mark.parametrize(
    ("name", "decoder"),
    [
        ("MR_small_jp2klossless.dcm", "openjpeg"),  # JPEG 2000 lossless: pylibjpeg-openjpeg
        ("MR_small_jpeg_ls_lossless.dcm", "jpeg_ls"),  # JPEG-LS lossless: pyjpegls
        ("MR_small_RLE.dcm", "pydicom"),  # RLE lossless: pydicom itself
    ],
)
def test_compressed_transfer_syntax_reads_as_uncompressed(
    tmp_path: Path, name: str, decoder: str
) -> None:
    pytest.importorskip(decoder)
    for file in ("MR_small.dcm", name):
        (tmp_path / file).mkdir()
        shutil.copy(TEST_FILES / file, tmp_path / file / file)
    plain = read_series(find_dicom(tmp_path / "MR_small.dcm").series[0])
    packed = read_series(find_dicom(tmp_path / name).series[0])
    assert pydicom.dcmread(TEST_FILES / name).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(plain.image.array, packed.image.array)
    assert plain.image.geometry.same_grid(packed.image.geometry)


def test_two_series_are_two_cases(tmp_path: Path) -> None:
    study = tmp_path / "study"
    write_series(study / "s1", make_volume(), oblique_affine(), series_number=3, description="T1")
    write_series(
        study / "s2", make_volume(seed=1), oblique_affine(), series_number=4, description="T1 post"
    )
    found = find_dicom(study)
    assert [s.name for s in found.series] == ["3_T1", "4_T1_post"]
    assert {len(s.files) for s in found.series} == {10}


def _refused(tmp_path: Path, *fragments: str) -> None:
    series = find_dicom(tmp_path / "s").series
    with pytest.raises(AutosegError) as caught:
        read_series(series[0])
    for fragment in fragments:
        assert fragment in str(caught.value), str(caught.value)


def test_missing_slice_is_refused_naming_the_gap(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", make_volume(), oblique_affine(), skip=(4,), shuffle=False)
    _refused(tmp_path, "1 gap(s)", "about 1 slice(s) missing", str(files[3]), str(files[4]))


def test_uneven_spacing_is_refused(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", make_volume(), oblique_affine(), shuffle=False)
    ds = pydicom.dcmread(files[-1])
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    normal = np.cross(*np.array([float(v) for v in ds.ImageOrientationPatient]).reshape(2, 3))
    ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp + 0.5 * normal]  # last step 2.5 mm
    ds.save_as(files[-1])
    _refused(tmp_path, "uneven slice spacing", str(files[-1]), "2.000 to 2.500 mm")


def test_mixed_orientations_are_refused(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", make_volume(), oblique_affine())
    ds = pydicom.dcmread(files[5])
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.save_as(files[5])
    _refused(tmp_path, "mixed orientations", str(files[5]))


def test_gantry_tilt_is_refused(tmp_path: Path) -> None:
    affine = oblique_affine(degrees=(0, 0, 0))
    affine[1, 2] = 0.5  # each slice shifted 0.5 mm along y: a 14 degree shear
    write_series(tmp_path / "s", make_volume(), affine)
    _refused(tmp_path, "gantry tilt", "14.04 degrees")


def test_two_slices_at_one_position_are_refused(tmp_path: Path) -> None:
    files = write_series(tmp_path / "s", make_volume(), oblique_affine(), shuffle=False)
    ds = pydicom.dcmread(files[3])
    ds.ImagePositionPatient = pydicom.dcmread(files[2]).ImagePositionPatient
    ds.save_as(files[3])
    _refused(tmp_path, "at the same position", "time points")


def multiframe(folder: Path, files: list[Path]) -> Path:
    """The single-frame ``files`` as one legacy-converted enhanced CT file (highdicom)."""
    import highdicom as hd

    image = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(f) for f in files],
        series_instance_uid=hd.UID(),
        series_number=7,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    folder.mkdir(parents=True)
    image.save_as(folder / "enhanced.dcm")
    return folder / "enhanced.dcm"


def test_multi_frame_file_reads_as_its_single_frames_and_dcm2niix(tmp_path: Path) -> None:
    pytest.importorskip("highdicom")
    files = write_series(tmp_path / "single", make_volume(), oblique_affine(degrees=(0, 25, 0)))
    for file in files:  # a rescale the reading must apply to both
        ds = pydicom.dcmread(file)
        ds.RescaleSlope, ds.RescaleIntercept = "2", "-1024"
        ds.save_as(file)
    multiframe(tmp_path / "multi", files)
    single = read_series(find_dicom(tmp_path / "single").series[0])
    multi = read_series(find_dicom(tmp_path / "multi").series[0])
    assert multi.image.geometry.same_grid(single.image.geometry)
    np.testing.assert_array_equal(multi.image.array, single.image.array)
    np.testing.assert_array_equal(single.image.array[0], make_volume() * 2.0 - 1024)
    world_equal(multi, dcm2niix(tmp_path / "multi", tmp_path / "ref"))


def test_irregular_or_mixed_multi_frame_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("highdicom")
    files = write_series(tmp_path / "src", make_volume(), oblique_affine(), skip=(4,))
    path = multiframe(tmp_path / "s", files)  # a missing slice inside one enhanced file
    _refused(tmp_path, str(path), "not one regular volume")

    files = write_series(tmp_path / "t", make_volume(shape=(3, 8, 8)), oblique_affine())
    ds = pydicom.dcmread(files[0])
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(files[0])
    with pytest.raises(AutosegError, match="multi-frame file \\(2 frames\\) in a series of 3"):
        read_series(find_dicom(tmp_path / "t").series[0])


def test_undecodable_transfer_syntax_is_refused(tmp_path: Path) -> None:
    """MPEG-2 video: no installed decoder reads it; the file and the syntax are named."""
    from pydicom.encaps import encapsulate

    files = write_series(tmp_path / "s", make_volume(shape=(2, 8, 8)), oblique_affine())
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 Main Profile
    ds.PixelData = encapsulate([b"\0\0\1\xb3" + b"\0" * 60])
    ds["PixelData"].VR = "OB"
    ds.save_as(files[0], enforce_file_format=True)
    _refused(tmp_path, str(files[0]), "pixel data cannot be decoded", "MPEG2")


def test_folder_without_series(tmp_path: Path) -> None:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.txt").write_text("x")
    assert find_dicom(tmp_path / "s").series == ()
    with pytest.raises(AutosegError, match="input not found"):
        find_dicom(tmp_path / "missing")


def test_files_without_preamble_and_file_meta_are_read(tmp_path: Path) -> None:
    """Older archives: no 128-byte preamble, no "DICM", no transfer syntax in a file meta."""
    from pydicom.dataset import Dataset

    vol = make_volume(shape=(4, 8, 8))
    files = write_series(tmp_path / "s", vol, oblique_affine())
    for file in files:
        raw = Dataset()
        raw.update(pydicom.dcmread(file))
        raw.save_as(file, implicit_vr=True, little_endian=True)
    assert files[0].read_bytes()[128:132] != b"DICM"
    volume = read_series(find_dicom(tmp_path / "s").series[0])
    np.testing.assert_array_equal(volume.image.array[0], vol)
