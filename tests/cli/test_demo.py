"""``autoseg demo``: the README's first command, end to end on the shipped Hippocampus cases."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.cli.demo import demo_dataset_path


def _run(home: Path, *extra: str):
    result = CliRunner().invoke(
        app, ["demo", "--home", str(home), "--device", "cpu", *extra], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result


def _check_outputs(home: Path) -> dict:
    work = home / "Hippocampus"
    source = demo_dataset_path()
    for image in sorted((source / "imagesTs").glob("*.nii.gz")):
        pred = nib.load(work / "demo_predictions" / image.name)
        ref = nib.load(image)
        assert pred.shape == ref.shape
        np.testing.assert_allclose(pred.affine, ref.affine)
    png = (work / "demo_overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    return json.loads((work / "demo_evaluation.json").read_text())


def test_demo_data_is_small_and_attributed() -> None:
    source = demo_dataset_path()
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
    assert size < 2_000_000
    assert "CC-BY-SA" in (source / "SOURCE.md").read_text()


def test_demo_runs_end_to_end_on_a_tiny_budget(tmp_path: Path) -> None:
    result = _run(tmp_path, "--epochs", "1", "--iterations", "2")
    for text in ("Dice", "HD95", "demo_overlay.png", "demo_predictions"):
        assert text in result.output
    evaluation = _check_outputs(tmp_path)
    assert len(evaluation["cases"]) == 6


@pytest.mark.slow
def test_demo_with_default_budget_learns_the_hippocampus(tmp_path: Path) -> None:
    _run(tmp_path)
    evaluation = _check_outputs(tmp_path)
    # The demo's budget (2d, 1500 iterations) is meant to reach a mean Dice of 0.8 on these 6
    # cases (docs/benchmarks.md); a broken pipeline (wrong geometry, labels, normalisation,
    # augmentation or learning-rate schedule) stays far below 0.7.
    assert evaluation["mean_dice"] > 0.7, evaluation["mean_dice"]
