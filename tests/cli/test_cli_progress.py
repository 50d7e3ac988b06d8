"""The README's progress claims in a log: plan, train and predict write progress lines when their
output is not a terminal, and the plan table is as wide as its content."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

import autoseg.device as device
from autoseg.terminal import DEFAULT_INTERVAL, set_progress_interval
from tests.reliability_helpers import cli, shrink_network
from tests.synthetic import write_dataset

LONG_NAME = "Task91_" + "AbdominalComputedTomographyWithSeveralOrgans" * 2


@pytest.fixture(autouse=True)
def _default_interval():
    yield
    set_progress_interval(DEFAULT_INTERVAL)  # the CLI sets it for the process


def test_plan_train_predict_write_progress_lines_off_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.setenv("AUTOSEG_PROGRESS_INTERVAL", "0")  # a line at every step
    # CT-like spacings make a plan table wider than 80 columns (spacing 2.66667x0.78125x...)
    spacing = (0.8203125, 0.78125, 2.6666667)
    dataset = write_dataset(
        tmp_path / LONG_NAME, n_cases=3, shape_ijk=(24, 24, 8), spacing_ijk=spacing
    )
    home = tmp_path / "home"
    result = cli("plan", dataset, "--home", home, "--workers", "1")
    assert result.exit_code == 0, result.output
    out = result.output
    assert re.search(rf"INFO plan: fingerprint {LONG_NAME} 3/3 \(100%\), .*, 0s left", out)
    assert re.search(r"INFO plan: preprocess 3d_\S+ 3/3 \(100%\), .*, 0s left", out)
    # the table keeps its width: no column is squeezed, no cell wrapped at 80 columns
    rows = [line for line in out.splitlines() if "3d_fullres" in line and "2.66667x0.78125" in line]
    assert len(rows) == 1 and len(rows[0]) > 80, out
    assert any("configuration" in line and "est. GB" in line for line in out.splitlines())

    shrink_network(home / LONG_NAME / "plans.json")
    monkeypatch.delenv("AUTOSEG_PROGRESS_INTERVAL")
    train = ("train", LONG_NAME, "3d_fullres", "all", "--home", home, "--device", "cpu")
    budget = ("--epochs", "1", "--iterations", "3", "--val-iterations", "2", "--no-validate")
    # a busy machine: 2 CPUs, 3 other runnable tasks -> one torch thread (autoseg.device)
    stat = tmp_path / "stat"
    stat.write_text("procs_running 4\n")
    monkeypatch.setattr(device, "_PROC_STAT", stat)
    monkeypatch.setattr(device, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = cli("--progress-interval", "0", *train, *budget)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    log = (home / LONG_NAME / "models/default/3d_fullres/fold_all/training.log").read_text()
    for done in ("1/3", "2/3", "3/3"):
        assert re.search(rf"train: epoch 1/1 train {done} \(\d+%\), .* left", log), log
    assert re.search(r"train: epoch 1/1 validation 2/2 \(100%\)", log)
    assert log.index("train 1/3") < log.index("train 3/3") < log.index("epoch 0:")
    assert "CPU threads: 1 of 2" in log

    monkeypatch.setenv("AUTOSEG_PROGRESS_INTERVAL", "0")
    images = dataset / "imagesTr"
    result = cli("predict", "-i", images, "-o", tmp_path / "pred", "--home", home, "--no-tta")
    assert result.exit_code == 0, result.output
    tiles = re.findall(r"predict: cases (\d)/3 .*; (case_00\d) tiles (\d+)/(\d+)", result.output)
    assert {case for _, case, _, _ in tiles} == {"case_000", "case_001", "case_002"}
    assert all(done == total for _, _, done, total in tiles[-1:])
    assert re.search(r"predict: cases 3/3 \(100%\)", result.output)


def test_quiet_keeps_progress_lines_out_of_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOSEG_PROGRESS_INTERVAL", "0")
    dataset = write_dataset(tmp_path / "Task90_Q", n_cases=3, shape_ijk=(16, 20, 12))
    result = cli("-q", "plan", dataset, "--home", tmp_path / "h", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert "fingerprint" not in result.output and "plan:" not in result.output
