"""Model exchange: a trained model folder as one zip file, and its safe import elsewhere.

An archive holds, under the names the model folder uses (``ModelFolder``): ``export.json`` (the
manifest: dataset, planner, configuration, folds, the SHA-256 of every other member),
``plans.json``, ``postprocessing.json`` when decided, and per exported fold its checkpoint,
re-saved weights only (no optimiser state), and its ``summary.json`` when validated.

Import trusts nothing in the archive. Before anything is written it refuses the whole archive
for: a member the manifest does not list or that is not one of those files, a name that could
escape the target (absolute, ``..``, backslashes, drive letters), a symlink or other non-file
entry, a name given twice, a member larger than its limit, or a manifest naming unsafe folders.
Members are then extracted into a temporary folder beside the target (sizes counted while
copying, hashes checked), the checkpoints are loaded weights-only and the networks built and
filled on the CPU, and only then is the folder renamed into place.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from autoseg import __version__
from autoseg.data.checkpoint import load_checkpoint, save_checkpoint
from autoseg.data.model_folder import ModelFolder, checkpoint_file, named_folds
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Plans
from autoseg.data.recipe import check_fold_recipe
from autoseg.errors import AutosegError
from autoseg.serial import (
    atomic_output,
    dumps,
    file_sha256,
    folder_for_output,
    from_dict,
    remove_temp_files,
    temp_stem,
)

log = logging.getLogger(__name__)

__all__ = ["ExportManifest", "export_model", "import_model", "name_problem", "read_manifest"]

FORMAT_VERSION = 1
MAX_JSON_BYTES = 16 * 1024**2  # plans, manifest, summaries, decision
MAX_CHECKPOINT_BYTES = 8 * 1024**3  # a 3D ResEnc-XL fold is well under 2 GB
MAX_NAME_BYTES = 200  # a folder name, with room for the staging names beside it
_NOT_IN_NAMES = set('/\\<>:"|?*')  # separators, and what Windows refuses in file names
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same model gives the same archive bytes
_REL = ModelFolder(Path())  # member names are paths relative to the model folder
_MANIFEST = _REL.export_manifest.as_posix()


@dataclass(frozen=True)
class ExportManifest:
    """``export.json``: what an exported model holds.

    Attributes:
        format_version: this layout's version.
        dataset, planner, configuration: where the model goes
            (``<home>/<dataset>/models/<planner>/<configuration>/``).
        folds: the exported folds.
        checkpoint: the checkpoint file name in each fold (``checkpoint_final.pt``, ...).
        files: member name -> SHA-256 hex digest, every member but the manifest.
        autoseg_version: the version that exported it.
    """

    format_version: int
    dataset: str
    planner: str
    configuration: str
    folds: tuple[str, ...]
    checkpoint: str
    files: dict[str, str] = field(default_factory=dict)
    autoseg_version: str = ""

    def allowed_members(self) -> set[str]:
        """Every member name an archive with this manifest may hold."""
        names = {_MANIFEST, _REL.plans.as_posix(), _REL.postprocessing.as_posix()}
        for fold in self.folds:
            names.add(_REL.checkpoint(fold, self.checkpoint).as_posix())
            names.add(_REL.summary(fold).as_posix())
        return names


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a folder of an exchanged model (dataset, planner or
    configuration), or None when it can: the one rule of both ``export`` and ``import``.

    A name is one folder name that every common file system takes: not empty, at most
    ``MAX_NAME_BYTES`` bytes of UTF-8, not starting with a dot (hidden, and the staging
    folders' prefix), not ending in a space or dot, and without separators, control
    characters or ``<>:"|?*``. Spaces and letters of any script are fine.
    """
    if not isinstance(name, str) or not name:
        return "an empty name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if name.startswith("."):
        return "starts with a dot"
    if name != name.rstrip(" ."):
        return "ends with a space or a dot"
    bad = sorted({c for c in name if c in _NOT_IN_NAMES or unicodedata.category(c)[0] == "C"})
    if bad:
        return f"holds {', '.join(map(repr, bad))}"
    return None


def _limit(name: str) -> int:
    return MAX_CHECKPOINT_BYTES if name.endswith(".pt") else MAX_JSON_BYTES


# ---------------------------------------------------------------------- export


def export_model(
    model_folder: str | Path,
    archive: str | Path,
    folds: Sequence[str] | None = None,
    checkpoint: str = "final",
    overwrite: bool = False,
) -> ExportManifest:
    """Write a model folder's plans, decision and weights-only checkpoints into one zip.

    Args:
        model_folder: ``<home>/<dataset>/models/<planner>/<config>/``.
        archive: the zip file to write (atomically).
        folds: folds to export; None: every fold holding ``checkpoint``.
        checkpoint: ``final``, ``best`` or a checkpoint file name.
        overwrite: replace an existing ``archive``.

    Returns:
        The manifest written as ``export.json``.

    Raises:
        AutosegError: not a model folder, a fold without the checkpoint, an unreadable
            checkpoint, or ``archive`` exists (without ``overwrite``) or lies inside the folder.
    """
    folder, archive = ModelFolder(Path(model_folder).resolve()), Path(archive)
    if not folder.plans.is_file():
        raise folder.not_a_model("no plans.json")
    if archive.resolve().is_relative_to(folder.path):
        raise AutosegError(f"{archive}: write the archive outside the model folder")
    if archive.is_dir():
        raise AutosegError(f"{archive}: is a folder; give the .zip file to write")
    if archive.exists() and not overwrite:
        raise AutosegError(f"{archive}: exists; choose another name or pass --overwrite")
    available = folder.folds_with(checkpoint)
    chosen = tuple(available) if folds is None else named_folds(folds)
    if not chosen:
        raise folder.not_a_model(f"no fold_<k>/{checkpoint_file(checkpoint)}")
    missing = [f for f in chosen if f not in available]
    if missing:
        raise AutosegError(
            f"{folder.path}: no {checkpoint_file(checkpoint)} for fold(s) {', '.join(missing)}"
        )
    plans = Plans.from_json(folder.plans)
    for what, name in (
        ("dataset", plans.dataset_name),
        ("planner", plans.plans_name),
        ("configuration", folder.name),
    ):
        problem = name_problem(name)
        if problem is not None:  # import would refuse the archive: write none
            raise AutosegError(f"{folder.path}: {what} name {name!r} cannot be exported: {problem}")
    with folder_for_output(archive.parent):
        remove_temp_files(archive)  # the temp archive and staging folder of a killed export
        # staged beside the archive, under a temp name of the archive's: the next export finds it
        with tempfile.TemporaryDirectory(
            prefix=f".{temp_stem(archive.name)}.", suffix=".part", dir=archive.parent
        ) as tmp:
            staged: dict[str, Path] = {_REL.plans.as_posix(): folder.plans}
            if folder.postprocessing.is_file():
                staged[_REL.postprocessing.as_posix()] = folder.postprocessing
            for fold in chosen:
                ckpt = load_checkpoint(folder.checkpoint(fold, checkpoint))  # weights only
                config = ckpt.meta.configuration or folder.name
                check_fold_recipe(
                    folder, plans, config, fold, folder.checkpoint(fold, checkpoint), ckpt.meta
                )
                slim = Path(tmp) / f"fold_{fold}.pt"
                save_checkpoint(slim, ckpt.model_state, None, ckpt.meta)  # no optimiser state
                staged[_REL.checkpoint(fold, checkpoint).as_posix()] = slim
                if folder.summary(fold).is_file():
                    staged[_REL.summary(fold).as_posix()] = folder.summary(fold)
            manifest = ExportManifest(
                format_version=FORMAT_VERSION,
                dataset=plans.dataset_name,
                planner=plans.plans_name,
                configuration=folder.name,
                folds=chosen,
                checkpoint=checkpoint_file(checkpoint),
                files={name: file_sha256(path) for name, path in sorted(staged.items())},
                autoseg_version=__version__,
            )
            with (
                atomic_output(archive) as (fd, _),
                os.fdopen(fd, "wb") as fh,
                zipfile.ZipFile(fh, "w") as zf,
            ):
                zf.writestr(_zip_info(_MANIFEST), dumps(manifest))
                for name, path in sorted(staged.items()):
                    with (
                        path.open("rb") as src,
                        zf.open(_zip_info(name), "w", force_zip64=True) as dst,
                    ):
                        shutil.copyfileobj(src, dst, 1 << 20)
    log.info("exported %s (folds %s) to %s", folder.path, ",".join(chosen), archive)
    return manifest


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info


# ---------------------------------------------------------------------- import


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
    if _MANIFEST not in files:
        raise _refuse(archive, f"no {_MANIFEST} (not made by autoseg export)")
    try:
        raw = json.loads(_read_small(archive, zf, files[_MANIFEST]).decode("utf-8"))
        manifest = from_dict(ExportManifest, raw)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, AttributeError) as exc:
        raise _refuse(archive, f"{_MANIFEST} is not a valid manifest ({exc})") from exc
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
    unlisted = sorted(set(files) - set(manifest.files) - {_MANIFEST})
    absent = sorted(set(manifest.files) - set(files))
    if unlisted or absent:
        raise _refuse(archive, f"members and manifest differ ({unlisted or absent})")
    needed = [_REL.plans.as_posix()] + [
        _REL.checkpoint(f, manifest.checkpoint).as_posix() for f in manifest.folds
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
            if name != _MANIFEST and digest != manifest.files[name]:
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
