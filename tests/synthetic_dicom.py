"""Small DICOM series for the tests, written with pydicom from an array and a RAS affine.

``write_series`` is the inverse of ``autoseg.data.dicom.read_series``'s geometry written
independently: each slice ``k`` of a ``(Z, Y, X)`` array becomes one CT (or MR) file whose
ImagePositionPatient is the LPS position of voxel ``(0, 0, k)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def oblique_affine(spacing=(2.0, 0.9, 0.8), degrees=(20.0, 10.0, 0.0), flip_x=False) -> np.ndarray:
    """A RAS affine of voxel (i, j, k) with spacing (Z, Y, X) rotated about two axes."""
    ax, ay, az = np.radians(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ ry @ rx
    if flip_x:
        rot = rot @ np.diag([-1.0, 1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = rot * np.array(list(reversed(spacing)))[None, :]
    affine[:3, 3] = (-12.5, 30.0, -7.25)
    return affine


def make_volume(shape=(10, 20, 24), seed: int = 0) -> np.ndarray:
    """An int16 ``(Z, Y, X)`` volume with a bright blob (values -1000 .. ~1000)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    centre = np.array(shape) / 2
    r = np.sqrt(
        ((z - centre[0]) / 3) ** 2 + ((y - centre[1]) / 5) ** 2 + ((x - centre[2]) / 6) ** 2
    )
    data = np.where(r < 1.0, 800, -1000) + rng.integers(0, 50, shape) + x  # x: asymmetric
    return data.astype(np.int16)


def write_series(
    folder: Path,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    frame_uid: str | None = None,
    series_number: int = 1,
    description: str = "synthetic",
    modality: str = "CT",
    skip: tuple[int, ...] = (),
    suffix: str = ".dcm",
    shuffle: bool = True,
) -> list[Path]:
    """Write ``array`` (``(Z, Y, X)`` int16) as one single-frame file per slice.

    Args:
        folder: created; files ``IM<k><suffix>`` (written in shuffled order of names).
        affine: RAS voxel (i, j, k) -> world.
        skip: slice indices not written (a missing slice).
        suffix: file ending ("" for files without one).

    Returns:
        The written files in slice order.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    lps = LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)  # (dx, dy, dz)
    row, col = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    order = np.random.default_rng(1).permutation(array.shape[0]) if shuffle else range(len(array))
    paths = []
    for number, k in enumerate(order):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{number:04d}{suffix}"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Test^Dicom",
            "P1",
            "",
            "O",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = modality, series_number, description
        ds.InstanceNumber = int(k) + 1
        ds.Manufacturer = "autoseg-tests"
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3] + k * lps[:3, 2]]
        ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row (dy), column (dx)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = array.shape[1], array.shape[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", "1"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.ascontiguousarray(array[k], dtype=np.int16).tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append((k, path))
    return [p for _, p in sorted(paths)]
