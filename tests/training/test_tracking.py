"""Experiment tracking: TensorBoard gets progress.png's per-epoch figures; off by default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.planning.runner import plan_dataset
from tests.synthetic import write_dataset

pytest.importorskip("tensorboard")
runner = CliRunner()
TRAIN = ["3d_fullres", "0", "--epochs", "3", "--iterations", "2", "--val-iterations", "1"]
FAST = [*TRAIN, "--device", "cpu", "--no-validate", "--workers", "0"]


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("track")
    dataset = write_dataset(root / "Task93_Track", n_cases=5, shape_ijk=(20, 24, 16))
    plan_dataset(str(dataset), home=root / "home", planner="default", gpu_memory_gb=8.0, workers=1)
    return root / "home", "Task93_Track"


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_tensorboard_gets_the_progress_figures_of_every_epoch(planned) -> None:
    home, name = planned
    result = runner.invoke(app, ["train", name, *FAST, "--home", home, "--tracking", "tensorboard"])
    assert result.exit_code == 0, result.output
    fold = home / name / "models" / "default" / "3d_fullres" / "fold_0"
    progress = json.loads((fold / "progress.json").read_text())
    scalars = _scalars(fold / "tensorboard")
    labels = json.loads((fold.parent / "plans.json").read_text())["labels"]
    names = [labels[k] for k in sorted(labels, key=int) if k != "0"]
    expected = {
        "loss/train": progress["train_loss"],
        "loss/val": progress["val_loss"],
        "dice/ema": progress["ema_dice"],
        "lr": progress["lr"],
        "epoch_time_s": progress["epoch_time"],
        **{f"dice/{n}": [d[i] for d in progress["pseudo_dice"]] for i, n in enumerate(names)},
    }
    assert set(scalars) == set(expected)
    for tag, values in expected.items():
        assert [s for s, _ in scalars[tag]] == [1, 2, 3], tag
        assert [v for _, v in scalars[tag]] == pytest.approx(values, rel=1e-6), tag


def test_tracking_is_off_by_default_and_checked_before_training(planned) -> None:
    home, name = planned
    result = runner.invoke(app, ["train", name, *FAST, "--home", home, "--tracking", "wandb"])
    assert result.exit_code == 2 and "--tracking wandb" in result.output
    assert not (home / name / "models" / "default" / "3d_fullres" / "fold_1").exists()
    args = ["train", name, "3d_fullres", "1", "--epochs", "1", "--iterations", "1"]
    args += ["--val-iterations", "1", "--device", "cpu", "--no-validate", "--home", str(home)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    fold = home / name / "models" / "default" / "3d_fullres" / "fold_1"
    assert (fold / "progress.json").is_file() and not (fold / "tensorboard").exists()
