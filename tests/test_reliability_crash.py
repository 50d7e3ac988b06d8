"""``kill -9`` in the middle of preprocessing, training and prediction, then the same command
again: it finishes what was left, keeps what was done, and ends where an uninterrupted run ends.
See docs/reliability.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.preprocessing.case_store import load_case
from tests.reliability_helpers import (
    autoseg_command,
    child_env,
    cli,
    files_in,
    make_model,
    mixed_spacing_dataset,
    one_torch_thread,  # noqa: F401 - a fixture
    save_nifti,
    shrink_network,
    snapshot,
    tiny_dataset,
)
from tests.synthetic import make_case

pytestmark = pytest.mark.usefixtures("one_torch_thread")

_children: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_leftover_children():
    """A failing test must not leave its child process running."""
    yield
    while _children:
        proc = _children.pop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(tmp_path: Path, *args: object) -> subprocess.Popen:
    """``autoseg ARGS`` in a new process group (so a kill takes its workers too)."""
    log = tmp_path / f"child-{time.monotonic_ns()}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            autoseg_command(*args),
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=child_env(),
            start_new_session=True,
        )
    proc.log = log  # type: ignore[attr-defined]
    _children.append(proc)
    return proc


def finish(tmp_path: Path, *args: object) -> str:
    """Run ``autoseg ARGS`` to the end in a child process; returns its output."""
    proc = start(tmp_path, *args)
    code = proc.wait(timeout=300)
    output = proc.log.read_text()  # type: ignore[attr-defined]
    assert code == 0, output
    return output


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 120) -> None:
    """``kill -9`` the process group as soon as ``ready()``; fails if it ended first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (code {proc.returncode}) before it could be killed")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("timed out waiting for the moment to kill")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def stamps(folder: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    """(inode, mtime) per file: changes when a file is rewritten, even with the same bytes."""
    return {n: ((st := (folder / n).stat()).st_ino, st.st_mtime_ns) for n in names}


# ------------------------------------------------------------------------------- preprocessing


def test_preprocessing_killed_midway_resumes_to_identical_files(tmp_path: Path) -> None:
    root = mixed_spacing_dataset(tmp_path / "Task96_Crash", 6, (80, 80, 64))
    args = ("plan", root, "--workers", 1, "--gpu-memory", 8)
    reference = tmp_path / "reference"
    assert cli(*args, "--home", reference).exit_code == 0
    home = tmp_path / "home"
    preprocessed = home / root.name / "preprocessed"

    def some_cases_done() -> bool:
        return len(list(preprocessed.glob("*/*.json"))) >= 2

    kill_when(start(tmp_path, *args, "--home", home), some_cases_done)
    folder = next(preprocessed.iterdir())
    done = sorted(p.name.removesuffix(".json") for p in folder.glob("*.json"))
    assert 2 <= len(done) < 6, "not killed in the middle"
    for case_id in done:  # a case marked complete is complete
        load_case(folder, case_id, mmap=False)
    kept = [f"{c}{ending}" for c in done for ending in (".img.npy", ".seg.npy", ".fg.npz", ".json")]
    before = stamps(folder, kept)

    finish(tmp_path, *args, "--home", home)
    assert stamps(folder, kept) == before  # finished cases were not redone
    assert snapshot(home) == snapshot(reference)  # same files, same bytes, no leftovers


# ------------------------------------------------------------------------------- training


def test_training_killed_after_a_checkpoint_resumes_to_the_same_end(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task95_Train", n_cases=5)
    for name in ("reference", "home"):
        assert cli("plan", root, "--home", tmp_path / name, "--workers", 1).exit_code == 0
        shrink_network(tmp_path / name / root.name / "plans.json")
    train = ("train", root.name, "3d_fullres", "0", "--epochs", 3, "--iterations", 2)
    train += ("--val-iterations", 1, "--device", "cpu", "--no-validate", "--workers", 0)
    train += ("--checkpoint-every", 1)
    reference = cli(*train, "--home", tmp_path / "reference")
    assert reference.exit_code == 0, reference.output
    fold = Path("models/default/3d_fullres/fold_0")
    ref_dir, fold_dir = (
        tmp_path / "reference" / root.name / fold,
        tmp_path / "home" / root.name / fold,
    )

    kill_when(
        start(tmp_path, *train, "--home", tmp_path / "home"),
        lambda: (fold_dir / "checkpoint_latest.pt").is_file(),
    )
    assert not (fold_dir / "checkpoint_final.pt").exists(), "not killed in the middle"
    killed_at = load_checkpoint(fold_dir / "checkpoint_latest.pt").meta.epoch
    assert killed_at < 2

    log = finish(tmp_path, *train, "--resume", "--home", tmp_path / "home")
    assert not (fold_dir / "checkpoint_latest.pt").exists()
    final, expected = (load_checkpoint(d / "checkpoint_final.pt") for d in (fold_dir, ref_dir))
    assert final.meta.epoch == expected.meta.epoch == 2
    for key in ("train_loss", "val_loss", "lr"):
        assert len(final.meta.history[key]) == 3, log
    np.testing.assert_allclose(final.meta.history["lr"], expected.meta.history["lr"])
    assert final.model_state.keys() == expected.model_state.keys()
    for name, tensor in final.model_state.items():  # on the CPU, bit for bit
        assert torch.equal(tensor, expected.model_state[name]), name
    assert not [f for f in files_in(fold_dir) if f.endswith(".part")]


# ------------------------------------------------------------------------------- prediction


def test_prediction_killed_midway_resumes_to_identical_outputs(tmp_path: Path) -> None:
    model = make_model(tmp_path / "model")
    inputs = tmp_path / "in"
    rng = np.random.default_rng(0)
    for i in range(6):
        save_nifti(make_case(rng, (40, 40, 24))[0], inputs / f"case_{i}.nii.gz")
    args = ("predict", "-i", inputs, "-m", model, "--device", "cpu", "--save-probabilities")
    args += ("--no-tta",)
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert cli(*args, "-o", reference).exit_code == 0

    kill_when(start(tmp_path, *args, "-o", out), lambda: len(list(out.glob("*.nii.gz"))) >= 1)
    done = sorted(p.name for p in out.glob("*.nii.gz"))
    assert 1 <= len(done) < 6, "not killed in the middle"
    kept = done + [n.replace(".nii.gz", ".npz") for n in done]
    before = stamps(out, kept)

    log = finish(tmp_path, *args, "-o", out)
    assert f"{len(done)} skipped" in log
    assert stamps(out, kept) == before  # finished cases were not redone
    assert snapshot(out) == snapshot(reference)  # identical outputs, no temp files left


def test_a_case_with_only_some_outputs_is_predicted_again(tmp_path: Path) -> None:
    """What a kill between a case's two files leaves (or an earlier run without -p)."""
    model = make_model(tmp_path / "model")
    inputs = tmp_path / "in"
    save_nifti(make_case(np.random.default_rng(0), (16, 20, 16))[0], inputs / "a.nii.gz")
    args = ("predict", "-i", inputs, "-m", model, "--device", "cpu", "--no-tta")
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert cli(*args, "-o", reference, "--save-probabilities").exit_code == 0
    out.mkdir()
    (out / "a.nii.gz").write_bytes((reference / "a.nii.gz").read_bytes())
    (out / ".a.npz.1234abcd.part").write_bytes(b"half a file")
    assert cli(*args, "-o", out, "--save-probabilities").exit_code == 0
    assert snapshot(out) == snapshot(reference)
