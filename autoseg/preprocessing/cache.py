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

Those three also refuse a dataset whose raw files changed since the plan (``require_unchanged``):
the marker keeps each source file's stamp (resolved path, size, mtime, content hash); path, size
and mtime are compared every time, the content hash only where the mtime alone differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from autoseg import __version__
from autoseg.data.dataset import Case, DatasetSpec, load_dataset
from autoseg.data.paths import DatasetDirs
from autoseg.errors import AutosegError, DatasetError
from autoseg.serial import InvalidJsonFile, dump_json, load_json

log = logging.getLogger(__name__)

MARKER = "preprocessing.complete"


@dataclass(frozen=True)
class FileStamp:
    """What a source file was when it was preprocessed: its cheap parts and its content.

    Attributes:
        path: the resolved path (a symlink retargeted is another file).
        size: bytes.
        mtime_ns: modification time (ns).
        sha256: the content's hash (read again only when size or mtime differ).
    """

    path: str
    size: int
    mtime_ns: int
    sha256: str


def _read_file(path: Path) -> tuple[str, FileStamp]:
    """``file_key`` and the ``FileStamp`` of one file, in one read."""
    real = os.path.realpath(path)
    digest, content = hashlib.sha256(), hashlib.sha256()
    with open(real, "rb") as fh:
        stat = os.fstat(fh.fileno())
        digest.update(f"{real}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
            content.update(chunk)
    return digest.hexdigest(), FileStamp(real, stat.st_size, stat.st_mtime_ns, content.hexdigest())


def file_key(path: Path) -> str:
    """sha256 over a file's resolved path, size, mtime (ns) and content."""
    return _read_file(path)[0]


def _case_files(case: Case) -> list[Path]:
    return [*case.images, *([case.label] if case.label is not None else [])]


def _case_read(case: Case) -> tuple[str, tuple[FileStamp, ...]]:
    keys, stamps = zip(*(_read_file(p) for p in _case_files(case)), strict=True)
    text = json.dumps([case.case_id, list(keys)])
    return hashlib.sha256(text.encode()).hexdigest(), tuple(stamps)


def case_sources(case: Case) -> str:
    """One key for every file of a case (images in channel order, then the label)."""
    return _case_read(case)[0]


@dataclass(frozen=True)
class DatasetSources:
    """The sources of a dataset as ``autoseg plan`` read them.

    Attributes:
        keys: case id -> ``case_sources``.
        files: case id -> the ``FileStamp`` of each of its files (images, then the label).
        dataset_json: the stamp of dataset.json (None when not read).
    """

    keys: dict[str, str]
    files: dict[str, tuple[FileStamp, ...]] = field(default_factory=dict)
    dataset_json: FileStamp | None = None


def dataset_sources(spec: DatasetSpec, workers: int = 1) -> DatasetSources:
    """``case_sources`` and the file stamps of every case (hashed in ``workers`` threads).

    Raises:
        AutosegError: a file cannot be read (it names the file).
    """

    def one(case: Case) -> tuple[str, tuple[FileStamp, ...]]:
        try:
            return _case_read(case)
        except OSError as exc:
            raise AutosegError(f"{exc.filename or case.case_id}: cannot be read ({exc})") from exc

    with ThreadPoolExecutor(max(1, workers)) as pool:
        read = list(pool.map(one, spec.cases))
    meta = spec.root / "dataset.json"
    return DatasetSources(
        keys={c.case_id: k for c, (k, _) in zip(spec.cases, read, strict=True)},
        files={c.case_id: f for c, (_, f) in zip(spec.cases, read, strict=True)},
        dataset_json=_read_file(meta)[1] if meta.is_file() else None,
    )


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
        files: case id -> the stamps of its files (``require_unchanged`` compares them).
        dataset_json: the stamp of dataset.json.
    """

    plans_key: str
    autoseg_version: str
    cases: dict[str, str]
    files: dict[str, tuple[FileStamp, ...]] = field(default_factory=dict)
    dataset_json: FileStamp | None = None


def write_marker(folder: Path, plans_key: str, sources: DatasetSources) -> None:
    """Mark ``folder`` complete (call after its last case is stored); an equal marker is kept
    as it is."""
    done = PreprocessingDone(
        plans_key, __version__, dict(sources.keys), dict(sources.files), sources.dataset_json
    )
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


def invalidate_markers(work: Path, writing: dict[Path, str], sources: DatasetSources) -> None:
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
            and marker.cases == sources.keys
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


def _file_state(stamp: FileStamp, path: Path) -> str:
    """``same``, ``touched`` (new mtime, same content) or ``changed``: the cheap parts (resolved
    path, size, mtime) first; the content hash decides when the mtime differs."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return "changed"
    if real != stamp.path or stat.st_size != stamp.size:
        return "changed"
    if stat.st_mtime_ns == stamp.mtime_ns:
        return "same"
    try:
        same = _read_file(Path(real))[1].sha256 == stamp.sha256
    except OSError:
        return "changed"
    return "touched" if same else "changed"


def require_unchanged(dirs: DatasetDirs) -> None:
    """Refuse a dataset whose files changed since ``autoseg plan`` preprocessed them.

    Compares every case's stored file stamps (``PreprocessingDone.files``) with the raw files:
    resolved path, size and mtime always, the content hash where only the mtime differs (a file
    touched but identical passes). Images, labels and dataset.json; cases added or removed.
    Without the raw folder (training from a copied home) nothing can be compared: a warning.

    Raises:
        AutosegError: ``dataset changed since plan: run autoseg plan``, naming the changed
            files and the cases added or removed.
    """
    root = dirs.work / "preprocessed"
    markers = [read_marker(f) for f in sorted(root.iterdir())] if root.is_dir() else []
    markers = [m for m in markers if m is not None]
    if not markers:
        return  # complete_cases / require_planned say what is missing
    if dirs.raw is None or not dirs.raw.is_dir():
        log.warning(
            "the raw data of %s is not found: cannot check it is unchanged since plan", dirs.name
        )
        return
    again = f"dataset changed since plan: run `autoseg plan {dirs.name}`"
    try:
        spec = load_dataset(dirs.raw)
    except DatasetError as exc:
        raise AutosegError(f"{dirs.raw}: {again} ({exc})") from exc
    now = {c.case_id: c for c in spec.cases}
    changed: list[str] = []
    touched = 0
    for marker in {json.dumps(m.cases, sort_keys=True): m for m in markers}.values():
        pairs = [(marker.dataset_json, spec.root / "dataset.json")] if marker.dataset_json else []
        for case_id, stamps in sorted(marker.files.items()):
            if case_id in now:
                files = _case_files(now[case_id])
                if len(files) != len(stamps):  # another channel count, a label added
                    changed.append(case_id)
                pairs += list(zip(stamps, files, strict=False))
        for stamp, path in pairs:
            state = _file_state(stamp, path)
            touched += state == "touched"
            if state == "changed":
                changed.append(os.path.relpath(path, spec.root))
        if not marker.files:  # written before file stamps: the whole keys decide
            stored = marker.cases
            fresh = dataset_sources(spec).keys if set(now) == set(stored) else {}
            changed += [c for c in sorted(stored) if c in fresh and fresh[c] != stored[c]]
        added = sorted(set(now) - set(marker.cases))
        removed = sorted(set(marker.cases) - set(now))
        parts = [
            f"{what}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}"
            for what, names in (
                ("changed", sorted(set(changed))),
                ("added", added),
                ("removed", removed),
            )
            if names
        ]
        if parts:
            raise AutosegError(f"{dirs.raw}: {again} ({'; '.join(parts)})")
    if touched:
        log.info(
            "%d file(s) of %s have a new time but the same content; `autoseg plan` records "
            "their times (sparing this hashing)",
            touched,
            dirs.name,
        )
