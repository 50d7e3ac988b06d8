"""Instances from semantic output: components, the border class as separator, the command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.errors import AutosegError
from autoseg.evaluation.instances import instances_folder, semantic_to_instances


def two_cells_with_border() -> np.ndarray:
    """Two 6x6 cells (1) side by side, separated by a one-pixel border class (2)."""
    labels = np.zeros((10, 16), np.uint8)
    labels[2:8, 1:7] = 1
    labels[2:8, 7] = 2
    labels[2:8, 8:14] = 1
    return labels


def test_the_border_class_separates_touching_cells_and_is_given_back() -> None:
    labels = two_cells_with_border()
    instances = semantic_to_instances(labels, border_label=2)
    assert instances.max() == 2
    assert len(np.unique(instances[2:8, 1:7])) == 1 and len(np.unique(instances[2:8, 8:14])) == 1
    assert instances[4, 3] != instances[4, 10]
    assert np.count_nonzero(instances) == np.count_nonzero(labels)  # border pixels joined
    assert set(np.unique(instances[2:8, 7])) <= {instances[4, 3], instances[4, 10]}


def test_without_a_border_label_touching_cells_merge() -> None:
    assert semantic_to_instances(two_cells_with_border()).max() == 1


def test_small_components_are_dropped_and_numbers_stay_consecutive() -> None:
    labels = np.zeros((1, 12, 12), np.uint8)  # a 2D case as (Z, Y, X)
    labels[0, 0:2, 0:2] = 1  # 4 px
    labels[0, 5:9, 5:9] = 1  # 16 px
    labels[0, 0:3, 9:12] = 1  # 9 px
    instances = semantic_to_instances(labels, min_size=5)
    assert sorted(np.unique(instances).tolist()) == [0, 1, 2]
    assert instances[0, 0, 0] == 0 and instances.dtype == np.int32


def test_folder_of_pngs_gets_pngs_of_the_same_size(tmp_path) -> None:
    (tmp_path / "pred").mkdir()
    PILImage.fromarray(two_cells_with_border()).save(tmp_path / "pred" / "c.png")
    report = instances_folder(tmp_path / "pred", tmp_path / "inst", border_label=2)
    assert report.objects == {"c.png": 2}
    written = np.asarray(PILImage.open(tmp_path / "inst" / "c.png"))
    assert written.shape == (10, 16) and written.max() == 2
    again = instances_folder(tmp_path / "pred", tmp_path / "inst", border_label=2)
    assert again.skipped and not again.written
    with pytest.raises(AutosegError, match="c.png"):
        instances_folder(tmp_path / "pred", tmp_path / "pred", overwrite=True)
    assert np.array_equal(
        np.asarray(PILImage.open(tmp_path / "pred" / "c.png")), two_cells_with_border()
    )


def test_instances_command(tmp_path) -> None:
    (tmp_path / "pred").mkdir()
    PILImage.fromarray(two_cells_with_border()).save(tmp_path / "pred" / "c.png")
    runner = CliRunner()
    ok = runner.invoke(app, ["instances", str(tmp_path / "pred"), str(tmp_path / "out"),
                             "--border-label", "2"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "2 objects" in ok.output
    bad = runner.invoke(app, ["instances", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert bad.exit_code == 2 and "folder not found" in bad.output
