"""--patience: stop when the EMA pseudo-Dice has not improved for N epochs; a normal final."""

from __future__ import annotations

from pathlib import Path

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.paths import resolve_dataset
from autoseg.data.plans import Plans
from autoseg.planning.runner import plan_dataset
from autoseg.training import train as train_module
from autoseg.training.fold_setup import TrainSettings
from autoseg.training.progress import History
from autoseg.training.train import train_fold
from tests.synthetic import write_dataset


def test_epochs_since_best_counts_from_the_first_best_ema() -> None:
    history = History()
    assert history.epochs_since_best() == 0
    for dice in (0.2, 0.5, 0.1, 0.1):
        history.add(1.0, 1.0, [dice], 0.01, 1.0)
    # EMA: 0.2, 0.23, 0.217, 0.2053: best at epoch 1, two epochs since
    assert history.epochs_since_best() == 2


def test_patience_stops_with_a_final_checkpoint_and_says_why(tmp_path: Path, monkeypatch) -> None:
    dataset = write_dataset(tmp_path / "Task97_Patience", n_cases=3, shape_ijk=(16, 20, 16))
    home = tmp_path / "home"
    plan_dataset(str(dataset), home=home, planner="default", gpu_memory_gb=8.0, workers=1)
    dice = iter([0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01])  # never better than epoch 0

    def falling(self, advance=None):
        value = next(dice)
        return 1.0 - value, [value] * len(self.label_names)

    monkeypatch.setattr(train_module._Trainer, "_validate_epoch", falling)
    settings = TrainSettings(
        epochs=8, iterations=1, val_iterations=1, device="cpu", validate=False, patience=2
    )
    dirs = resolve_dataset("Task97_Patience", home)
    fold = train_fold(dirs, Plans.from_json(dirs.plans()), "2d", "all", settings)
    final = load_checkpoint(fold / "checkpoint_final.pt")
    assert final.meta.epoch == 2  # epochs 1 and 2 did not improve on epoch 0
    assert len(final.meta.history["train_loss"]) == 3
    assert not (fold / "checkpoint_latest.pt").exists()
    assert load_checkpoint(fold / "checkpoint_best.pt").meta.epoch == 0
    log = (fold / "training.log").read_text()
    assert "early stop after epoch 2" in log and "--patience 2" in log
