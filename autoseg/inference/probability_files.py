"""``CASE.npz``: the probabilities ``predict --save-probabilities`` writes, in one place.

Keys: ``probabilities`` float16 ``(K, Z, Y, X)`` on the input's grid (a distribution over the
classes) and ``labels`` ``(K,)``, the label value of each channel. A region-based model writes
``region_probabilities`` (one sigmoid per region) instead, with ``labels`` holding each region's
written value: not a distribution, so ``ensemble`` refuses to average it as one. Files are read
with ``allow_pickle=False``, and their array headers can be checked without reading the data.

A file also names the label map predicted with it (``check_pairing``): ``label_map_sha256``, the
SHA-256 of that label map's voxel values, and ``affine``, its 4x4 voxel-to-world matrix. The
label map carries the identifier in its own voxels, so it survives any image format and any
header rewrite; ``ensemble`` refuses a ``CASE.npz`` whose label map is another prediction's.
"""

from __future__ import annotations

import hashlib
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from autoseg.data.io import read_array
from autoseg.errors import AutosegError
from autoseg.memory import require_memory
from autoseg.serial import atomic_output

__all__ = [
    "PROBABILITIES",
    "check_pairing",
    "label_map_digest",
    "load_probabilities",
    "probability_files",
    "probability_header",
    "save_probabilities",
]

PROBABILITIES = ".npz"  # CASE.npz, as predict --save-probabilities writes it


def probability_files(folder: Path) -> dict[str, Path]:
    """case id -> ``CASE.npz`` in ``folder``."""
    return {
        p.name[: -len(PROBABILITIES)]: p
        for p in sorted(folder.glob(f"*{PROBABILITIES}"))
        if not p.name.startswith(".")
    }


def _not_ours(path: Path, why: object) -> AutosegError:
    return AutosegError(
        f"{path}: not a probability file of autoseg predict --save-probabilities ({why})"
    )


def _array_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """name -> (shape, dtype) of ``probabilities`` and ``labels``, from the headers only."""
    found = {}
    with zipfile.ZipFile(path) as zf:
        if "region_probabilities.npy" in zf.namelist():
            raise ValueError("region-based predictions cannot be ensembled (not supported)")
        for name in ("probabilities", "labels"):
            with zf.open(f"{name}.npy") as fh:
                major, _ = np.lib.format.read_magic(fh)
                read = (
                    np.lib.format.read_array_header_1_0
                    if major == 1
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read(fh)
            if dtype.hasobject:
                raise ValueError(f"{name}.npy holds Python objects")
            found[name] = (tuple(int(n) for n in shape), dtype)
    return found


def probability_header(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of ``probabilities`` and ``labels``, checked from the array headers (no data read).

    The one validator of a ``CASE.npz`` before it is loaded: ``probabilities`` must be a
    float array (K, Z, Y, X) with no empty axis, ``labels`` an integer array (K,), and both
    must fit in the memory available (``autoseg.memory.require_memory``).

    Raises:
        AutosegError: not an autoseg probability file (not a zip, missing arrays, objects,
            wrong types or shapes), or too large to load.
    """
    try:
        headers = _array_headers(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _not_ours(path, exc) from exc
    (shape, dtype), (label_shape, label_dtype) = headers["probabilities"], headers["labels"]
    if len(shape) != 4 or min(shape) < 1:
        raise _not_ours(path, f"probabilities of shape {shape}; expected (K, Z, Y, X)")
    if dtype.kind != "f":
        raise _not_ours(path, f"probabilities of type {dtype}; expected floating point")
    if label_dtype.kind not in "iu":
        raise _not_ours(path, f"labels of type {label_dtype}; expected integers")
    if label_shape != shape[:1]:
        raise _not_ours(
            path, f"labels of shape {label_shape} for {shape[0]} probability channel(s)"
        )
    voxels = math.prod(shape[1:])
    # the stored array, its float32 copy, the running sum, a test mask, and the label map
    need = shape[0] * voxels * (dtype.itemsize + 9) + voxels * 8
    require_memory(need, f"loading probabilities {'x'.join(map(str, shape))}", path)
    return shape, label_shape


def load_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (K, Z, Y, X) float32, labels (K,))`` of one ``.npz`` (no pickles).

    The header is checked first (``probability_header``), then the values: probabilities must
    be finite and within [0, 1], labels distinct and within 0 .. 2**31 - 1.

    Raises:
        AutosegError: the file is refused; the message says why.
    """
    probability_header(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            probs, labels = npz["probabilities"].astype(np.float32), npz["labels"].astype(np.int64)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise _not_ours(path, exc) from exc
    if not np.isfinite(probs).all():
        raise AutosegError(f"{path}: probabilities hold NaN or infinite values")
    if probs.min() < 0 or probs.max() > 1:
        raise AutosegError(
            f"{path}: probabilities outside [0, 1] (from {probs.min():g} to {probs.max():g})"
        )
    if len(np.unique(labels)) != len(labels):
        raise AutosegError(f"{path}: labels {labels.tolist()} name a value twice")
    if labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:  # label maps are int32
        raise AutosegError(f"{path}: labels {labels.tolist()} must lie in 0..{2**31 - 1}")
    return probs, labels


def label_map_digest(labels: np.ndarray) -> str:
    """SHA-256 of a label map's voxel values (as int64, C order), whatever their dtype; one
    plane at a time (no copy of the volume)."""
    digest = hashlib.sha256()
    array = np.asarray(labels)
    for plane in array.reshape(array.shape[0], -1) if array.ndim > 1 else (array,):
        digest.update(np.ascontiguousarray(plane, dtype=np.int64).tobytes())
    return digest.hexdigest()


def save_probabilities(
    probs: np.ndarray,
    label_values: np.ndarray,
    path: Path,
    regions: bool = False,
    label_map: np.ndarray | None = None,
    affine: np.ndarray | None = None,
) -> None:
    """``probabilities`` (K, Z, Y, X) float16 and ``labels`` (K,) in an .npz, atomically.

    Like ``np.savez_compressed``, but with fixed timestamps: the same result, the same bytes.
    A region-based model's sigmoid outputs are stored as ``region_probabilities`` instead
    (they are not a distribution over classes, so ``ensemble`` must not average them as one).

    Args:
        label_map: the label map written with these probabilities: its ``label_map_digest``
            is stored as ``label_map_sha256``.
        affine: that label map's 4x4 voxel-to-world matrix, stored as ``affine``.
    """
    key = "region_probabilities" if regions else "probabilities"
    arrays = {key: probs.astype(np.float16), "labels": label_values}
    if label_map is not None:
        arrays["label_map_sha256"] = np.array(label_map_digest(label_map))
    if affine is not None:
        arrays["affine"] = np.asarray(affine, dtype=np.float64)
    with atomic_output(path) as (fd, _), os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:  # streamed, no copy
                np.lib.format.write_array(member, np.asanyarray(array))


def check_pairing(npz: Path, label_map: Path) -> str | None:
    """Whether ``npz`` and ``label_map`` are one prediction's outputs: the spatial shape, the
    geometry (affine) and the label map's identifier must match.

    Returns:
        None when they belong together, else what is wrong (for a ``Problem`` of ``npz``).
    """
    try:
        with np.load(npz, allow_pickle=False) as data:
            recorded = str(data["label_map_sha256"]) if "label_map_sha256" in data else None
            affine = data.get("affine")
    except (OSError, ValueError, KeyError) as exc:
        return f"not a probability file of autoseg predict --save-probabilities ({exc})"
    if recorded is None or affine is None:
        return (
            "names no label map (written by an older autoseg, or by hand): it cannot be told "
            "whether it belongs to the label map beside it; predict again with "
            "--save-probabilities"
        )
    try:
        shape, _ = probability_header(npz)
        labels, geometry = read_array(label_map)
    except AutosegError as exc:
        return str(exc)
    if tuple(shape[1:]) != tuple(labels.shape):
        return f"shape {tuple(shape[1:])} differs from {label_map.name}'s {tuple(labels.shape)}"
    if not np.allclose(affine, np.asarray(geometry.affine), atol=1e-3, rtol=1e-4):
        return f"its geometry (affine) differs from {label_map.name}'s"
    if label_map_digest(labels) != recorded:
        return (
            f"{label_map.name} is not the label map predicted with these probabilities (another "
            "prediction's, or rewritten without them); predict the case again with "
            "--save-probabilities --overwrite"
        )
    return None
