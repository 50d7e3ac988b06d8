"""Model exchange: import of an exported model, trusting nothing in the archive.

This module owns ``autoseg import``: the archive's checks, its manifest read and checked, and
the staged install. Before anything is written it refuses the whole archive for: a member the
manifest does not list or that is not one of the files an export writes, a name that could
escape the target (absolute, ``..``, backslashes, drive letters), a symlink or other non-file
entry, a name given twice, a member larger than its limit, or a manifest naming unsafe folders.
Members are then extracted into a temporary folder beside the target (sizes counted while
copying, hashes checked), the checkpoints are loaded weights-only and the networks built and
filled on the CPU, and only then is the folder renamed into place; what a killed import left
is cleaned up (or put back) by the next. The archive's layout, its manifest and the name rule
are :mod:`autoseg.inference.exchange`, with the export.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import re
import secrets
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.model_folder import ModelFolder
from autoseg.data.paths import DatasetDirs
from autoseg.errors import AutosegError
from autoseg.inference.exchange import (
    FORMAT_VERSION,
    MANIFEST_MEMBER,
    MEMBER_PATHS,
    ExportManifest,
    name_problem,
)
from autoseg.serial import folder_for_output, from_dict

log = logging.getLogger(__name__)

__all__ = ["import_model", "read_manifest"]

MAX_JSON_BYTES = 16 * 1024**2  # plans, manifest, summaries, decision
MAX_CHECKPOINT_BYTES = 8 * 1024**3  # a 3D ResEnc-XL fold is well under 2 GB


def _limit(name: str) -> int:
    return MAX_CHECKPOINT_BYTES if name.endswith(".pt") else MAX_JSON_BYTES


def _refuse(archive: Path, why: str) -> AutosegError:
    return AutosegError(f"{archive}: refused: {why}; nothing was imported")


def _check_name(archive: Path, name: str) -> None:
    """A member name must be a plain relative POSIX path that stays inside the target."""
    parts = PurePosixPath(name).parts
    if (
        name.startswith(("/", "\\"))
        or "\\" in name
        or re.match(r"^[A-Za-z]:", name)
        or any(p in ("..", ".", "") for p in name.rstrip("/").split("/"))
        or not parts
    ):
        raise _refuse(archive, f"member {name!r} escapes the target folder")


def _check_members(archive: Path, zf: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """Name, type, duplicate and size checks of every member; returns the files by name."""
    files: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        _check_name(archive, info.filename)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse(archive, f"member {info.filename!r} is a symbolic link")
        if info.is_dir():
            if not re.fullmatch(r"fold_([0-9]+|all)/", info.filename):
                raise _refuse(archive, f"unexpected folder {info.filename!r}")
            continue
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no type recorded (Python, DOS)
            raise _refuse(archive, f"member {info.filename!r} is not a regular file")
        if info.filename in files:
            raise _refuse(archive, f"member {info.filename!r} appears twice")
        if info.file_size > _limit(info.filename):
            raise _refuse(
                archive,
                f"member {info.filename!r} is {info.file_size} bytes "
                f"(limit {_limit(info.filename)})",
            )
        files[info.filename] = info
    return files


def _read_small(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with zf.open(info) as fh:
        data = fh.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise _refuse(archive, f"member {info.filename!r} is larger than it says")
    return data


def read_manifest(archive: str | Path) -> ExportManifest:
    """Check an archive's members and read its manifest, extracting nothing.

    Raises:
        AutosegError: not a zip, an unsafe or unexpected member, or a missing/invalid manifest.
    """
    archive = Path(archive)
    with _open_zip(archive) as zf:
        return _manifest(archive, zf, _check_members(archive, zf))


def _open_zip(archive: Path) -> zipfile.ZipFile:
    if not archive.is_file():
        raise AutosegError(f"{archive}: archive not found")
    try:
        return zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise AutosegError(f"{archive}: not a zip archive ({exc})") from exc


def _manifest(
    archive: Path, zf: zipfile.ZipFile, files: dict[str, zipfile.ZipInfo]
) -> ExportManifest:
    if MANIFEST_MEMBER not in files:
        raise _refuse(archive, f"no {MANIFEST_MEMBER} (not made by autoseg export)")
    try:
        raw = json.loads(_read_small(archive, zf, files[MANIFEST_MEMBER]).decode("utf-8"))
        manifest = from_dict(ExportManifest, raw)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, AttributeError) as exc:
        raise _refuse(archive, f"{MANIFEST_MEMBER} is not a valid manifest ({exc})") from exc
    if manifest.format_version != FORMAT_VERSION:
        raise _refuse(archive, f"format version {manifest.format_version} is not supported")
    for what in ("dataset", "planner", "configuration"):
        problem = name_problem(getattr(manifest, what))
        if problem is not None:
            raise _refuse(archive, f"{what} name {getattr(manifest, what)!r}: {problem}")
    if not manifest.folds or not all(re.fullmatch(r"[0-9]+|all", f) for f in manifest.folds):
        raise _refuse(archive, f"folds {list(manifest.folds)} are not fold names")
    if not re.fullmatch(r"checkpoint_[A-Za-z0-9_]+\.pt", manifest.checkpoint):
        raise _refuse(archive, f"checkpoint name {manifest.checkpoint!r} is not a safe name")
    allowed = manifest.allowed_members()
    unexpected = sorted(set(files) - allowed)
    if unexpected:
        raise _refuse(archive, f"unexpected member(s) {', '.join(map(repr, unexpected))}")
    unlisted = sorted(set(files) - set(manifest.files) - {MANIFEST_MEMBER})
    absent = sorted(set(manifest.files) - set(files))
    if unlisted or absent:
        raise _refuse(archive, f"members and manifest differ ({unlisted or absent})")
    needed = [MEMBER_PATHS.plans.as_posix()] + [
        MEMBER_PATHS.checkpoint(f, manifest.checkpoint).as_posix() for f in manifest.folds
    ]
    missing = [n for n in needed if n not in files]
    if missing:
        raise _refuse(archive, f"missing member(s) {', '.join(missing)}")
    return manifest


def _extract(archive: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path) -> str:
    """Copy one member to ``dest`` counting bytes; returns its SHA-256."""
    digest, size, limit = hashlib.sha256(), 0, min(info.file_size, _limit(info.filename))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zf.open(info) as src, dest.open("xb") as dst:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            size += len(chunk)
            if size > limit:
                raise _refuse(archive, f"member {info.filename!r} is larger than it says")
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def import_model(archive: str | Path, home: Path, overwrite: bool = False) -> Path:
    """Install an exported model as ``<home>/<dataset>/models/<planner>/<config>/``.

    Args:
        archive: a zip written by ``export_model``.
        home: the home folder to install into.
        overwrite: replace an existing model folder of the same name (only once the new one
            has passed every check).

    Returns:
        The installed model folder.

    Raises:
        AutosegError: every reason listed in the module docstring; nothing is written then.
    """
    archive = Path(archive)
    # heavy: torch and the network, only to check that the weights fit (start-up time)
    from autoseg.inference.predictor import Predictor

    with _open_zip(archive) as zf:
        files = _check_members(archive, zf)
        manifest = _manifest(archive, zf, files)
        dirs = DatasetDirs(name=manifest.dataset, raw=None, work=Path(home) / manifest.dataset)
        target = ModelFolder(dirs.model_folder(manifest.planner, manifest.configuration))
        _recover_killed_import(target.path)
        if target.path.exists() and not overwrite:
            raise AutosegError(
                f"{target.path}: a model is already there; remove it or pass --overwrite"
            )
        with folder_for_output(target.path.parent):
            _install(archive, zf, files, manifest, target, Predictor)
    log.info("imported %s into %s", archive, target.path)
    return target.path


def _recover_killed_import(target: Path) -> None:
    """Undo what a killed import of ``target`` left: staging folders are removed; a model it
    had moved aside to replace, and not yet replaced, is put back."""
    parent = target.parent
    if not parent.is_dir():
        return
    for staging in parent.glob(f".{glob.escape(target.name)}.import-*"):
        shutil.rmtree(staging, ignore_errors=True)
    for old in sorted(parent.glob(f".{glob.escape(target.name)}.replaced-*")):
        if not target.exists():
            old.rename(target)  # killed between the two renames: the old model comes back
            log.warning("%s: restored the model a killed import had moved aside", target)
        else:
            shutil.rmtree(old, ignore_errors=True)


def _install(
    archive: Path,
    zf: zipfile.ZipFile,
    files: dict[str, zipfile.ZipInfo],
    manifest: ExportManifest,
    target: ModelFolder,
    predictor: type,
) -> None:
    """Extract, check and rename the archive's model into ``target`` (its parent exists)."""
    staging = target.path.parent / f".{target.name}.import-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        for name, info in sorted(files.items()):
            digest = _extract(archive, zf, info, staging / name)
            if name != MANIFEST_MEMBER and digest != manifest.files[name]:
                raise _refuse(archive, f"member {name!r} does not match its SHA-256")
        staged = ModelFolder(staging)
        for fold in manifest.folds:
            meta = load_checkpoint(staged.checkpoint(fold, manifest.checkpoint)).meta
            if meta.configuration and meta.configuration != manifest.configuration:
                raise _refuse(archive, f"fold {fold} was trained as {meta.configuration!r}")
        predictor.from_folder(  # the weights fit the planned network, on the CPU
            staging, folds=manifest.folds, checkpoint=manifest.checkpoint, device="cpu"
        )
        if target.path.exists():
            old = target.path.parent / f".{target.name}.replaced-{secrets.token_hex(4)}"
            target.path.rename(old)
            staging.rename(target.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target.path)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
