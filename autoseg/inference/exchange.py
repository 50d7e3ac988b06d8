"""Model exchange: a trained model folder as one zip file, and its safe import elsewhere.

An archive holds, under the names the model folder uses (``ModelFolder``): ``export.json`` (the
manifest: dataset, planner, configuration, folds, the SHA-256 of every other member),
``plans.json``, ``postprocessing.json`` when decided, and per exported fold its checkpoint,
re-saved weights only (no optimiser state), and its ``summary.json`` when validated.

This module owns the archive's format, shared by both sides: its members' names
(``MEMBER_PATHS``, relative to the model folder), the manifest (``ExportManifest``), the one name
rule for the dataset, planner and configuration folders (``name_problem``), and ``autoseg
export`` (staged beside the archive, written atomically). ``autoseg import``, which trusts nothing
in the archive, is :mod:`autoseg.inference.exchange_import`.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autoseg import __version__
from autoseg.data.checkpoint import load_checkpoint, save_checkpoint
from autoseg.data.model_folder import ModelFolder, checkpoint_file, named_folds
from autoseg.data.plans import Plans
from autoseg.data.recipe import check_fold_recipe
from autoseg.errors import AutosegError
from autoseg.serial import (
    atomic_output,
    dumps,
    file_sha256,
    folder_for_output,
    remove_temp_files,
    temp_stem,
)

log = logging.getLogger(__name__)

__all__ = ["ExportManifest", "export_model", "name_problem"]

FORMAT_VERSION = 1
MAX_NAME_BYTES = 200  # a folder name, with room for the staging names beside it
_NOT_IN_NAMES = set('/\\<>:"|?*')  # separators, and what Windows refuses in file names
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed: the same model gives the same archive bytes
MEMBER_PATHS = ModelFolder(Path())  # member names are paths relative to the model folder
MANIFEST_MEMBER = MEMBER_PATHS.export_manifest.as_posix()


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
        names = {
            MANIFEST_MEMBER,
            MEMBER_PATHS.plans.as_posix(),
            MEMBER_PATHS.postprocessing.as_posix(),
        }
        for fold in self.folds:
            names.add(MEMBER_PATHS.checkpoint(fold, self.checkpoint).as_posix())
            names.add(MEMBER_PATHS.summary(fold).as_posix())
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
            staged: dict[str, Path] = {MEMBER_PATHS.plans.as_posix(): folder.plans}
            if folder.postprocessing.is_file():
                staged[MEMBER_PATHS.postprocessing.as_posix()] = folder.postprocessing
            for fold in chosen:
                ckpt = load_checkpoint(folder.checkpoint(fold, checkpoint))  # weights only
                config = ckpt.meta.configuration or folder.name
                check_fold_recipe(
                    folder, plans, config, fold, folder.checkpoint(fold, checkpoint), ckpt.meta
                )
                slim = Path(tmp) / f"fold_{fold}.pt"
                save_checkpoint(slim, ckpt.model_state, None, ckpt.meta)  # no optimiser state
                staged[MEMBER_PATHS.checkpoint(fold, checkpoint).as_posix()] = slim
                if folder.summary(fold).is_file():
                    staged[MEMBER_PATHS.summary(fold).as_posix()] = folder.summary(fold)
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
                zf.writestr(_zip_info(MANIFEST_MEMBER), dumps(manifest))
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
