"""DICOM SEG out (one per case, highdicom) and DICOM SEG in (labels on a series' grid).

``write_seg`` turns a ``(Z, Y, X)`` label map on a series' grid into a binary DICOM
Segmentation: one segment per label (background excluded), numbered 1..N in label order,
labelled with the label's name, with a segmented property category and type code:
a SNOMED CT code where the name is a structure of ``SCT_STRUCTURES`` (category "Anatomical
Structure", or "Morphologically Abnormal Structure" for lesions), else the generic
category/type "Tissue" (SCT 85756007). A JSON map (``load_code_map``) overrides both per label
name. highdicom references the source series, its frame of reference and, per frame, the source
slice; the algorithm identification is autoseg, its version and the model.

``read_seg_labels`` reads a SEG back onto a series read by ``autoseg.data.dicom.read_series``
(the training data of ``autoseg.data.dicom_dataset``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.errors import AutosegError
from autoseg.serial import atomic_output

log = logging.getLogger(__name__)

__all__ = ["SCT_STRUCTURES", "SegmentCode", "load_code_map", "read_seg_labels", "write_seg"]

#: label name (lower case, spaces/underscores/hyphens ignored) -> SNOMED CT (value, meaning)
SCT_STRUCTURES: dict[str, tuple[str, str]] = {
    "liver": ("10200004", "Liver"),
    "spleen": ("78961009", "Spleen"),
    "kidney": ("64033007", "Kidney"),
    "pancreas": ("15776009", "Pancreas"),
    "heart": ("80891009", "Heart"),
    "lung": ("39607008", "Lung"),
    "brain": ("12738006", "Brain"),
    "hippocampus": ("5366008", "Hippocampus"),
    "prostate": ("41216001", "Prostate"),
    "aorta": ("15825003", "Aorta"),
    "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"),
    "esophagus": ("32849002", "Esophagus"),
    "colon": ("71854001", "Colon"),
    "duodenum": ("38848004", "Duodenum"),
    "bone": ("272673000", "Bone"),
    "muscle": ("71616004", "Muscle"),
    "vertebra": ("51282000", "Vertebra"),
    "trachea": ("44567001", "Trachea"),
    "adrenalgland": ("23451007", "Adrenal gland"),
    "spinalcord": ("2748008", "Spinal cord"),
    "leftatrium": ("82471001", "Left atrium"),
    "leftventricle": ("87878005", "Left ventricle"),
    "inferiorvenacava": ("64131007", "Inferior vena cava"),
    "portalvein": ("32764006", "Portal vein"),
    "bloodvessel": ("59820001", "Blood vessel"),
    "bladder": ("89837001", "Bladder"),
    "urinarybladder": ("89837001", "Bladder"),
}
#: morphologically abnormal structures: category SCT 49755003
SCT_ABNORMAL: dict[str, tuple[str, str]] = {
    "tumor": ("108369006", "Neoplasm"),
    "tumour": ("108369006", "Neoplasm"),
    "neoplasm": ("108369006", "Neoplasm"),
    "lesion": ("52988006", "Lesion"),
    "mass": ("4147007", "Mass"),
    "cyst": ("367643001", "Cyst"),
    "edema": ("79654002", "Edema"),
    "oedema": ("79654002", "Edema"),
    "necrosis": ("6574001", "Necrosis"),
}
_ANATOMY = ("SCT", "91723000", "Anatomical Structure")
_ABNORMAL = ("SCT", "49755003", "Morphologically Abnormal Structure")
_TISSUE = ("SCT", "85756007", "Tissue")
_SIDES = {"left": ("SCT", "7771000", "Left"), "right": ("SCT", "24028007", "Right")}


@dataclass(frozen=True)
class SegmentCode:
    """The coded meaning of one segment: (scheme, value, meaning) for category and type, and
    the laterality modifier of the type (SCT 7771000 Left / 24028007 Right) when there is one."""

    category: tuple[str, str, str]
    type: tuple[str, str, str]
    modifier: tuple[str, str, str] | None = None


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def segment_code(name: str, overrides: Mapping[str, SegmentCode] | None = None) -> SegmentCode:
    """The codes of a label: the override, else a known structure, else generic tissue."""
    if overrides and name in overrides:
        return overrides[name]
    key = _key(name)
    if key in SCT_STRUCTURES:
        return SegmentCode(_ANATOMY, ("SCT", *SCT_STRUCTURES[key]))
    for side, code in _SIDES.items():  # "left kidney", "kidney_left", "Kidney-Left"
        rest = key.removeprefix(side) if key.startswith(side) else key.removesuffix(side)
        if rest != key and rest in SCT_STRUCTURES:
            return SegmentCode(_ANATOMY, ("SCT", *SCT_STRUCTURES[rest]), code)
    if key in SCT_ABNORMAL:
        return SegmentCode(_ABNORMAL, ("SCT", *SCT_ABNORMAL[key]))
    return SegmentCode(_TISSUE, _TISSUE)


def load_code_map(path: Path | str) -> dict[str, SegmentCode]:
    """Read a codes map: ``{"label name": {"category": [scheme, value, meaning], "type":
    [scheme, value, meaning]}}``, optionally with ``"modifier": [scheme, value, meaning]`` (of
    the type, e.g. laterality).

    Raises:
        AutosegError: the file is missing, not JSON, or an entry is not of that form.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AutosegError(f"{path}: cannot be read as a JSON codes map ({exc})") from exc
    if not isinstance(raw, dict):
        raise AutosegError(f"{path}: expected an object {{label name: {{category, type}}}}")
    out = {}
    for name, entry in raw.items():
        try:
            keys = ("category", "type", "modifier") if "modifier" in entry else ("category", "type")
            triples = [tuple(str(v) for v in entry[k]) for k in keys]
            if any(len(t) != 3 or not all(t) for t in triples):
                raise ValueError
        except (TypeError, KeyError, ValueError):
            raise AutosegError(
                f'{path}: entry {name!r} must be {{"category": [scheme, value, meaning], '
                '"type": [scheme, value, meaning]} (e.g. ["SCT", "10200004", "Liver"])'
            ) from None
        out[str(name)] = SegmentCode(*triples)  # type: ignore[arg-type]
    return out


def write_seg(
    labels: np.ndarray,
    source: tuple[Any, ...],
    label_names: Mapping[int, str],
    path: Path | str,
    *,
    model: str,
    codes: Mapping[str, SegmentCode] | None = None,
    affine: Any = None,
) -> Path:
    """Write a binary DICOM SEG of ``labels`` on the grid of the ``source`` slices.

    Args:
        labels: ``(Z, Y, X)`` integer label map, ``labels[z]`` on ``source[z]``.
        source: the series' slice headers in Z order (``DicomVolume.datasets``).
        label_names: label value -> name for every non-zero label value of the model (a
            label absent from the map still gets its segment, with no frames).
        path: the file to write (atomically).
        model: the model's name, recorded as the algorithm's source.
        codes: per-name overrides of the segment codes (``load_code_map``).
        affine: the RAS affine of ``labels`` (``Geometry.affine``); needed when ``source`` is
            one multi-frame image, whose SEG frames are placed by this geometry.

    Returns:
        ``path``.
    """
    import highdicom as hd
    from pydicom.sr.coding import Code

    import autoseg

    frames = int(source[0].get("NumberOfFrames", 1) or 1) if len(source) == 1 else len(source)
    if labels.shape != (frames, int(source[0].Rows), int(source[0].Columns)):
        raise ValueError(f"label map {labels.shape} does not fit {frames} source slices")
    values = sorted(v for v in label_names if v != 0)
    lookup = np.zeros(max([int(labels.max(initial=0)), *values]) + 1, dtype=np.uint16)
    for number, value in enumerate(values, start=1):
        lookup[value] = number
    segments = lookup[labels.astype(np.int64)]
    algorithm = hd.AlgorithmIdentificationSequence(
        name="autoseg",
        version=autoseg.__version__,
        family=Code("123110", "DCM", "Artificial Intelligence"),
        source=model[:64] or None,
    )
    descriptions = []
    for number, value in enumerate(values, start=1):
        name = str(label_names[value])
        code = segment_code(name, codes)
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name[:64],
            segmented_property_category=Code(code.category[1], *code.category[::2]),
            segmented_property_type=Code(code.type[1], *code.type[::2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"autoseg label {value} ({name})"[:64],
        )
        if code.modifier is not None:  # inside the type's code item, as the standard nests it
            modifier = hd.sr.CodedConcept(code.modifier[1], *code.modifier[::2])
            description.SegmentedPropertyTypeCodeSequence[
                0
            ].SegmentedPropertyTypeModifierCodeSequence = [modifier]
        descriptions.append(description)
    first = source[0]
    seg = hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=_on_grid(segments, source, affine),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(first.get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="autoseg",
        manufacturer_model_name=model[:64] or "autoseg",
        software_versions=autoseg.__version__,
        device_serial_number="0",
        series_description=f"autoseg {model}"[:64],
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as (fd, tmp):
        os.close(fd)
        seg.save_as(tmp)
    return path


def _on_grid(segments: np.ndarray, source: tuple[Any, ...], affine: Any) -> Any:
    """Single-frame sources: the array, frame z on ``source[z]``. One multi-frame source: a
    highdicom ``Volume`` (its affine maps (slice, row, column) to LPS), placed by geometry."""
    if len(source) > 1 or int(source[0].get("NumberOfFrames", 1) or 1) == 1:
        return segments
    import highdicom as hd

    if affine is None:
        raise ValueError("a SEG of a multi-frame image needs the label map's affine")
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=np.float64)
    return hd.Volume(
        array=segments,
        affine=lps[:, [2, 1, 0, 3]],  # (i, j, k) -> (slice k, row j, column i)
        coordinate_system="PATIENT",
        frame_of_reference_uid=str(source[0].FrameOfReferenceUID),
    )


def read_seg_labels(
    seg_path: Path | str, source: tuple[Any, ...]
) -> tuple[np.ndarray, dict[int, str]]:
    """The segments of a DICOM SEG as a ``(Z, Y, X)`` label map on the ``source`` slices.

    Segment number n becomes label value n; frames are placed by their referenced source
    instance (SOPInstanceUID), so the SEG's frame order does not matter.

    Args:
        seg_path: a DICOM SEG file that references the series of ``source``.
        source: that series' slice headers in Z order (``DicomVolume.datasets``).

    Returns:
        The label map (uint8 or uint16) and ``{segment number: segment label}``.

    Raises:
        AutosegError: not a readable SEG, segments overlap, or it references other slices.
    """
    import highdicom as hd

    seg_path = Path(seg_path)
    if len(source) == 1 and int(source[0].get("NumberOfFrames", 1) or 1) > 1:
        raise AutosegError(
            f"{seg_path}: labels of a multi-frame image are not read (its series "
            f"{source[0].SeriesInstanceUID} is one multi-frame file)"
        )
    try:
        seg = hd.seg.segread(seg_path)
    except Exception as exc:
        raise AutosegError(f"{seg_path}: cannot be read as a DICOM SEG ({exc})") from exc
    names = {
        int(s.SegmentNumber): str(s.get("SegmentLabel", f"segment {s.SegmentNumber}"))
        for s in seg.SegmentSequence
    }
    uids = [str(ds.SOPInstanceUID) for ds in source]
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(uids):
        raise AutosegError(
            f"{seg_path}: references none of the {len(uids)} slices of series "
            f"{source[0].SeriesInstanceUID}"
        )
    try:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids,
            combine_segments=True,
            skip_overlap_checks=False,
            assert_missing_frames_are_empty=True,
        )
    except Exception as exc:
        raise AutosegError(f"{seg_path}: segments cannot be read as one label map ({exc})") from exc
    dtype = np.uint8 if max(names, default=0) < 256 else np.uint16
    return np.asarray(pixels).astype(dtype), names
