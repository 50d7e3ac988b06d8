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

This module owns the loop (``_Trainer``: setup, epochs, validation pseudo-Dice, end of fold).
The settings, the fold's cases and the process group are ``autoseg.training.fold_setup``;
checkpoints and resuming ``autoseg.training.checkpointing``; stop signals and patience
``autoseg.training.stopping``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

from autoseg import __version__
from autoseg.data.model_folder import ModelFolder
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Configuration, Plans
from autoseg.data.recipe import check_new_fold
from autoseg.device import autocast, cpu_count, resolve_device, use_cpu_share
from autoseg.errors import AutosegError
from autoseg.evaluation.validation import validate_fold
from autoseg.inference.cascade import input_channels, prepare_previous_stage
from autoseg.networks.compiled import compile_with_fallback, use_compile
from autoseg.planning.transfer import pretrained_checkpoint
from autoseg.preprocessing.weightmap import ensure_weight_maps
from autoseg.terminal import Heartbeat
from autoseg.training.augment.elastic import AUGMENTATIONS, ELASTIC
from autoseg.training.checkpointing import CheckpointingMixin
from autoseg.training.fold_setup import (
    TrainSettings,
    default_workers,
    init_distributed,
    poly_lr,
    preprocessed_cases,
    select_split,
)
from autoseg.training.loader import BatchLoader
from autoseg.training.losses.options import build_loss, loss_needs_weights
from autoseg.training.progress import History, add_file_log, write_progress
from autoseg.training.step import TrainingStep
from autoseg.training.stopping import StoppingMixin, StopRequests
from autoseg.training.tracking import TrackedRun, check_tracking, open_tracker

log = logging.getLogger(__name__)


class _Trainer(CheckpointingMixin, StoppingMixin):
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
        self.dist, self.device = init_distributed(self.device)
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
