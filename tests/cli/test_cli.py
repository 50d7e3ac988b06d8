"""The command line through typer's CliRunner: the whole pipeline on a tiny dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg.cli.commands import app
from tests.synthetic import write_dataset

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_is_instant_and_does_not_import_torch() -> None:
    code = "import sys, autoseg.cli.commands; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("plan", "train", "predict", "evaluate", "find-best", "demo"):
        assert command in result.output


def test_home_from_environment_variable(tmp_path: Path, monkeypatch) -> None:
    dataset = write_dataset(tmp_path / "Task97_Env", n_cases=3, shape_ijk=(16, 20, 12))
    monkeypatch.setenv("AUTOSEG_HOME", str(tmp_path / "envhome"))
    result = invoke("plan", dataset, "--workers", "1", "--no-preprocess")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "envhome" / "Task97_Env" / "plans.json").is_file()
    assert not (tmp_path / "envhome" / "Task97_Env" / "preprocessed").exists()


def test_unknown_planner_is_a_clear_error(tmp_path: Path) -> None:
    dataset = write_dataset(tmp_path / "Task96_P", n_cases=3, shape_ijk=(16, 20, 12))
    result = invoke("plan", dataset, "--home", tmp_path / "h", "--planner", "nope")
    assert result.exit_code == 2
    assert "nope" in result.output and "default" in result.output
    assert not (tmp_path / "h").exists()


def test_predict_without_any_model_says_so(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    result = invoke(
        "predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "--home", tmp_path / "empty"
    )
    assert result.exit_code == 2
    assert "no trained model" in result.output


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_plan_train_predict_evaluate_find_best(tmp_path: Path, layout: str) -> None:
    channels = 1 if layout == "msd" else 2
    dataset = write_dataset(
        tmp_path / f"Task95_{layout}",
        layout=layout,
        n_cases=5,
        shape_ijk=(20, 24, 16),
        channels=channels,
    )
    home = tmp_path / "home"
    result = invoke("plan", dataset, "--home", home, "--workers", "1", "--gpu-memory", "4")
    assert result.exit_code == 0, result.output
    plans = json.loads((home / dataset.name / "plans.json").read_text())
    assert plans["gpu_memory_gb"] == 4.0
    assert {"2d", "3d_fullres"} <= set(plans["configurations"])

    result = invoke(
        "train",
        dataset.name,
        "3d_fullres",
        "fold0",
        "--home",
        home,
        "--epochs",
        "2",
        "--iterations",
        "2",
        "--val-iterations",
        "1",
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    fold = home / dataset.name / "models" / "default" / "3d_fullres" / "fold_0"
    assert (fold / "checkpoint_final.pt").is_file() and (fold / "summary.json").is_file()

    # predict new cases: the only trained model is found without -d/-c/-f
    new = write_dataset(
        tmp_path / "new",
        layout=layout,
        n_cases=2,
        shape_ijk=(18, 22, 14),
        channels=channels,
        seed=7,
    )
    out = tmp_path / "pred"
    result = invoke("predict", "-i", new / "imagesTr", "-o", out, "--home", home, "--no-tta")
    assert result.exit_code == 0, result.output
    for case in ("case_000", "case_001"):
        src = nib.load(new / "labelsTr" / f"{case}.nii.gz")
        pred = nib.load(out / f"{case}.nii.gz")
        assert pred.shape == src.shape
        np.testing.assert_allclose(pred.affine, src.affine)
        assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1, 2}

    # a second run does not overwrite silently
    result = invoke("predict", "-i", new / "imagesTr", "-o", out, "--home", home, "--no-tta")
    assert result.exit_code == 0 and "skipped" in result.output

    report = tmp_path / "report"
    result = invoke("evaluate", "-p", out, "-r", new / "labelsTr", "-o", report)
    assert result.exit_code == 0, result.output
    assert "Dice" in result.output and "HD95" in result.output
    assert (report / "evaluation.json").is_file() and (report / "evaluation_cases.csv").is_file()

    result = invoke("find-best", dataset.name, "--home", home)
    assert result.exit_code == 0, result.output
    assert "3d_fullres" in result.output and "autoseg predict" in result.output
