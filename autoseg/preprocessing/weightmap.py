"""The U-Net paper's border weight map, computed once per preprocessed case and stored beside it.

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 sigma**2))`` with ``d1``, ``d2`` the
distances (voxels of the preprocessed grid) to the nearest and second-nearest object, objects
being the connected components of the foreground (label > 0, face connectivity), and ``w_c``
balancing the class frequencies of the case (``w_c(k) = N / (K * N_k)`` over the K classes
present, so its mean is 1). Background pixels in a narrow gap between two objects get the highest
weight; far background gets ``w_c`` only. The border term is added on background pixels only,
as in the paper's figure (inside an object ``d1 = 0`` and the term would only reward its rim).

Each object's distance transform is taken in its bounding box grown by the distance beyond
which the border term is below 1e-6 of ``w0``, so the cost grows with the objects' size, not
with their count times the image size.

Stored as ``<case>.wmap.npy`` float32 ``(1, Z, Y, X)`` with ``<case>.wmap.json`` (written last)
holding the key of the settings and label data it was made from: a changed label map or
``w0``/``sigma`` makes a new one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.errors import AutosegError
from autoseg.preprocessing.storage import ENDINGS, STORAGES, load_array
from autoseg.serial import atomic_output, atomic_write_text

log = logging.getLogger(__name__)

W0 = 10.0
SIGMA = 5.0
FORMAT_VERSION = 1
_NEGLIGIBLE = 1e-6  # border terms below this fraction of w0 are left out


def class_weights(labels: np.ndarray) -> np.ndarray:
    """``w_c`` per voxel: ``N / (K * N_k)`` for a voxel of class k (K classes present)."""
    values, counts = np.unique(labels, return_counts=True)
    per_class = labels.size / (len(values) * counts)
    lookup = dict(zip(values.tolist(), per_class.tolist(), strict=True))
    out = np.empty(labels.shape, np.float32)
    for value, weight in lookup.items():
        out[labels == value] = weight
    return out


def border_weight_map(labels: np.ndarray, w0: float = W0, sigma: float = SIGMA) -> np.ndarray:
    """The border weight map of one label map.

    Args:
        labels: ``(Y, X)`` or ``(Z, Y, X)`` integer label map (0 = background).
        w0: weight of the border term.
        sigma: its width in voxels.

    Returns:
        float32 array of ``labels``' shape.
    """
    labels = np.asarray(labels)
    weights = class_weights(labels)
    objects, count = ndimage.label(labels > 0)
    if count < 2:
        return weights  # d2 is infinite without a second object
    reach = sigma * math.sqrt(2 * math.log(1 / _NEGLIGIBLE))  # d1 + d2 beyond: negligible
    margin = int(math.ceil(reach))
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    for index, box in enumerate(ndimage.find_objects(objects), start=1):
        grown = tuple(
            slice(max(0, s.start - margin), min(n, s.stop + margin))
            for s, n in zip(box, labels.shape, strict=True)
        )
        distance = ndimage.distance_transform_edt(objects[grown] != index).astype(np.float32)
        near, second = d1[grown], d2[grown]
        closer = distance < near
        second[:] = np.where(closer, near, np.minimum(second, distance))
        near[:] = np.where(closer, distance, near)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    weights += np.where(labels == 0, border, 0).astype(np.float32)
    return weights


def weight_key(seg: np.ndarray, w0: float, sigma: float) -> str:
    """Key of a weight map: the label data and the settings it was made with."""
    digest = hashlib.sha256(np.ascontiguousarray(seg).tobytes())
    digest.update(json.dumps([FORMAT_VERSION, list(seg.shape), w0, sigma]).encode())
    return digest.hexdigest()[:16]


def weight_paths(folder: Path, case_id: str) -> tuple[Path, Path]:
    """``(<case>.wmap.npy, <case>.wmap.json)`` in a preprocessed-data folder."""
    return folder / f"{case_id}.wmap.npy", folder / f"{case_id}.wmap.json"


def ensure_weight_maps(
    folder: Path, case_ids: Sequence[str], w0: float = W0, sigma: float = SIGMA
) -> int:
    """Compute the weight maps of the cases in ``folder`` that lack a current one.

    Args:
        folder: a preprocessed-data folder (``<case>.seg.npy``, or ``.seg.b2nd``, per case).
        case_ids: the cases.
        w0, sigma: the border term's settings.

    Returns:
        How many maps were (re)computed.

    Raises:
        AutosegError: a case has no preprocessed label map.
    """
    made = 0
    for case_id in case_ids:
        stored = [(s, folder / f"{case_id}.seg{ENDINGS[s]}") for s in STORAGES]
        found = [(s, path) for s, path in stored if path.is_file()]
        if not found:
            raise AutosegError(f"{stored[0][1]}: no preprocessed label map to weight")
        seg = load_array(found[0][1], found[0][0], mmap=False)  # (1, Z, Y, X)
        key = weight_key(seg, w0, sigma)
        npy, marker = weight_paths(folder, case_id)
        try:
            if json.loads(marker.read_text())["key"] == key and npy.is_file():
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass
        marker.unlink(missing_ok=True)  # an old map must not look current
        weights = border_weight_map(np.asarray(seg[0]), w0, sigma)[None]
        with atomic_output(npy) as (fd, _), os.fdopen(fd, "wb") as fh:
            np.save(fh, weights.astype(np.float32))
        atomic_write_text(marker, json.dumps({"key": key, "w0": w0, "sigma": sigma}) + "\n")
        made += 1
    if made:
        log.info("%s: border weight maps computed for %d case(s)", folder, made)
    return made


def load_weight_map(folder: Path, case_id: str) -> np.ndarray:
    """The stored ``(1, Z, Y, X)`` weight map of a case (memory-mapped).

    Raises:
        AutosegError: none was computed (``ensure_weight_maps`` makes them).
    """
    npy, marker = weight_paths(folder, case_id)
    if not marker.is_file():
        raise AutosegError(f"{npy}: no border weight map for case '{case_id}'")
    return np.load(npy, mmap_mode="r")
