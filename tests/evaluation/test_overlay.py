"""autoseg overlay: PNGs of a few slices per case with a legend (issue 11 item 10)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.evaluation.overlay import pick_slices, save_overlay
from tests.reliability_helpers import assert_clean_failure, cli, tiny_dataset


def test_slices_are_spread_over_the_foreground() -> None:
    labels = np.zeros((20, 4, 4), dtype=np.uint8)
    labels[8:13, 1, 1] = 1
    assert pick_slices([labels], 3) == [9, 10, 11]
    assert pick_slices([np.zeros((5, 2, 2))], 2) == [1, 3]


def test_legend_names_every_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    seen: list[str] = []
    original = matplotlib.figure.Figure.legend

    def spy(self, *args, **kwargs):
        seen.extend(h.get_label() for h in kwargs["handles"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "legend", spy)
    labels = np.zeros((6, 8, 8), dtype=np.uint8)
    labels[2:4, 2:5, 2:5] = 1
    labels[3, 5:7, 5:7] = 2
    out = save_overlay(
        np.random.default_rng(0).normal(size=(6, 8, 8)),
        [("reference", labels), ("prediction", labels)],
        {0: "background", 1: "anterior"},
        tmp_path / "c.png",
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert seen == ["anterior", "2"]  # unnamed values show their number


def test_overlay_command(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task84_Overlay", n_cases=2)
    out = tmp_path / "png"
    args = ("overlay", root / "imagesTr", root / "labelsTr", "-o", out)
    result = cli(*args, "--reference", root / "labelsTr", "-d", root)
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in out.iterdir())
    assert pngs == ["case_000.png", "case_001.png"]
    assert all((out / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # a prediction without its image: refused before any picture
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "other.nii.gz").write_bytes(
        (root / "labelsTr/case_000.nii.gz").read_bytes()
    )
    refused = cli("overlay", root / "imagesTr", tmp_path / "pred", "-o", tmp_path / "png2")
    assert_clean_failure(refused, "other.nii.gz", "no image for case 'other'")
    assert not (tmp_path / "png2").exists()
    assert_clean_failure(
        cli("overlay", root / "imagesTr", root / "labelsTr", "-o", root / "labelsTr"),
        "input folder",
    )
