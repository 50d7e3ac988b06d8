"""RTSTRUCT labels rasterised onto a series' grid (training data: ``autoseg init`` without LABELS).

An RT Structure Set holds each ROI as closed planar contours in patient (LPS) coordinates.
``read_rtstruct_labels`` maps every contour point into the series' voxel grid, checks that the
contour lies on one of its slices, and fills it with matplotlib's point-in-polygon test on the
pixel centres (``matplotlib.path.Path.contains_points``: matplotlib is a dependency of autoseg
already, and the test is exact and vectorised; OpenCV's ``fillPoly``, which rt-utils uses, would
add a 40 MB dependency for the same result up to boundary pixels). Contours of one ROI on one
slice are combined by the even-odd rule, so an inner contour is a hole. ROIs become label
values 1..N in StructureSetROISequence order; where ROIs overlap, the smaller one is kept
(organs inside a BODY contour survive), and the overlap is logged.

Not read: POINT and OPEN_PLANAR contours (nothing to fill; skipped with a log line).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data.dicom import DicomVolume
from autoseg.errors import AutosegError

log = logging.getLogger(__name__)

__all__ = ["read_rtstruct_labels", "referenced_series_uids"]

#: largest distance (in slices) of a contour from the slice it is drawn on
MAX_OFF_SLICE = 0.1


def referenced_series_uids(ds: Any) -> list[str]:
    """The SeriesInstanceUIDs an RTSTRUCT's structure set was drawn on."""
    uids = []
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            for series in study.get("RTReferencedSeriesSequence", []):
                uids.append(str(series.SeriesInstanceUID))
    return uids


def read_rtstruct_labels(
    path: Path | str, volume: DicomVolume
) -> tuple[np.ndarray, dict[int, str]]:
    """The ROIs of an RTSTRUCT as a ``(Z, Y, X)`` uint8 label map on ``volume``'s grid.

    Args:
        path: the RTSTRUCT file.
        volume: the series it references (``read_series``).

    Returns:
        The label map and ``{label value: ROI name}`` (every ROI, drawn or not).

    Raises:
        AutosegError: not an RTSTRUCT of this series, a contour off the slices or outside the
            grid, more than 255 ROIs.
    """
    import pydicom
    from matplotlib.path import Path as Polygon

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:
        raise AutosegError(f"{path}: cannot be read as DICOM ({exc})") from exc
    if volume.series.uid not in referenced_series_uids(ds):
        raise AutosegError(f"{path}: does not reference series {volume.series.uid}")
    rois = {
        int(r.ROINumber): str(r.get("ROIName", f"ROI {r.ROINumber}"))
        for r in ds.get("StructureSetROISequence", [])
    }
    if len(rois) > 255:
        raise AutosegError(f"{path}: {len(rois)} ROIs; at most 255 labels")
    value_of = {number: value for value, number in enumerate(rois, start=1)}
    shape = volume.image.geometry.shape  # (Z, Y, X)
    ras = np.array(volume.image.geometry.affine)
    to_voxel = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras)  # LPS -> (i, j, k)
    jj, ii = np.mgrid[0 : shape[1], 0 : shape[2]]
    centres = np.stack([ii.ravel(), jj.ravel()], axis=1).astype(np.float64)
    masks: dict[int, np.ndarray] = {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        name = rois.get(number, f"ROI {number}")
        mask = np.zeros(shape, dtype=bool)
        for contour in item.get("ContourSequence", []):
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR"))
            if kind != "CLOSED_PLANAR":
                log.info("%s: %s contour of ROI %r skipped (nothing to fill)", path, kind, name)
                continue
            points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            voxels = (to_voxel @ np.c_[points, np.ones(len(points))].T).T[:, :3]
            k = int(round(float(voxels[:, 2].mean())))
            if np.abs(voxels[:, 2] - k).max() > MAX_OFF_SLICE or not 0 <= k < shape[0]:
                raise AutosegError(
                    f"{path}: a contour of ROI {name!r} does not lie on a slice of series "
                    f"{volume.series.uid} (slice coordinate {voxels[:, 2].min():.2f} to "
                    f"{voxels[:, 2].max():.2f}, slices 0 to {shape[0] - 1})"
                )
            inside = Polygon(voxels[:, :2]).contains_points(centres).reshape(shape[1:])
            mask[k] ^= inside  # even-odd: a contour inside another is a hole
        masks[number] = mask
    labels = np.zeros(shape, dtype=np.uint8)
    for number, mask in sorted(masks.items(), key=lambda m: -int(m[1].sum())):
        overlap = int((labels[mask] != 0).sum())
        if overlap:
            log.info(
                "%s: ROI %r overlaps %d voxel(s) of larger ROIs: kept",
                path,
                rois.get(number, number),
                overlap,
            )
        labels[mask] = value_of.get(number, 0)
    return labels, {value_of[n]: rois[n] for n in rois}
