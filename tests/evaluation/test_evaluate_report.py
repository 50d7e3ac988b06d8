"""evaluate's report: label names from a dataset.json, JSON + CSV per case and summary, the
command line in the JSON (through typer's CliRunner)."""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.data.dataset_json import read_label_names
from autoseg.errors import DatasetError

runner = CliRunner()
AFFINE = np.diag([1.0, 0.9, 2.5, 1.0])  # (i, j, k) spacing; Z (k) is the thick axis


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), AFFINE), str(path))


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    ref = np.zeros((12, 10, 6), np.uint8)
    ref[2:7, 2:6, 1:4] = 1
    ref[7:10, 3:8, 2:5] = 2
    preds, refs = tmp_path / "pred", tmp_path / "ref"
    for i, case in enumerate(("a", "b")):
        pred = ref.copy()
        pred[2 : 3 + i, 2:6, 1:4] = 0  # a different miss per case
        _save(pred, preds / f"{case}.nii.gz")
        _save(ref, refs / f"{case}.nii.gz")
    return preds, refs


@pytest.mark.parametrize(
    "labels",
    [
        {"0": "background", "1": "Anterior", "2": "Posterior", "3": "Tail"},  # MSD
        {"background": 0, "Anterior": 1, "Posterior": 2, "Tail": 3},  # nnU-Net v2
    ],
)
def test_report_names_labels_and_holds_cases_summary_and_command(tmp_path: Path, labels) -> None:
    preds, refs = _folders(tmp_path)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps({"labels": labels}))
    out = tmp_path / "report"
    args = [
        "evaluate",
        "-r",
        str(refs),
        "-p",
        str(preds),
        "-o",
        str(out),
        "--dataset-json",
        str(tmp_path / "ds"),
    ]
    result = runner.invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "Anterior" in result.output  # the table names the labels

    report = json.loads((out / "evaluation.json").read_text())
    assert shlex.split(report["command"]) == ["autoseg", *args, "--workers", "1"]
    assert report["labels"] == {"1": "Anterior", "2": "Posterior", "3": "Tail"}
    assert [c["case_id"] for c in report["cases"]] == ["a", "b"]
    assert report["metrics"] == "monai"
    # label 3 is in neither file: scored as a correct "nothing" (1.0), not skipped
    assert report["label_means"]["3"]["dice"] == 1.0
    dice_1 = [c["metrics"]["1"]["dice"] for c in report["cases"]]
    assert dice_1[0] != dice_1[1] and report["label_means"]["1"]["dice"] == pytest.approx(
        np.mean(dice_1)
    )

    with open(out / "evaluation_cases.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["case"], r["name"]) for r in rows[:3]] == [
        ("a", "Anterior"),
        ("a", "Posterior"),
        ("a", "Tail"),
    ]
    assert len(rows) == 2 * 3
    assert float(rows[0]["dice"]) == pytest.approx(dice_1[0])

    with open(out / "evaluation_summary.csv") as fh:
        summary = list(csv.DictReader(fh))
    assert [r["name"] for r in summary] == ["Anterior", "Posterior", "Tail", "all labels"]
    assert float(summary[0]["dice"]) == pytest.approx(np.mean(dice_1))
    means = [float(r["dice"]) for r in summary[:3]]
    assert float(summary[-1]["dice"]) == pytest.approx(np.mean(means))
    assert float(summary[-1]["dice"]) == pytest.approx(report["mean_dice"])


def test_without_dataset_json_labels_are_named_by_value(tmp_path: Path) -> None:
    preds, refs = _folders(tmp_path)
    result = runner.invoke(
        app, ["evaluate", "-r", str(refs), "-p", str(preds), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert report["labels"] == {"1": "1", "2": "2"}


def test_a_bad_dataset_json_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    preds, refs = _folders(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"labels": {"background": 0, "x": [1, 2]}}))
    out = tmp_path / "o"
    result = runner.invoke(
        app, ["evaluate", "-r", refs, "-p", preds, "-o", out, "--dataset-json", bad]
    )
    assert result.exit_code == 2
    assert str(bad) in result.output and "region-based" in result.output
    assert not out.exists()


def test_read_label_names_from_a_model_folder(tmp_path: Path) -> None:
    from autoseg.data.plans import Plans
    from tests.preprocessing.test_preprocess import config

    labels = {0: "background", 1: "liver"}
    plans = Plans("Task99", "default", 8.0, 8, ("CT",), labels, {"3d_fullres": config()})
    (tmp_path / "model").mkdir()
    plans.to_json(tmp_path / "model" / "plans.json")
    assert read_label_names(tmp_path / "model") == {0: "background", 1: "liver"}
    with pytest.raises(DatasetError, match="dataset.json not found"):
        read_label_names(tmp_path / "nowhere")


def test_an_evaluation_written_before_the_monai_definitions_says_so(tmp_path: Path) -> None:
    from autoseg.evaluation.report import Evaluation

    preds, refs = _folders(tmp_path)
    result = runner.invoke(
        app, ["evaluate", "-r", str(refs), "-p", str(preds), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    del record["metrics"], record["command"]  # as an older autoseg wrote it
    (tmp_path / "old.json").write_text(json.dumps(record))
    old = Evaluation.from_json(tmp_path / "old.json")
    assert old.metrics == "" and old.command == ""
    assert Evaluation.from_json(tmp_path / "o" / "evaluation.json").metrics == "monai"
