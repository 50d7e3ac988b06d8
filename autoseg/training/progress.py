"""Training progress: per-epoch history, a plain log file and the ``progress.png`` picture."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from autoseg.serial import atomic_write_text, dumps

log = logging.getLogger(__name__)


@dataclass
class History:
    """Per-epoch figures, kept in the checkpoint's metadata so a resumed run continues them."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    pseudo_dice: list[list[float]] = field(default_factory=list)  # per epoch, per label
    ema_dice: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    best_ema: float = -1.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: dict) -> History:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def add(
        self, train_loss: float, val_loss: float, dice: list[float], lr: float, seconds: float
    ) -> bool:
        """Record one epoch; returns True when the EMA pseudo-Dice is a new best."""
        mean = sum(dice) / len(dice) if dice else 0.0
        ema = mean if not self.ema_dice else 0.9 * self.ema_dice[-1] + 0.1 * mean
        self.train_loss.append(train_loss)
        self.val_loss.append(val_loss)
        self.pseudo_dice.append(dice)
        self.ema_dice.append(ema)
        self.lr.append(lr)
        self.epoch_time.append(seconds)
        if ema > self.best_ema:
            self.best_ema = ema
            return True
        return False

    def epochs_since_best(self) -> int:
        """Epochs recorded after the one with the best EMA pseudo-Dice (0: the last one)."""
        if not self.ema_dice:
            return 0
        best = max(range(len(self.ema_dice)), key=lambda i: (self.ema_dice[i], -i))
        return len(self.ema_dice) - 1 - best

    def truncate(self, epochs: int) -> None:
        """Keep the first ``epochs`` entries (history after the checkpoint is discarded)."""
        for name in ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr", "epoch_time"):
            setattr(self, name, getattr(self, name)[:epochs])


def add_file_log(path: Path) -> logging.Handler:
    """Send autoseg's log records to ``path`` too (appending); returns the handler to remove."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    root = logging.getLogger("autoseg")
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    return handler


def write_progress(history: History, folder: Path, label_names: list[str]) -> None:
    """Write ``progress.json`` and redraw ``progress.png`` (losses, pseudo-Dice, lr, time)."""
    atomic_write_text(folder / "progress.json", dumps(history.to_dict()))
    try:
        import matplotlib  # heavy, and optional: imported when a picture is drawn

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # plotting is a convenience, never a reason to stop training
        return
    epochs = list(range(1, len(history.train_loss) + 1))
    fig, axes = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    axes[0].plot(epochs, history.train_loss, label="train loss")
    axes[0].plot(epochs, history.val_loss, label="validation loss")
    axes[0].set_ylabel("loss")
    axes[0].legend(loc="upper right")
    twin = axes[0].twinx()
    for i, name in enumerate(label_names):
        twin.plot(epochs, [d[i] for d in history.pseudo_dice], ":", label=f"pseudo-Dice {name}")
    twin.plot(epochs, history.ema_dice, "k-", linewidth=1, label="pseudo-Dice (EMA)")
    twin.set_ylabel("pseudo-Dice")
    twin.set_ylim(0, 1)
    twin.legend(loc="lower right", fontsize=8)
    axes[1].plot(epochs, history.epoch_time)
    axes[1].set_ylabel("epoch time (s)")
    axes[2].plot(epochs, history.lr)
    axes[2].set_ylabel("learning rate")
    axes[2].set_xlabel("epoch")
    fig.tight_layout()
    tmp = folder / ".progress.png.part"
    fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    tmp.replace(folder / "progress.png")
