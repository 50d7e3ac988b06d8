"""Stop signals (SIGTERM/SIGUSR1): save after the current iteration, exit 75, resume there."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.paths import resolve_dataset
from autoseg.data.plans import Plans
from autoseg.planning.runner import plan_dataset
from autoseg.training import train as train_module
from autoseg.training.fold_setup import TrainSettings
from autoseg.training.step import TrainingStep
from autoseg.training.stopping import PREEMPTED_EXIT_CODE, StopRequests, TrainingPreempted
from autoseg.training.train import train_fold
from tests.synthetic import write_dataset

NAME = "Task98_Signal"


@pytest.fixture
def planned(tmp_path: Path) -> Path:
    """A planned 3-case tiny dataset; returns the home."""
    dataset = write_dataset(tmp_path / NAME, n_cases=3, shape_ijk=(16, 20, 16))
    home = tmp_path / "home"
    plan_dataset(str(dataset), home=home, planner="default", gpu_memory_gb=8.0, workers=1)
    return home


def _settings(**kw) -> TrainSettings:
    base = dict(epochs=2, iterations=3, val_iterations=1, device="cpu", seed=3, validate=False)
    base.update(kw)
    return TrainSettings(**base)


def _train(home: Path, settings: TrainSettings) -> Path:
    dirs = resolve_dataset(NAME, home)
    return train_fold(dirs, Plans.from_json(dirs.plans()), "2d", "all", settings)


def test_stop_requests_turn_sigusr1_into_a_flag_and_restore_the_handler() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with StopRequests() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before


def test_resume_after_a_signal_ends_where_an_uninterrupted_run_ends(
    planned: Path, tmp_path: Path, monkeypatch
) -> None:
    """SIGTERM in epoch 1 after its first iteration; --resume continues at its second one."""
    import shutil

    other = tmp_path / "home_b"
    shutil.copytree(planned, other)
    whole = _train(planned, _settings())
    reference = load_checkpoint(whole / "checkpoint_final.pt")

    calls = {"n": 0}
    original = TrainingStep.train_batch

    def signalling(self, batch):
        loss = original(self, batch)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 1, iteration 1 of 3: a real signal to this process
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(TrainingStep, "train_batch", signalling)
    with pytest.raises(TrainingPreempted, match="--resume") as caught:
        _train(other, _settings())
    assert caught.value.exit_code == PREEMPTED_EXIT_CODE
    fold = other / NAME / "models" / "default" / "2d" / "fold_all"
    latest = load_checkpoint(fold / "checkpoint_latest.pt")
    assert (latest.meta.epoch, latest.meta.iteration) == (0, 1)
    assert len(latest.meta.iteration_losses) == 1
    assert not (fold / "checkpoint_final.pt").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
    monkeypatch.setattr(TrainingStep, "train_batch", original)

    _train(other, _settings(resume=True))
    resumed = load_checkpoint(fold / "checkpoint_final.pt")
    assert calls["n"] == 4  # the resumed run trained 2 more iterations with the original step
    for key, value in reference.model_state.items():
        torch.testing.assert_close(resumed.model_state[key], value, rtol=0, atol=0)
    assert resumed.meta.history["train_loss"] == pytest.approx(
        reference.meta.history["train_loss"], rel=1e-6
    )


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text():
            return
        if process.poll() is not None:
            pytest.fail(f"training ended early: {process.communicate()}")
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"{text!r} never appeared in {path}")


@pytest.mark.slow
def test_sigterm_to_a_real_training_saves_and_exits_75(planned: Path) -> None:
    fold = planned / NAME / "models" / "default" / "2d" / "fold_all"
    command = [sys.executable, "-m", "autoseg", "train", NAME, "2d", "all", "--home", str(planned)]
    command += ["--epochs", "2", "--iterations", "1000", "--val-iterations", "1", "--seed", "3"]
    command += ["--device", "cpu", "--no-validate", "--workers", "0"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _wait_for(fold / "training.log", "SIGTERM/SIGUSR1: save and stop", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr.decode()
    assert "--resume" in stderr.decode() and "Traceback" not in stderr.decode()
    latest = load_checkpoint(fold / "checkpoint_latest.pt")
    assert latest.meta.epoch == -1 and 1 <= latest.meta.iteration < 1000
    assert len(latest.meta.iteration_losses) == latest.meta.iteration
    assert "SIGTERM: stopped at epoch 0" in (fold / "training.log").read_text()

    # --resume picks up there: same weights, next iteration (the rest is the test above)
    dirs = resolve_dataset(NAME, planned)
    settings = TrainSettings(
        epochs=2, iterations=1000, val_iterations=1, device="cpu", seed=3, validate=False,
        workers=0, resume=True,
    )  # fmt: skip
    trainer = train_module._Trainer(dirs, Plans.from_json(dirs.plans()), "2d", "all", settings)
    trainer._build()
    trainer._restore()
    assert (trainer.start_epoch, trainer.start_iteration) == (0, latest.meta.iteration)
    for key, value in trainer.step.network.state_dict().items():
        torch.testing.assert_close(value, latest.model_state[key], rtol=0, atol=0)
