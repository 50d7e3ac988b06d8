"""PNG, BMP and TIFF files: 2D microscopy images and 3D TIFF stacks, read and written.

``autoseg.data.io`` hands these endings here and wraps the result in its ``Geometry``; the rest of
autoseg sees the usual ``(C, Z, Y, X)`` arrays. The rules:

- A 2D file becomes one slice: ``(Z=1, Y, X)``. Grayscale (8 or 16 bit, or 32-bit TIFF) is one
  channel and keeps its range; RGB is three channels, ``(3, 1, Y, X)``, as nnU-Net's
  natural-image reader does.
- Alpha: a fully opaque alpha channel is dropped; an alpha channel with transparent pixels is
  refused (what a transparent pixel means is unknown).
- Palette PNGs (Pillow mode ``P``) are read as their palette indices: the convention of label
  maps saved with a colour table (Pascal VOC). Save palette *images* as RGB or grayscale.
- A TIFF with three non-sample axes (``ZYX``, ``QYX``, ``IYX``, ...) is a 3D stack ``(Z, Y,
  X)``; RGB samples of a stack become channels. More axes are refused: as in nnU-Net, store one
  channel per file (``CASE_0000.tif``, ``CASE_0001.tif``).
- Spacing: from a sidecar JSON beside the file (``case_0000.json`` for ``case_0000.tif``, as
  nnU-Net's Tiff3DIO), ``{"spacing": [z, y, x]}`` (or ``[y, x]`` for a 2D file), in the array's
  axis order; without one every axis has spacing 1.
- Written label maps: a 2D file for one slice, a TIFF stack otherwise (with a sidecar when the
  spacing is not all ones); 8 bit when the labels fit, else 16 bit (BMP: 8 bit only).

Pillow and tifffile are imported only when such a file is met (``pip install
'autoseg[microscopy]'``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.serial import atomic_write_text

PILLOW_ENDINGS = (".png", ".bmp")
TIFF_ENDINGS = (".tif", ".tiff")
ENDINGS = PILLOW_ENDINGS + TIFF_ENDINGS

_EXTRA = "pip install 'autoseg[microscopy]'"
HeaderCheck = Callable[[tuple[int, ...], np.dtype, tuple[float, ...]], None]
_Before = Callable[[tuple[int, ...], np.dtype, bool], None]  # stored shape, type, is it 2D
_GRAY_MODES = ("1", "L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")


@dataclass(frozen=True)
class FileHeader:
    """What a PNG/BMP/TIFF reader learnt about the file (kept with the geometry).

    Attributes:
        format: ``png``, ``bmp`` or ``tiff``.
        two_d: the file held one 2D image (written back as 2D).
        sidecar: spacing came from a sidecar JSON.
    """

    format: str
    two_d: bool
    sidecar: bool = False


def sidecar_path(path: Path, ending: str) -> Path:
    """``a/case_0000.tif`` -> ``a/case_0000.json``."""
    return path.with_name(path.name[: -len(ending)] + ".json")


def is_sidecar(path: Path) -> bool:
    """``CASE.json`` beside an existing ``CASE.tif`` (or .png, ...): that file's spacing."""
    if path.suffix != ".json":
        return False
    stem = path.name[: -len(".json")]
    return any(path.with_name(stem + ending).is_file() for ending in ENDINGS)


def companion_files(path: Path) -> list[Path]:
    """The existing sidecar of an image file (its spacing JSON), to keep beside any link or
    copy of it; none for other formats."""
    name = path.name.lower()
    for ending in TIFF_ENDINGS + PILLOW_ENDINGS:
        if name.endswith(ending):
            side = sidecar_path(path, ending)
            return [side] if side.is_file() else []
    return []


def _import(module: str, path: Path):
    try:
        if module == "PIL":
            from PIL import Image  # lazily: only for PNG/BMP files

            return Image
        import tifffile  # lazily: only for TIFF files

        return tifffile
    except ImportError as exc:
        message = f"{path}: reading or writing this format needs {module} ({_EXTRA})"
        raise AutosegError(message) from exc


def _drop_alpha(data: np.ndarray, path: Path) -> np.ndarray:
    """``(..., S)`` with S in (2, 4): the colour samples, once the alpha is known opaque."""
    alpha = data[..., -1]
    opaque = np.iinfo(alpha.dtype).max if alpha.dtype.kind in "ui" else 1.0
    if alpha.size and alpha.min() < opaque:
        transparent = int(np.count_nonzero(alpha < opaque))
        raise AutosegError(
            f"{path}: alpha channel with {transparent} transparent pixel(s); autoseg reads only "
            "opaque images: save it without transparency (or without an alpha channel)"
        )
    return data[..., :-1]


def _samples_to_channels(data: np.ndarray, path: Path) -> np.ndarray:
    """``(..., S)`` samples (gray+alpha, RGB, RGBA) -> ``(C, ...)``; one channel -> no C axis."""
    if data.shape[-1] in (2, 4):
        data = _drop_alpha(data, path)
    if data.shape[-1] == 1:
        return data[..., 0]
    return np.moveaxis(data, -1, 0)


def _pillow_dtype(mode: str) -> np.dtype:
    if mode.startswith("I;16"):
        return np.dtype(np.uint16)
    return np.dtype({"I": np.int32, "F": np.float32}.get(mode, np.uint8))


def _read_pillow(path: Path, before: _Before) -> np.ndarray:
    """``(Y, X)`` or ``(C, Y, X)`` as stored (palette images as their indices); ``before``
    sees the stored shape and type before the pixels are decoded."""
    image_module = _import("PIL", path)
    with image_module.open(path) as im:
        if getattr(im, "n_frames", 1) > 1:
            raise AutosegError(f"{path}: {im.n_frames} frames; expected one 2D image")
        mode = im.mode
        bands = len(im.getbands())
        before((im.height, im.width, *((bands,) if bands > 1 else ())), _pillow_dtype(mode), True)
        if mode in _GRAY_MODES:
            data = np.asarray(im)
            return data.astype(np.uint8) if mode == "1" else data
        if mode in ("LA", "PA", "RGB", "RGBA"):
            return _samples_to_channels(np.asarray(im), path)
        return np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)  # CMYK, YCbCr, ...


def _read_tiff(path: Path, before: _Before) -> tuple[np.ndarray, bool]:
    """``(Z, Y, X)``, ``(C, Z, Y, X)``, ``(Y, X)`` or ``(C, Y, X)``; and whether it is 2D.
    ``before`` sees the stored shape and type before the pixels are read."""
    tifffile = _import("tifffile", path)
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        axes, shape = series.axes, tuple(series.shape)
        samples = axes.startswith("S") or axes.endswith("S")
        spatial = axes.replace("S", "", 1) if samples else axes
        if len(spatial) not in (2, 3):
            raise AutosegError(
                f"{path}: TIFF with axes {axes} {shape}; expected a 2D image (YX), an RGB image "
                "(YXS) or a 3D stack (ZYX); store one channel per file (CASE_0000.tif, "
                "CASE_0001.tif)"
            )
        before(shape, np.dtype(series.dtype), len(spatial) == 2)
        data = series.asarray()
    if axes.startswith("S"):  # planar RGB: samples first
        data, samples = np.moveaxis(data, 0, -1), True
    if samples:
        data = _samples_to_channels(data, path)
    return data, len(spatial) == 2


def _spacing(path: Path, ending: str, ndim: int) -> tuple[tuple[float, ...], bool]:
    """(Z, Y, X) spacing from the sidecar JSON (ones without one) and whether one was found."""
    side = sidecar_path(path, ending)
    if not side.is_file():
        return (1.0, 1.0, 1.0), False
    try:
        values = json.loads(side.read_text(encoding="utf-8"))["spacing"]
        spacing = tuple(float(v) for v in values)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AutosegError(f'{side}: expected {{"spacing": [z, y, x]}} ({exc})') from exc
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise AutosegError(
            f"{side}: spacing {list(spacing)} must be {ndim} positive numbers for this {ndim}D file"
        )
    return ((1.0, *spacing) if ndim == 2 else spacing), True


def read_file(
    path: Path, ending: str, check: HeaderCheck | None = None
) -> tuple[np.ndarray, tuple[float, ...], FileHeader]:
    """Read a PNG/BMP/TIFF file in autoseg's order.

    Args:
        path: the file.
        ending: its ending (one of ``ENDINGS``).
        check: called as ``check(stored shape, dtype, spatial spacing)`` before the pixels are
            read (``autoseg.data.io.check_header``: type, spacing range, size against memory).

    Returns:
        ``(array, spacing, header)``: array ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (several
        channels), its stored dtype kept; spacing ``(Z, Y, X)``.

    Raises:
        AutosegError: the reader is not installed, or the file breaks one of the rules above.
    """
    found: dict[str, tuple[tuple[float, ...], bool]] = {}

    def before(shape: tuple[int, ...], dtype: np.dtype, two_d: bool) -> None:
        found["spacing"] = _spacing(path, ending, 2 if two_d else 3)
        if check is not None:
            spacing = found["spacing"][0]
            check(shape, dtype, spacing[-2:] if two_d else spacing)

    if ending in TIFF_ENDINGS:
        data, two_d = _read_tiff(path, before)
        kind = "tiff"
    else:
        data, two_d = _read_pillow(path, before), True
        kind = ending[1:]
    if data.dtype.kind == "b":
        data = data.astype(np.uint8)
    if two_d:  # (Y, X) -> (1, Y, X); (C, Y, X) -> (C, 1, Y, X)
        data = data[None] if data.ndim == 2 else data[:, None]
    spacing, sidecar = found["spacing"]
    return data, spacing, FileHeader(kind, two_d, sidecar)


def write_label_file(
    data: np.ndarray, spacing: tuple[float, ...], tmp: Path, ending: str, final: Path
) -> None:
    """Write a ``(Z, Y, X)`` label map to ``tmp`` in the format of ``ending``.

    A single slice is written as a 2D file; a TIFF stack gets a sidecar JSON beside ``final``
    (written first, atomically) when its spacing is not all ones.

    Raises:
        AutosegError: the format cannot hold the labels (a BMP above 255, a PNG stack).
    """
    if data.min(initial=0) < 0:
        raise AutosegError(f"{final}: negative label values cannot be written as {ending}")
    high = int(data.max(initial=0))
    dtype = np.uint8 if high < 256 else np.uint16 if high < 2**16 else np.uint32
    if dtype == np.uint32 and ending not in TIFF_ENDINGS:
        raise AutosegError(f"{final}: label values above 65535 cannot be written as {ending}")
    data = np.ascontiguousarray(data.astype(dtype))
    if ending in TIFF_ENDINGS:
        tifffile = _import("tifffile", final)
        out = data[0] if data.shape[0] == 1 else data
        if out.ndim == 3 and any(abs(s - 1.0) > 1e-9 for s in spacing):
            text = json.dumps({"spacing": [float(s) for s in spacing]}) + "\n"
            atomic_write_text(sidecar_path(final, ending), text)
        tifffile.imwrite(tmp, out, photometric="minisblack")
        return
    if data.shape[0] != 1:
        raise AutosegError(f"{final}: {data.shape[0]} slices cannot be written as one {ending}")
    if ending == ".bmp" and dtype != np.uint8:
        raise AutosegError(f"{final}: label values above 255 cannot be written as BMP")
    image_module = _import("PIL", final)
    image = image_module.fromarray(data[0])  # uint8 -> mode L, uint16 -> mode I;16
    with open(tmp, "wb") as fh:
        image.save(fh, format=ending[1:].upper())
        fh.flush()
        os.fsync(fh.fileno())
