"""How preprocessed arrays are stored: plain ``.npy`` (memory-mapped) or compressed ``.b2nd``.

``npy`` (the default) keeps float32 images as they are, memory-mapped when read: no decoding,
but 4.4x the raw NIfTI size on Hippocampus. ``blosc2`` (``pip install -e ".[blosc2]"``, as
nnU-Net v2 stores its data) writes a chunked, ZSTD-compressed ``.b2nd`` file per array; reading
a patch decompresses only the blocks it touches. docs/benchmarks.md has the sizes and the
training loader's read throughput of both.

``auto`` (the default of ``autoseg plan``) picks by size: ``choose_storage`` takes blosc2 when
the dataset's preprocessed data would exceed ``AUTO_BLOSC2_BYTES`` (CT at 0.8 mm: 12 cases were
2.7 GB as npy, 4.7x nnU-Net's blosc2 folder) and npy below it (Hippocampus: the memory map's
reads are the fastest, and the data is small); without the blosc2 package it stays npy and
says how to install it.

The format of a case is recorded in its ``CaseProperties.storage``, and each format has its own
file ending, so a folder made with one is never read as the other.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import AutosegError
from autoseg.serial import atomic_output

STORAGES = ("npy", "blosc2")
#: ``auto`` stores blosc2 above this many bytes of float32 images + uint8 labels
AUTO_BLOSC2_BYTES = 2 * 1024**3
ENDINGS = {"npy": ".npy", "blosc2": ".b2nd"}
logger = logging.getLogger(__name__)
_CHUNK_EDGE, _BLOCK_EDGE = 64, 32  # voxels per spatial axis; 64^3 float32 = 1 MiB


class _Stream:
    """A file seen only through ``write``: numpy then writes in chunks through Python's file
    object (a full disk is an ``OSError`` ENOSPC) instead of ``ndarray.tofile``, whose short
    write raises an ``OSError`` without errno or reason."""

    def __init__(self, fh: Any) -> None:
        self.write = fh.write


def _blosc2() -> Any:
    try:
        import blosc2  # optional, heavy: only when the format is used
    except ImportError as exc:
        raise AutosegError(
            "storage 'blosc2' needs the blosc2 package: pip install -e \".[blosc2]\""
        ) from exc
    return blosc2


def check_storage(storage: str) -> str:
    """``storage`` if it is known and usable here (``auto`` is resolved by ``choose_storage``).

    Raises:
        AutosegError: an unknown name, or blosc2 without the package installed.
    """
    if storage not in STORAGES:
        choices = ", ".join(("auto", *STORAGES))
        raise AutosegError(f"unknown storage {storage!r}; choose one of {choices}")
    if storage == "blosc2":
        _blosc2()
    return storage


def choose_storage(storage: str, estimated_bytes: float) -> str:
    """The storage to write: ``storage`` itself, or for ``auto`` the one the size calls for.

    Args:
        storage: ``auto``, ``npy`` or ``blosc2``.
        estimated_bytes: the preprocessed data's size stored as npy (all configurations).

    Returns:
        ``npy`` or ``blosc2``: ``auto`` gives blosc2 above ``AUTO_BLOSC2_BYTES`` when the
        package is installed (else npy, with a warning naming the extra), npy below it.

    Raises:
        AutosegError: an unknown name, or blosc2 asked for without the package.
    """
    if storage != "auto":
        return check_storage(storage)
    if estimated_bytes <= AUTO_BLOSC2_BYTES:
        return "npy"
    try:
        _blosc2()
    except AutosegError:
        logger.warning(
            'preprocessed data of about %.1f GB stored as npy; pip install -e ".[blosc2]" '
            "stores it compressed (about 5x smaller on CT)",
            estimated_bytes / 1e9,
        )
        return "npy"
    return "blosc2"


def save_array(path: Path, array: np.ndarray, storage: str) -> None:
    """Write ``array`` (C, *spatial) to ``path`` (ending from ``ENDINGS``) through a temp name."""
    if storage == "npy":
        with atomic_output(path) as (fd, _), os.fdopen(fd, "wb") as fh:
            np.save(_Stream(fh), array)
            fh.flush()
        return
    blosc2 = _blosc2()
    spatial = array.shape[1:]
    chunks = (array.shape[0], *(min(n, _CHUNK_EDGE) for n in spatial))
    blocks = (1, *(min(n, _BLOCK_EDGE) for n in spatial))
    cparams = blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=8, nthreads=1)
    with atomic_output(path) as (fd, tmp):
        os.close(fd)
        Path(tmp).unlink()  # blosc2 creates the file itself
        blosc2.asarray(
            np.ascontiguousarray(array),
            urlpath=str(tmp),
            mode="w",
            chunks=chunks,
            blocks=blocks,
            cparams=cparams,
        )


def load_array(path: Path, storage: str, mmap: bool) -> Any:
    """Read an array written by :func:`save_array`.

    Returns:
        With ``mmap``: a read-only ``np.memmap`` (npy) or a lazily decompressed
        ``blosc2.NDArray`` (both slice like numpy arrays and have ``shape``); else an ndarray.
    """
    if storage == "npy":
        return np.load(path, mmap_mode="r" if mmap else None)
    blosc2 = _blosc2()
    if not Path(path).is_file():
        raise FileNotFoundError(path)
    stored = blosc2.open(str(path), mode="r")
    return stored if mmap else stored[()]


def save_locations(path: Path, locations: dict[int, np.ndarray]) -> None:
    """An ``np.load``-able .npz (label -> coordinates) with fixed timestamps, so equal data
    gives equal bytes; written through a temp name."""
    with (
        atomic_output(path) as (fd, _),
        os.fdopen(fd, "wb") as fh,
        zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf,
    ):
        for key in sorted(locations):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(locations[key]))
            zf.writestr(
                zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), buffer.getvalue()
            )


def load_locations(path: Path) -> dict[int, np.ndarray]:
    """Read what :func:`save_locations` wrote."""
    with np.load(path) as stored:
        return {int(k): stored[k] for k in stored.files}
