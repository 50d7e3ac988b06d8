"""The ignore label in ``evaluate`` without --dataset-json: found beside the references, or a
warning naming --dataset-json when a reference value is never predicted."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from autoseg.evaluation.evaluate import evaluate_folders
from tests.reliability_helpers import cli, save_nifti


def _maps(root: Path, with_dataset_json: bool) -> tuple[Path, Path]:
    """References with labels 1 and 2 (2 = ignore), predictions of label 1 only; the prediction
    is right on label 1 and also puts label 1 inside part of the ignored voxels."""
    rng = np.random.default_rng(0)
    refs, preds = root / "labelsTr", root / "pred"
    for i in range(2):
        ref = np.zeros((12, 10, 8), np.uint8)
        ref[2:6, 2:6, 2:6] = 1
        ref[7:11, 1:9, 1:7] = 2  # sparse annotation: not annotated here
        pred = (ref == 1).astype(np.uint8)
        pred[7:9, 1:9, 1:7] = rng.integers(0, 2, (2, 8, 6))
        save_nifti(ref, refs / f"case_{i}.nii.gz")
        save_nifti(pred, preds / f"case_{i}.nii.gz")
    if with_dataset_json:
        labels = {"background": 0, "a": 1, "ignore": 2}
        meta = {"labels": labels, "channel_names": {"0": "MRI"}, "file_ending": ".nii.gz"}
        (root / "dataset.json").write_text(json.dumps({**meta, "numTraining": 2}))
    return refs, preds


def test_the_ignore_label_of_the_dataset_beside_the_references_is_left_out(
    tmp_path: Path,
) -> None:
    refs, preds = _maps(tmp_path / "Dataset001_Sparse", with_dataset_json=True)
    out = tmp_path / "report"
    result = cli("evaluate", "-r", refs, "-p", preds, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    assert list(report["labels"]) == ["1"]  # the ignore value is no class
    assert report["mean_dice"] == 1.0  # its voxels are not false positives of label 1
    # the same as naming the file
    named = cli("evaluate", "-r", refs, "-p", preds, "--dataset-json", refs.parent)
    assert named.exit_code == 0, named.output


def test_a_reference_value_never_predicted_warns_naming_dataset_json(
    tmp_path: Path, caplog
) -> None:
    refs, preds = _maps(tmp_path / "loose", with_dataset_json=False)
    with caplog.at_level(logging.WARNING, logger="autoseg"):
        evaluation = evaluate_folders(preds, refs)
    assert sorted(evaluation.labels) == [1, 2]  # scored as classes, as asked
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("[2]" in w and "--dataset-json" in w for w in warnings), warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autoseg"):
        evaluate_folders(preds, preds)
    assert not [r for r in caplog.records if "--dataset-json" in r.getMessage()]
