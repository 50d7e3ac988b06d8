"""Optional experiment tracking: the per-epoch figures of ``progress.png`` to a tracker.

Off by default (``--tracking none``). Every tracker gets the same calls from rank 0 of the
trainer (``Tracker``): ``write(history)`` after each epoch, ``artifacts(paths)`` when the fold
ends (progress.png, progress.json, the plans, the validation summary), ``close()``. The scalars
per epoch (1-based, as ``progress.png``): ``loss/train``, ``loss/val``, ``dice/<label>``
(pseudo-Dice), ``dice/ema``, ``lr``, ``epoch_time_s`` (``epoch_scalars``).

- ``tensorboard``: event files in ``fold_<k>/tensorboard/`` (``tensorboard --logdir <model
  folder>`` shows every fold), through ``torch.utils.tensorboard``; needs the ``tensorboard``
  package. A resumed run first drops what was logged after its checkpoint's epoch. No
  artifacts.
- ``mlflow``: ``autoseg.training.tracking_mlflow``: one MLflow run per fold, with the run's
  parameters, the scalars and the artifacts; the ``mlflow`` extra.

Neither package is a dependency of autoseg: each is asked for only when chosen, before training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autoseg.errors import AutosegError
from autoseg.training.progress import History

TRACKERS = ("none", "tensorboard", "mlflow")


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker is told about the fold it follows.

    Attributes:
        fold_dir: the fold's folder.
        label_names: foreground label names, in the order of ``History.pseudo_dice``.
        start_epoch: epochs already done (a resumed run).
        name: a readable run name (``dataset/plans/configuration/fold_k``).
        experiment: the experiment (MLflow) the run belongs to: ``autoseg/<dataset>``.
        params: the run's parameters (plans name, configuration, fold, seed, version, ...).
        uri: the tracking URI (MLflow); None: ``MLFLOW_TRACKING_URI``, else the home's store.
        home: the home folder (the default MLflow store is ``<home>/mlruns``).
    """

    fold_dir: Path
    label_names: tuple[str, ...]
    start_epoch: int = 0
    name: str = ""
    experiment: str = "autoseg"
    params: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None
    home: Path | None = None


class Tracker(Protocol):
    """What the trainer calls (rank 0 only)."""

    def write(self, history: History) -> None:
        """Log the last epoch of ``history``."""

    def artifacts(self, paths: list[Path]) -> None:
        """Keep these files of the finished fold (those that exist)."""

    def close(self) -> None:
        """Flush and end."""


def epoch_scalars(history: History, label_names: tuple[str, ...] | list[str]) -> dict[str, float]:
    """The last epoch's figures of ``history`` by tag (as every tracker logs them)."""
    scalars = {
        "loss/train": history.train_loss[-1],
        "loss/val": history.val_loss[-1],
        "dice/ema": history.ema_dice[-1],
        "lr": history.lr[-1],
        "epoch_time_s": history.epoch_time[-1],
    }
    for name, dice in zip(label_names, history.pseudo_dice[-1], strict=True):
        scalars[f"dice/{name}"] = dice
    return {tag: float(value) for tag, value in scalars.items()}


def check_tracking(kind: str) -> str:
    """``kind`` if it is known and its package is installed.

    Raises:
        AutosegError: unknown kind, or its package missing (the message says what to install).
    """
    if kind not in TRACKERS:
        raise AutosegError(f"--tracking {kind}: choose one of {', '.join(TRACKERS)}")
    if kind == "tensorboard":
        _summary_writer()
    if kind == "mlflow":
        from autoseg.training.tracking_mlflow import require_mlflow

        require_mlflow()
    return kind


def _summary_writer() -> Any:
    try:  # heavy and optional: only when chosen
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise AutosegError(
            "--tracking tensorboard needs the tensorboard package: pip install tensorboard"
        ) from exc
    return SummaryWriter


class TensorBoardTracker:
    """Writes each finished epoch of a ``History`` as TensorBoard scalars.

    Args:
        fold_dir: the fold's folder; events go to ``fold_dir/tensorboard``.
        label_names: foreground label names, in the order of ``History.pseudo_dice``.
        start_epoch: epochs already done (a resumed run): later events are dropped.
    """

    def __init__(self, fold_dir: Path, label_names: list[str], start_epoch: int = 0) -> None:
        writer = _summary_writer()
        self.label_names = list(label_names)
        self.writer = writer(
            log_dir=str(Path(fold_dir) / "tensorboard"),
            purge_step=start_epoch + 1 if start_epoch else None,
        )

    def write(self, history: History) -> None:
        """Log the last epoch of ``history``."""
        step = len(history.train_loss)
        for tag, value in epoch_scalars(history, self.label_names).items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def artifacts(self, paths: list[Path]) -> None:
        """TensorBoard keeps no files: the fold folder already has them."""

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def open_tracker(
    kind: str,
    fold_dir: Path,
    label_names: list[str],
    start_epoch: int,
    run: TrackedRun | None = None,
) -> Tracker | None:
    """The tracker for ``kind`` (None for ``none``); ``run`` describes the fold (MLflow)."""
    if check_tracking(kind) == "none":
        return None
    if kind == "mlflow":
        from autoseg.training.tracking_mlflow import MlflowTracker

        run = run or TrackedRun(Path(fold_dir), tuple(label_names), start_epoch)
        return MlflowTracker(run)
    return TensorBoardTracker(fold_dir, label_names, start_epoch)
