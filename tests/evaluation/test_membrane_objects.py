"""EM membranes (ISBI 2012): with ``--objects background`` the objects are the cells between the
membranes; the Rand error is checked against scikit-image and against a hand-written formula."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autoseg.errors import AutosegError
from autoseg.evaluation.instances import semantic_to_instances
from autoseg.evaluation.metrics_microscopy import label_object_metrics
from tests.reliability_helpers import cli, load_nifti, save_nifti

skimage_metrics = pytest.importorskip("skimage.metrics")
MEMBRANE = 1


def membranes(cuts_y: list[int], cuts_x: list[int], size: int = 48) -> np.ndarray:
    """A (Y, X) map: membrane lines (1) at the given rows and columns, cells (0) between."""
    labels = np.zeros((size, size), np.uint8)
    labels[cuts_y, :] = MEMBRANE
    labels[:, cuts_x] = MEMBRANE
    return labels


REF = membranes([12, 24, 36], [16, 32])  # 4 x 3 = 12 cells
PRED = membranes([12, 36], [16, 32])  # row 24 missed: 3 pairs of cells merged
PRED[5, 16:33] = MEMBRANE  # and one cell split in two
PRED[:, 40] = MEMBRANE  # and a whole column of cells split


def adapted_rand_by_hand(true: np.ndarray, test: np.ndarray) -> float:
    """1 - F-score of the pairs of pixels, over the pixels inside objects of ``true``."""
    inside = true > 0
    t, s = true[inside].astype(np.int64), test[inside].astype(np.int64)
    n = t.size
    _, joint = np.unique(t * (s.max() + 1) + s, return_counts=True)
    pairs_both = float((joint.astype(np.float64) ** 2).sum() - n)
    pairs_true = float((np.bincount(t).astype(np.float64) ** 2).sum() - n)
    pairs_test = float((np.bincount(s).astype(np.float64) ** 2).sum() - n)
    precision, recall = pairs_both / pairs_test, pairs_both / pairs_true
    return 1 - 2 * precision * recall / (precision + recall)


def test_background_objects_are_the_cells_and_the_rand_error_is_skimages() -> None:
    cells_ref, n_ref = ndimage.label(REF == 0)
    cells_pred, n_pred = ndimage.label(PRED == 0)
    assert (n_ref, n_pred) == (12, 13)
    expected = skimage_metrics.adapted_rand_error(cells_ref, cells_pred)[0]
    assert expected == pytest.approx(adapted_rand_by_hand(cells_ref, cells_pred), abs=1e-12)
    cells = label_object_metrics(PRED, REF, [MEMBRANE], objects="background")[MEMBRANE]
    assert cells.rand_error == pytest.approx(expected, abs=1e-12)
    assert (cells.n_ref_objects, cells.n_pred_objects) == (12, 13)
    # the default reading scores the membrane network itself: one connected object each
    lines = label_object_metrics(PRED, REF, [MEMBRANE])[MEMBRANE]
    assert (lines.n_ref_objects, lines.n_pred_objects) == (1, 1)
    assert lines.rand_error != pytest.approx(cells.rand_error)
    assert lines.pixel_error == cells.pixel_error


def test_evaluate_and_instances_take_objects_background(tmp_path: Path) -> None:
    for folder, labels in (("ref", REF), ("pred", PRED)):
        save_nifti(labels.T[:, :, None], tmp_path / folder / "slice_00.nii.gz")  # (X, Y, 1)
    out = tmp_path / "report"
    result = cli("evaluate", "-r", tmp_path / "ref", "-p", tmp_path / "pred", "-o", out,
                 "--objects", "background")  # fmt: skip
    assert result.exit_code == 0, result.output
    means = json.loads((out / "evaluation.json").read_text())["object_means"]["1"]
    cells_ref, _ = ndimage.label(REF == 0)
    cells_pred, _ = ndimage.label(PRED == 0)
    expected = skimage_metrics.adapted_rand_error(cells_ref, cells_pred)[0]
    assert means["rand_error"] == pytest.approx(expected, abs=1e-9)

    made = cli("instances", tmp_path / "pred", tmp_path / "cells", "--objects", "background")
    assert made.exit_code == 0, made.output
    cells = load_nifti(tmp_path / "cells" / "slice_00.nii.gz")[:, :, 0].T
    assert cells.max() == 13 and not cells[PRED == MEMBRANE].any()
    refused = cli("evaluate", "-r", tmp_path / "ref", "-p", tmp_path / "pred", "--objects", "x")
    assert refused.exit_code == 2 and "--objects x" in refused.output


def test_background_objects_refuse_a_border_label() -> None:
    with pytest.raises(AutosegError, match="border"):
        semantic_to_instances(PRED, border_label=2, objects="background")
