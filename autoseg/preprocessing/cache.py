"""When preprocessed data may be reused: content keys of its sources, and completeness markers.

A preprocessed case is reused only when its *source key* matches: a hash of every source file's
resolved path, size, modification time and content (sha256), of the preprocessing settings
(``plans_key``) and of the autoseg version. A file edited in place, replaced by one of the same
size and time, or reached through another link is therefore redone, never silently reused.

A preprocessed folder is usable for training only when it holds the marker
``preprocessing.complete``, written by ``autoseg plan`` after its last case, and removed by the
next ``autoseg plan`` before anything else is written (and by any plan that finds the dataset's
files changed). A plan that fails or is killed therefore leaves no folder that ``train``,
``benchmark`` or ``find-best`` accept.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from autoseg import __version__
from autoseg.data.dataset import Case, DatasetSpec
from autoseg.errors import AutosegError
from autoseg.serial import InvalidJsonFile, dump_json, load_json

MARKER = "preprocessing.complete"


def file_key(path: Path) -> str:
    """sha256 over a file's resolved path, size, mtime (ns) and content."""
    real = os.path.realpath(path)
    digest = hashlib.sha256()
    with open(real, "rb") as fh:
        stat = os.fstat(fh.fileno())
        digest.update(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def case_sources(case: Case) -> str:
    """One key for every file of a case (images in channel order, then the label)."""
    files = [*case.images, *([case.label] if case.label is not None else [])]
    text = json.dumps([case.case_id, [file_key(p) for p in files]])
    return hashlib.sha256(text.encode()).hexdigest()


def dataset_sources(spec: DatasetSpec, workers: int = 1) -> dict[str, str]:
    """case id -> ``case_sources`` for every case (hashed in ``workers`` threads).

    Raises:
        AutosegError: a file cannot be read (it names the file).
    """

    def one(case: Case) -> str:
        try:
            return case_sources(case)
        except OSError as exc:
            raise AutosegError(f"{exc.filename or case.case_id}: cannot be read ({exc})") from exc

    with ThreadPoolExecutor(max(1, workers)) as pool:
        keys = list(pool.map(one, spec.cases))
    return {c.case_id: k for c, k in zip(spec.cases, keys, strict=True)}


def case_key(sources: str, plans_key: str) -> str:
    """The source key of a preprocessed case: its files, the settings, the autoseg version."""
    text = json.dumps([sources, plans_key, __version__])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class PreprocessingDone:
    """The completeness marker of one preprocessed folder.

    Attributes:
        plans_key: the settings every case was made with.
        autoseg_version: the version that made them.
        cases: case id -> ``case_sources`` of the files it was made from.
    """

    plans_key: str
    autoseg_version: str
    cases: dict[str, str]


def write_marker(folder: Path, plans_key: str, sources: dict[str, str]) -> None:
    """Mark ``folder`` complete (call after its last case is stored); an equal marker is kept
    as it is."""
    done = PreprocessingDone(plans_key, __version__, dict(sources))
    if read_marker(folder) != done:
        dump_json(done, Path(folder) / MARKER)


def remove_marker(folder: Path) -> None:
    """The folder is about to change: it is no longer complete."""
    (Path(folder) / MARKER).unlink(missing_ok=True)


def read_marker(folder: Path) -> PreprocessingDone | None:
    """The folder's marker, or None when it is missing or damaged."""
    try:
        return load_json(PreprocessingDone, Path(folder) / MARKER)
    except (OSError, InvalidJsonFile):
        return None


def invalidate_markers(work: Path, writing: dict[Path, str], sources: dict[str, str]) -> None:
    """Before a plan writes anything: remove every marker that no longer tells the truth.

    Args:
        work: the dataset's work folder.
        writing: folder -> ``plans_key`` of the folders this plan will preprocess.
        sources: ``dataset_sources`` of the dataset now.
    """
    root = Path(work) / "preprocessed"
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        marker = read_marker(folder)
        fresh = (
            marker is not None
            and marker.cases == sources
            and marker.autoseg_version == __version__
            and writing.get(folder, marker.plans_key) == marker.plans_key
        )
        if not fresh:
            (folder / MARKER).unlink(missing_ok=True)


def complete_cases(folder: Path, plans_key: str, dataset: str) -> list[str]:
    """The case ids of a completely preprocessed folder, made with settings ``plans_key``.

    Raises:
        AutosegError: the folder was never preprocessed, its last preprocessing failed or was
            stopped, the dataset's files changed since, or it was made with other settings.
    """
    again = f"run `autoseg plan {dataset}` (again)"
    marker = read_marker(folder)
    if marker is None:
        state = "is incomplete" if folder.is_dir() else "does not exist"
        raise AutosegError(
            f"{folder}: the preprocessed data {state} (never preprocessed, or the last "
            f"`autoseg plan` failed, was stopped or found the dataset changed); {again}"
        )
    if marker.plans_key != plans_key or marker.autoseg_version != __version__:
        raise AutosegError(
            f"{folder}: preprocessed with other settings than the plans (or another autoseg "
            f"version); {again}"
        )
    if not marker.cases:
        raise AutosegError(f"{folder}: no preprocessed cases; {again}")
    return sorted(marker.cases)


def require_planned(work: Path, dataset: str) -> None:
    """Refuse a dataset whose last ``autoseg plan`` did not finish (any preprocessed folder
    without its marker) or that was never preprocessed.

    Raises:
        AutosegError: naming the incomplete folder and what to run.
    """
    root = Path(work) / "preprocessed"
    folders = sorted(f for f in root.iterdir() if f.is_dir()) if root.is_dir() else []
    if not folders:
        raise AutosegError(f"{work}: dataset '{dataset}' is not preprocessed; run `autoseg plan`")
    for folder in folders:
        if read_marker(folder) is None:
            raise AutosegError(
                f"{folder}: the preprocessed data is incomplete (the last `autoseg plan` failed, "
                f"was stopped or found the dataset changed); run `autoseg plan {dataset}` again"
            )
