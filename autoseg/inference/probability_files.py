"""``CASE.npz``: the probabilities ``predict --save-probabilities`` writes, in one place.

Keys: ``probabilities`` float16 ``(K, Z, Y, X)`` on the input's grid (a distribution over the
classes) and ``labels`` ``(K,)``, the label value of each channel. A region-based model writes
``region_probabilities`` (one sigmoid per region) instead, with ``labels`` holding each region's
written value: not a distribution, so ``ensemble`` refuses to average it as one. Files are read
with ``allow_pickle=False``, and their array headers can be checked without reading the data.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.serial import atomic_output

__all__ = [
    "PROBABILITIES",
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


def probability_header(path: Path) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of ``probabilities`` and ``labels`` from the file's array headers (no data read).

    Raises:
        AutosegError: not an autoseg probability file (not a zip, missing arrays, objects).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            if "region_probabilities.npy" in zf.namelist():
                raise ValueError("region-based predictions cannot be ensembled (not supported)")
            shapes = []
            for name in ("probabilities.npy", "labels.npy"):
                with zf.open(name) as fh:
                    major, _ = np.lib.format.read_magic(fh)
                    read = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read(fh)
                if dtype.hasobject:
                    raise ValueError(f"{name} holds Python objects")
                shapes.append(tuple(shape))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise AutosegError(
            f"{path}: not a probability file of autoseg predict --save-probabilities ({exc})"
        ) from exc
    return shapes[0], shapes[1]


def load_probabilities(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(probabilities (K, Z, Y, X) float32, labels (K,))`` of one ``.npz`` (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz["probabilities"].astype(np.float32), npz["labels"].astype(np.int64)
    except (OSError, ValueError, KeyError) as exc:
        raise AutosegError(
            f"{path}: not a probability file of autoseg predict --save-probabilities ({exc})"
        ) from exc


def save_probabilities(
    probs: np.ndarray, label_values: np.ndarray, path: Path, regions: bool = False
) -> None:
    """``probabilities`` (K, Z, Y, X) float16 and ``labels`` (K,) in an .npz, atomically.

    Like ``np.savez_compressed``, but with fixed timestamps: the same result, the same bytes.
    A region-based model's sigmoid outputs are stored as ``region_probabilities`` instead
    (they are not a distribution over classes, so ``ensemble`` must not average them as one).
    """
    key = "region_probabilities" if regions else "probabilities"
    arrays = {key: probs.astype(np.float16), "labels": label_values}
    with atomic_output(path) as (fd, _), os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as member:  # streamed, no copy
                np.lib.format.write_array(member, np.asanyarray(array))
