"""The runner behind ``autoseg plan``: check, fingerprint, plan, preprocess.

Planning itself is pure (``planners``); this module does the reading and writing around it.
Nothing is written before the whole dataset has been checked: a dataset with problems leaves the
home folder untouched.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from autoseg.data.dataset import load_dataset
from autoseg.data.paths import DatasetDirs, record_source, resolve_dataset, resolve_home
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError
from autoseg.planners import Budget, available_planners, get_planner, planner_settings
from autoseg.planners.overrides import Overrides, check_name, override_plans, plans_diff
from autoseg.planning.fingerprint import Fingerprint, compute_fingerprint
from autoseg.planning.transfer import plans_from as transfer_plans
from autoseg.preprocessing.cache import dataset_sources, invalidate_markers
from autoseg.preprocessing.case_store import plans_key, preprocessed_folder
from autoseg.preprocessing.dataset_run import run_preprocessing
from autoseg.preprocessing.resample import target_shape
from autoseg.preprocessing.storage import check_storage, choose_storage
from autoseg.preprocessing.weightmap import ensure_weight_maps
from autoseg.serial import remove_temp_files

log = logging.getLogger(__name__)


def preprocessed_bytes(fingerprint: Fingerprint, plans: Plans) -> int:
    """Bytes the preprocessed data takes as npy: per preprocessed folder (data identifier),
    every case's crop resampled to the folder's spacing, float32 per channel + uint8 labels."""
    folders = {c.data_identifier or c.name: c for c in plans.configurations.values()}
    per_voxel = 4 * len(plans.channels) + 1
    total = 0
    for config in folders.values():
        for case in fingerprint.cases:
            shape = target_shape(case.shape_after_crop, case.spacing, config.spacing)
            total += math.prod(shape) * per_voxel
    return total


@dataclass(frozen=True)
class PlanSummary:
    """What ``autoseg plan`` did, for printing."""

    dataset: str
    work: Path
    num_cases: int
    plans: Plans
    seconds: float
    diff: tuple[str, ...] = ()  # a named plan: what it changes in the automatic plans

    def print(self, console) -> None:
        named = f"plans '{self.plans.name}' of " if self.plans.name else ""
        table = Table(
            title=f"{self.dataset}: {self.num_cases} cases, {named}planner "
            f"'{self.plans.planner}', {self.plans.gpu_memory_gb:g} GB GPU budget"
        )
        for column in (
            "configuration",
            "spacing",
            "patch",
            "batch",
            "stages",
            "features",
            "est. GB",
        ):
            table.add_column(column)
        for name, c in self.plans.configurations.items():
            table.add_row(
                name,
                "x".join(f"{s:g}" for s in c.spacing),
                "x".join(str(p) for p in c.patch_size),
                str(c.batch_size),
                str(c.num_stages),
                f"{c.features_per_stage[0]}..{c.features_per_stage[-1]}",
                f"{c.estimated_memory_gb:.1f}",
            )
        console.print(table)
        if self.plans.name:
            console.print(f"changes against the automatic plans of '{self.plans.planner}':")
            for line in self.diff or ("none",):
                console.print(f"  {line}")
        console.print(f"written to {self.work} in {self.seconds:.1f} s")


def plan_dataset(
    dataset: str,
    *,
    home: Path | None,
    planner: str,
    gpu_memory_gb: float,
    workers: int,
    preprocess: bool = True,
    replan: bool = False,
    plans_from: str | None = None,
    border_weights: bool = False,
    storage: str = "auto",
    overrides: Overrides | None = None,
) -> PlanSummary:
    """Check and fingerprint DATASET, plan it with ``planner`` and preprocess its cases
    (with ``border_weights``, also their border weight maps for ``--loss border_ce``).

    Args:
        replan: start the dataset's work folder afresh (its plans, fingerprint, splits and
            preprocessed data are removed first): needed when another dataset folder of the
            same name was planned in this home before.
        storage: ``auto`` (npy, or blosc2 for large data: ``choose_storage``), ``npy`` or
            ``blosc2``.
        plans_from: a dataset folder or name, already planned with ``planner``, whose network
            topology the configurations take (``autoseg.planning.transfer.plans_from``), so that its
            trained weights fit for ``train --pretrained``.
        overrides: write named plans (``planners.overrides``) beside the automatic ones,
            checked before anything is written; only their configuration is preprocessed, and
            the automatic plans are written only when the home has none yet.

    Raises:
        AutosegError / DatasetError: the dataset has problems (all reported at once), the
            planner is unknown, or another dataset of this name is planned in the home (without
            ``replan``); nothing is written then.
    """
    if storage != "auto":
        check_storage(storage)  # before anything is written
    t0 = time.perf_counter()
    home_dir = resolve_home(home)
    dirs = resolve_dataset(dataset, home_dir, same_source=not replan)
    planner_fn = get_planner(planner)
    source = None
    if plans_from is not None:  # read before anything is written
        source_dirs = resolve_dataset(plans_from, dirs.work.parent)
        source = Plans.from_json(source_dirs.require_plans(planner))
    spec = load_dataset(dirs.require_raw())
    fingerprint = compute_fingerprint(spec, workers=workers)
    plans = planner_fn(fingerprint, Budget(gpu_memory_gb=gpu_memory_gb))
    if source is not None:
        plans = transfer_plans(source, plans)
    automatic, diff = plans, ()
    if overrides is not None:  # checked before anything is written
        plans = override_plans(fingerprint, automatic, planner_settings(planner), overrides)
        diff = tuple(plans_diff(automatic, plans))
        _check_named(dirs, plans)
    sources = dataset_sources(spec, workers)
    if replan:
        _start_afresh(dirs)
    writing = {
        preprocessed_folder(dirs.work, c): plans_key(c) for c in plans.configurations.values()
    }
    if not preprocess:
        writing = {folder: "" for folder in writing}  # planned, not preprocessed: incomplete
    invalidate_markers(dirs.work, writing, sources)  # before anything else is written
    dirs.work.mkdir(parents=True, exist_ok=True)
    # temp files a killed plan left beside the files it writes here (preprocessed folders:
    # run_preprocessing)
    remove_temp_files(dirs.work / "dataset_source.txt", dirs.fingerprint, dirs.plans(planner))
    record_source(dirs)
    fingerprint.to_json(dirs.fingerprint)
    if overrides is None or not dirs.plans(planner).is_file():
        automatic.to_json(dirs.plans(planner))
    plans.to_json(dirs.plans(plans.plans_name))
    if preprocess:
        storage = choose_storage(storage, preprocessed_bytes(fingerprint, plans))
        log.info("preprocessed arrays stored as %s", storage)
        run_preprocessing(
            spec, plans, list(plans.configurations), dirs.work, workers, sources, storage
        )
        if border_weights:
            folders = {preprocessed_folder(dirs.work, c) for c in plans.configurations.values()}
            for folder in sorted(folders):
                ensure_weight_maps(folder, [case.case_id for case in spec.cases])
    return PlanSummary(
        dataset=dirs.name,
        work=dirs.work,
        num_cases=len(spec.cases),
        plans=plans,
        seconds=time.perf_counter() - t0,
        diff=diff,
    )


def _check_named(dirs: DatasetDirs, plans: Plans) -> None:
    """Refuse a plan name that a planner owns, or one whose trained models other plans made."""
    check_name(plans.name, available_planners())
    path = dirs.plans(plans.name)
    models = dirs.work / "models" / plans.name
    trained = path.is_file() and models.is_dir() and any(models.iterdir())
    if trained and Plans.from_json(path) != plans:
        raise AutosegError(
            f"--name {plans.name}: {models} holds models trained with other plans of this "
            "name; choose another --name (or move that folder away)"
        )


def _start_afresh(dirs: DatasetDirs) -> None:
    """Remove what autoseg wrote for an earlier dataset of this name (never models).

    Raises:
        AutosegError: the work folder holds trained models (they belong to the other dataset).
    """
    models = dirs.work / "models"
    if models.is_dir() and any(models.iterdir()):
        raise AutosegError(
            f"{models}: holds models trained on the dataset planned here before; move or delete "
            "that folder yourself, or use another --home"
        )
    folder = dirs.work / "preprocessed"
    try:
        if folder.is_dir():
            shutil.rmtree(folder)
    except OSError as exc:  # rmtree names files relative to the folder it is in
        exc.filename = str(folder)
        raise
    for path in (dirs.fingerprint, dirs.splits, dirs.work / "dataset_source.txt"):
        path.unlink(missing_ok=True)
    for path in dirs.work.glob("plans*.json"):
        path.unlink()
