"""Training one fold of one configuration.

``train_fold`` is the whole job: it reads the plans and the preprocessed cases, trains the planned
network with SGD (nesterov, momentum 0.99, lr 1e-2 with poly decay 0.9, weight decay 3e-5,
gradient clipping 12) on Dice + cross-entropy with deep supervision, checkpoints atomically, and
at the end predicts and scores the fold's validation cases. Every budget is a value of
``TrainSettings`` (``--epochs 50``), never a subclass.

One iteration (network, optimiser, loss, the step on a batch) is
``autoseg.training.step.TrainingStep``,
shared with ``autoseg benchmark`` so that what is timed is what trains.

Determinism: the data of epoch ``e`` comes from a loader seeded with ``(seed, e)``, so a run
resumed from a checkpoint sees the same batches as an uninterrupted one.

Multi-GPU / multi-node: started by ``torchrun``, each process trains on its share of the batch
(DistributedDataParallel); rank 0 alone writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

from autoseg import __version__
from autoseg.data.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from autoseg.data.model_folder import CHECKPOINTS, ModelFolder
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Configuration, Plans
from autoseg.data.recipe import check_new_fold, check_resume, recipe_digest, refuse_resume_elsewhere
from autoseg.data.splits import NUM_FOLDS, Split, fold_cases, load_or_create_splits
from autoseg.device import autocast, cpu_count, resolve_device, use_cpu_share
from autoseg.errors import AutosegError
from autoseg.evaluation.validation import validate_fold
from autoseg.inference.cascade import input_channels, prepare_previous_stage
from autoseg.networks.compiled import compile_with_fallback, use_compile
from autoseg.planning.transfer import load_pretrained, pretrained_checkpoint
from autoseg.preprocessing.cache import complete_cases, require_unchanged
from autoseg.preprocessing.preprocess import plans_key, preprocessed_folder
from autoseg.preprocessing.weightmap import ensure_weight_maps
from autoseg.serial import remove_temp_files, to_dict
from autoseg.terminal import Heartbeat
from autoseg.training.augment.elastic import AUGMENTATIONS, ELASTIC
from autoseg.training.loader import BatchLoader
from autoseg.training.losses.options import DEFAULT_LOSS, build_loss, loss_needs_weights
from autoseg.training.progress import History, add_file_log, write_progress
from autoseg.training.step import OptimizerSettings, TrainingStep
from autoseg.training.stopping import StoppingMixin, StopRequests
from autoseg.training.tracking import TrackedRun, check_tracking, open_tracker

log = logging.getLogger(__name__)


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
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: torch.device) -> tuple[_Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return _Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank), device


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


class _Trainer(StoppingMixin):
    """State of one fold's training; ``run`` is the only entry point."""

    def __init__(
        self, dirs: DatasetDirs, plans: Plans, config_name: str, fold: str, settings: TrainSettings
    ):
        self.dirs, self.plans, self.fold, self.settings = dirs, plans, fold, settings
        if settings.pretrained:  # a wrong path fails now, before anything is written
            pretrained_checkpoint(settings.pretrained, config_name)
        check_tracking(settings.tracking)  # before any work
        self.config: Configuration = plans.configuration(config_name)
        self.data_folder, case_ids = preprocessed_cases(dirs, self.config)
        self.split = select_split(dirs, fold, case_ids)
        self.model = ModelFolder(dirs.model_folder(plans.plans_name, config_name))
        self.fold_dir = self.model.fold_dir(fold)
        self.device = resolve_device(settings.device)
        self.dist, self.device = _init_distributed(self.device)
        if not self.dist.main:  # one voice: rank 0 logs and writes
            logging.getLogger("autoseg").setLevel(logging.WARNING)
        self.num_classes = plans.num_classes
        self.in_channels = input_channels(plans, self.config)
        self.previous_stage = None
        if self.config.previous_stage:  # a cascade: the previous stage's CV predictions
            folder = prepare_previous_stage(dirs, plans, self.config)
            self.previous_stage = (folder, plans.foreground_labels)
        self.label_names = list(plans.output_names)  # foreground labels, or regions
        # unknown names, and losses the ignore label or regions do not support, fail here
        self.loss = build_loss(settings.loss, self.config, plans.ignore_label, plans.regions)
        self.needs_weights = loss_needs_weights(self.loss)
        extra = set(settings.augment) | set(self.config.augmentations)
        unknown = sorted(extra - set(AUGMENTATIONS))
        if unknown:
            raise AutosegError(
                f"unknown augmentation(s) {', '.join(unknown)}; "
                f"available: {', '.join(AUGMENTATIONS)}"
            )
        self.elastic = ELASTIC in extra
        self.augmentation = settings.augmentation
        if self.needs_weights:  # the weight maps follow the labels through the CPU transforms
            if settings.augmentation == "device":
                raise AutosegError(
                    f"--loss {settings.loss} needs the CPU augmentation (--augmentation cpu)"
                )
            self.augmentation = "cpu"
        self.tracker = None
        if settings.replace and settings.resume:
            raise AutosegError("--replace and --resume: a replaced run cannot be resumed")
        # last of the checks: one recipe per model folder (--replace moves the old one aside)
        if self.dist.main or not settings.replace:
            check_new_fold(self.model, plans, config_name, fold, settings.replace)

    # ----------------------------------------------------------------- setup
    def _build(self) -> None:
        self.step = TrainingStep(
            self.config,
            self.in_channels,
            self.num_classes,
            self.device,
            self.settings.optimizer,
            seed=self.settings.seed,
            distributed=self.dist.world > 1,
            augmentation=self.augmentation,
            ignore_label=self.plans.ignore_label,
            regions=self.plans.regions,
            loss=self.loss,
            elastic=self.elastic,
            cpu_bf16=self.settings.cpu_bf16,
            previous_labels=self.previous_stage[1] if self.previous_stage else (),
        )
        if self.needs_weights and self.dist.main:
            ensure_weight_maps(self.data_folder, sorted({*self.split.train, *self.split.val}))
        if self.needs_weights and self.dist.world > 1:
            dist.barrier()  # the other ranks read the weight maps rank 0 wrote
        if use_compile(self.settings.compile, self.device):
            shape = (self.config.batch_size, self.in_channels, *self.config.patch_size)
            example = torch.zeros(shape, device=self.device)
            with autocast(self.device):  # as the steps run
                self.step.model = compile_with_fallback(self.step.model, example, backward=True)
        self.history = History()
        self.start_epoch = 0
        self.start_iteration, self.resumed_losses = 0, ()  # a run stopped by a signal
        self._stop = StopRequests()
        self._published = False

    def _meta(self, epoch: int, iteration: int = 0, losses=()) -> CheckpointMeta:
        return CheckpointMeta(
            configuration=self.config.name,
            fold=self.fold,
            epoch=epoch,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            plans=to_dict(self.plans),
            settings=to_dict(self.settings),
            history=self.history.to_dict(),
            augmentation=self.step.augmentation,
            loss=self.settings.loss,
            autoseg_version=__version__,
            iteration=iteration,
            iteration_losses=tuple(losses),
            recipe=recipe_digest(self.plans, self.config.name),
        )

    def _save(self, checkpoint: str, epoch: int, iteration: int = 0, losses=()) -> None:
        """Save a checkpoint (``final``, ``best`` or ``latest``); rank 0 only.

        ``iteration`` and ``losses``: the part of epoch ``epoch + 1`` already trained (a stop
        signal arrived there).

        The model folder's ``plans.json`` is published with the first checkpoint: a run that
        fails before one leaves nothing that looks like a model.
        """
        if not self.dist.main:
            return
        if not self._published:
            remove_temp_files(self.model.plans)  # of a killed run
            self.plans.to_json(self.model.plans)
            self._published = True
        save_checkpoint(
            self.model.checkpoint(self.fold, checkpoint),
            self.step.network.state_dict(),
            self.step.optimizer.state_dict(),
            self._meta(epoch, iteration, losses),
        )

    def _restore(self) -> None:
        latest = self.model.checkpoint(self.fold, "latest")
        final = self.model.checkpoint(self.fold, "final")
        if not self.settings.resume:
            if latest.exists() or final.exists():
                raise AutosegError(
                    f"{self.fold_dir}: this fold was already trained (or started); pass --resume "
                    "to continue it, or delete the folder to train it again"
                )
            return
        source = latest if latest.exists() else final if final.exists() else None
        if source is None:
            refuse_resume_elsewhere(self.model, self.fold)  # --planner other than the run's
            log.info("nothing to resume in %s: starting at epoch 0", self.fold_dir)
            return
        ckpt = load_checkpoint(source, map_location=self.device)
        if ckpt.meta.configuration != self.config.name:
            raise AutosegError(f"{source}: checkpoint of another configuration")
        check_resume(source, ckpt.meta, to_dict(self.settings), ckpt.meta.epoch + 1)
        recorded_epochs = ckpt.meta.settings.get("epochs")
        if isinstance(recorded_epochs, int) and recorded_epochs < self.settings.epochs:
            lr = poly_lr(
                self.settings.optimizer.initial_lr, ckpt.meta.epoch + 1, self.settings.epochs
            )
            log.warning(
                "extending the run from %d to %d epochs: the poly learning rate is recomputed "
                "over %d epochs (epoch %d gets %.2e)",
                recorded_epochs,
                self.settings.epochs,
                self.settings.epochs,
                ckpt.meta.epoch + 1,
                lr,
            )
        self.step.network.load_state_dict(ckpt.model_state)
        if ckpt.optimizer_state is not None:
            self.step.optimizer.load_state_dict(ckpt.optimizer_state)
        self.start_epoch = ckpt.meta.epoch + 1
        self.history = History.from_dict(ckpt.meta.history)
        self.history.truncate(self.start_epoch)
        log.info("resumed %s at epoch %d", source, self.start_epoch)
        self._resume_inside_epoch(ckpt.meta)

    def _load_pretrained(self, source: str) -> None:
        report = load_pretrained(self.step.network, source, self.config.name)
        log.info("pretrained weights from %s: %d tensors loaded", report.source, len(report.loaded))
        for key, why in report.reinitialised:
            log.info("  re-initialised %s (%s)", key, why)

    def _loader(self, cases: tuple[str, ...], seed: int, augment: bool) -> BatchLoader:
        per_rank = max(1, math.ceil(self.config.batch_size / self.dist.world))
        config = dataclasses.replace(self.config, batch_size=per_rank)
        workers = self.settings.workers
        if workers is None:
            workers = default_workers(self.device)
        return BatchLoader(
            self.data_folder,
            cases,
            config,
            seed=seed,
            augment=augment,
            num_workers=workers if augment else 0,
            augmentation=self.step.augmentation,
            ignore_label=self.plans.ignore_label,
            previous_stage=self.previous_stage,
            elastic=self.elastic,
            weights=self.needs_weights,
        )

    def _reduce(self, counts: torch.Tensor) -> torch.Tensor:
        if self.dist.world > 1:
            counts = counts.to(self.device)
            dist.all_reduce(counts)
        return counts.cpu()

    # ----------------------------------------------------------------- loop
    def run(self) -> Path:
        self._build()
        self._restore()
        if self.dist.main:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
            for leftover in self.fold_dir.glob(".*.part"):  # this fold's: of a killed run
                leftover.unlink(missing_ok=True)
        handler = add_file_log(self.model.training_log(self.fold)) if self.dist.main else None
        ok = False
        try:
            if self.settings.pretrained and self.start_epoch == 0:
                self._load_pretrained(self.settings.pretrained)
            if self.dist.main:
                self.tracker = open_tracker(
                    self.settings.tracking,
                    self.fold_dir,
                    self.label_names,
                    self.start_epoch,
                    self._tracked_run(),
                )
            with self._stop:  # SIGTERM/SIGUSR1: save and leave after the current iteration
                log.info(
                    "training epochs %d-%d, %d iterations each (SIGTERM/SIGUSR1: save and stop)",
                    self.start_epoch,
                    self.settings.epochs - 1,
                    self.settings.iterations,
                )
                self._epochs()
            if self.dist.main:
                self._save("final", len(self.history.train_loss) - 1)
                self.model.checkpoint(self.fold, "latest").unlink(missing_ok=True)
                if self.settings.validate and self.split.val:  # autoseg.evaluation.validation
                    val = (self.fold, self.split.val, str(self.device), self.settings.compile)
                    validate_fold(self.dirs, self.plans, self.config, self.model, *val)
                if self.tracker is not None:
                    files = [self.fold_dir / f for f in ("progress.png", "progress.json")]
                    self.tracker.artifacts(
                        [self.model.plans, *files, self.model.summary(self.fold)]
                    )
            ok = True
        finally:
            if self.tracker is not None:
                self.tracker.close()
            if handler is not None:
                logging.getLogger("autoseg").removeHandler(handler)
                handler.close()
            if not ok and self.dist.main:
                self._remove_unfinished()
            if self.dist.world > 1:
                dist.destroy_process_group()
        return self.fold_dir

    def _tracked_run(self) -> TrackedRun:
        """What the tracker logs about this fold (its parameters, names, where)."""
        s, c = self.settings, self.config
        params = {
            "dataset": self.plans.dataset_name,
            "plans": self.plans.plans_name,
            "planner": self.plans.planner,
            "configuration": c.name,
            "fold": self.fold,
            "seed": s.seed,
            "autoseg_version": __version__,
            "epochs": s.epochs,
            "iterations": s.iterations,
            "loss": s.loss,
            "patch_size": "x".join(map(str, c.patch_size)),
            "batch_size": c.batch_size,
            "spacing": "x".join(f"{v:g}" for v in c.spacing),
        }
        name = f"{self.plans.dataset_name}/{self.plans.plans_name}/{c.name}/fold_{self.fold}"
        return TrackedRun(
            fold_dir=self.fold_dir,
            label_names=tuple(self.label_names),
            start_epoch=self.start_epoch,
            name=name,
            experiment=f"autoseg/{self.plans.dataset_name}",
            params=params,
            uri=s.tracking_uri,
            home=self.dirs.work.parent,
        )

    def _remove_unfinished(self) -> None:
        """After a failure before any checkpoint: remove what the run wrote (log, progress)."""
        if any(self.model.checkpoint(self.fold, c).exists() for c in CHECKPOINTS):
            return  # something to resume from: keep the fold as it is
        shutil.rmtree(self.fold_dir, ignore_errors=True)
        if not any(self.model.folds_with(c) for c in CHECKPOINTS):
            self.model.plans.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # only when empty
                self.model.path.rmdir()
                self.model.path.parent.rmdir()

    def _epochs(self) -> None:
        s = self.settings
        last_save = time.monotonic()
        with Heartbeat(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            title="train",
            enabled=self.dist.main,
        ) as bar:
            task = bar.add_task("epoch", total=s.iterations, unit="it", info="")
            for epoch in range(self.start_epoch, s.epochs):
                t0 = time.perf_counter()
                lr = poly_lr(s.optimizer.initial_lr, epoch, s.epochs)
                self.step.set_lr(lr)
                name = f"epoch {epoch + 1}/{s.epochs}"
                self._share_cpu()
                bar.reset(task, total=s.iterations, description=f"{name} train", info="")
                losses = self._train_epoch(epoch, lambda: bar.advance(task))
                bar.reset(task, total=s.val_iterations, description=f"{name} validation")
                val_loss, dice = self._validate_epoch(lambda: bar.advance(task))
                seconds = time.perf_counter() - t0
                best = self.history.add(float(np.mean(losses)), val_loss, dice, lr, seconds)
                info = (
                    f"loss {np.mean(losses):.4f} val {val_loss:.4f} "
                    f"dice {' '.join(f'{d:.3f}' for d in dice)} {seconds:.1f}s"
                )
                bar.update(task, info=info)
                log.info("epoch %d: %s lr %.5f", epoch, info, lr)
                if self._checkpoint_epoch(epoch, best, time.monotonic() - last_save > 300):
                    last_save = time.monotonic()
                if self._patience_exhausted(epoch):
                    break

    def _share_cpu(self) -> None:
        """On the CPU, torch threads = the CPUs other work leaves free now (autoseg.device)."""
        if self.device.type != "cpu":
            return
        before = torch.get_num_threads()
        threads = use_cpu_share()
        if threads != before:
            log.info("CPU threads: %d of %d (other work holds the rest)", threads, cpu_count())

    def _train_epoch(self, epoch: int, advance) -> list[float]:
        """``iterations`` training steps on augmented batches seeded by ``(seed, epoch)``."""
        s = self.settings
        self.step.model.train()
        losses = []
        seed = s.seed * 100_003 + epoch * 7919 + self.dist.rank
        if self.step.augmenter is not None:
            self.step.augmenter.reseed(seed)
        if self.step.elastic is not None:
            self.step.elastic.reseed(seed)
        if self.step.previous_stage is not None:
            self.step.previous_stage.reseed(seed)
        first = self.start_iteration if epoch == self.start_epoch else 0
        if first:
            losses = list(self.resumed_losses)
        with self._loader(self.split.train, seed, augment=True) as loader:
            self._skip_iterations(loader, first, advance)
            for i in range(first, s.iterations):
                losses.append(self.step.train_batch(next(loader)))
                advance()
                if self._stop_requested():
                    self._preempt(epoch, i + 1, losses)
        return losses

    def _validate_epoch(self, advance) -> tuple[float, list[float]]:
        """Mean validation loss and the pseudo-Dice per foreground label (all ranks pooled)."""
        s = self.settings
        self.step.model.eval()
        val_cases = self.split.val or self.split.train
        val_losses, counts = [], torch.zeros(3, len(self.label_names), dtype=torch.float64)
        with self._loader(val_cases, s.seed + 17 + self.dist.rank, augment=False) as loader:
            for _ in range(s.val_iterations):
                loss, c = self.step.val_batch(next(loader))
                val_losses.append(loss)
                counts += c
                advance()
        tp, fp, fn = self._reduce(counts)
        dice = [float(2 * t / max(2 * t + p + n, 1)) for t, p, n in zip(tp, fp, fn, strict=True)]
        return float(np.mean(val_losses)), dice

    def _checkpoint_epoch(self, epoch: int, best: bool, overdue: bool) -> bool:
        """Checkpoints and progress after an epoch (rank 0); True when ``latest`` was saved."""
        if not self.dist.main:
            return False
        if best:
            self._save("best", epoch)
        due = (epoch + 1) % self.settings.checkpoint_every == 0 or overdue
        saved = due and epoch + 1 < self.settings.epochs
        if saved:
            self._save("latest", epoch)
        write_progress(self.history, self.fold_dir, self.label_names)
        if self.tracker is not None:
            self.tracker.write(self.history)
        return saved


def train_fold(
    dirs: DatasetDirs, plans: Plans, configuration: str, fold: str, settings: TrainSettings
) -> Path:
    """Train one fold of one configuration; returns the fold's folder.

    Raises:
        AutosegError: missing plans/preprocessed data, an already-trained fold without
            ``--resume``, or a device that is not available.
    """
    return _Trainer(dirs, plans, configuration, fold, settings).run()
