"""The microscopy options of ``autoseg train`` refuse bad values with one clear message."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.preprocessing.weightmap import ensure_weight_maps
from tests.synthetic_micro import write_micro_dataset


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    data = write_micro_dataset(root / "cells", "png", n_cases=2)
    home = root / "home"
    args = ["plan", str(data), "--home", str(home), "--workers", "1", "--border-weights"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return home


def test_plan_can_compute_the_border_weight_maps(planned) -> None:
    (folder,) = (planned / "cells" / "preprocessed").iterdir()
    assert sorted(p.name for p in folder.glob("*.wmap.json")) == [
        "cell_000.wmap.json",
        "cell_001.wmap.json",
    ]
    assert ensure_weight_maps(folder, ["cell_000", "cell_001"]) == 0  # current: training reuses


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--loss", "tversky"],
            "unknown loss function 'tversky'; available loss functions: border_ce, dice_ce",
        ),
        (["--augment", "warp"], "unknown augmentation(s) warp; available: elastic"),
        (["--loss", "border_ce", "--augmentation", "device"], "needs the CPU augmentation"),
    ],
)
def test_bad_training_options_exit_2_before_training(planned, options, message) -> None:
    args = ["train", "cells", "2d", "all", "--home", str(planned), "--device", "cpu", *options]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not (planned / "cells" / "models").exists()  # nothing written
