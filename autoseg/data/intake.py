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
from autoseg.data.intake_checks import (
    GeometryDifference,
    compare_grids,
    label_names,
    label_values,
)
from autoseg.data.io import Geometry
from autoseg.data.pairing import Pair, Pairing, Unmatched, label_suffix, pair_sources
from autoseg.data.sources import FILE, ImageSource, list_sources, read_source
from autoseg.errors import AutosegError, Problem

log = logging.getLogger(__name__)

__all__ = ["CaseCheck", "IntakeOptions", "IntakePlan", "plan_intake"]

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
        what = "no image pairs with a label" if image_sources else "no image sources found"
        problems.append(Problem(str(images), what))
    holders: dict[int, list[str]] = {}
    for case in cases:
        for value in case.values:
            holders.setdefault(value, []).append(case.pair.label.path.name)
    found = (
        label_names(holders, labels, options.binarize, options.label_names, problems)
        if cases
        else {}
    )
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
    names = [n.strip().lower() for n in options.label_names]
    if len(set(names)) != len(names) or not all(names) or "background" in names:
        raise AutosegError(
            f"--label names must be distinct and non-empty, for labels 1, 2, ... in order "
            f"('background' is label 0's): {options.label_names}"
        )
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
        values = label_values(str(pair.label.path), label, problems)
        del label
        if image_geometry is not None:
            difference = compare_grids(
                str(pair.label.path),
                geometry,
                image_geometry,
                options.fix_geometry,
                options.geometry_tolerance,
                problems,
            )
    if len(problems) > before:
        return None
    return CaseCheck(pair, in_source, values, difference)


def _read(source: ImageSource, problems: list[Problem]) -> tuple[np.ndarray, Geometry] | None:
    try:
        return read_source(source)
    except AutosegError as exc:
        problems.append(Problem(str(source.path), str(exc).removeprefix(f"{source.path}: ")))
        return None


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
