"""`autoseg evaluate` per region for a region-based dataset (issue 11 item 2), and the label-based
report pinned as it was before regions were scored."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.data.plans import Plans
from autoseg.data.regions import Region
from autoseg.errors import AutosegError
from autoseg.evaluation.labels import read_evaluation_labels
from autoseg.evaluation.report import Evaluation

runner = CliRunner()

BRATS_LIKE = {
    "labels": {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3},
    "regions_class_order": [1, 2, 3],
}


def _save(array: np.ndarray, path: Path, spacing=(1.0, 1.0, 1.0)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def _write_json(folder: Path, meta: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def _evaluate(ref: Path, pred: Path, out: Path, dataset_json: Path):
    args = ["evaluate", "-r", str(ref), "-p", str(pred), "-o", str(out)]
    return runner.invoke(app, [*args, "--dataset-json", str(dataset_json), "--workers", "1"])


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def _line_case(tmp_path: Path) -> tuple[Path, Path]:
    """Along X: reference 1 1 2 2 3 0 0 0, prediction 2 2 1 1 3 3 0 0 (on 2x2 rows)."""
    ref = np.array([1, 1, 2, 2, 3, 0, 0, 0])
    pred = np.array([2, 2, 1, 1, 3, 3, 0, 0])
    for folder, line in (("ref", ref), ("pred", pred)):
        _save(np.broadcast_to(line[:, None, None], (8, 2, 2)), tmp_path / folder / "c.nii.gz")
    return tmp_path / "ref", tmp_path / "pred"


def test_region_dice_is_scored_on_the_union_of_values_and_differs_from_label_dice(
    tmp_path: Path,
) -> None:
    ref, pred = _line_case(tmp_path)
    # by hand, voxels per row (4 rows): whole = {1,2,3}: reference x 0-4, prediction x 0-5:
    # TP 5, FP 1, FN 0; core = {2,3}: reference x 2-4, prediction x 0,1,4,5: TP 1, FP 3, FN 2;
    # enhancing = {3}: reference x 4, prediction x 4,5: TP 1, FP 1, FN 0
    expected = {"whole": 10 / 11, "core": 2 / 7, "enhancing": 2 / 3}
    counts = {"whole": (5, 1, 0), "core": (1, 3, 2), "enhancing": (1, 1, 0)}
    result = _evaluate(ref, pred, tmp_path / "out", _write_json(tmp_path / "ds", BRATS_LIKE))
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "out" / "evaluation_cases.csv")
    assert [(r["case"], r["region"], r["name"]) for r in rows] == [
        ("c", "1", "whole"),
        ("c", "2", "core"),
        ("c", "3", "enhancing"),
    ]
    for row in rows:
        assert float(row["dice"]) == pytest.approx(expected[row["name"]])
        tp, fp, fn = counts[row["name"]]
        assert (int(row["tp"]), int(row["fp"]), int(row["fn"])) == (4 * tp, 4 * fp, 4 * fn)
    summary = _rows(tmp_path / "out" / "evaluation_summary.csv")
    assert [r["name"] for r in summary] == ["whole", "core", "enhancing", "all regions"]
    assert float(summary[-1]["dice"]) == pytest.approx(np.mean(list(expected.values())))
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert report["labels"] == {"1": "whole", "2": "core", "3": "enhancing"}
    assert [(r["name"], r["values"]) for r in report["regions"]] == [
        ("whole", [1, 2, 3]),
        ("core", [2, 3]),
        ("enhancing", [3]),
    ]
    evaluation = Evaluation.from_json(tmp_path / "out" / "evaluation.json")
    assert evaluation.regions[1] == Region("core", (2, 3), 2)
    assert evaluation.label_means[1].dice == pytest.approx(10 / 11)

    # the same files scored per label value: labels 1 and 2 are swapped everywhere, so 0
    labels = {"labels": {"background": 0, "edema": 1, "necrosis": 2, "enhancing": 3}}
    result = _evaluate(ref, pred, tmp_path / "o2", _write_json(tmp_path / "ds2", labels))
    assert result.exit_code == 0, result.output
    dice = {r["name"]: float(r["dice"]) for r in _rows(tmp_path / "o2" / "evaluation_cases.csv")}
    assert dice == pytest.approx({"edema": 0.0, "necrosis": 0.0, "enhancing": 2 / 3})
    assert "regions" not in json.loads((tmp_path / "o2" / "evaluation.json").read_text())


def _plans(regions: tuple[Region, ...]) -> Plans:
    from tests.preprocessing.test_preprocess import config

    labels = {0: "background", 1: "label 1", 2: "label 2", 3: "label 3"}
    return Plans("Task98", "default", 8.0, 8, ("MR",), labels, {"3d_fullres": config()}, regions)


def test_a_region_based_model_folder_scores_its_regions(tmp_path: Path) -> None:
    ref, pred = _line_case(tmp_path)
    regions = (Region("whole", (1, 2, 3), 1), Region("core", (2, 3), 2))
    _plans(regions).to_json(tmp_path / "model" / "plans.json")
    assert read_evaluation_labels(tmp_path / "model").regions == regions
    result = _evaluate(ref, pred, tmp_path / "out", tmp_path / "model")
    assert result.exit_code == 0, result.output
    dice = [float(r["dice"]) for r in _rows(tmp_path / "out" / "evaluation_cases.csv")]
    assert dice == pytest.approx([10 / 11, 2 / 7])


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("plans", "region 'core' holds value(s) [4]"),
        ("twice", "region(s) ['whole'] named more than once"),
        ({**BRATS_LIKE, "regions_class_order": [1, 2]}, "2 entries for 3 region(s)"),
        ({"labels": {"background": 0, "a": [0, 1]}, "regions_class_order": [1]}, "background"),
        ({"labels": {"background": 0, "a": [1, "x"]}, "regions_class_order": [1]}, "integer"),
    ],
    ids=["value-not-a-label", "name-twice", "order", "background", "not-integer"],
)
def test_bad_regions_are_a_clear_error_naming_the_file(tmp_path: Path, source, message) -> None:
    ref, pred = _line_case(tmp_path)
    if source == "plans":
        regions = (Region("whole", (1, 2, 3), 1), Region("core", (2, 4), 2))
    elif source == "twice":
        regions = (Region("whole", (1, 2, 3), 1), Region("whole", (2, 3), 2))
    if isinstance(source, str):
        _plans(regions).to_json(tmp_path / "bad" / "plans.json")
        named = tmp_path / "bad" / "plans.json"
    else:
        named = _write_json(tmp_path / "bad", source) / "dataset.json"
    result = _evaluate(ref, pred, tmp_path / "out", tmp_path / "bad")
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert str(named) in flat and message in flat and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


# What `autoseg evaluate` wrote for a label-based dataset before regions were scored (the
# command line aside): regions must leave it exactly as it was.
PINNED_CASES_CSV = """\
case,label,name,dice,iou,precision,recall,hd95,nsd,tp,fp,fn,n_pred,n_ref
case,1,left,0.8,0.6666666666666666,1.0,0.6666666666666666,1.0,1.0,12,0,6,12,18
case,2,right,0.5,0.3333333333333333,0.5,0.5,3.0413812651491097,0.75,6,6,6,12,12
"""
PINNED_SUMMARY_CSV = """\
label,name,cases,dice,iou,precision,recall,hd95,nsd
1,left,1,0.8,0.6666666666666666,1.0,0.6666666666666666,1.0,1.0
2,right,1,0.5,0.3333333333333333,0.5,0.5,3.0413812651491097,0.75
mean,all labels,1,0.65,0.5,0.75,0.5833333333333333,2.0206906325745546,0.875
"""
_LEFT = {"dice": 0.8, "iou": 0.6666666666666666, "precision": 1.0}
_LEFT |= {"recall": 0.6666666666666666, "hd95": 1.0, "nsd": 1.0}
_RIGHT = {"dice": 0.5, "iou": 0.3333333333333333, "precision": 0.5}
_RIGHT |= {"recall": 0.5, "hd95": 3.0413812651491097, "nsd": 0.75}
PINNED_JSON = {
    "cases": [
        {
            "case_id": "case",
            "metrics": {
                "1": {**_LEFT, "tp": 12, "fp": 0, "fn": 6, "n_pred": 12, "n_ref": 18},
                "2": {**_RIGHT, "tp": 6, "fp": 6, "fn": 6, "n_pred": 12, "n_ref": 12},
            },
            "objects": {},
        }
    ],
    "label_means": {"1": _LEFT, "2": _RIGHT},
    "labels": {"1": "left", "2": "right"},
    "mean_dice": 0.65,
    "metrics": "monai",
    "nsd_tolerance_mm": 1.0,
    "object_means": {},
}


def test_a_label_based_report_is_byte_for_byte_as_before(tmp_path: Path) -> None:
    ref = np.zeros((6, 5, 4), np.uint8)
    ref[1:4, 1:4, 1:3] = 1
    ref[4:6, 2:5, 1:3] = 2
    pred = ref.copy()
    pred[1, 1:4, 1:3] = 2
    pred[5, 2:5, 1:3] = 0
    _save(ref, tmp_path / "ref" / "case.nii.gz", (1.0, 0.5, 2.0))
    _save(pred, tmp_path / "pred" / "case.nii.gz", (1.0, 0.5, 2.0))
    labels = {"labels": {"background": 0, "left": 1, "right": 2}}
    out = tmp_path / "out"
    result = _evaluate(
        tmp_path / "ref", tmp_path / "pred", out, _write_json(tmp_path / "d", labels)
    )
    assert result.exit_code == 0, result.output
    assert (out / "evaluation_cases.csv").read_text() == PINNED_CASES_CSV
    assert (out / "evaluation_summary.csv").read_text() == PINNED_SUMMARY_CSV
    text = (out / "evaluation.json").read_text()
    command = json.loads(text)["command"]
    assert text == json.dumps({**PINNED_JSON, "command": command}, indent=2, sort_keys=True) + "\n"


def test_a_dataset_json_with_a_byte_order_mark_gives_its_regions(tmp_path: Path) -> None:
    """Editors on Windows may save dataset.json with a UTF-8 byte order mark."""
    (tmp_path / "dataset.json").write_text("\ufeff" + json.dumps(BRATS_LIKE), encoding="utf-8")
    read = read_evaluation_labels(tmp_path)
    assert [(r.name, r.values, r.value) for r in read.regions] == [
        ("whole", (1, 2, 3), 1),
        ("core", (2, 3), 2),
        ("enhancing", (3,), 3),
    ]


def test_plans_with_an_empty_region_say_it_holds_none(tmp_path: Path) -> None:
    regions = (Region("whole", (1, 2, 3), 1), Region("nothing", (), 2))
    _plans(regions).to_json(tmp_path / "plans.json")
    with pytest.raises(AutosegError) as info:
        read_evaluation_labels(tmp_path / "plans.json")
    assert str(info.value) == (
        f"{tmp_path / 'plans.json'}: region 'nothing' holds value(s) none that are not "
        "foreground labels of this file ([1, 2, 3])"
    )
