"""nnU-Net users' command-line habits, through typer's CliRunner (no model is trained here)."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoseg import __version__
from autoseg.cli.commands import app
from autoseg.cli.habits import hoist_global_flags

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_short_help_on_the_group_and_on_commands() -> None:
    for args in (["-h"], ["predict", "-h"], ["train", "-h"], ["evaluate", "-h"]):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        assert "Usage" in result.output and "No such option" not in result.output


def test_version_flag_and_python_dash_m() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"autoseg {__version__}"
    run = subprocess.run(
        [sys.executable, "-m", "autoseg", "--version"], capture_output=True, text=True
    )
    assert run.returncode == 0 and run.stdout.strip() == f"autoseg {__version__}"


class _Captured(Exception):
    pass


@pytest.fixture
def captured_folds(monkeypatch, tmp_path: Path) -> tuple[list, Path]:
    """Replace the Predictor by a recorder: predict's parsed folds land in the list."""
    from autoseg.inference.predictor import Predictor

    seen: list = []

    def fake_from_folder(model, folds=None, **kwargs):
        seen.append(folds)
        raise _Captured

    monkeypatch.setattr(Predictor, "from_folder", staticmethod(fake_from_folder))
    (tmp_path / "in").mkdir()
    (tmp_path / "model").mkdir()
    return seen, tmp_path


@pytest.mark.parametrize(
    ("fold_args", "expected"),
    [
        (["-f", "0", "1"], ["0", "1"]),
        (["-f", "0,1"], ["0", "1"]),
        (["--folds", "0", "2", "4"], ["0", "2", "4"]),
        (["-f", "all"], ["all"]),
        ([], None),
    ],
)
def test_folds_as_nnunet_writes_them(captured_folds, fold_args, expected) -> None:
    seen, tmp = captured_folds
    args = ["predict", "-i", tmp / "in", *fold_args, "-o", tmp / "out", "-m", tmp / "model"]
    with pytest.raises(_Captured):
        invoke(*args)
    assert seen == [expected]


def test_folds_followed_by_other_options_keep_them(captured_folds) -> None:
    seen, tmp = captured_folds
    with pytest.raises(_Captured):
        invoke("predict", "-f", "0", "1", "-i", tmp / "in", "-o", tmp / "o", "-m", tmp / "model")
    assert seen == [["0", "1"]]


@pytest.mark.parametrize(
    ("flag", "hint"),
    [
        ("-chk", "--checkpoint"),
        ("--save_probabilities", "--save-probabilities"),
        ("--disable_tta", "--no-tta"),
        ("-device", "--device"),
    ],
)
def test_nnunet_flags_get_a_hint_not_a_misparse(tmp_path: Path, flag: str, hint: str) -> None:
    result = invoke("predict", "-i", tmp_path, "-o", tmp_path / "o", flag, "best")
    assert result.exit_code == 2
    assert f"no such option {flag}" in result.output and hint in result.output
    assert not (tmp_path / "o").exists()


def test_train_hints_for_nnunet_flags(tmp_path: Path) -> None:
    result = invoke("train", "D", "3d_fullres", "0", "--c", "--home", tmp_path)
    assert result.exit_code == 2 and "--resume" in result.output
    result = invoke("plan", "D", "-np", "4", "--home", tmp_path)
    assert result.exit_code == 2 and "--workers" in result.output


def test_global_flags_anywhere_are_moved_before_the_command() -> None:
    assert hoist_global_flags(["predict", "-i", "x", "-q"]) == ["-q", "predict", "-i", "x"]
    assert hoist_global_flags(["-v", "plan", "d", "--", "-q"]) == ["-v", "plan", "d", "--", "-q"]


def _console_level() -> int:
    return logging.getLogger().handlers[0].level


@pytest.mark.parametrize(
    ("flags", "level"),
    [([], logging.INFO), (["-v"], logging.DEBUG), (["-q"], logging.WARNING)],
)
def test_verbosity_sets_the_console_level(tmp_path: Path, flags, level) -> None:
    # the flags after the command, as nnU-Net users write them; plan fails (no dataset) after
    # the callback has configured logging
    result = invoke("plan", tmp_path / "missing", "--home", tmp_path, *flags)
    assert result.exit_code == 2
    assert _console_level() == level
    # the package logger never drops below INFO, so training.log keeps its INFO lines
    assert logging.getLogger("autoseg").getEffectiveLevel() <= logging.INFO


def test_quiet_hides_info_messages_but_not_errors(tmp_path: Path) -> None:
    from tests.synthetic import write_dataset

    dataset = write_dataset(tmp_path / "Task95_Q", n_cases=3, shape_ijk=(16, 20, 12))
    loud = invoke("plan", dataset, "--home", tmp_path / "a", "--workers", "1", "--no-preprocess")
    quiet = invoke(
        "plan", dataset, "--home", tmp_path / "b", "--workers", "1", "--no-preprocess", "-q"
    )
    assert loud.exit_code == 0 and quiet.exit_code == 0, (loud.output, quiet.output)
    assert "fingerprint of 3 cases" in loud.output
    assert "fingerprint of 3 cases" not in quiet.output


def test_progress_bars_are_off_without_a_terminal() -> None:
    from autoseg.terminal import progress_bar, set_progress

    assert progress_bar().disable  # pytest's stderr is not a terminal
    set_progress(True)
    assert progress_bar(enabled=False).disable
