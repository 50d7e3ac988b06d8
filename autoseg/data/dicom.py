"""DICOM series in: discovery (any nesting) and reading into an ``Image`` with its geometry.

A folder is walked recursively; every file that pydicom recognises as DICOM (with or without
``.dcm``) is grouped by SeriesInstanceUID. Image series become ``DicomSeries`` (one case each);
DICOM SEG and RTSTRUCT files are listed beside them (labels for ``autoseg init`` without
LABELS); SR, presentation states, key objects and DICOMDIR are skipped.

``read_series`` refuses what it cannot read faithfully, naming the file and the reason: missing
patient geometry, slices of different sizes or spacings, mixed orientations, gantry tilt,
several slices at one position, missing slices, uneven spacing, colour images, pixel data no
installed decoder reads, a multi-frame file among others. A series of one multi-frame file is
read by ``autoseg.data.dicom_multiframe`` (highdicom).

Geometry: DICOM's patient coordinates are LPS, autoseg's (NIfTI's) are RAS. A pixel in column
``i`` and row ``j`` of the slice at position ``k`` (slices sorted along the normal
``row x column`` of ImageOrientationPatient) lies at
``IPP_0 + i * dc * row + j * dr * col + k * ds * normal`` in LPS; the RAS affine is that matrix
with its first two rows negated. The array is ``(Z=k, Y=j, X=i)``, as every autoseg image.
The tests check it against dcm2niix's conversion of the same series.
"""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data.io import Geometry, Image, check_header
from autoseg.errors import AutosegError

log = logging.getLogger(__name__)

__all__ = ["DicomFolder", "DicomSeries", "DicomVolume", "find_dicom", "read_series"]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
#: largest angle (degrees) between the slice normal and the line through the slice positions
MAX_TILT_DEGREES = 0.05
#: largest difference between two slice steps (fraction of the median step; at least 0.01 mm)
SPACING_TOLERANCE = 0.01
#: what ``find_dicom`` reads of each file
_HEADER_TAGS = ["SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality"]
_HEADER_TAGS += ["SeriesDescription", "SeriesNumber"]


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError as exc:
        raise AutosegError("reading DICOM needs pydicom (pip install 'autoseg[dicom]')") from exc
    return pydicom


@dataclass(frozen=True)
class DicomSeries:
    """One image series found in a folder (its files not yet checked).

    Attributes:
        uid: SeriesInstanceUID.
        name: case id: ``<SeriesNumber>_<SeriesDescription>`` (safe characters), or the UID
            where two series of the folder would get the same name.
        files: the series' files, sorted by path.
        modality: CT, MR, ... (empty when absent).
        description: SeriesDescription (empty when absent).
        study_uid: StudyInstanceUID.
    """

    uid: str
    name: str
    files: tuple[Path, ...]
    modality: str = ""
    description: str = ""
    study_uid: str = ""

    def summary(self) -> str:
        """One line for listings: name, modality, file count, description and UID."""
        what = " ".join(x for x in (self.modality, repr(self.description)) if x)
        return f"{self.name}: {what}, {len(self.files)} file(s), SeriesInstanceUID {self.uid}"


@dataclass(frozen=True)
class DicomFolder:
    """What ``find_dicom`` found: image series (sorted by name), DICOM SEG and RTSTRUCT files."""

    series: tuple[DicomSeries, ...]
    segs: tuple[Path, ...]
    rtstructs: tuple[Path, ...] = ()


@dataclass(frozen=True)
class DicomVolume:
    """A series read: the image (RAS geometry) and its slices' headers, in Z order."""

    image: Image
    datasets: tuple[Any, ...]  # pydicom Datasets without pixel data, one per Z slice
    series: DicomSeries


def _walk(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(root) / n for n in sorted(names) if not n.startswith(".")]
    return files


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "_", text).strip("_")[:48]


def _read_header(pydicom: Any, path: Path) -> Any:
    """The header of a DICOM file, None for other files. Files without the 128-byte preamble
    and "DICM" (older archives) are read too, when they hold a SOP class and series UID."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except pydicom.errors.InvalidDicomError:
        pass
    except Exception:  # a damaged file: not ours to list
        return None
    try:
        with warnings.catch_warnings():  # pydicom warns about what it guesses in a random file
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, force=True, specific_tags=_HEADER_TAGS
            )
            ok = "SOPClassUID" in ds and "SeriesInstanceUID" in ds
    except Exception:
        return None
    return ds if ok else None


def find_dicom(folder: Path | str) -> DicomFolder:
    """List the DICOM series of ``folder`` (recursively; files with or without ``.dcm``).

    Args:
        folder: a study folder (or a single DICOM file).

    Returns:
        The image series and the DICOM SEG files found.

    Raises:
        AutosegError: the folder does not exist or pydicom is not installed.
    """
    folder = Path(folder)
    if not folder.exists():
        raise AutosegError(f"{folder}: input not found")
    pydicom = _pydicom()
    groups: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    segs: list[Path] = []
    rtstructs: list[Path] = []
    for path in _walk(folder) if folder.is_dir() else [folder]:
        ds = _read_header(pydicom, path)
        if ds is None:
            continue
        sop = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
        if sop == _DICOMDIR_CLASS or "SeriesInstanceUID" not in ds:
            continue
        if sop == SEG_SOP_CLASS:
            segs.append(path)
        elif sop == RTSTRUCT_SOP_CLASS:
            rtstructs.append(path)
        elif ds.get("Modality", "") in ("SR", "PR", "KO", "RTSTRUCT"):
            log.info("%s: %s object skipped (not an image)", path, ds.get("Modality", sop))
        else:
            groups[str(ds.SeriesInstanceUID)].append((path, ds))
    names: dict[str, str] = {}
    for uid, members in groups.items():
        ds = members[0][1]
        number = ds.get("SeriesNumber", None)
        names[uid] = _safe(
            f"{number if number is not None else ''}_{ds.get('SeriesDescription', '')}"
        )
    taken = list(names.values())
    series = []
    for uid, members in groups.items():
        ds = members[0][1]
        name = names[uid]
        if not name or taken.count(name) > 1:
            name = uid
        series.append(
            DicomSeries(
                uid=uid,
                name=name,
                files=tuple(sorted(p for p, _ in members)),
                modality=str(ds.get("Modality", "")),
                description=str(ds.get("SeriesDescription", "")),
                study_uid=str(ds.get("StudyInstanceUID", "")),
            )
        )
    series.sort(key=lambda s: s.name)
    return DicomFolder(tuple(series), tuple(sorted(segs)), tuple(sorted(rtstructs)))


def _floats(ds: Any, keyword: str, count: int, path: Path) -> np.ndarray:
    value = ds.get(keyword, None)
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise AutosegError(
            f"{path}: no valid {keyword} (found {value!r}); a slice without patient geometry "
            "cannot be placed in the world"
        )
    return out


def _check_slices(series: DicomSeries, headers: list[tuple[Path, Any]]) -> None:
    """Refuse multi-frame files, other sizes, spacings and orientations than the first slice's."""
    first_path, first = headers[0]
    iop0 = _floats(first, "ImageOrientationPatient", 6, first_path)
    spacing0 = _floats(first, "PixelSpacing", 2, first_path)
    for path, ds in headers:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        if frames > 1:  # one multi-frame file is read by read_series: here it is one of several
            raise AutosegError(
                f"{path}: multi-frame file ({frames} frames) in a series of {len(headers)} files; "
                "only a series of one multi-frame file or of single-frame files is read"
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise AutosegError(
                f"{path}: colour image ({ds.get('PhotometricInterpretation', '?')}); "
                "only greyscale series are read"
            )
        if (ds.get("Rows"), ds.get("Columns")) != (first.get("Rows"), first.get("Columns")):
            raise AutosegError(
                f"{path}: {ds.get('Rows')}x{ds.get('Columns')} pixels, but {first_path} has "
                f"{first.get('Rows')}x{first.get('Columns')}: one series, two image sizes"
            )
        iop = _floats(ds, "ImageOrientationPatient", 6, path)
        if not np.allclose(iop, iop0, atol=1e-4):
            raise AutosegError(
                f"{path}: mixed orientations in series {series.uid}: ImageOrientationPatient "
                f"{np.round(iop, 4).tolist()} here, {np.round(iop0, 4).tolist()} in {first_path}"
            )
        if not np.allclose(_floats(ds, "PixelSpacing", 2, path), spacing0, rtol=1e-4, atol=1e-5):
            raise AutosegError(
                f"{path}: PixelSpacing {ds.PixelSpacing} differs from {first_path}'s "
                f"{first.PixelSpacing}"
            )
        _floats(ds, "ImagePositionPatient", 3, path)


def _slice_step(series: DicomSeries, files: list[Path], positions: np.ndarray, ds0: Any) -> float:
    """The slice spacing along the normal; refuses duplicates, missing slices and uneven steps."""
    if len(positions) == 1:
        value = ds0.get("SpacingBetweenSlices", None) or ds0.get("SliceThickness", None) or 1.0
        return abs(float(value))
    steps = np.diff(positions)
    same = np.flatnonzero(steps < 1e-3)
    if same.size:
        i = int(same[0])
        raise AutosegError(
            f"{files[i + 1]}: at the same position as {files[i]} ({positions[i]:.3f} mm along "
            f"the normal) in series {series.uid}; several time points, echoes or acquisitions "
            "in one series are not read (split the series)"
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * median)
    if gaps.size:
        lines = [
            f"{files[g]} -> {files[g + 1]}: {steps[g]:.3f} mm (about "
            f"{round(steps[g] / median) - 1} slice(s) missing)"
            for g in gaps[:5]
        ]
        raise AutosegError(
            f"{files[gaps[0]].parent}: series {series.uid} has {gaps.size} gap(s) in its slice "
            f"positions (usual step {median:.3f} mm):\n  " + "\n  ".join(lines)
        )
    spread = float(steps.max() - steps.min())
    if spread > max(0.01, SPACING_TOLERANCE * median):
        k = int(np.argmax(np.abs(steps - median)))
        raise AutosegError(
            f"{files[k + 1]}: uneven slice spacing in series {series.uid}: steps from "
            f"{steps.min():.3f} to {steps.max():.3f} mm (here {steps[k]:.3f} mm after "
            f"{files[k].name}); resample it to a uniform grid first"
        )
    return float((positions[-1] - positions[0]) / (len(positions) - 1))


def _pixels(ds: Any, path: Path) -> np.ndarray:
    if "TransferSyntaxUID" not in ds.file_meta and ds.original_encoding[0] is not None:
        # a file without file meta (no "DICM"): its encoding is how pydicom read it
        import pydicom.uid as uids

        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            uids.ImplicitVRLittleEndian
            if implicit
            else uids.ExplicitVRLittleEndian
            if little
            else uids.ExplicitVRBigEndian
        )
    syntax = ds.file_meta.get("TransferSyntaxUID", None)
    try:
        data = ds.pixel_array
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        name = getattr(syntax, "name", syntax)
        hint = (
            "; compressed transfer syntaxes need the pylibjpeg plug-ins (pip install "
            "'autoseg[dicom]'; JPEG baseline/lossless also pylibjpeg-libjpeg, GPL-3.0)"
            if syntax is not None and getattr(syntax, "is_compressed", False)
            else ""
        )
        raise AutosegError(
            f"{path}: pixel data cannot be decoded (transfer syntax {name}: {reason}){hint}"
        ) from exc
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return data.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_series(series: DicomSeries) -> DicomVolume:
    """Read and check one series: float32 ``(1, Z, Y, X)`` image (rescaled), RAS geometry.

    Args:
        series: a series found by ``find_dicom``.

    Returns:
        The image (its ``Geometry.header`` is a NIfTI header with the same affine, so that a
        label map is written as NIfTI like any other prediction) and the slices' headers.

    Raises:
        AutosegError: the series is refused; the message names the file and the reason.
    """
    pydicom = _pydicom()
    headers = []
    for path in series.files:
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True, force=True)))
        except Exception as exc:
            raise AutosegError(f"{path}: cannot be read as DICOM ({exc})") from exc
    if len(headers) == 1 and int(headers[0][1].get("NumberOfFrames", 1) or 1) > 1:
        from autoseg.data.dicom_multiframe import read_multiframe

        return read_multiframe(series, *headers[0])
    _check_slices(series, headers)
    first = headers[0][1]
    iop = _floats(first, "ImageOrientationPatient", 6, headers[0][0])
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    ipps = np.array([_floats(ds, "ImagePositionPatient", 3, p) for p, ds in headers])
    order = np.argsort(ipps @ normal, kind="stable")
    headers = [headers[i] for i in order]
    ipps = ipps[order]
    files = [p for p, _ in headers]
    if len(headers) > 1:
        line = ipps[-1] - ipps[0]
        cosine = abs(float(line @ normal)) / max(float(np.linalg.norm(line)), 1e-12)
        tilt = math.degrees(math.acos(min(1.0, cosine)))
        if tilt > MAX_TILT_DEGREES:
            raise AutosegError(
                f"{files[0].parent}: series {series.uid} is sheared by {tilt:.2f} degrees "
                "(gantry tilt: the slices are stacked at an angle to their normal); "
                "autoseg does not resample it; dcm2niix can correct the tilt"
            )
    step = _slice_step(series, files, ipps @ normal, first)
    dr, dc = (float(v) for v in first.PixelSpacing)
    rows, cols = int(first.Rows), int(first.Columns)
    shape_xyz = (cols, rows, len(files))
    check_header(files[0], shape_xyz, np.dtype(np.float32), (dc, dr, step), 8)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row * dc, col * dr, normal * step
    lps[:3, 3] = ipps[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS
    array = np.empty((1, len(files), rows, cols), dtype=np.float32)
    datasets = []
    for z, path in enumerate(files):
        ds = pydicom.dcmread(path, force=True)
        array[0, z] = _pixels(ds, path)
        del ds.PixelData  # the headers travel with the volume, the pixels are in the array
        datasets.append(ds)
    geometry = Geometry(
        shape=(len(files), rows, cols),
        spacing=(step, dr, dc),
        affine=tuple(tuple(float(v) for v in r) for r in affine),
        header=nifti_header(affine, shape_xyz),
    )
    return DicomVolume(Image(array, geometry), tuple(datasets), series)


def nifti_header(affine: np.ndarray, shape_xyz: tuple[int, int, int]) -> Any:
    """A NIfTI header for a ``(X, Y, Z)`` volume with this RAS affine (codes 1, scanner)."""
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape(shape_xyz)
    header.set_xyzt_units("mm")
    header.set_qform(affine, code=1)  # scanner coordinates, as dcm2niix writes them
    header.set_sform(affine, code=1)
    return header
