"""What one fold's training starts from: its settings, its cases and its processes.

Owns ``TrainSettings`` (every budget and run option of ``autoseg train``), the poly learning-rate
schedule, the fold's inputs (the complete preprocessed cases of a configuration, the training and
validation split of a fold) and the process group of a ``torchrun`` start (``Dist``: rank 0 alone
writes files). The training loop itself is ``autoseg.training.train``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Configuration
from autoseg.data.splits import NUM_FOLDS, Split, fold_cases, load_or_create_splits
from autoseg.device import cpu_count
from autoseg.errors import AutosegError
from autoseg.preprocessing.cache import complete_cases, require_unchanged
from autoseg.preprocessing.case_store import plans_key, preprocessed_folder
from autoseg.training.losses.options import DEFAULT_LOSS
from autoseg.training.step import OptimizerSettings


@dataclass(frozen=True)
class TrainSettings:
    """The training budget and run options.

    Attributes:
        epochs: number of epochs.
        iterations: training iterations per epoch.
        val_iterations: validation batches per epoch for the online pseudo-Dice.
        device: ``auto`` (CUDA when present), ``cuda`` or ``cpu``.
        seed: seeds the data order and augmentation, and the network's initial weights.
        workers: background augmentation processes (None: a choice by device).
        augmentation: ``cpu`` (batchgenerators in the loader), ``device`` (torch on the
            training device, ``autoseg.training.augment.pipeline_device``) or ``auto`` (device on
            CUDA; on the CPU
            what ``autoseg.training.augment.pipeline_device.AUTO_ON_CPU`` says).
        resume: continue from ``checkpoint_latest.pt``.
        checkpoint_every: save ``checkpoint_latest.pt`` every this many epochs (and at least
            every 5 minutes, and at the end).
        validate: predict and score the validation cases at the end of the fold.
        optimizer: the optimiser's settings.
        pretrained: a checkpoint or model folder whose compatible weights start the training
            (``autoseg.planning.transfer``); not used when resuming.
        cpu_bf16: on a CPU with native bf16 instructions, run the network under bf16 autocast
            (about 2x faster, loss curve unchanged within noise); False keeps fp32.
        loss: registered loss name (``autoseg.training.losses.options``: ``dice_ce``, ``focal``,
            ``dice_focal``, ``border_ce``), with deep supervision.
        augment: optional augmentations on top of nnU-Net's (``elastic``); the configuration's
            ``augmentations`` (a planner setting) are added.
        tracking: ``none``, ``tensorboard`` or ``mlflow`` (``autoseg.training.tracking``):
            per-epoch figures (MLflow: also parameters and the fold's files).
        tracking_uri: where MLflow runs go; None: ``$MLFLOW_TRACKING_URI``, else
            ``file:<home>/mlruns``.
        compile: ``torch.compile`` the network, falling back to eager with one log line if the
            first step fails (``autoseg.networks.compiled``); None = on CUDA only.
        patience: stop early when the smoothed (EMA) validation pseudo-Dice has not improved
            for this many epochs, saving the final checkpoint as usual; None = never.
        replace: when the model folder holds folds trained with other plans, move it aside
            (``autoseg.data.recipe.check_new_fold``) instead of refusing.
    """

    epochs: int = 1000
    iterations: int = 250
    val_iterations: int = 50
    device: str = "auto"
    seed: int = 0
    workers: int | None = None
    augmentation: str = "auto"
    resume: bool = False
    checkpoint_every: int = 5
    validate: bool = True
    optimizer: OptimizerSettings = OptimizerSettings()  # noqa: RUF009 - frozen, immutable
    pretrained: str | None = None
    cpu_bf16: bool = True
    loss: str = DEFAULT_LOSS
    augment: tuple[str, ...] = ()
    tracking: str = "none"
    tracking_uri: str | None = None
    compile: bool | None = None
    patience: int | None = None
    replace: bool = False


def poly_lr(initial: float, epoch: int, epochs: int, exponent: float = 0.9) -> float:
    """Polynomial decay: ``initial * (1 - epoch / epochs) ** exponent``."""
    return initial * (1 - epoch / epochs) ** exponent


@dataclass(frozen=True)
class Dist:
    """This process's place in a ``torchrun`` start (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group when started by ``torchrun``; returns the place and the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank), device


def default_workers(device: torch.device) -> int:
    """Background augmentation processes when none are asked for: on CUDA all CPUs but one
    (at most 12), on the CPU none (the network needs the cores)."""
    return min(12, max(1, cpu_count() - 1)) if device.type == "cuda" else 0


def preprocessed_cases(dirs: DatasetDirs, config: Configuration) -> tuple[Path, list[str]]:
    """The preprocessed-data folder of a configuration and its case ids (sorted).

    Raises:
        AutosegError: the folder is not completely preprocessed with the configuration's
            settings (never planned, or the last plan failed or was stopped), or the dataset's
            files changed since (``cache.require_unchanged``).
    """
    folder = preprocessed_folder(dirs.work, config)
    cases = complete_cases(folder, plans_key(config), dirs.name)
    require_unchanged(dirs)
    return folder, cases


def select_split(dirs: DatasetDirs, fold: str, case_ids: list[str]) -> Split:
    """The training and validation cases of ``fold``.

    Fold ``all`` trains on every case and needs no splits (any number of cases will do); fold
    ``k`` reads ``splits.json`` (creating the 5-fold splits when there is none).

    Raises:
        AutosegError: too few cases for cross-validation, or fold ``k`` of the splits file has
            no training or no validation cases.
    """
    if fold == "all":
        return fold_cases([], fold, case_ids)
    if len(case_ids) < NUM_FOLDS and not dirs.splits.is_file():
        raise AutosegError(
            f"fold {fold}: {len(case_ids)} case(s) are too few for {NUM_FOLDS}-fold "
            f"cross-validation (at least {NUM_FOLDS} needed); train fold 'all' instead, or "
            f"write your own {dirs.splits}"
        )
    split = fold_cases(load_or_create_splits(dirs.splits, case_ids), fold, case_ids)
    for cases, what in ((split.train, "training"), (split.val, "validation")):
        if not cases:
            raise AutosegError(
                f"{dirs.splits}: fold {fold} has no {what} cases; edit the file or train fold 'all'"
            )
    return split
