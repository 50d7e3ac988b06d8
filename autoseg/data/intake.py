"""``autoseg init``: a folder of images and one of labels -> a dataset autoseg (and nnU-Net) reads.

Two steps, so that the user sees everything before anything is written:

1. ``plan_intake`` lists and pairs the sources (``autoseg.data.pairing``), reads every case
   once and checks it: channels, label values (integers, not negative, 0..N; a 0/255 mask is
   recognised and ``binarize`` offered), and each label's grid against its image's (a shape
   mismatch is an error; a header that differs beyond what ``autoseg plan`` accepts is listed,
   and fixed with ``fix_geometry`` when every label voxel lies within ``geometry_tolerance``
   voxels of the image voxel it is put on). It writes nothing and returns an ``IntakePlan``
   holding every problem found.
2. ``write_intake`` (``autoseg.data.intake_write``) writes the nnU-Net v2 layout in a staging
   folder beside the output and renames it at the end.

File format: when every source is a file with one single-file ending autoseg reads
(``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.png``, ``.bmp``, ``.tif``, ``.tiff``), files
keep it and are copied byte for byte (a label that is binarized or given its image's header is
written anew in that format). Otherwise (mixed endings, ``.nhdr``/``.mhd`` with their data
file, DICOM series, 4D files holding several channels to split) every case is written as
``.nii.gz``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.data.bitmaps import ENDINGS as BITMAP_ENDINGS
from autoseg.data.dataset import MAX_LABEL_VALUE
from autoseg.data.io import Geometry
from autoseg.data.pairing import Pair, Pairing, Unmatched, label_suffix, pair_sources
from autoseg.data.sources import FILE, ImageSource, list_sources, read_source
from autoseg.errors import AutosegError, Problem

log = logging.getLogger(__name__)

__all__ = ["CaseCheck", "GeometryDifference", "IntakeOptions", "IntakePlan", "plan_intake"]

COPIED_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", *BITMAP_ENDINGS)
CONVERTED_ENDING = ".nii.gz"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NNUNET_NAME = re.compile(r"Dataset\d{3}_[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class IntakeOptions:
    """What the user asked ``autoseg init`` for.

    Attributes:
        channels: channel names in file order (``--channel CT``); "CT" selects CT normalisation.
        label_names: names of the foreground labels 1..N (default ``label_1``, ...).
        binarize: write every non-zero label value as 1 (0/255 masks).
        fix_geometry: give a label its image's header when their grids differ by at most
            ``geometry_tolerance`` voxels.
        geometry_tolerance: in image voxels, the most a label voxel may move when fixed.
        skip_unmatched: write the pairs found and leave unmatched sources out (listed).
        overwrite: replace an existing dataset folder at the output.
    """

    channels: tuple[str, ...]
    label_names: tuple[str, ...] = ()
    binarize: bool = False
    fix_geometry: bool = False
    geometry_tolerance: float = 0.5
    skip_unmatched: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class GeometryDifference:
    """How a label's header differs from its image's (same shape).

    Attributes:
        changes: ``(field, label's value, image's value)`` for spacing, origin, direction.
        shift_voxels: the largest distance, in image voxels along any axis, between where a
            label voxel lies and the image voxel it would be put on.
        fixable: ``shift_voxels`` is within the tolerance.
    """

    changes: tuple[tuple[str, str, str], ...]
    shift_voxels: float
    fixable: bool


@dataclass(frozen=True)
class CaseCheck:
    """One case as read: what it holds and what writing it needs.

    Attributes:
        pair: the sources.
        channels_in_source: channels in the first image source (>1: one 4D file holds them).
        values: the label values found.
        geometry: how the label's header differs from the image's, or None when it does not.
    """

    pair: Pair
    channels_in_source: int
    values: tuple[int, ...]
    geometry: GeometryDifference | None = None


@dataclass(frozen=True)
class IntakePlan:
    """Everything ``autoseg init`` found, before anything is written.

    Attributes:
        images, labels, output: the folders (absolute).
        options: what was asked.
        pairing: pairs and unmatched sources.
        ignored: entries of the input folders that are no image source.
        cases: the cases read and checked (a case with a problem is not among them).
        labels_found: label value -> name of the dataset.json to write.
        ending: the file ending of the files to write.
        problems: every problem; writing is refused while there is one.
        notes: remarks that do not stop writing (the dataset name's form, skipped sources).
    """

    images: Path
    labels: Path
    output: Path
    options: IntakeOptions
    pairing: Pairing
    ignored: tuple[Unmatched, ...]
    cases: tuple[CaseCheck, ...]
    labels_found: dict[int, str]
    ending: str
    problems: tuple[Problem, ...]
    notes: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The dataset's name: the output folder's."""
        return self.output.name

    def action(self, case: CaseCheck) -> str:
        """What writing does with the case: copy, convert, split, binarize, fix geometry."""
        sources = (*case.pair.images, case.pair.label)
        same = all(s.kind == FILE and s.ending == self.ending for s in sources)
        steps = ["copy" if same else f"convert to {self.ending}"]
        if case.channels_in_source > 1 and self.ending not in BITMAP_ENDINGS:
            steps.append(f"split {case.channels_in_source} channels")
        if self.options.binarize and set(case.values) - {0, 1}:
            steps.append("binarize")
        if case.geometry is not None:
            steps.append("image header onto label")
        return ", ".join(steps)


def plan_intake(images: Path, labels: Path, output: Path, options: IntakeOptions) -> IntakePlan:
    """Pair, read and check every case; write nothing.

    Args:
        images: the folder of images (files, or DICOM series folders).
        labels: the folder of label maps (may be ``images``: then labels are the names with a
            label suffix).
        output: the dataset folder to create; its name is the dataset's.
        options: what the user asked.

    Returns:
        The plan, with every problem found (``write_intake`` refuses a plan with problems).

    Raises:
        AutosegError: the options or the output folder are refused (before anything is read).
    """
    images, labels = Path(os.path.abspath(images)), Path(os.path.abspath(labels))
    output = Path(os.path.abspath(output))
    notes = _check_request(images, labels, output, options)
    image_sources, ignored = list_sources(images)
    if labels == images:
        label_sources = [s for s in image_sources if label_suffix(s.name)]
        image_sources = [s for s in image_sources if not label_suffix(s.name)]
    else:
        label_sources, more = list_sources(labels)
        ignored += more
    pairing = pair_sources(image_sources, label_sources, options.channels)
    problems: list[Problem] = []
    if not options.skip_unmatched:
        problems += [Problem(str(u.path), u.reason) for u in pairing.unmatched]
    elif pairing.unmatched:
        notes.append(f"{len(pairing.unmatched)} unmatched source(s) left out (--skip-unmatched)")
    cases = []
    for pair in pairing.cases:
        case = _check_case(pair, options, problems)
        if case is not None:
            cases.append(case)
    if not pairing.cases and not problems:
        problems.append(Problem(str(images), "no image sources found"))
    found = _label_names(cases, labels, options, problems)
    ending = _ending(cases)
    ignored_entries = tuple(Unmatched(path, why) for path, why in ignored)
    return IntakePlan(
        images=images,
        labels=labels,
        output=output,
        options=options,
        pairing=pairing,
        ignored=ignored_entries,
        cases=tuple(cases),
        labels_found=found,
        ending=ending,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def _check_request(images: Path, labels: Path, output: Path, options: IntakeOptions) -> list[str]:
    """Refuse what no data can make right: options, and an output that could touch inputs."""
    if not options.channels:
        raise AutosegError(
            "name the image channels: --channel CT (or MRI, T1, ...), once per channel in file "
            "order; 'CT' selects CT normalisation (clipping and Hounsfield statistics)"
        )
    if len({c.strip().lower() for c in options.channels}) != len(options.channels) or not all(
        c.strip() for c in options.channels
    ):
        raise AutosegError(f"--channel names must be distinct and non-empty: {options.channels}")
    if not (0 <= options.geometry_tolerance < math.inf):
        raise AutosegError(f"--geometry-tolerance {options.geometry_tolerance}: must be >= 0")
    for folder in (images, labels):
        if not folder.is_dir():
            raise AutosegError(f"{folder}: {'not a folder' if folder.exists() else 'not found'}")
    if not _SAFE_NAME.fullmatch(output.name):
        raise AutosegError(
            f"{output}: the dataset's name {output.name!r} must start with a letter or digit "
            "and hold only letters, digits, '.', '_' and '-' (nnU-Net's form: Dataset001_Liver)"
        )
    real_out = Path(os.path.realpath(output))
    for folder in {images, labels}:
        real = Path(os.path.realpath(folder))
        if real_out == real or real in real_out.parents or real_out in real.parents:
            raise AutosegError(
                f"{output}: the dataset folder must lie outside the input folder {folder} "
                "(and hold none of it): init never writes among its inputs"
            )
    if output.exists():
        if not output.is_dir():
            raise AutosegError(f"{output}: exists and is not a folder")
        if any(output.iterdir()):
            if not options.overwrite:
                raise AutosegError(
                    f"{output}: exists and is not empty; choose a new folder, or --overwrite to "
                    "replace the dataset in it"
                )
            if not (output / "dataset.json").is_file():
                raise AutosegError(
                    f"{output}: --overwrite replaces a dataset folder only, and this one holds "
                    "no dataset.json; choose a new folder"
                )
    notes = []
    if not _NNUNET_NAME.fullmatch(output.name):
        notes.append(
            f"dataset name {output.name!r}: autoseg takes any name; nnU-Net needs "
            "DatasetXXX_Name (e.g. Dataset001_Liver)"
        )
    return notes


def _check_case(pair: Pair, options: IntakeOptions, problems: list[Problem]) -> CaseCheck | None:
    """Read one case; its problems are added to ``problems`` (None when it has any)."""
    before = len(problems)
    n_channels = len(options.channels)
    image_geometry: Geometry | None = None
    in_source = 1
    for index, source in enumerate(pair.images):
        read = _read(source, problems)
        if read is None:
            continue
        data, geometry = read
        in_source = data.shape[0] if data.ndim == 4 else 1
        if len(pair.images) == 1 and in_source != n_channels:
            problems.append(
                Problem(
                    str(source.path),
                    f"{in_source} channel(s) in the file; --channel was given {n_channels} time(s)",
                )
            )
        elif len(pair.images) > 1 and in_source != 1:
            problems.append(Problem(str(source.path), f"{in_source} channels in one channel file"))
        if image_geometry is None:
            image_geometry = geometry
        elif not geometry.same_grid(image_geometry):
            first = pair.images[0].path.name
            problems.append(
                Problem(str(source.path), f"channel {index}'s grid differs from {first}'s")
            )
        del data
    read = _read(pair.label, problems)
    values: tuple[int, ...] = ()
    difference = None
    if read is not None:
        label, geometry = read
        values = _label_values(pair.label, label, problems)
        del label
        if image_geometry is not None:
            difference = _compare(pair, geometry, image_geometry, options, problems)
    if len(problems) > before:
        return None
    return CaseCheck(pair, in_source, values, difference)


def _read(source: ImageSource, problems: list[Problem]) -> tuple[np.ndarray, Geometry] | None:
    try:
        return read_source(source)
    except AutosegError as exc:
        problems.append(Problem(str(source.path), str(exc).removeprefix(f"{source.path}: ")))
        return None


def _label_values(source: ImageSource, label: np.ndarray, problems: list[Problem]) -> tuple:
    where = str(source.path)
    if label.ndim == 4:
        problems.append(Problem(where, f"{label.shape[0]} channels; a label map has one"))
        return ()
    values = np.unique(label)
    if label.dtype.kind == "f":
        bad = values[~np.isfinite(values) | (values != np.round(values))]
        if bad.size:
            examples = ", ".join(f"{v:.6g}" for v in bad[:3])
            problems.append(Problem(where, f"non-integer label values ({examples}, ...)"))
            return ()
    if values.size and values[0] < 0:
        problems.append(Problem(where, f"negative label values ({values[0]:.6g}, ...)"))
        return ()
    return tuple(int(v) for v in values)


def _compare(
    pair: Pair,
    label: Geometry,
    image: Geometry,
    options: IntakeOptions,
    problems: list[Problem],
) -> GeometryDifference | None:
    """None when ``autoseg plan`` accepts the label's grid as the image's; else the difference
    (a problem unless ``fix_geometry`` and within the tolerance)."""
    where = str(pair.label.path)
    if label.shape != image.shape:
        problems.append(
            Problem(where, f"shape {label.shape} differs from its image's {image.shape}")
        )
        return None
    close = np.allclose(label.spacing, image.spacing, rtol=1e-4, atol=1e-4)
    if close and label.same_grid(image):  # the rule of autoseg.planning.fingerprint
        return None
    difference = geometry_difference(label, image, options.geometry_tolerance)
    listed = "; ".join(f"{f} {a} vs image's {b}" for f, a, b in difference.changes)
    shift = f"label voxels up to {difference.shift_voxels:.3g} image voxels away"
    if not options.fix_geometry:
        problems.append(
            Problem(
                where,
                f"header differs from its image's: {listed} ({shift}); "
                "--fix-geometry gives the label its image's header",
            )
        )
    elif not difference.fixable:
        problems.append(
            Problem(
                where,
                f"header differs from its image's: {listed}; {shift}, more than "
                f"--geometry-tolerance {options.geometry_tolerance:g}: not fixed (the "
                "label may be flipped or drawn on another grid; resample it onto the image)",
            )
        )
    return difference


def geometry_difference(label: Geometry, image: Geometry, tolerance: float) -> GeometryDifference:
    """How far the label's voxels lie from the image voxels of the same index, and what in the
    headers differs (spacing, origin, direction)."""
    a_label, a_image = np.array(label.affine), np.array(image.affine)
    corners = np.array(
        [
            [i, j, k, 1.0]
            for i in (0, image.shape[2] - 1)
            for j in (0, image.shape[1] - 1)
            for k in (0, image.shape[0] - 1)
        ]
    ).T  # (4, 8): voxel (i, j, k) of the 8 corners
    try:
        moved = np.linalg.solve(a_image, a_label @ corners)
        shift = float(np.abs(moved[:3] - corners[:3]).max())
    except np.linalg.LinAlgError:
        shift = math.inf
    changes = []
    if not np.allclose(label.spacing, image.spacing, rtol=1e-4, atol=1e-4):
        changes.append(("spacing", _numbers(label.spacing), _numbers(image.spacing)))
    if not np.allclose(a_label[:3, 3], a_image[:3, 3], atol=1e-3):
        changes.append(("origin", _numbers(a_label[:3, 3]), _numbers(a_image[:3, 3])))
    d_label = a_label[:3, :3] / np.linalg.norm(a_label[:3, :3], axis=0)
    d_image = a_image[:3, :3] / np.linalg.norm(a_image[:3, :3], axis=0)
    if not np.allclose(d_label, d_image, atol=1e-4):
        changes.append(("direction", _numbers(d_label.T.ravel()), _numbers(d_image.T.ravel())))
    return GeometryDifference(tuple(changes), shift, shift <= tolerance)


def _numbers(values: Sequence[float] | np.ndarray) -> str:
    return "(" + ", ".join(f"{float(v):.6g}" for v in values) + ")"


def _label_names(
    cases: Sequence[CaseCheck], folder: Path, options: IntakeOptions, problems: list[Problem]
) -> dict[int, str]:
    """The dataset.json labels from the values of every label file."""
    holders: dict[int, list[str]] = {}
    for case in cases:
        for value in case.values:
            holders.setdefault(value, []).append(case.pair.label.path.name)
    values = sorted(holders)
    if options.binarize:
        values = [0, 1] if any(v for v in values) else [0]
    elif values and values[-1] > MAX_LABEL_VALUE and values == list(range(len(values))):
        problems.append(
            Problem(str(folder), f"{len(values)} label values: at most {MAX_LABEL_VALUE + 1}")
        )
        return {}
    elif values != list(range(len(values))):
        odd = [v for i, v in enumerate(values) if v != i]
        files = sorted({f for v in odd for f in holders[v]})
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        message = (
            f"label values {', '.join(map(str, values[:8]))}{' ...' if len(values) > 8 else ''}"
            f" are not consecutive 0..N (in {shown})"
        )
        if 255 in values:
            message += (
                "; 0/255 looks like a binary mask saved as an 8-bit picture: --binarize writes "
                "every non-zero value as 1"
            )
        else:
            message += "; relabel them to 0, 1, 2, ... (a dataset.json declares 0..N)"
        problems.append(Problem(str(folder), message))
        return {}
    if cases and values[-1:] == [0]:
        problems.append(Problem(str(folder), "every label map is empty (only 0)"))
        return {}
    foreground = values[1:]
    if options.label_names and len(options.label_names) != len(foreground):
        problems.append(
            Problem(
                str(folder),
                f"{len(options.label_names)} --label name(s) for {len(foreground)} label value(s) "
                f"found ({', '.join(map(str, foreground))})",
            )
        )
        return {}
    names = list(options.label_names) or [f"label_{v}" for v in foreground]
    return {0: "background", **dict(zip(foreground, names, strict=True))}


def _ending(cases: Sequence[CaseCheck]) -> str:
    """The ending of every written file: the sources' own when they share one autoseg reads
    from a single file, else .nii.gz."""
    sources = [s for c in cases for s in (*c.pair.images, c.pair.label)]
    endings = {s.ending for s in sources}
    split = any(c.channels_in_source > 1 for c in cases)
    if len(endings) == 1 and next(iter(endings)) in COPIED_ENDINGS:
        ending = next(iter(endings))
        if not split or ending in BITMAP_ENDINGS:
            return str(ending)
    return CONVERTED_ENDING
