"""load_dataset: both layouts as users have them, and every structural problem reported at once."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from autoseg.data.dataset import load_dataset
from autoseg.errors import AutosegError, DatasetError
from autoseg.planning.fingerprint import compute_fingerprint
from tests.synthetic import write_dataset


def _meta(root: Path) -> dict:
    return json.loads((root / "dataset.json").read_text())


def _write_meta(root: Path, meta: dict) -> None:
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))


def _problems(root: Path) -> list[tuple[str, str]]:
    with pytest.raises(DatasetError) as info:
        load_dataset(root)
    return [(p.path, p.message) for p in info.value.problems]


def _only(root: Path) -> tuple[str, str]:
    problems = _problems(root)
    assert len(problems) == 1, problems
    return problems[0]


# --- layouts that load --------------------------------------------------------------------------


def test_msd_layout_loads(msd_dataset: Path) -> None:
    spec = load_dataset(msd_dataset)
    assert spec.layout == "msd"
    assert spec.name == "Task99_Synthetic"
    assert spec.root == msd_dataset.resolve() and spec.root.is_absolute()
    assert spec.channels == ("MRI",)
    assert spec.labels == {0: "background", 1: "anterior", 2: "posterior"}
    assert [c.case_id for c in spec.cases] == ["case_000", "case_001", "case_002"]
    assert spec.cases[1].images == (msd_dataset / "imagesTr" / "case_001.nii.gz",)
    assert spec.cases[1].label == msd_dataset / "labelsTr" / "case_001.nii.gz"
    assert spec.file_ending == ".nii.gz"


def test_nnunet_layout_loads(nnunet_dataset: Path) -> None:
    spec = load_dataset(nnunet_dataset)
    assert spec.layout == "nnunet"
    assert spec.channels == ("MRI", "MRI1")
    assert spec.labels == {0: "background", 1: "anterior", 2: "posterior"}
    assert [c.case_id for c in spec.cases] == ["case_000", "case_001", "case_002"]
    images = nnunet_dataset / "imagesTr"
    assert spec.cases[0].images == (
        images / "case_000_0000.nii.gz",
        images / "case_000_0001.nii.gz",
    )
    assert spec.cases[0].label == nnunet_dataset / "labelsTr" / "case_000.nii.gz"


def test_msd_4d_multichannel_loads_with_two_channels(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "Task05", layout="msd", channels=2, n_cases=2)
    spec = load_dataset(root)
    assert spec.channels == ("MRI", "MRI1")
    assert all(len(c.images) == 1 for c in spec.cases)


def test_cases_sorted_by_id_whatever_the_json_order(msd_dataset: Path) -> None:
    meta = _meta(msd_dataset)
    meta["training"].reverse()
    _write_meta(msd_dataset, meta)
    assert [c.case_id for c in load_dataset(msd_dataset).cases] == [
        "case_000",
        "case_001",
        "case_002",
    ]


def test_stray_files_ignored_with_warning(
    nnunet_dataset: Path, msd_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for root in (nnunet_dataset, msd_dataset):
        for folder in ("imagesTr", "labelsTr"):
            d = root / folder
            for name in (".DS_Store", "Thumbs.db", "README.txt", "._case_000.nii.gz"):
                (d / name).write_bytes(b"junk")
            (d / "subfolder").mkdir()
    with caplog.at_level(logging.WARNING, logger="autoseg.data.dataset"):
        assert len(load_dataset(nnunet_dataset).cases) == 3
        assert len(load_dataset(msd_dataset).cases) == 3
    text = caplog.text
    for name in (".DS_Store", "Thumbs.db", "README.txt", "._case_000.nii.gz"):
        assert name in text


def test_spaces_and_unicode_in_names(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "Dataset 042 Früh", layout="nnunet", channels=2, n_cases=2)
    new_id = "patient é 01"
    for c in range(2):
        (root / "imagesTr" / f"case_001_{c:04d}.nii.gz").rename(
            root / "imagesTr" / f"{new_id}_{c:04d}.nii.gz"
        )
    (root / "labelsTr" / "case_001.nii.gz").rename(root / "labelsTr" / f"{new_id}.nii.gz")
    spec = load_dataset(root)
    assert spec.name == "Dataset 042 Früh"
    assert [c.case_id for c in spec.cases] == ["case_000", new_id]

    msd = write_dataset(tmp_path / "Task 07 Ü", layout="msd", n_cases=2)
    (msd / "imagesTr" / "case_001.nii.gz").rename(msd / "imagesTr" / "Ärger 1.nii.gz")
    meta = _meta(msd)
    meta["training"][1]["image"] = "./imagesTr/Ärger 1.nii.gz"
    _write_meta(msd, meta)
    spec = load_dataset(msd)
    assert [c.case_id for c in spec.cases] == ["case_000", "Ärger 1"]
    assert [c.case_id for c in compute_fingerprint(spec).cases] == ["case_000", "Ärger 1"]


# --- dataset.json problems ----------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    path, message = _only(tmp_path / "nope")
    assert path.endswith("nope") and "does not exist" in message


def test_missing_dataset_json(msd_dataset: Path) -> None:
    (msd_dataset / "dataset.json").unlink()
    path, message = _only(msd_dataset)
    assert path.endswith("dataset.json") and "not found" in message


def test_invalid_json_says_where(msd_dataset: Path) -> None:
    (msd_dataset / "dataset.json").write_text('{\n  "labels": {"0": "background"},\n  "x": ,\n}')
    path, message = _only(msd_dataset)
    assert path.endswith("dataset.json")
    assert "invalid JSON at line 3, column 8" in message


def test_layout_unknown(msd_dataset: Path) -> None:
    _write_meta(msd_dataset, {"name": "x"})
    assert "cannot tell the layout" in _only(msd_dataset)[1]


@pytest.mark.parametrize(
    ("layout", "key", "value", "expected"),
    [
        ("msd", "training", None, "missing key 'training'"),
        ("msd", "training", {"a": 1}, "'training' must be a list"),
        ("msd", "labels", None, "missing key 'labels'"),
        ("msd", "labels", ["background"], "'labels' must be a non-empty object"),
        ("msd", "modality", {"0": 3}, "'modality': entry '0': 3 must map an index to a name"),
        ("msd", "modality", {"1": "MRI"}, "'modality' indices must be 0..0"),
        ("msd", "numTraining", "three", "'numTraining' must be an integer"),
        ("nnunet", "file_ending", None, "missing key 'file_ending'"),
        ("nnunet", "file_ending", ".jpg", "'file_ending' '.jpg'"),
        ("nnunet", "labels", {"background": "0", "a": 1}, "entries ['background'] must map"),
        ("nnunet", "channel_names", [], "'channel_names' must be a non-empty object"),
    ],
)
def test_missing_or_wrongly_typed_keys(
    tmp_path: Path, layout: str, key: str, value: object, expected: str
) -> None:
    root = write_dataset(tmp_path / "D", layout=layout, n_cases=1)
    meta = _meta(root)
    if value is None:
        del meta[key]
    else:
        meta[key] = value
    _write_meta(root, meta)
    path, message = _only(root)
    assert path.endswith("dataset.json")
    assert expected in message


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_labels_without_background(tmp_path: Path, layout: str) -> None:
    root = write_dataset(tmp_path / "D", layout=layout, n_cases=1)
    meta = _meta(root)
    meta["labels"] = {"1": "a", "2": "b"} if layout == "msd" else {"a": 1, "b": 2}
    _write_meta(root, meta)
    path, message = _only(root)
    assert path.endswith("dataset.json") and "no background (value 0)" in message


def test_region_based_labels_need_their_class_order(nnunet_dataset: Path) -> None:
    meta = _meta(nnunet_dataset)
    meta["labels"] = {"background": 0, "whole": [1, 2], "core": 2}
    _write_meta(nnunet_dataset, meta)
    assert "need 'regions_class_order'" in _only(nnunet_dataset)[1]  # regions: test_regions.py


def test_non_consecutive_labels_rejected(msd_dataset: Path) -> None:
    meta = _meta(msd_dataset)
    meta["labels"] = {"0": "background", "1": "a", "3": "c"}
    _write_meta(msd_dataset, meta)
    assert "consecutive 0..2, got [0, 1, 3]" in _only(msd_dataset)[1]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "./imagesTr/../../x.nii.gz"])
def test_path_traversal_refused(msd_dataset: Path, bad: str) -> None:
    meta = _meta(msd_dataset)
    meta["training"][0]["image"] = bad
    _write_meta(msd_dataset, meta)
    path, message = _only(msd_dataset)
    assert path.endswith("dataset.json")
    assert bad in message and "outside the dataset folder; refused" in message


# --- file structure problems --------------------------------------------------------------------


def test_msd_listed_but_missing(msd_dataset: Path) -> None:
    (msd_dataset / "imagesTr" / "case_001.nii.gz").unlink()
    path, message = _only(msd_dataset)
    assert path == str(msd_dataset / "imagesTr" / "case_001.nii.gz")
    assert "listed in dataset.json (training[1]) but missing" in message


def test_msd_image_without_label_and_label_without_image(msd_dataset: Path) -> None:
    meta = _meta(msd_dataset)
    del meta["training"][0]["label"]
    del meta["training"][2]["image"]
    _write_meta(msd_dataset, meta)
    problems = dict(_problems(msd_dataset))
    assert "image without label" in problems[str(msd_dataset / "imagesTr" / "case_000.nii.gz")]
    assert "label without image" in problems[str(msd_dataset / "labelsTr" / "case_002.nii.gz")]


def test_nnunet_image_without_label(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "labelsTr" / "case_001.nii.gz").unlink()
    problems = _problems(nnunet_dataset)
    assert [p for p, _ in problems] == [
        str(nnunet_dataset / "imagesTr" / "case_001_0000.nii.gz"),
        str(nnunet_dataset / "imagesTr" / "case_001_0001.nii.gz"),
    ]
    assert all("image without label" in m and "labelsTr/case_001.nii.gz" in m for _, m in problems)


def test_nnunet_label_without_image(nnunet_dataset: Path) -> None:
    for c in range(2):
        (nnunet_dataset / "imagesTr" / f"case_002_{c:04d}.nii.gz").unlink()
    path, message = _only(nnunet_dataset)
    assert path == str(nnunet_dataset / "labelsTr" / "case_002.nii.gz")
    assert "label without image" in message


def test_nnunet_missing_channel_file(nnunet_dataset: Path) -> None:
    (nnunet_dataset / "imagesTr" / "case_001_0001.nii.gz").unlink()
    path, message = _only(nnunet_dataset)
    assert path == str(nnunet_dataset / "imagesTr" / "case_001_0001.nii.gz")
    assert "channel file missing for case 'case_001'" in message


def test_nnunet_bad_names(nnunet_dataset: Path) -> None:
    images = nnunet_dataset / "imagesTr"
    (images / "case_000_0000.nii.gz").rename(images / "case_000_0000.nii")
    (images / "extra.nii.gz").write_bytes(b"x")
    (images / "case_000_0005.nii.gz").write_bytes(b"x")
    problems = dict(_problems(nnunet_dataset))
    assert (
        "differs from dataset.json file_ending .nii.gz"
        in problems[str(images / "case_000_0000.nii")]
    )
    assert "CASE_XXXX.nii.gz" in problems[str(images / "extra.nii.gz")]
    assert (
        "channel 5, but dataset.json declares 2" in problems[str(images / "case_000_0005.nii.gz")]
    )


def test_duplicate_case_ids(msd_dataset: Path) -> None:
    meta = _meta(msd_dataset)
    meta["training"].append(dict(meta["training"][1]))
    meta["numTraining"] = 4
    _write_meta(msd_dataset, meta)
    path, message = _only(msd_dataset)
    assert path.endswith("dataset.json")
    assert "duplicate case id 'case_001' in training[1] and training[3]" in message


def test_all_problems_reported_at_once(msd_dataset: Path) -> None:
    meta = _meta(msd_dataset)
    meta["labels"] = {"1": "a"}
    meta["training"][0]["image"] = "../../etc/passwd"
    _write_meta(msd_dataset, meta)
    (msd_dataset / "labelsTr" / "case_002.nii.gz").unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(msd_dataset)
    assert len(info.value.problems) == 3
    text = str(info.value)
    assert isinstance(info.value, AutosegError)
    assert "3 problem(s)" in text
    assert "no background" in text and "refused" in text
    assert "case_002.nii.gz: listed in dataset.json (training[2]) but missing" in text
