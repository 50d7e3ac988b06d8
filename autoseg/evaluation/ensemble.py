"""Ensembles of configurations: averaged probabilities, for new cases and for cross-validation.

``ensemble_folders`` is ``autoseg ensemble -i DIR1 -i DIR2 -o OUT``: for every case present in
all folders it averages the ``CASE.npz`` probabilities that ``predict --save-probabilities``
wrote, takes the argmax and writes ``OUT/CASE<ending>`` with the geometry of the first folder's
label map. ``evaluate_cv_ensembles`` scores every pair of trained configurations the same way
on their cross-validation predictions, for ``autoseg find-best``.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.data.io import IMAGE_ENDINGS, read_array, strip_ending, write_label
from autoseg.data.model_folder import ModelFolder
from autoseg.errors import AutosegError, DatasetError, Problem
from autoseg.evaluation.evaluate import evaluate_arrays
from autoseg.evaluation.report import Evaluation
from autoseg.inference.inputs import refuse_outputs_that_are_inputs
from autoseg.inference.probability_files import (
    check_pairing,
    load_probabilities,
    probability_files,
    probability_header,
)
from autoseg.serial import check_output_folder, remove_temp_files

log = logging.getLogger(__name__)

__all__ = [
    "EnsembleReport",
    "EnsembleResult",
    "average_probabilities",
    "ensemble_folders",
    "evaluate_cv_ensembles",
]


def average_probabilities(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The mean of several predictions' probabilities of one case.

    Returns:
        ``(probabilities (K, Z, Y, X) float32, labels (K,))``.

    Raises:
        AutosegError: a file is unreadable, or the files disagree in labels or shape.
    """
    total, labels = load_probabilities(paths[0])
    for path in paths[1:]:
        probs, other = load_probabilities(path)
        if not np.array_equal(other, labels):
            raise AutosegError(
                f"{path}: labels {other.tolist()} differ from {paths[0]} ({labels.tolist()})"
            )
        if probs.shape != total.shape:
            raise AutosegError(f"{path}: shape {probs.shape} differs from {paths[0]}")
        total += probs
    return total / len(paths), labels


def to_label_map(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Argmax over classes, as label values (uint8 when they fit)."""
    dtype = np.uint8 if labels.max() < 256 and labels.min() >= 0 else np.int32
    return labels.astype(dtype)[np.argmax(probs, axis=0)]


def _label_map_of(folder: Path, case: str) -> Path | None:
    for ending in IMAGE_ENDINGS:
        candidate = folder / f"{case}{ending}"
        if candidate.is_file():
            return candidate
    return None


@dataclass(frozen=True)
class EnsembleReport:
    """What ``ensemble_folders`` did: label maps written, existing ones left alone, and cases
    whose probabilities were refused (the others were written)."""

    written: tuple[Path, ...]
    skipped: tuple[Path, ...] = ()
    failed: tuple[Problem, ...] = ()


def ensemble_folders(
    inputs: Sequence[Path], output: Path, overwrite: bool = False
) -> EnsembleReport:
    """Average the saved probabilities of several prediction folders, case by case.

    Args:
        inputs: two or more folders written by ``predict --save-probabilities``.
        output: folder for the label maps (created); not one of ``inputs``.
        overwrite: replace existing outputs (else they are skipped).

    Returns:
        The written and skipped label maps, and the cases whose probabilities were refused
        (non-finite or out of [0, 1], seen only when loaded; the other cases are written).

    Raises:
        DatasetError: before anything is written: fewer than two folders, a folder without
            probabilities, cases missing from some folders, a ``CASE.npz`` refused from its
            headers (``probability_header``), or a ``CASE.npz`` without the label map predicted
            with it (``probability_files.check_pairing``: shape, geometry, identifier).
    """
    inputs, output = [Path(p) for p in inputs], Path(output)
    check_output_folder(output, "-o")
    problems: list[Problem] = []
    if len({p.resolve() for p in inputs}) < 2:
        problems.append(Problem(str(output), "an ensemble needs at least two different -i folders"))
    found = {folder: probability_files(folder) for folder in inputs if folder.is_dir()}
    for folder in inputs:
        if folder not in found:
            problems.append(Problem(str(folder), "folder not found"))
        elif not found[folder]:
            problems.append(Problem(str(folder), "no CASE.npz (predict with --save-probabilities)"))
    if problems:
        raise DatasetError(problems, what="ensemble inputs")
    cases = sorted(set.union(*(set(f) for f in found.values())))
    for case in cases:
        missing = [str(folder) for folder, files in found.items() if case not in files]
        if missing:
            problems.append(Problem(f"{case}.npz", f"missing in {', '.join(missing)}"))
            continue
        shapes = {}
        for folder, files in found.items():
            try:
                shapes[files[case]] = probability_header(files[case])
            except AutosegError as exc:
                problems.append(Problem(str(files[case]), str(exc).split(": ", 1)[1]))
                continue
            label_map = _label_map_of(folder, case)  # the one predicted with this CASE.npz
            wrong = "no label map beside CASE.npz" if label_map is None else None
            wrong = wrong or check_pairing(files[case], label_map)
            if wrong:
                problems.append(Problem(str(files[case]), wrong))
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{p}: {s[0]}" for p, s in shapes.items())
            problems.append(Problem(f"{case}.npz", f"shapes differ ({listing})"))
        label_map = _label_map_of(inputs[0], case)
        if label_map is None:
            problems.append(Problem(str(inputs[0] / case), "no label map beside CASE.npz"))
        elif shapes and len(set(shapes.values())) == 1:
            _check_label_map(label_map, next(iter(shapes.values()))[0], problems)
    if problems:
        raise DatasetError(problems, what="ensemble inputs")
    targets = {case: output / (_label_map_of(inputs[0], case) or Path()).name for case in cases}
    for target in targets.values():
        if target.exists() and not target.is_file():  # never a finished output
            problems.append(Problem(str(target), "a folder of this name is in the way"))
    if problems:
        raise DatasetError(problems, what="ensemble outputs")
    refuse_outputs_that_are_inputs(
        [p for files in found.values() for p in files.values()], targets.values()
    )
    if output.resolve() in {p.resolve() for p in inputs}:
        raise AutosegError(f"{output}: the output folder must not be an input folder")
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    written, skipped, failed = [], [], []
    for case in cases:
        if targets[case].is_file() and not overwrite:
            skipped.append(targets[case])
            continue
        try:  # the values are only seen now: a bad file fails its case, the others go on
            probs, labels = average_probabilities([found[folder][case] for folder in inputs])
        except AutosegError as exc:
            where, _, why = str(exc).partition(": ")
            failed.append(Problem(where, why))
            log.warning("case %s not written: %s", case, exc)
            continue
        _, geometry = read_array(_label_map_of(inputs[0], case))
        remove_temp_files(targets[case])  # of a killed run
        write_label(to_label_map(probs, labels), geometry, targets[case])
        written.append(targets[case])
    if skipped:
        log.warning("%d existing output(s) skipped (overwrite to replace them)", len(skipped))
    if created and not written:
        output.rmdir()  # every case failed: leave no empty folder behind
    return EnsembleReport(tuple(written), tuple(skipped), tuple(failed))


def _check_label_map(path: Path, shape: tuple[int, ...], problems: list[Problem]) -> None:
    """The label map beside ``CASE.npz`` gives the output its geometry: same grid needed."""
    try:
        _, geometry = read_array(path)
    except AutosegError as exc:
        problems.append(Problem(str(path), str(exc).split(": ", 1)[-1]))
        return
    if tuple(geometry.shape) != tuple(shape[1:]):
        problems.append(
            Problem(
                str(path),
                f"label map of shape {tuple(geometry.shape)}, but its CASE.npz holds "
                f"probabilities on {tuple(shape[1:])}",
            )
        )


# ---------------------------------------------------------------------- cross-validation


@dataclass(frozen=True)
class EnsembleResult:
    """One pair of configurations scored on their pooled cross-validation predictions."""

    members: tuple[ModelFolder, ...]
    evaluation: Evaluation


def _cv_cases(model: ModelFolder) -> dict[str, tuple[Path, Path]]:
    """case id -> (probabilities, reference label map) over the validated folds."""
    cases = {}
    for fold in model.validated_folds():
        refs = {strip_ending(r): r for r in model.validation_refs(fold).glob("*")}
        for case, npz in probability_files(model.validation_dir(fold)).items():
            if case in refs:
                cases[case] = (npz, refs[case])
    return cases


def _pairs_of_cases(
    members: Sequence[Mapping[str, tuple[Path, Path]]], cases: Sequence[str]
) -> Iterator[tuple[str, np.ndarray, np.ndarray, tuple[float, ...]]]:
    for case in cases:
        probs, labels = average_probabilities([m[case][0] for m in members])
        ref, geometry = read_array(members[0][case][1])
        yield case, to_label_map(probs, labels), np.asarray(ref).astype(np.int64), geometry.spacing


def evaluate_cv_ensembles(
    models: Sequence[ModelFolder], labels: Mapping[int, str], size: int = 2
) -> list[EnsembleResult]:
    """Score every group of ``size`` configurations by their averaged CV probabilities.

    Only configurations whose five folds are validated and whose validation saved
    probabilities take part, and only on the cases all members predicted (every case of the
    dataset, when the folds are complete). Post-processing is not applied, as for the single
    configurations' validation scores.

    Args:
        models: the trained configurations of one dataset.
        labels: value -> name (an ``ignore`` label is left out of the scores).
        size: members per ensemble.

    Returns:
        One result per group, in the order of ``itertools.combinations``.
    """
    cv = {m: _cv_cases(m) for m in models if len(m.validated_folds()) == 5}
    eligible = [m for m in cv if cv[m]]
    results = []
    for group in itertools.combinations(eligible, size):
        common = sorted(set.intersection(*(set(cv[m]) for m in group)))
        if not common:
            continue
        evaluation = evaluate_arrays(_pairs_of_cases([cv[m] for m in group], common), labels)
        results.append(EnsembleResult(tuple(group), evaluation))
        log.info(
            "ensemble %s: mean Dice %.4f on %d cases",
            " + ".join(m.name for m in group),
            evaluation.mean_dice,
            len(common),
        )
    return results
