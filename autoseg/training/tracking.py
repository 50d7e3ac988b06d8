"""Optional experiment tracking: the per-epoch figures of ``progress.png`` to TensorBoard.

Off by default (``--tracking none``). ``--tracking tensorboard`` writes event files to
``fold_<k>/tensorboard/`` (``tensorboard --logdir <model folder>`` shows every fold), through
``torch.utils.tensorboard``, which needs the ``tensorboard`` package: not a dependency of
autoseg, so it is asked for only when chosen. Scalars per epoch (1-based, as ``progress.png``):
``loss/train``, ``loss/val``, ``dice/<label>`` (pseudo-Dice), ``dice/ema``, ``lr``,
``epoch_time_s``. A resumed run first drops what was logged after its checkpoint's epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autoseg.errors import AutosegError
from autoseg.training.progress import History

TRACKERS = ("none", "tensorboard")


def check_tracking(kind: str) -> str:
    """``kind`` if it is known and usable here.

    Raises:
        AutosegError: unknown kind, or tensorboard without its package.
    """
    if kind not in TRACKERS:
        raise AutosegError(f"--tracking {kind}: choose one of {', '.join(TRACKERS)}")
    if kind == "tensorboard":
        _summary_writer()
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
        scalars = {
            "loss/train": history.train_loss[-1],
            "loss/val": history.val_loss[-1],
            "dice/ema": history.ema_dice[-1],
            "lr": history.lr[-1],
            "epoch_time_s": history.epoch_time[-1],
        }
        for name, dice in zip(self.label_names, history.pseudo_dice[-1], strict=True):
            scalars[f"dice/{name}"] = dice
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()


def open_tracker(
    kind: str, fold_dir: Path, label_names: list[str], start_epoch: int
) -> TensorBoardTracker | None:
    """The tracker for ``kind`` (None for ``none``)."""
    if check_tracking(kind) == "none":
        return None
    return TensorBoardTracker(fold_dir, label_names, start_epoch)
