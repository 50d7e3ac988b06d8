"""Reading and writing volumes, with their geometry.

Arrays inside autoseg are always ordered ``(C, Z, Y, X)`` for images and ``(Z, Y, X)`` for label
maps, where Z is the file's third voxel axis (NIfTI ``k``) and X its first (``i``): the
through-plane axis of most scans comes first, as in nnU-Net. ``Geometry.spacing`` follows the
same order. The original header travels with the array so that a prediction is written with
exactly the input's geometry (shape, affine, qform/sform codes).

NIfTI goes through nibabel; .nrrd, .nhdr, .mha, .mhd through SimpleITK, imported only when
such a file is met; 2D microscopy images (.png, .bmp, .tif, .tiff) and 3D TIFF stacks through
``autoseg.data.bitmaps`` (Pillow, tifffile), whose rules map them to ``(C, Z=1, Y, X)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data import bitmaps as io_formats
from autoseg.errors import AutosegError
from autoseg.memory import require_memory
from autoseg.serial import atomic_output

NIFTI_ENDINGS = (".nii.gz", ".nii")
ITK_ENDINGS = (".nrrd", ".nhdr", ".mha", ".mhd")
IMAGE_ENDINGS = NIFTI_ENDINGS + ITK_ENDINGS + io_formats.ENDINGS
#: Voxel spacings (mm) outside this range are refused: no scan has them, and a header that
#: claims them would make resampling allocate absurd amounts of memory.
SPACING_RANGE_MM = (1e-5, 1e4)


def file_ending(path: str | Path) -> str | None:
    """The recognised image ending of ``path`` (``.nii.gz``, ``.mha``, ...) or None."""
    name = str(path).lower()
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return ending
    return None


def strip_ending(path: str | Path) -> str:
    """File name without its image ending: ``a/case_01.nii.gz`` -> ``case_01``."""
    name = Path(path).name
    ending = file_ending(name)
    return name[: -len(ending)] if ending else name


@dataclass(frozen=True)
class Geometry:
    """Where the voxels of an array lie in the world.

    Attributes:
        shape: spatial shape of the array, (Z, Y, X).
        spacing: voxel size in mm along the same axes.
        affine: 4x4 voxel(i, j, k) -> world matrix of the file (nibabel convention, RAS+).
        header: the reader's original header (nibabel header or SimpleITK meta image), kept
            only to write outputs with identical geometry; not compared, not serialised.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    affine: tuple[tuple[float, ...], ...]
    header: Any = field(default=None, compare=False, repr=False)

    def same_grid(self, other: Geometry, atol: float = 1e-3) -> bool:
        """True when both describe the same voxel grid (shape, spacing and affine)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol, rtol=1e-4)
            and np.allclose(self.affine, other.affine, atol=atol, rtol=1e-4)
        )


def grid_difference(geometry: Geometry, other: Geometry) -> str:
    """What differs between two grids, in words: the shape, the spacing, the origin or the
    axes' directions, each with both values (so that the two grids never print the same)."""

    def shown(values: Any) -> str:
        return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"

    if geometry.shape != other.shape:
        return f"shape {geometry.shape} vs {other.shape}"
    if not np.allclose(geometry.spacing, other.spacing, atol=1e-3, rtol=1e-4):
        return f"spacing {shown(geometry.spacing)} vs {shown(other.spacing)} mm"
    a, b = np.asarray(geometry.affine, dtype=float), np.asarray(other.affine, dtype=float)
    if not np.allclose(a[:3, 3], b[:3, 3], atol=1e-3, rtol=1e-4):
        return f"origin {shown(a[:3, 3])} vs {shown(b[:3, 3])} mm"
    return (
        f"axis directions differ (affine {shown(a[:3, :3].ravel())} vs {shown(b[:3, :3].ravel())})"
    )


@dataclass(frozen=True)
class Image:
    """A (multi-channel) image: ``array`` is float32 ``(C, Z, Y, X)``."""

    array: np.ndarray
    geometry: Geometry


def _affine_tuple(affine: np.ndarray) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64))


def check_header(
    path: Path, shape: tuple[int, ...], dtype: np.dtype, spacing: tuple[float, ...], read_bytes: int
) -> None:
    """The one validator of an image file's header, run before its voxels are read.

    Plan, predict and evaluate all read through ``read_array``, so all refuse the same files:
    other than 2 to 4 dimensions, an empty axis, voxel types that are not numbers (RGB,
    complex, structured), a spacing that is not finite or outside ``SPACING_RANGE_MM``, and
    more voxels than the memory available can hold.

    Args:
        path: the file, for messages.
        shape: the stored shape (file order).
        dtype: the voxel type the reader will return.
        spacing: the spatial voxel sizes from the header (2 or 3 values).
        read_bytes: bytes per voxel the reader needs (returned array plus float32 copy).

    Raises:
        AutosegError: the header is refused; the message says why (and states sizes).
    """
    if len(shape) < 2 or len(shape) > 4:
        raise AutosegError(f"{path}: expected a 2D, 3D or 4D volume, found {len(shape)} dimensions")
    if min(shape) < 1:
        raise AutosegError(f"{path}: empty image (shape {tuple(shape)})")
    if dtype.kind not in "buif":
        kind = {"c": "complex", "V": "RGB/structured"}.get(dtype.kind, str(dtype))
        raise AutosegError(
            f"{path}: unsupported voxel data type {dtype} ({kind}); expected numbers"
        )
    low, high = SPACING_RANGE_MM
    if not all(math.isfinite(s) and low <= s <= high for s in spacing):
        shown = tuple(float(f"{s:.6g}") for s in spacing)
        raise AutosegError(
            f"{path}: invalid voxel spacing {shown} (each must be a number from {low:g} to "
            f"{high:g} mm)"
        )
    voxels = math.prod(int(n) for n in shape)
    size = "x".join(str(int(n)) for n in shape)
    require_memory(voxels * read_bytes, f"reading {size} = {voxels:,} voxels", path)


def _read_nifti(path: Path) -> tuple[np.ndarray, Geometry]:
    import nibabel as nib

    img = nib.load(str(path))
    header_dtype = img.header.get_data_dtype()
    scaled = img.dataobj.slope != 1 or img.dataobj.inter != 0  # scaling returns float64
    dtype = np.dtype(np.float64) if scaled and header_dtype.kind in "buif" else header_dtype
    spatial = tuple(float(z) for z in img.header.get_zooms()[: min(3, len(img.shape))])
    check_header(path, tuple(img.shape), dtype, spatial, dtype.itemsize + 4)
    return nifti_array(img, str(path))


def nifti_array(img: Any, where: str = "image") -> tuple[np.ndarray, Geometry]:
    """The array of a nibabel image in autoseg's order, with its geometry (header kept).

    Args:
        img: a ``nibabel.Nifti1Image`` (or Nifti2), 2D, 3D or 4D (channels last).
        where: names the image in errors.

    Returns:
        ``(Z, Y, X)`` or ``(C, Z, Y, X)`` (a transposed view of the stored data) and its
        ``Geometry``.

    Raises:
        AutosegError: not 2D to 4D.
    """
    data = np.asanyarray(img.dataobj)
    if data.ndim < 2 or data.ndim > 4:
        raise AutosegError(f"{where}: expected a 2D, 3D or 4D volume, found {data.ndim} dimensions")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    if data.ndim == 2:
        data = data[:, :, None]
        zooms = (*zooms[:2], 1.0) if len(zooms) >= 2 else (1.0, 1.0, 1.0)
    # (i, j, k[, c]) -> ([c,] k, j, i)
    if data.ndim == 4:
        data = np.transpose(data, (3, 2, 1, 0))
        shape = data.shape[1:]
    else:
        data = np.transpose(data, (2, 1, 0))
        shape = data.shape
    geometry = Geometry(
        shape=tuple(int(s) for s in shape),
        spacing=tuple(reversed(zooms)),
        affine=_affine_tuple(img.affine),
        header=img.header.copy(),
    )
    return data, geometry


def _read_itk(path: Path) -> tuple[np.ndarray, Geometry]:
    try:
        import SimpleITK as sitk  # noqa: N813 - imported lazily: 53 MB, only for non-NIfTI files
    except ImportError as exc:
        raise AutosegError(
            f"{path}: reading {file_ending(path)} files needs SimpleITK "
            "(pip install 'autoseg[itk]')"
        ) from exc
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    ncomp = reader.GetNumberOfComponents()
    pixel_name = sitk.GetPixelIDValueAsString(reader.GetPixelID()).lower()
    pixel = np.dtype(np.complex64 if "complex" in pixel_name else np.float64)  # the widest
    shape = tuple(int(n) for n in reader.GetSize()) + ((ncomp,) if ncomp > 1 else ())
    spacing = tuple(float(s) for s in reader.GetSpacing())
    check_header(path, shape, pixel, spacing, pixel.itemsize + 4)
    itk = reader.Execute()
    data = sitk.GetArrayFromImage(itk)  # (z, y, x[, c]) for 3D
    ncomp = itk.GetNumberOfComponentsPerPixel()
    if itk.GetDimension() == 2:
        data = data[None] if ncomp == 1 else data[None]
    if ncomp > 1:
        data = np.moveaxis(data, -1, 0)
    spacing = tuple(float(s) for s in itk.GetSpacing())
    if len(spacing) == 2:
        spacing = (*spacing, 1.0)
    direction = np.array(itk.GetDirection(), dtype=np.float64).reshape(len(itk.GetSpacing()), -1)
    origin = np.array(itk.GetOrigin(), dtype=np.float64)
    affine = np.eye(4)
    n = direction.shape[0]
    affine[:n, :n] = direction * np.array(spacing[:n])[None, :]
    affine[:n, 3] = origin
    # ITK is LPS, nibabel RAS: flip the first two world axes
    affine[:2] *= -1
    geometry = Geometry(
        shape=tuple(int(s) for s in (data.shape[1:] if ncomp > 1 else data.shape)),
        spacing=tuple(reversed(spacing)),
        affine=_affine_tuple(affine),
        header=itk,
    )
    return data, geometry


def _read_microscopy(path: Path, ending: str) -> tuple[np.ndarray, Geometry]:
    def check(shape: tuple[int, ...], dtype: np.dtype, spacing: tuple[float, ...]) -> None:
        check_header(path, shape, dtype, spacing, dtype.itemsize + 4)

    data, spacing, header = io_formats.read_file(path, ending, check)
    affine = np.diag([*reversed(spacing), 1.0])  # voxel (i=x, j=y, k=z) -> world
    geometry = Geometry(
        shape=tuple(int(s) for s in data.shape[-3:]),
        spacing=spacing,
        affine=_affine_tuple(affine),
        header=header,
    )
    return data, geometry


def read_array(path: str | Path) -> tuple[np.ndarray, Geometry]:
    """Read one file as stored: ``(Z, Y, X)`` or ``(C, Z, Y, X)`` for a 4D file.

    Raises:
        AutosegError: the file is missing, empty, unreadable or of an unknown format.
    """
    path = Path(path)
    ending = file_ending(path)
    if ending is None:
        raise AutosegError(f"{path}: not a supported image file ({', '.join(IMAGE_ENDINGS)})")
    if not path.is_file():
        raise AutosegError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise AutosegError(f"{path}: file is empty")
    try:
        if ending in NIFTI_ENDINGS:
            return _read_nifti(path)
        if ending in io_formats.ENDINGS:
            return _read_microscopy(path, ending)
        return _read_itk(path)
    except AutosegError:
        raise
    except Exception as exc:  # nibabel/gzip/zlib raise many types for corrupt files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AutosegError(f"{path}: cannot be read ({reason})") from exc


def read_image(paths: tuple[Path, ...] | list[Path]) -> Image:
    """Read the channel files of one case into a float32 ``(C, Z, Y, X)`` image.

    ``paths`` is one file per channel, or a single 3D or 4D file.

    Raises:
        AutosegError: a file cannot be read, or the channels do not share one grid.
    """
    arrays: list[np.ndarray] = []
    geometry: Geometry | None = None
    for path in paths:
        data, geo = read_array(path)
        if geometry is None:
            geometry = geo
        elif not geometry.same_grid(geo):
            raise AutosegError(
                f"{path}: its grid differs from {paths[0]}'s ({grid_difference(geo, geometry)})"
            )
        # one conversion to C-ordered float32 (the stored array is a transposed view)
        data = np.ascontiguousarray(data, dtype=np.float32)
        arrays.append(data if data.ndim == 4 else data[None])
        del data
    if geometry is None:
        raise AutosegError("no image files given")
    array = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
    return Image(array=array, geometry=geometry)


def as_label_map(array: np.ndarray, path: str | Path) -> np.ndarray:
    """A 3D label map as integers: whole-number floats are taken (as int32), anything else
    refused. The one rule of ``evaluate`` and ``instances``.

    Raises:
        AutosegError: not 3D, non-integer, negative or too large (beyond int32) values.
    """
    if array.ndim != 3:
        raise AutosegError(f"{path}: expected a 3D label map, found shape {array.shape}")
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):  # NaN is never equal: refused here too
            raise AutosegError(f"{path}: label map holds non-integer values")
        if rounded.size and rounded.max() > np.iinfo(np.int32).max:
            raise AutosegError(f"{path}: label map holds values beyond {np.iinfo(np.int32).max}")
        array = rounded.astype(np.int32)
    if array.size and array.min() < 0:
        raise AutosegError(f"{path}: label map holds negative values")
    return array


def write_label(array: np.ndarray, geometry: Geometry, path: str | Path) -> None:
    """Write a ``(Z, Y, X)`` label map with ``geometry`` (atomically: temp file + rename).

    The header of the source image is reused, so shape, affine and qform/sform codes are
    exactly the input's.
    """
    path = Path(path)
    if tuple(array.shape) != tuple(geometry.shape):
        raise ValueError(f"label shape {array.shape} does not match geometry {geometry.shape}")
    low, high = array.min(initial=0), array.max(initial=0)
    dtype = np.uint8 if high < 256 and low >= 0 else np.int16 if high < 2**15 else np.int32
    data = np.ascontiguousarray(array.astype(dtype, copy=False))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as (fd, tmp):
        os.close(fd)  # the writers open the temp file by name
        ending = file_ending(path)
        if ending in NIFTI_ENDINGS:
            _write_nifti(data, geometry, Path(tmp), ending=ending or ".nii.gz")
        elif ending in io_formats.ENDINGS:
            io_formats.write_label_file(data, geometry.spacing, Path(tmp), ending, path)
        else:
            _write_itk(data, geometry, Path(tmp), ending=file_ending(path) or ".mha")


def nifti_image(data: np.ndarray, geometry: Geometry) -> Any:
    """A ``nibabel.Nifti1Image`` of ``data`` (``(Z, Y, X)``, or ``(C, Z, Y, X)`` stored as 4D
    with channels last) on ``geometry``'s grid: its header's affine and qform/sform codes."""
    import nibabel as nib

    header = geometry.header.copy() if isinstance(geometry.header, nib.Nifti1Header) else None
    affine = np.array(geometry.affine, dtype=np.float64)
    out = np.transpose(data, tuple(reversed(range(data.ndim))))  # (C,) Z, Y, X -> i, j, k (, C)
    flat = header is not None and len(header.get_data_shape()) == 2
    if flat and data.ndim == 3 and out.shape[2] == 1:
        out = out[:, :, 0]  # a 2D input (i, j) is read as (1, j, i): write it back as (i, j)
    img = nib.Nifti1Image(out, affine, header=header)
    img.set_data_dtype(data.dtype)
    if header is not None:
        img.header.set_slope_inter(1, 0)
        img.set_qform(header.get_qform(), code=int(header["qform_code"]))
        img.set_sform(header.get_sform(), code=int(header["sform_code"]))
    return img


def _write_nifti(data: np.ndarray, geometry: Geometry, tmp: Path, ending: str) -> None:

    img = nifti_image(data, geometry)
    # nibabel picks the compression from the file name; the temp name hides it
    with open(tmp, "wb") as fh:
        if ending == ".nii.gz":
            import gzip

            # no file name (the temp name is random) and no time in the header: same bytes
            with gzip.GzipFile(filename="", mode="wb", compresslevel=1, fileobj=fh, mtime=0) as gz:
                gz.write(img.to_bytes())
        else:
            fh.write(img.to_bytes())


def _write_itk(data: np.ndarray, geometry: Geometry, tmp: Path, ending: str) -> None:
    import SimpleITK as sitk  # noqa: N813

    source = geometry.header
    if source is not None and hasattr(source, "GetDimension") and source.GetDimension() == 2:
        data = data[0]  # a 2D input is read as (1, Y, X): write it back as 2D
    itk = sitk.GetImageFromArray(data)
    if geometry.header is not None and hasattr(geometry.header, "GetOrigin"):
        itk.CopyInformation(geometry.header)
    else:
        itk.SetSpacing(tuple(reversed(geometry.spacing)))
    final = tmp.with_name(tmp.name + ending)
    sitk.WriteImage(itk, str(final))
    os.replace(final, tmp)
