"""``train``, ``benchmark`` and ``find-best`` refuse a dataset changed since ``plan`` (issue 20
item 2).

Before the fix the stale check ran only in ``plan``: an image or a label edited after it, or a
case added or removed, was trained on from the old preprocessed arrays without a word. Each
refusal test failed then; a file touched with identical content must still train (the content
hash decides).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.reliability_helpers import assert_clean_failure, cli, shrink_network, tiny_dataset

PLAN = ("--workers", 1, "--gpu-memory", 8)
QUICK = ("--epochs", 1, "--iterations", 1, "--val-iterations", 1, "--no-validate")
NAME = "Task77_Stale"
BENCH = ("--iterations", 1, "--warmup", 0, "--predict-cases", 0, "--device", "cpu")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """(a folder holding) a tiny dataset of 4 cases, and a home where it is planned."""
    tmp = tmp_path_factory.mktemp("stale")
    root = tiny_dataset(tmp / NAME, n_cases=4)
    meta = json.loads((root / "dataset.json").read_text())
    extra = meta["training"].pop()  # a case to add later
    (root / "dataset.json").write_text(json.dumps(meta))
    (tmp / "extra.json").write_text(json.dumps(extra))
    assert cli("plan", root, "--home", tmp / "home", *PLAN).exit_code == 0
    shrink_network(tmp / "home" / NAME / "plans.json")
    return tmp


@pytest.fixture
def setup(planned: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the dataset and of its home, the home pointing at the copy: (root, home)."""
    root, home = tmp_path / NAME, tmp_path / "home"
    shutil.copytree(planned / NAME, root)  # copy2: the same mtimes
    shutil.copytree(planned / "home", home)
    (home / NAME / "dataset_source.txt").write_text(f"{root}\n")
    markers = list((home / NAME / "preprocessed").glob("*/preprocessing.complete"))
    for marker in markers:  # the stamps name the planned folder: point them at the copy
        marker.write_text(marker.read_text().replace(str(planned / NAME), str(root)))
    shutil.copy(planned / "extra.json", tmp_path / "extra.json")
    return root, home


def _edit_voxels(path: Path) -> None:
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    data.flat[data.size // 2] += 1
    nib.save(nib.Nifti1Image(data, img.affine, img.header), str(path))


def change(root: Path, how: str) -> str:
    """Change the dataset as a user might after planning; returns the name the error gives."""
    meta = json.loads((root / "dataset.json").read_text())
    if how == "image edited":
        _edit_voxels(root / "imagesTr" / "case_001.nii.gz")
        return "case_001"
    if how == "label edited":
        _edit_voxels(root / "labelsTr" / "case_002.nii.gz")
        return "case_002"
    if how == "image replaced by another case's":
        shutil.copy(root / "imagesTr" / "case_000.nii.gz", root / "imagesTr" / "case_001.nii.gz")
        return "case_001"
    if how == "case removed":
        meta["training"] = [e for e in meta["training"] if "case_001" not in e["image"]]
        (root / "dataset.json").write_text(json.dumps(meta))
        return "removed: case_001"
    if how == "case added":
        meta["training"].append(json.loads((root.parent / "extra.json").read_text()))
        (root / "dataset.json").write_text(json.dumps(meta))
        return "added: case_003"
    if how == "image file deleted":
        (root / "imagesTr" / "case_002.nii.gz").unlink()
        return "case_002"
    if how == "modality changed in dataset.json":
        meta["modality"] = {"0": "CT"}
        (root / "dataset.json").write_text(json.dumps(meta))
        return "dataset.json"
    raise AssertionError(how)


CHANGES = [
    "image edited",
    "label edited",
    "image replaced by another case's",
    "case removed",
    "case added",
    "image file deleted",
    "modality changed in dataset.json",
]


@pytest.mark.parametrize("how", CHANGES)
def test_train_refuses_a_dataset_changed_since_plan(setup: tuple[Path, Path], how: str):
    root, home = setup
    named = change(root, how)
    result = cli("train", NAME, "3d_fullres", "all", "--home", home, *QUICK)
    assert_clean_failure(result, "dataset changed since plan", "autoseg plan", named)
    assert not (home / NAME / "models").exists()
    if how != "image file deleted":  # planning again makes it trainable
        assert cli("plan", root, "--home", home, *PLAN).exit_code == 0
        shrink_network(home / NAME / "plans.json")
        result = cli("train", NAME, "3d_fullres", "all", "--home", home, *QUICK)
        assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["benchmark", "find-best"])
def test_benchmark_and_find_best_refuse_it_too(setup: tuple[Path, Path], command: str):
    root, home = setup
    named = change(root, "label edited")
    args = ("3d_fullres", "--home", home, *BENCH) if command == "benchmark" else ("--home", home)
    result = cli(command, NAME, *args)
    assert_clean_failure(result, "dataset changed since plan", named)


@pytest.mark.parametrize("what", ["image", "label", "dataset.json", "every file"])
def test_a_file_touched_with_the_same_content_still_trains(setup: tuple[Path, Path], what: str):
    root, home = setup
    paths = {
        "image": [root / "imagesTr" / "case_001.nii.gz"],
        "label": [root / "labelsTr" / "case_001.nii.gz"],
        "dataset.json": [root / "dataset.json"],
        "every file": [p for p in root.rglob("*") if p.is_file()],
    }[what]
    for path in paths:
        os.utime(path, ns=(1, path.stat().st_mtime_ns + 10**9))  # touch: mtime only
    result = cli("train", NAME, "3d_fullres", "all", "--home", home, *QUICK)
    assert result.exit_code == 0, result.output


def test_without_the_raw_folder_train_warns_and_trains(setup: tuple[Path, Path]):
    root, home = setup
    shutil.rmtree(root)  # a home copied to a machine without the dataset
    result = cli("train", NAME, "3d_fullres", "all", "--home", home, *QUICK)
    assert result.exit_code == 0, result.output
    assert "cannot check it is unchanged" in " ".join(result.output.split())
