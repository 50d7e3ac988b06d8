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

from autoseg.checkpoint import load_checkpoint
from autoseg.cli import app
from tests.synthetic_micro import write_micro_dataset

RUNS = {
    # kind: (configuration, planner, train options)
    "png": ("2d", "default", ["--loss", "border_ce", "--augment", "elastic"]),
    "rgb_tiff": ("2d", "attention", ["--loss", "focal", "--augmentation", "cpu"]),
    "tiff3d": ("3d_fullres", "microscopy", ["--loss", "dice_focal", "--augmentation", "device"]),
}


def _read(path):
    if path.suffix == ".png":
        return np.asarray(PILImage.open(path))
    return tifffile.imread(path)


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(RUNS))
def test_plan_train_predict_evaluate(tmp_path, kind: str) -> None:
    config, planner, options = RUNS[kind]
    data = write_micro_dataset(tmp_path / f"cells_{kind}", kind, n_cases=3)
    home = tmp_path / "home"
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, "--home", str(home)] if args[0] != "evaluate" else args)
        assert result.exit_code == 0, result.output
        return result.output

    run("plan", str(data), "--workers", "1", "--planner", planner)
    run(
        "train", data.name, config, "all", "--planner", planner, "--epochs", "1",
        "--iterations", "2", "--val-iterations", "1", "--device", "cpu", "--no-validate",
        *options,
    )  # fmt: skip
    model = home / data.name / "models" / planner / config
    meta = load_checkpoint(model / "fold_all" / "checkpoint_final.pt").meta
    assert meta.loss == options[1]
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
    run("evaluate", str(out), str(data / "labelsTr"), "-o", str(tmp_path / "ev"))
    evaluation = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert len(evaluation["cases"]) == 3
    assert bool(evaluation["object_means"]) == (kind != "tiff3d")  # 2D maps only
