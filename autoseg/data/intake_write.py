"""``autoseg init``, step 2: write a checked ``IntakePlan`` as an nnU-Net v2 dataset folder.

Everything goes to a staging folder beside the output (``.NAME.autoseg-init.XXXXXXXX.part``),
which is renamed to the output once complete: a dataset folder is never seen half written, and
an error leaves nothing behind. The inputs are only read. Beside ``dataset.json``,
``imagesTr/`` and ``labelsTr/``, the folder holds ``init_report.json`` (every case: its sources,
its files, what was done) and, when labels were given their image's header,
``geometry_fixes.csv`` (one line per changed header field, before and after).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.data.bitmaps import ENDINGS as BITMAP_ENDINGS
from autoseg.data.bitmaps import companion_files, sidecar_path
from autoseg.data.dataset import load_dataset
from autoseg.data.intake import CaseCheck, IntakePlan
from autoseg.data.io import Geometry, nifti_image, write_label
from autoseg.data.sources import FILE, ImageSource, read_source
from autoseg.errors import DatasetError, Problem

log = logging.getLogger(__name__)

__all__ = ["IntakeResult", "write_intake"]

REPORT = "init_report.json"
GEOMETRY_FIXES = "geometry_fixes.csv"


@dataclass(frozen=True)
class IntakeResult:
    """What ``write_intake`` wrote.

    Attributes:
        folder: the dataset folder.
        cases: number of cases written.
        report: ``init_report.json``.
        geometry_fixes: ``geometry_fixes.csv``, or None when no header was changed.
    """

    folder: Path
    cases: int
    report: Path
    geometry_fixes: Path | None


def write_intake(plan: IntakePlan) -> IntakeResult:
    """Write the dataset folder of ``plan`` (staged, then renamed into place).

    Raises:
        DatasetError: the plan holds problems (nothing is written).
        AutosegError: a source cannot be read while writing (nothing is left behind).
    """
    if plan.problems:
        raise DatasetError(plan.problems, what="inputs of autoseg init")
    output = plan.output
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.autoseg-init.{secrets.token_hex(4)}.part"
    staging.mkdir()
    try:
        (staging / "imagesTr").mkdir()
        (staging / "labelsTr").mkdir()
        entries, fixes = [], []
        for case in plan.cases:
            entry, fix_rows = _write_case(plan, case, staging)
            entries.append(entry)
            fixes += fix_rows
        _write_json(staging / "dataset.json", _dataset_json(plan))
        report = {
            "images": str(plan.images),
            "labels": str(plan.labels),
            "channels": list(plan.options.channels),
            "file_ending": plan.ending,
            "cases": entries,
            "unmatched": [
                {"source": str(u.path), "reason": u.reason} for u in plan.pairing.unmatched
            ],
            "ignored": [{"source": str(u.path), "reason": u.reason} for u in plan.ignored],
        }
        _write_json(staging / REPORT, report)
        if fixes:
            _write_fixes(staging / GEOMETRY_FIXES, fixes)
        _check_loadable(staging, output)
        _move_into_place(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    log.debug("dataset written: %s (%d cases)", output, len(plan.cases))
    return IntakeResult(
        output, len(plan.cases), output / REPORT, output / GEOMETRY_FIXES if fixes else None
    )


def _check_loadable(staging: Path, output: Path) -> None:
    """Read the staged folder back with autoseg's loader; its problems name the output."""
    try:
        load_dataset(staging)
    except DatasetError as exc:
        problems = [
            Problem(p.path.replace(str(staging), str(output)), p.message) for p in exc.problems
        ]
        raise DatasetError(problems, what="dataset it would write (nothing written)") from None


def _write_case(plan: IntakePlan, case: CaseCheck, root: Path) -> tuple[dict, list[list[str]]]:
    pair, ending = case.pair, plan.ending
    images: list[str] = []
    split = case.channels_in_source > 1 and ending not in BITMAP_ENDINGS
    if split:
        data, geometry = read_source(pair.images[0])
        for c in range(case.channels_in_source):
            target = root / "imagesTr" / f"{pair.case_id}_{c:04d}{ending}"
            _write_image(data[c], geometry, target)
            images.append(target.name)
        del data
    else:
        for c, source in enumerate(pair.images):
            target = root / "imagesTr" / f"{pair.case_id}_{c:04d}{ending}"
            if source.kind == FILE and source.ending == ending:
                _copy(source, target, ending)
            else:
                _write_image(*read_source(source), target)
            images.append(target.name)
    label_target = root / "labelsTr" / f"{pair.case_id}{ending}"
    binarize = plan.options.binarize and bool(set(case.values) - {0, 1})
    fix_rows: list[list[str]] = []
    if not binarize and case.geometry is None and pair.label.kind == FILE:
        if pair.label.ending == ending:
            _copy(pair.label, label_target, ending)
        else:
            write_label(*read_source(pair.label), label_target)
    else:
        label, geometry = read_source(pair.label)
        if binarize:
            label = (label != 0).astype(np.uint8)
        if case.geometry is not None:
            geometry = read_source(pair.images[0])[1]  # the image's header, on the same shape
            for field, before, after in case.geometry.changes:
                fix_rows.append(
                    [pair.case_id, str(pair.label.path), f"labelsTr/{label_target.name}", field]
                    + [before, after, f"{case.geometry.shift_voxels:.6g}"]
                )
        write_label(np.asarray(label), geometry, label_target)
    entry = {
        "case": pair.case_id,
        "images": [str(s.path) for s in pair.images],
        "label": str(pair.label.path),
        "written": [f"imagesTr/{n}" for n in images] + [f"labelsTr/{label_target.name}"],
        "action": plan.action(case),
        "notes": list(pair.notes),
        "label_values": list(case.values),
    }
    return entry, fix_rows


def _copy(source: ImageSource, target: Path, ending: str) -> None:
    """Copy the file's bytes (and a TIFF/PNG spacing sidecar, renamed with it)."""
    shutil.copyfile(source.path, target)
    for side in companion_files(source.path):
        shutil.copyfile(side, sidecar_path(target, ending))


def _write_image(data: np.ndarray, geometry: Geometry, target: Path) -> None:
    """One channel ``(Z, Y, X)`` as NIfTI with the source's geometry, in its stored type."""
    nifti_image(np.asarray(data), geometry).to_filename(str(target))


def _dataset_json(plan: IntakePlan) -> dict:
    return {
        "name": plan.name,
        "description": f"written by autoseg init from {plan.images} and {plan.labels}",
        "channel_names": {str(i): c for i, c in enumerate(plan.options.channels)},
        "labels": {name: value for value, name in sorted(plan.labels_found.items())},
        "numTraining": len(plan.cases),
        "file_ending": plan.ending,
    }


def _write_json(path: Path, document: dict) -> None:
    path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")


def _write_fixes(path: Path, rows: list[list[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["case", "source_label", "written_label", "field", "before", "after"]
    writer.writerow([*header, "max_shift_voxels"])
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _move_into_place(staging: Path, output: Path) -> None:
    """Rename the staging folder to ``output``; an existing dataset there (``--overwrite``,
    checked by ``plan_intake``) is moved aside first and removed after."""
    if output.is_dir() and any(output.iterdir()):
        aside = output.parent / f".{output.name}.autoseg-old.{secrets.token_hex(4)}"
        os.replace(output, aside)
        try:
            os.replace(staging, output)
        except OSError:
            os.replace(aside, output)
            raise
        shutil.rmtree(aside, ignore_errors=True)
    else:
        if output.is_dir():
            output.rmdir()  # empty: renaming onto it is not portable
        os.replace(staging, output)
