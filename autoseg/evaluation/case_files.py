"""The files an evaluation reads: found, paired by case id, read and checked before scoring.

This module owns the inputs of ``autoseg evaluate``: listing the prediction and reference
folders (image files only, one per case id), pairing them (a prediction without reference is an
error, and so is a reference without prediction unless ``--chill``), reading each file once to
check it (readable, an integer label map, pairs of the same shape on the same grid) and to note
its label values, and collecting every problem into one ``DatasetError`` before anything is
scored. It also runs work over cases in worker processes (:func:`map_cases`). Scoring is
:mod:`autoseg.evaluation.evaluate`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from autoseg.data.io import (
    Geometry,
    as_label_map,
    file_ending,
    grid_difference,
    read_array,
    strip_ending,
)
from autoseg.errors import AutosegError, DatasetError, Problem

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class FileInfo:
    """One file as read for the checks: its geometry and label values, or its problem."""

    path: Path
    problem: Problem | None
    geometry: Geometry | None = None
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class PairedFiles:
    """The checked inputs: files by case id, the case ids scored, every file's ``FileInfo``."""

    preds: dict[str, Path]
    refs: dict[str, Path]
    common: list[str]
    infos: dict[Path, FileInfo]


def inspect_file(path: Path) -> FileInfo:
    """Read one file: its geometry and label values, or the problem with it."""
    try:
        array, geometry = read_array(path)
        array = as_label_map(array, path)
    except AutosegError as exc:
        return FileInfo(path, Problem(str(path), str(exc).removeprefix(f"{path}: ")))
    # bincount only for small values: one voxel of value 2e9 would make it allocate 16 GB
    small = array.size == 0 or int(array.max()) < 1 << 16
    flat = array.ravel()
    values = (
        np.flatnonzero(np.bincount(flat.astype(np.int64, copy=False))) if small else np.unique(flat)
    )
    geometry = Geometry(geometry.shape, geometry.spacing, geometry.affine)  # drop the header
    return FileInfo(path, None, geometry, tuple(int(v) for v in values))


def _image_files(folder: Path, role: str, problems: list[Problem]) -> dict[str, Path]:
    if not folder.is_dir():
        problems.append(Problem(str(folder), f"{role} folder not found"))
        return {}
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or file_ending(path) is None:
            continue
        case_id = strip_ending(path)
        if case_id in files:
            problems.append(Problem(str(path), f"second {role} for case {case_id!r}"))
            continue
        files[case_id] = path
    if not files:
        problems.append(Problem(str(folder), f"no {role} files found"))
    return files


def map_cases(fn: Callable[..., T], args: list[tuple], workers: int) -> list[T]:
    """``[fn(*a) for a in args]``, in ``workers`` processes when more than one."""
    if workers <= 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    with ProcessPoolExecutor(max_workers=min(workers, len(args))) as pool:
        return list(pool.map(fn, *zip(*args, strict=True)))


def pair_files(pred_dir: Path, ref_dir: Path, chill: bool, workers: int) -> PairedFiles:
    """List, pair, read and check the prediction and reference files.

    Args:
        pred_dir: folder of predicted label maps.
        ref_dir: folder of reference label maps (file names ``<case_id><ending>``).
        chill: leave out the references without prediction (with a warning) instead of
            refusing them.
        workers: processes reading the files.

    Returns:
        The files of the cases to score, each read and checked.

    Raises:
        DatasetError: every problem with the inputs, each naming its file.
    """
    problems: list[Problem] = []
    preds = _image_files(pred_dir, "prediction", problems)
    refs = _image_files(ref_dir, "reference", problems)
    missing = sorted(refs.keys() - preds.keys())
    if chill and missing:
        logger.warning("%d reference(s) without prediction not scored (--chill)", len(missing))
    for case_id in () if chill else missing:
        problems.append(Problem(str(refs[case_id]), f"no prediction for case {case_id!r}"))
    for case_id in sorted(preds.keys() - refs.keys()):
        problems.append(Problem(str(preds[case_id]), f"no reference for case {case_id!r}"))
    common = sorted(preds.keys() & refs.keys())
    paths = [preds[c] for c in common] + [refs[c] for c in common]
    infos = dict(zip(paths, map_cases(inspect_file, [(p,) for p in paths], workers), strict=True))
    problems += [info.problem for info in infos.values() if info.problem is not None]
    for case_id in common:
        pred_info, ref_info = infos[preds[case_id]], infos[refs[case_id]]
        if pred_info.geometry is None or ref_info.geometry is None:
            continue
        pg, rg = pred_info.geometry, ref_info.geometry
        if pg.shape != rg.shape:
            message = f"shape {pg.shape} differs from the reference {refs[case_id]} {rg.shape}"
            problems.append(Problem(str(preds[case_id]), message))
        elif not pg.same_grid(rg):
            message = f"spacing {pg.spacing} or affine differs from the reference {refs[case_id]}"
            detail = (  # the same spacing twice would not say what differs
                f"spacing {rg.spacing}"
                if not np.allclose(pg.spacing, rg.spacing, atol=1e-3, rtol=1e-4)
                else grid_difference(pg, rg)
            )
            problems.append(Problem(str(preds[case_id]), f"{message} ({detail})"))
    if problems:
        raise DatasetError(problems, what="evaluation inputs")
    return PairedFiles(preds, refs, common, infos)
