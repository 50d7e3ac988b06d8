"""Image sources of a folder as users have it: image files, and DICOM series folders.

``autoseg init`` works on *sources*, not files: a source is one image file (NIfTI, NRRD, MHA,
PNG/BMP/TIFF, ...) or one folder holding a DICOM series. ``list_sources`` says what a folder
holds; ``read_source`` reads one source as stored, ``(Z, Y, X)`` or ``(C, Z, Y, X)`` with its
``Geometry``. A new kind of source is one more branch in these two functions.

DICOM series are recognised here (a sub-folder whose files carry the DICOM preamble, or end in
``.dcm``); reading them is ``autoseg.data.dicom``'s job (see ``_read_dicom_series``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.data.bitmaps import is_sidecar
from autoseg.data.io import Geometry, file_ending, read_array, strip_ending
from autoseg.errors import AutosegError

log = logging.getLogger(__name__)

__all__ = ["FILE", "DICOM_SERIES", "ImageSource", "is_dicom_series", "list_sources", "read_source"]

FILE = "file"
DICOM_SERIES = "dicom-series"
_DICOM_MAGIC_OFFSET = 128  # the 128-byte preamble, then b"DICM"


@dataclass(frozen=True)
class ImageSource:
    """One image as a user has it.

    Attributes:
        path: the file, or the folder of a DICOM series.
        kind: ``FILE`` or ``DICOM_SERIES``.
        name: what pairs it: the file name without its image ending, or the folder's name.
    """

    path: Path
    kind: str
    name: str

    @property
    def ending(self) -> str | None:
        """The file's image ending (``.nii.gz``, ...); None for a DICOM series."""
        return file_ending(self.path) if self.kind == FILE else None


def is_dicom_series(folder: Path) -> bool:
    """Does ``folder`` hold DICOM files (``.dcm``, or the ``DICM`` preamble)? Only the first
    few files are looked at; nothing is decoded."""
    if not folder.is_dir():
        return False
    checked = 0
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_file():
            continue
        if entry.suffix.lower() == ".dcm":
            return True
        try:
            with open(entry, "rb") as fh:
                fh.seek(_DICOM_MAGIC_OFFSET)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            pass
        checked += 1
        if checked >= 3:
            break
    return False


def list_sources(folder: Path) -> tuple[list[ImageSource], list[tuple[Path, str]]]:
    """The image sources directly in ``folder`` (not recursed beyond DICOM series folders).

    Returns:
        The sources sorted by name, and the entries that are none (path, why), to be listed:
        hidden entries and TIFF/PNG spacing sidecars are skipped silently.

    Raises:
        AutosegError: ``folder`` is not a folder.
    """
    if not folder.is_dir():
        raise AutosegError(f"{folder}: {'not a folder' if folder.exists() else 'not found'}")
    sources: list[ImageSource] = []
    ignored: list[tuple[Path, str]] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or is_sidecar(entry):
            continue
        if entry.is_dir():
            if is_dicom_series(entry):
                sources.append(ImageSource(entry, DICOM_SERIES, entry.name))
            else:
                ignored.append((entry, "a folder that holds no DICOM series"))
        elif file_ending(entry) is not None:
            sources.append(ImageSource(entry, FILE, strip_ending(entry)))
        else:
            ignored.append((entry, "not an image file (nor a DICOM series folder)"))
    return sorted(sources, key=lambda s: s.name), ignored


def read_source(source: ImageSource) -> tuple[np.ndarray, Geometry]:
    """Read a source as stored: ``(Z, Y, X)``, or ``(C, Z, Y, X)`` for several channels.

    Raises:
        AutosegError: the source cannot be read (the message names it).
    """
    if source.kind == DICOM_SERIES:
        return _read_dicom_series(source.path)
    return read_array(source.path)


# --- DICOM: a series folder read by autoseg.data.dicom (the `dicom` extra) -------------------
def _read_dicom_series(folder: Path) -> tuple[np.ndarray, Geometry]:
    """Read the one DICOM image series in ``folder`` as ``(Z, Y, X)`` with its geometry.

    Every check of ``autoseg.data.dicom.read_series`` applies (gaps, tilt, orientations, ...).
    Whole-valued voxels that fit int16 (CT in HU, most MR) stay int16, so the converted file is
    not doubled to float32.
    """
    from autoseg.data.dicom import find_dicom, read_series

    found = find_dicom(folder)
    if len(found.series) != 1:
        names = ", ".join(s.summary() for s in found.series) or "none"
        raise AutosegError(
            f"{folder}: a case folder must hold exactly one DICOM image series, found "
            f"{len(found.series)} ({names}); give each series its own folder"
        )
    image = read_series(found.series[0]).image
    array = image.array[0]  # (Z, Y, X)
    info = np.iinfo(np.int16)
    whole = np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))
    if whole and array.min(initial=0) >= info.min and array.max(initial=0) <= info.max:
        array = array.astype(np.int16)
    return array, image.geometry
