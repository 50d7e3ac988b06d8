"""A series of one multi-frame file (enhanced CT/MR/PET, legacy converted) read with highdicom.

highdicom's ``Image.get_volume`` sorts the frames by position and refuses what is not one
regular volume (missing or duplicate positions, uneven spacing, tilt, mixed orientations); its
affine maps ``(slice, row, column)`` to LPS. autoseg's image is ``(Z=slice, Y=row, X=column)``
with the RAS affine (first two rows negated), Z running along the normal ``row x column`` as for
single-frame series. The ``DicomVolume`` holds the one dataset (without pixel data); a SEG of it
is written on this volume's grid (``autoseg.data.dicom_seg.write_seg``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data.dicom import DicomSeries, DicomVolume, nifti_header
from autoseg.data.io import Geometry, Image, check_header
from autoseg.errors import AutosegError

__all__ = ["read_multiframe"]


def read_multiframe(series: DicomSeries, path: Path, header: Any) -> DicomVolume:
    """Read a series that is one multi-frame file.

    Raises:
        AutosegError: the frames are not one regular greyscale volume (highdicom's reason), or
            the pixel data cannot be decoded.
    """
    import highdicom as hd

    frames = int(header.get("NumberOfFrames", 1))
    rows, cols = int(header.get("Rows", 0)), int(header.get("Columns", 0))
    if int(header.get("SamplesPerPixel", 1) or 1) != 1:
        raise AutosegError(f"{path}: colour image; only greyscale series are read")
    check_header(path, (cols, rows, frames), np.dtype(np.float32), (1.0, 1.0, 1.0), 12)
    try:
        image = hd.imread(path)
        volume = image.get_volume(dtype=np.float32)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AutosegError(
            f"{path}: the {frames} frames of this multi-frame file are not one regular volume, "
            f"or cannot be decoded ({reason})"
        ) from exc
    array = np.asarray(volume.array, dtype=np.float32)
    if array.ndim != 3:
        raise AutosegError(f"{path}: frames of shape {array.shape}; expected one channel")
    lps = np.eye(4)
    lps[:, [2, 1, 0, 3]] = np.asarray(volume.affine, dtype=np.float64)  # (s, r, c) -> (i, j, k)
    normal = np.cross(lps[:3, 0], lps[:3, 1])
    if float(lps[:3, 2] @ normal) < 0:  # slices along the normal, as single-frame series
        array = array[::-1]
        lps[:3, 3] += lps[:3, 2] * (array.shape[0] - 1)
        lps[:3, 2] *= -1
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    spacing = tuple(float(np.linalg.norm(lps[:3, axis])) for axis in (2, 1, 0))  # (Z, Y, X)
    check_header(path, (cols, rows, array.shape[0]), np.dtype(np.float32), spacing, 4)
    del image
    geometry = Geometry(
        shape=tuple(int(n) for n in array.shape),
        spacing=spacing,
        affine=tuple(tuple(float(v) for v in r) for r in affine),
        header=nifti_header(affine, (cols, rows, array.shape[0])),
    )
    # the header (read without pixels) is the source of a SEG's references
    return DicomVolume(Image(np.ascontiguousarray(array)[None], geometry), (header,), series)
