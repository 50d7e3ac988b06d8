"""2D microscopy from the CLI: plan -> train -> predict -> evaluate on PNG, RGB TIFF, 3D TIFF.

Each run trains a couple of iterations only: it checks that the formats, the losses, the
planners and the augmentation options work together and that the outputs are files of the
input's format and size, not that the model is good.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.data.checkpoint import load_checkpoint
from tests.synthetic_micro import write_micro_dataset

RUNS = {
    # kind: (configuration, planner, fold, train options); fold 0 also validates at the end
    "png": ("2d", "default", "all", ["--loss", "border_ce", "--augment", "elastic"]),
    "rgb_tiff": ("2d", "attention", "all", ["--loss", "focal", "--augmentation", "cpu"]),
    "tiff3d": (
        "3d_fullres",
        "microscopy",
        "0",
        ["--loss", "dice_focal", "--augmentation", "device"],
    ),
}


def _read(path):
    if path.suffix == ".png":
        return np.asarray(PILImage.open(path))
    return tifffile.imread(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RUNS))
def test_plan_train_predict_evaluate(tmp_path, kind: str) -> None:
    config, planner, fold, options = RUNS[kind]
    data = write_micro_dataset(tmp_path / f"cells_{kind}", kind, n_cases=3 if fold == "all" else 5)
    home = tmp_path / "home"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, "--home", str(home)] if args[0] != "evaluate" else args)
        assert result.exit_code == 0, result.output
        return result.output

    run("plan", str(data), "--workers", "1", "--planner", planner)
    validate = "--validate" if fold != "all" else "--no-validate"
    run(
        "train", data.name, config, fold, "--planner", planner, "--epochs", "1",
        "--iterations", "2", "--val-iterations", "1", "--device", "cpu", validate, *options,
    )  # fmt: skip
    model = home / data.name / "models" / planner / config
    meta = load_checkpoint(model / f"fold_{fold}" / "checkpoint_final.pt").meta
    assert meta.loss == options[1]
    if fold != "all":  # the validation cases were predicted and scored (sidecars linked)
        summary = json.loads((model / f"fold_{fold}" / "summary.json").read_text())
        assert len(summary["cases"]) == 1
    out = tmp_path / "predictions"
    run("predict", "-i", str(data / "imagesTr"), "-o", str(out), "-m", str(model),
        "--device", "cpu", "--no-tta")  # fmt: skip
    ending = ".png" if kind == "png" else ".tif"
    for label in sorted((data / "labelsTr").glob(f"*{ending}")):
        predicted = out / label.name
        assert predicted.is_file()
        assert _read(predicted).shape == _read(label).shape  # the input's size, 2D stays 2D
    if kind == "tiff3d":
        spacing = json.loads((out / "cell_000.json").read_text())["spacing"]
        assert spacing == [2.0, 0.5, 0.5]
    run("evaluate", "-r", str(data / "labelsTr"), "-p", str(out), "-o", str(tmp_path / "ev"))
    evaluation = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert len(evaluation["cases"]) == (3 if fold == "all" else 5)
    assert bool(evaluation["object_means"]) == (kind != "tiff3d")  # 2D maps only
