"""The trainer's checkpoints: saving them, resuming from one, and cleaning up a failed start.

Owns ``CheckpointingMixin``, the part of ``autoseg.training.train._Trainer`` that writes
``checkpoint_{final,best,latest}.pt`` (with the model folder's ``plans.json`` published at the
first one), restores the network, optimiser and history for ``--resume`` (the recipe checks are
``autoseg.data.recipe``; the position inside an epoch is ``autoseg.training.stopping``), loads
``--pretrained`` weights, and removes what a run wrote when it fails before any checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import shutil

from autoseg import __version__
from autoseg.data.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from autoseg.data.model_folder import CHECKPOINTS
from autoseg.data.recipe import check_resume, recipe_digest, refuse_resume_elsewhere
from autoseg.errors import AutosegError
from autoseg.planning.transfer import load_pretrained
from autoseg.serial import remove_temp_files, to_dict
from autoseg.training.fold_setup import poly_lr
from autoseg.training.progress import History

log = logging.getLogger(__name__)


class CheckpointingMixin:
    """Checkpoint save/restore steps of the trainer (``autoseg.training.train._Trainer``).

    Uses the trainer's ``config``, ``fold``, ``fold_dir``, ``num_classes``, ``in_channels``,
    ``plans``, ``settings``, ``history``, ``step``, ``dist``, ``device``, ``model``,
    ``start_epoch``, ``_published`` and ``_resume_inside_epoch``.
    """

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
