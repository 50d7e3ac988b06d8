"""Stopping a training: on a scheduler's signal (SIGTERM, SIGUSR1) and early (``--patience``).

SLURM (``--signal=USR1@120`` or ``scancel``) and most batch systems send SIGTERM or SIGUSR1
before they kill a job. While the training epochs run, ``StopRequests`` turns either signal into
a flag; the trainer finishes the current iteration, saves ``checkpoint_latest.pt`` holding the
position inside the epoch (``CheckpointMeta.iteration``) and leaves with ``TrainingPreempted``,
which the CLI turns into exit code ``PREEMPTED_EXIT_CODE`` (75, ``EX_TEMPFAIL``: "try again").
``autoseg train ... --resume`` then continues at the next iteration of the same epoch.

Outside the epochs (planning, the final validation) the signals keep their previous handlers.

``--patience N`` stops when the EMA pseudo-Dice (the smoothed figure that picks
``checkpoint_best.pt``) has not improved for N epochs; the fold then ends as usual (final
checkpoint, validation).
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import torch
import torch.distributed as dist

from autoseg.data.checkpoint import CheckpointMeta
from autoseg.errors import AutosegError

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, the job may be requeued
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class TrainingPreempted(AutosegError):
    """Training stopped by a signal after saving ``checkpoint_latest.pt``; resumable."""

    exit_code = PREEMPTED_EXIT_CODE


class StopRequests:
    """Context manager: while inside, SIGTERM/SIGUSR1 set ``signal_name`` instead of killing.

    Only the main thread of the main interpreter may install handlers; elsewhere (a training
    started from a worker thread) the signals keep their behaviour and nothing is recorded.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """A stop signal arrived."""
        return self.signal_name is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequests:
        try:
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread
            self._restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()


class StoppingMixin:
    """The trainer's stop-signal and patience steps (``autoseg.training.train._Trainer``).

    Uses the trainer's ``settings``, ``step``, ``history``, ``dist``, ``device``, ``model``,
    ``fold``, ``start_epoch``, ``start_iteration``, ``resumed_losses``, ``_stop`` and ``_save``.
    """

    def _resume_inside_epoch(self, meta: CheckpointMeta) -> None:
        """A checkpoint saved on a stop signal: continue after its last iteration."""
        if meta.iteration <= 0:
            return
        self.start_iteration = min(meta.iteration, self.settings.iterations)
        self.resumed_losses = tuple(meta.iteration_losses)[: self.start_iteration]
        log.info("continuing epoch %d after iteration %d", self.start_epoch, self.start_iteration)

    def _skip_iterations(self, loader, count: int, advance) -> None:
        """Draw (and drop) the first ``count`` batches of an epoch, augmenting them on the
        device when that is where augmentation runs, so the random streams stand exactly where
        the stopped run left them."""
        for _ in range(count):
            batch = next(loader)
            if self.step.augmenter is not None:
                self.step.device_batch(batch)
            advance()

    def _stop_requested(self) -> bool:
        """A stop signal reached this process (any rank, with several)."""
        if self.dist.world == 1:
            return self._stop.requested
        flag = torch.tensor([float(self._stop.requested)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _preempt(self, epoch: int, iteration: int, losses: list[float]) -> None:
        """Save ``checkpoint_latest.pt`` inside epoch ``epoch`` and stop (resumable)."""
        self._save("latest", epoch - 1, iteration, losses)
        why = self._stop.signal_name or "a stop signal on another rank"
        latest = self.model.checkpoint(self.fold, "latest")
        log.warning(
            "%s: stopped at epoch %d, iteration %d of %d; saved %s (continue with --resume)",
            why,
            epoch,
            iteration,
            self.settings.iterations,
            latest,
        )
        raise TrainingPreempted(
            f"stopped by {why} at epoch {epoch} iteration {iteration}; {latest} saved, "
            "continue with --resume"
        )

    def _patience_exhausted(self, epoch: int) -> bool:
        """``--patience``: the EMA pseudo-Dice has not improved for that many epochs."""
        patience = self.settings.patience
        if not patience:
            return False
        since = self.history.epochs_since_best()
        if since < patience or epoch + 1 >= self.settings.epochs:
            return False
        log.info(
            "early stop after epoch %d: the pseudo-Dice EMA has not improved for %d epochs "
            "(best %.4f at epoch %d; --patience %d)",
            epoch,
            since,
            self.history.best_ema,
            epoch - since,
            patience,
        )
        return True
