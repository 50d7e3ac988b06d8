"""Never train on stale or wrong data (issue 10, items 1, 2, 3, 7, 12).

Each test fails on the code before the fix: reused stale preprocessing, a half-planned home that
``train`` accepted, an ``ignore`` label trained as a class, a home inside the dataset, a
RecursionError traceback, an allocator traceback from crafted plans.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.preprocessing.case_store import load_case
from tests.reliability_helpers import (
    assert_clean_failure,
    cli,
    make_model,
    mixed_spacing_dataset,
    save_nifti,
    snapshot,
    tiny_dataset,
)
from tests.test_reliability_crash import _kill_leftover_children, kill_when, start  # noqa: F401

PLAN = ("--workers", 1, "--gpu-memory", 8)
QUICK = ("--epochs", 1, "--iterations", 1, "--val-iterations", 1, "--no-validate")


def uncompressed_labels(root: Path) -> Path:
    """Store every label as ``.nii``: a same-size replacement is then easy to make."""
    meta = json.loads((root / "dataset.json").read_text())
    for entry in meta["training"]:
        old = root / entry["label"]
        new = old.with_name(old.name.removesuffix(".gz"))
        nib.save(nib.load(str(old)), str(new))
        old.unlink()
        entry["label"] = entry["label"].removesuffix(".gz")
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def plan(root: Path, home: Path, *extra: object):
    return cli("plan", root, "--home", home, *PLAN, *extra)


def seg_of(home: Path, name: str, case_id: str) -> np.ndarray:
    folder = next((home / name / "preprocessed").iterdir())
    return np.asarray(load_case(folder, case_id, mmap=False).seg)


def edit_label(path: Path, how: str, tmp_path: Path) -> None:
    """Change the label map's voxels; the file keeps its size and its mtime."""
    stat = path.stat()
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).copy()
    data[data == 2] = 1  # merge the two structures: same shape, other content
    edited = nib.Nifti1Image(data, img.affine, img.header)
    if how == "in place":
        path.write_bytes(edited.to_bytes())
    elif how == "replaced":  # a new file (new inode) renamed over it
        other = path.with_name(".new.nii")
        other.write_bytes(edited.to_bytes())
        os.replace(other, path)
    elif how == "through a hard link":  # edited through another name of the same inode
        link = tmp_path / "elsewhere.nii"
        os.link(path, link)
        with open(link, "r+b") as fh:
            fh.write(edited.to_bytes())
    assert path.stat().st_size == stat.st_size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# ------------------------------------------------------------------------------ item 1


@pytest.mark.parametrize("how", ["in place", "replaced", "through a hard link"])
def test_a_changed_label_is_preprocessed_again(tmp_path: Path, how: str):
    root = uncompressed_labels(tiny_dataset(tmp_path / "Task80_Stale"))
    home = tmp_path / "home"
    assert plan(root, home).exit_code == 0
    before = seg_of(home, root.name, "case_001")
    assert (before == 2).any()
    edit_label(root / "labelsTr" / "case_001.nii", how, tmp_path)
    assert plan(root, home).exit_code == 0
    after = seg_of(home, root.name, "case_001")
    fresh = tmp_path / "fresh"
    assert plan(root, fresh).exit_code == 0
    np.testing.assert_array_equal(after, seg_of(fresh, root.name, "case_001"))
    assert not (after == 2).any()  # the old arrays were not reused


def test_a_case_removed_from_the_dataset_is_not_trained_on(tmp_path: Path):
    root = tiny_dataset(tmp_path / "Task81_Removed", n_cases=3)
    home = tmp_path / "home"
    assert plan(root, home).exit_code == 0
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"] = meta["training"][:2]
    (root / "dataset.json").write_text(json.dumps(meta))
    assert plan(root, home).exit_code == 0
    from autoseg.data.plans import Plans
    from autoseg.preprocessing.cache import complete_cases
    from autoseg.preprocessing.case_store import plans_key, preprocessed_folder

    plans = Plans.from_json(home / root.name / "plans.json")
    config = plans.configurations["3d_fullres"]
    folder = preprocessed_folder(home / root.name, config)
    assert complete_cases(folder, plans_key(config), root.name) == ["case_000", "case_001"]
    assert not list(folder.glob("case_002*"))


def test_another_dataset_of_the_same_name_is_refused(tmp_path: Path):
    first = tiny_dataset(tmp_path / "a" / "Task82_Same", seed=1)
    second = tiny_dataset(tmp_path / "b" / "Task82_Same", seed=2)
    home = tmp_path / "home"
    assert plan(first, home).exit_code == 0
    before = snapshot(home)
    result = plan(second, home)
    assert_clean_failure(result, str(first), "--home", "--replan")
    assert snapshot(home) == before
    assert_clean_failure(cli("train", second, "3d_fullres", 0, "--home", home), "--replan")
    assert plan(second, home, "--replan").exit_code == 0
    fresh = tmp_path / "fresh"
    assert plan(second, fresh).exit_code == 0
    for case_id in ("case_000", "case_002"):
        np.testing.assert_array_equal(
            seg_of(home, second.name, case_id), seg_of(fresh, second.name, case_id)
        )
    assert (home / second.name / "dataset_source.txt").read_text().strip() == str(second)


# ------------------------------------------------------------------------------ item 2


def labels_up_to(root: Path, top: int) -> Path:
    """Declare labels 0..top and give case 0 a voxel of each of 1, 2 and ``top``."""
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = {str(v): f"structure {v}" if v else "background" for v in range(top + 1)}
    (root / "dataset.json").write_text(json.dumps(meta))
    path = root / "labelsTr" / "case_000.nii.gz"
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj).astype(np.uint16 if top > 255 else np.uint8)
    data[data == 2] = top
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    return root


def test_labels_up_to_255_are_preprocessed(tmp_path: Path):
    root = labels_up_to(tiny_dataset(tmp_path / "Task83_Many"), 200)
    home = tmp_path / "home"
    result = plan(root, home)
    assert result.exit_code == 0, result.output
    seg = seg_of(home, root.name, "case_000")
    assert seg.dtype == np.uint8 and set(np.unique(seg)) == {0, 1, 200}


def test_more_than_256_labels_are_refused_before_anything_is_written(tmp_path: Path):
    root = labels_up_to(tiny_dataset(tmp_path / "Task84_TooMany"), 256)
    home = tmp_path / "home"
    assert_clean_failure(plan(root, home), "dataset.json", "at most 256")
    assert not home.exists()


def test_a_plan_that_fails_in_preprocessing_leaves_nothing_train_accepts(tmp_path, monkeypatch):
    root = tiny_dataset(tmp_path / "Task85_Fails", n_cases=5)
    home = tmp_path / "home"
    import autoseg.preprocessing.dataset_run as dataset_run

    real = dataset_run.preprocess_case

    def fails_on_the_last(case, *args):
        if case.case_id == "case_004":
            raise dataset_run.AutosegError("simulated failure")
        return real(case, *args)

    monkeypatch.setattr(dataset_run, "preprocess_case", fails_on_the_last)
    assert_clean_failure(plan(root, home), "case_004", "simulated failure")
    assert (home / root.name / "plans.json").is_file()  # plans and 4 cases written, not the 5th
    for command in (
        ("train", root.name, "3d_fullres", "all", "--home", home, *QUICK),
        (
            "benchmark",
            root.name,
            "3d_fullres",
            "--home",
            home,
            "--iterations",
            1,
            "--warmup",
            0,
            "--predict-cases",
            0,
        ),
        ("find-best", root.name, "--home", home),
    ):
        assert_clean_failure(cli(*command), "incomplete", "autoseg plan")
    assert not (home / root.name / "splits.json").exists()
    assert not (home / root.name / "models").exists()


@pytest.mark.parametrize("moment", ["after plans.json", "after 2 cases", "re-plan of edited data"])
def test_a_killed_plan_leaves_nothing_train_accepts(tmp_path: Path, moment: str):
    root = mixed_spacing_dataset(tmp_path / "Task86_Killed", 6, (80, 80, 64))
    home = tmp_path / "home"
    work = home / root.name
    args = ("plan", root, "--home", home, *PLAN)
    if moment == "re-plan of edited data":
        assert cli(*args).exit_code == 0
        label = root / "labelsTr" / "case_003.nii.gz"
        img = nib.load(str(label))
        data = np.asanyarray(img.dataobj).copy()
        data[data == 2] = 1
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(label))
        stamp = (work / "fingerprint.json").stat().st_mtime_ns

        def ready() -> bool:
            path = work / "fingerprint.json"
            return path.exists() and path.stat().st_mtime_ns != stamp
    elif moment == "after plans.json":

        def ready() -> bool:
            return (work / "plans.json").exists()
    else:

        def ready() -> bool:
            return len(list(work.glob("preprocessed/*/*.json"))) >= 2

    kill_when(start(tmp_path, *args), ready)
    result = cli("train", root.name, "3d_fullres", "all", "--home", home, *QUICK)
    assert_clean_failure(result, "autoseg plan")
    assert not (work / "models").exists()


# ------------------------------------------------------------------------------ item 3


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_a_label_that_looks_like_ignore_is_refused(tmp_path: Path, layout: str):
    """'ignore' itself is supported (tests/data/test_ignore_label.py); 'Ignore ' must not be trained
    as an ordinary class by accident."""
    root = tiny_dataset(tmp_path / "Task87_Ignore", layout=layout)
    meta = json.loads((root / "dataset.json").read_text())
    if layout == "msd":
        meta["labels"]["2"] = "Ignore "
    else:
        meta["labels"] = {"background": 0, "anterior": 1, "Ignore ": 2}
    (root / "dataset.json").write_text(json.dumps(meta))
    home = tmp_path / "home"
    assert_clean_failure(plan(root, home), "dataset.json", "'Ignore '", "not spelled 'ignore'")
    assert not home.exists()


# ------------------------------------------------------------------------------ item 7


@pytest.mark.parametrize("where", ["parent", "itself", "inside", "symlink into it"])
def test_a_home_in_the_dataset_folder_is_refused(tmp_path: Path, where: str):
    root = tiny_dataset(tmp_path / "data" / "Task88_Home")
    (root / "plans.json").write_text("the user's own file\n")
    home = {"parent": root.parent, "itself": root, "inside": root / "work"}.get(where)
    if where == "symlink into it":
        home = tmp_path / "link"
        home.symlink_to(root.parent)
    before = snapshot(root)
    assert_clean_failure(plan(root, home), "--home")
    assert snapshot(root) == before


def test_a_dataset_inside_a_work_folder_is_refused(tmp_path: Path):
    home = tmp_path / "home"
    other = tiny_dataset(tmp_path / "Task89_Other")
    assert plan(other, home).exit_code == 0
    root = tiny_dataset(home / other.name / "copies" / "Task90_Inside")
    before = snapshot(home)
    assert_clean_failure(plan(root, home), "inside autoseg's work folder")
    assert snapshot(home) == before


# ------------------------------------------------------------------------------ item 12


def test_a_deeply_nested_dataset_json_is_a_clean_error(tmp_path: Path):
    root = tmp_path / "Task91_Nested"
    root.mkdir()
    (root / "dataset.json").write_text("[" * 200_000)
    assert_clean_failure(plan(root, tmp_path / "home"), "dataset.json", "nested too deeply")


@pytest.mark.parametrize(
    "field, value",
    [
        ("features_per_stage", [1_280_000, 1_280_000]),
        ("patch_size", [100_000, 100_000, 100_000]),
        ("batch_size", 10**9),
        ("strides", [[1, 1, 1]]),
        ("nested", None),
    ],
)
def test_crafted_plans_in_a_model_folder_are_refused(tmp_path: Path, field: str, value):
    model = make_model(tmp_path / "model")
    path = model / "plans.json"
    if field == "nested":
        path.write_text('{"a": ' * 100_000)
    else:
        plans = json.loads(path.read_text())
        plans["configurations"]["3d_fullres"][field] = value
        path.write_text(json.dumps(plans))
    image = save_nifti(np.ones((16, 16, 16), np.float32), tmp_path / "in" / "a.nii.gz")
    result = cli("predict", "-i", image.parent, "-o", tmp_path / "out", "-m", model)
    assert_clean_failure(result, "plans.json", field if field != "nested" else "nested")
    assert not (tmp_path / "out").exists()


def test_a_deeply_nested_splits_file_is_a_clean_error(tmp_path: Path):
    root = tiny_dataset(tmp_path / "Task92_Splits", n_cases=5)
    home = tmp_path / "home"
    assert plan(root, home).exit_code == 0
    (home / root.name / "splits.json").write_text("[" * 200_000)
    result = cli("train", root.name, "3d_fullres", 0, "--home", home, *QUICK)
    assert_clean_failure(result, "splits.json")
    shutil.rmtree(home)


# ------------------------------------------------------------------------------ hostile pass


def test_a_case_added_after_the_splits_were_made_is_reported(tmp_path: Path):
    root = tiny_dataset(tmp_path / "Task93_Added", n_cases=6)
    meta = json.loads((root / "dataset.json").read_text())
    full = list(meta["training"])
    meta["training"] = full[:5]
    (root / "dataset.json").write_text(json.dumps(meta))
    home = tmp_path / "home"
    assert plan(root, home).exit_code == 0
    from autoseg.data.splits import load_or_create_splits  # as the first `train` makes them

    load_or_create_splits(home / root.name / "splits.json", [f"case_{i:03d}" for i in range(5)])
    meta["training"] = full
    (root / "dataset.json").write_text(json.dumps(meta))
    assert plan(root, home).exit_code == 0
    result = cli("train", root.name, "3d_fullres", 1, "--home", home, *QUICK)
    assert result.exit_code == 0, result.output
    assert "in no fold" in result.output and "case_005" in result.output


def test_a_symlinked_label_retargeted_to_another_file_is_redone(tmp_path: Path):
    root = uncompressed_labels(tiny_dataset(tmp_path / "Task94_Link"))
    label = root / "labelsTr" / "case_001.nii"
    store = tmp_path / "store"
    store.mkdir()
    shutil.move(label, store / "v1.nii")
    label.symlink_to(store / "v1.nii")
    home = tmp_path / "home"
    assert plan(root, home).exit_code == 0
    shutil.copy2(store / "v1.nii", store / "v2.nii")
    edit_label(store / "v2.nii", "in place", tmp_path)
    os.utime(store / "v2.nii", ns=((store / "v1.nii").stat().st_atime_ns,) * 2)
    label.unlink()
    label.symlink_to(store / "v2.nii")  # same link, another target
    assert plan(root, home).exit_code == 0
    assert not (seg_of(home, root.name, "case_001") == 2).any()


def test_plan_without_preprocessing_marks_the_data_incomplete(tmp_path: Path):
    root = tiny_dataset(tmp_path / "Task95_NoPre", n_cases=5)
    home = tmp_path / "home"
    assert plan(root, home).exit_code == 0
    assert plan(root, home, "--no-preprocess").exit_code == 0
    result = cli("train", root.name, "3d_fullres", 0, "--home", home, *QUICK)
    assert_clean_failure(result, "incomplete")
    assert plan(root, home).exit_code == 0  # every case reused, the marker written again
    assert cli("train", root.name, "3d_fullres", 0, "--home", home, *QUICK).exit_code == 0
