"""Hostile and broken input, named evaluation folders, mixed endings (issue 10, items 4, 8-11,
13, 15). Memory bombs run in a child process under an address-space limit (``ulimit -v``), so a
missing check fails with MemoryError instead of taking the machine's memory; the full-disk cases
use a real, small tmpfs.
"""

from __future__ import annotations

import gzip
import json
import resource
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from autoseg.data.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from tests.reliability_helpers import (
    assert_clean_failure,
    cli,
    files_in,
    make_model,
    run_autoseg,
    save_nifti,
    snapshot,
    tiny_dataset,
)

PLAN = ("--workers", 1, "--gpu-memory", 8)
QUICK = ("--epochs", 1, "--iterations", 1, "--val-iterations", 1)
GIB = 1024**3


def limited(*args: object, gib: float, timeout: float = 180) -> subprocess.CompletedProcess:
    """``autoseg ARGS`` in a child whose address space is limited to ``gib`` GiB."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * GIB), int(gib * GIB)))

    return run_autoseg(*args, timeout=timeout, preexec_fn=limit)


def assert_clean_exit(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, (proc.returncode, out[-3000:])
    assert "Traceback" not in out, out[-3000:]
    for fragment in fragments:
        assert fragment in out, f"{fragment!r} not in:\n{out[-3000:]}"


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A function mounting a real tmpfs of a given size; unmounted afterwards."""
    mounts: list[Path] = []

    def mount(size: str, name: str = "disk") -> Path:
        where = tmp_path / name
        where.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); needs root")
        mounts.append(where)
        return where

    yield mount
    for where in reversed(mounts):
        subprocess.run(["umount", "-l", str(where)], check=False)


# ------------------------------------------------------------------------------ item 4


def mixed_endings(root: Path) -> Path:
    """Cases 1 and 3 stored as .nii (case 3 only its label), the others .nii.gz (MSD layout)."""
    meta = json.loads((root / "dataset.json").read_text())
    for i, entry in enumerate(meta["training"]):
        keys = {1: ("image", "label"), 3: ("label",)}.get(i, ())
        for key in keys:
            old = root / entry[key]
            nib.save(nib.load(str(old)), str(old.with_name(old.name.removesuffix(".gz"))))
            old.unlink()
            entry[key] = entry[key].removesuffix(".gz")
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_mixed_nii_and_nii_gz_train_validate_and_resume(tmp_path: Path):
    root = mixed_endings(tiny_dataset(tmp_path / "Task60_Mixed", n_cases=5))
    home = tmp_path / "home"
    assert cli("plan", root, "--home", home, *PLAN).exit_code == 0
    ids = [f"case_{i:03d}" for i in range(5)]
    vals = [["case_001", "case_003", "case_000"], ["case_002"], ["case_004"], [], []]
    splits = [{"train": [c for c in ids if c not in v], "val": v} for v in vals]
    (home / root.name / "splits.json").write_text(json.dumps(splits))  # the mixed cases validate
    fold = home / root.name / "models" / "default" / "3d_fullres" / "fold_0"
    args = ("train", root.name, "3d_fullres", 0, "--home", home, *QUICK)
    result = cli(*args)
    assert result.exit_code == 0, result.output
    assert "validation case failed" not in result.output, result.output
    scored = {c["case_id"] for c in json.loads((fold / "summary.json").read_text())["cases"]}
    assert scored == {"case_000", "case_001", "case_003"}
    (fold / "summary.json").unlink()
    result = cli(*args, "--resume")  # the validation links of the first run are made afresh
    assert result.exit_code == 0, result.output
    assert (fold / "summary.json").is_file()


# ------------------------------------------------------------------------------ item 8


def eval_folders(tmp_path: Path, n: int = 3) -> tuple[Path, Path]:
    """References, and predictions that hold each reference plus extra voxels (FP only)."""
    refs, preds = tmp_path / "refs", tmp_path / "preds"
    for i in range(n):
        ref = np.zeros((10, 10, 10), np.uint8)
        ref[2:5, 2:5, 2:5] = 1
        pred = ref.copy()
        pred[6:9, 6:9, 6:9] = 1  # as many false positives as true positives
        save_nifti(ref, refs / f"c{i}.nii.gz")
        save_nifti(pred, preds / f"c{i}.nii.gz")
    return refs, preds


def test_evaluate_takes_named_folders_and_refuses_positions(tmp_path: Path):
    refs, preds = eval_folders(tmp_path)
    out = tmp_path / "out"
    result = cli("evaluate", "-r", refs, "-p", preds, "-o", out, "--workers", 1)
    assert result.exit_code == 0, result.output
    mean = json.loads((out / "evaluation.json").read_text())["label_means"]["1"]
    assert mean["recall"] == 1.0 and mean["precision"] == 0.5  # not swapped
    assert_clean_failure(cli("evaluate", preds, refs), "-r", "-p", "precision and recall")


def test_evaluate_warns_when_both_folders_are_the_same(tmp_path: Path):
    refs, _ = eval_folders(tmp_path)
    result = cli("evaluate", "-r", refs, "-p", refs / ".." / "refs", "--workers", 1)
    assert result.exit_code == 0
    assert "same folder" in result.output


def test_evaluate_chill_scores_only_the_predicted_cases(tmp_path: Path):
    refs, preds = eval_folders(tmp_path, n=3)
    (preds / "c2.nii.gz").unlink()
    assert_clean_failure(cli("evaluate", "-r", refs, "-p", preds), "no prediction for case 'c2'")
    out = tmp_path / "out"
    result = cli("evaluate", "-r", refs, "-p", preds, "--chill", "-o", out, "--workers", 1)
    assert result.exit_code == 0, result.output
    cases = json.loads((out / "evaluation.json").read_text())["cases"]
    assert [c["case_id"] for c in cases] == ["c0", "c1"]
    (refs / "c1.nii.gz").unlink()  # a prediction without reference stays an error
    assert_clean_failure(cli("evaluate", "-r", refs, "-p", preds, "--chill"), "no reference")


# ------------------------------------------------------------------------------ item 9


def gzip_bomb(path: Path, side: int = 1000) -> Path:
    """A small .nii.gz whose header and data describe ``side``^3 uint8 voxels (all zero)."""
    header = nib.Nifti1Header()
    header.set_data_shape((side, side, side))
    header.set_data_dtype(np.uint8)
    header.set_zooms((1.0, 1.0, 1.0))
    header["vox_offset"] = 352
    chunk = bytes(1 << 24)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header.binaryblock + b"\0" * 4)
        left = side**3
        while left:
            n = min(left, len(chunk))
            fh.write(chunk[:n])
            left -= n
    assert path.stat().st_size < 8 * 1024**2
    return path


def huge_spacing(path: Path, spacing: float = 1e6) -> Path:
    image = np.random.default_rng(0).normal(100, 10, (16, 20, 16)).astype(np.float32)
    return save_nifti(image, path, spacing=(spacing,) * 3)


def test_a_header_with_pixdim_1e6_is_refused_by_plan_and_predict(tmp_path: Path):
    root = tiny_dataset(tmp_path / "Task61_Spacing", n_cases=3)
    for sub in ("imagesTr", "labelsTr"):
        img = nib.load(str(root / sub / "case_001.nii.gz"))
        img.header.set_zooms((1e6, 1.0, 1.0))
        nib.save(
            nib.Nifti1Image(np.asanyarray(img.dataobj), np.diag([1e6, 1, 1, 1]), img.header),
            str(root / sub / "case_001.nii.gz"),
        )
    assert_clean_exit(
        limited("plan", root, "--home", tmp_path / "home", *PLAN, gib=3),
        "case_001",
        "invalid voxel spacing",
    )
    model = make_model(tmp_path / "model")
    bad = huge_spacing(tmp_path / "in" / "big.nii.gz")
    assert_clean_exit(
        limited("predict", "-i", bad.parent, "-o", tmp_path / "out", "-m", model, gib=4),
        "big.nii.gz",
        "invalid voxel spacing",
    )


def test_predict_refuses_what_resampling_would_make_too_big(tmp_path: Path):
    model = make_model(tmp_path / "model")  # planned at 1 mm
    image = np.random.default_rng(0).normal(100, 10, (64, 64, 64)).astype(np.float32)
    bad = save_nifti(image, tmp_path / "in" / "coarse.nii.gz", spacing=(50.0, 50.0, 50.0))
    proc = limited("predict", "-i", bad.parent, "-o", tmp_path / "out", "-m", model, gib=4)
    assert_clean_exit(proc, "coarse.nii.gz", "3200x3200x3200", "GiB of memory")
    assert not (tmp_path / "out").exists()  # every case failed: no empty folder left


def test_a_gzip_bomb_is_refused_from_its_header(tmp_path: Path):
    bomb = gzip_bomb(tmp_path / "preds" / "c0.nii.gz")
    ref = save_nifti(np.zeros((10, 10, 10), np.uint8), tmp_path / "refs" / "c0.nii.gz")
    proc = limited("evaluate", "-r", ref.parent, "-p", bomb.parent, gib=2)
    assert_clean_exit(proc, "c0.nii.gz", "1000x1000x1000", "GiB")


def test_evaluate_a_prediction_voxel_of_value_2e9_in_bounded_memory(tmp_path: Path):
    ref = np.zeros((30, 30, 30), np.int32)
    ref[5:10, 5:10, 5:10] = 1
    pred = ref.copy()
    pred[20, 20, 20] = 2_000_000_000
    save_nifti(ref, tmp_path / "refs" / "c0.nii.gz")
    save_nifti(pred, tmp_path / "preds" / "c0.nii.gz")
    out = tmp_path / "out"
    proc = limited("evaluate", "-r", tmp_path / "refs", "-p", tmp_path / "preds", "-o", out, gib=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    means = json.loads((out / "evaluation.json").read_text())["label_means"]
    assert means["1"]["dice"] == 1.0 and means["2000000000"]["dice"] == 0.0


# ------------------------------------------------------------------------------ item 10


def test_preprocessing_on_a_real_full_disk(tmp_path: Path, tmpfs):
    from tests.reliability_helpers import mixed_spacing_dataset

    root = mixed_spacing_dataset(tmp_path / "Task62_Full", 3, (80, 80, 64))
    disk = tmpfs("512k")
    home = disk / "home"
    result = cli("plan", root, "--home", home, *PLAN)
    assert_clean_failure(result, "No space left on device", str(home / root.name / "preprocessed"))
    assert "Errno None" not in result.output
    assert not [f for f in files_in(home) if f.endswith(".part")]
    assert not list(home.glob("*/preprocessed/*/preprocessing.complete"))


def test_checkpoint_on_a_real_full_disk_keeps_the_previous_one(tmp_path: Path, tmpfs):
    import torch

    disk = tmpfs("2m")
    path = disk / "fold_0" / "checkpoint_latest.pt"
    save_checkpoint(path, {"w": torch.ones(1000)}, None, CheckpointMeta(epoch=1))
    before = path.read_bytes()
    with pytest.raises(OSError) as info:
        save_checkpoint(path, {"w": torch.ones(1_000_000)}, None, CheckpointMeta(epoch=2))  # 4 MB
    assert info.value.filename == str(path) and "No space left" in str(info.value.strerror)
    assert path.read_bytes() == before
    assert load_checkpoint(path).meta.epoch == 1
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_training_on_a_real_full_disk_exits_2_and_keeps_the_checkpoint(tmp_path: Path, tmpfs):
    root = tiny_dataset(tmp_path / "Task63_FullTrain", n_cases=5)
    disk = tmpfs("300m")
    home = disk / "home"
    assert cli("plan", root, "--home", home, *PLAN).exit_code == 0
    args = ("train", root.name, "3d_fullres", "all", "--home", home, *QUICK, "--no-validate")
    result = cli(*args)
    assert result.exit_code == 0, result.output
    final = home / root.name / "models" / "default" / "3d_fullres" / "fold_all"
    final = final / "checkpoint_final.pt"
    before = final.read_bytes()
    free = shutil.disk_usage(disk).free
    (disk / "filler").write_bytes(bytes(free - 64 * 1024))
    result = cli(
        *args[: -len(QUICK) - 1],
        "--epochs",
        2,
        "--iterations",
        1,
        "--val-iterations",
        1,
        "--no-validate",
        "--resume",
    )
    assert_clean_failure(result, "No space left on device", str(final.parent))
    assert final.read_bytes() == before


# ------------------------------------------------------------------------------ item 11


def bad_image(kind: str, path: Path) -> Path:
    data = np.random.default_rng(0).normal(100, 10, (16, 20, 16)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "nan pixdim":
        img = nib.Nifti1Image(data, np.eye(4))
        img.header["pixdim"][1:4] = [np.nan, 1.0, 1.0]
    elif kind == "rgb24":
        rgb = np.zeros((16, 20, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
        img = nib.Nifti1Image(rgb, np.eye(4))
    else:
        img = nib.Nifti1Image(data.astype(np.complex64), np.eye(4))
    nib.save(img, str(path))
    return path


KINDS = ["nan pixdim", "rgb24", "complex"]


@pytest.mark.parametrize("kind", KINDS)
def test_predict_refuses_what_plan_refuses(tmp_path: Path, kind: str):
    model = make_model(tmp_path / "model")
    bad = bad_image(kind, tmp_path / "in" / "bad.nii.gz")
    result = cli("predict", "-i", bad.parent, "-o", tmp_path / "out", "-m", model)
    reason = "invalid voxel spacing" if kind == "nan pixdim" else "unsupported voxel data type"
    assert_clean_failure(result, "bad.nii.gz", "1 case(s) failed", reason)


@pytest.mark.parametrize("kind", KINDS)
def test_plan_and_evaluate_refuse_the_same_files(tmp_path: Path, kind: str):
    root = tiny_dataset(tmp_path / "Task64_Bad", n_cases=3)
    bad = bad_image(kind, root / "imagesTr" / "case_001.nii.gz")
    assert_clean_failure(cli("plan", root, "--home", tmp_path / "home", *PLAN), str(bad))
    refs = tmp_path / "refs"
    shutil.copytree(root / "labelsTr", refs)
    preds = tmp_path / "preds"
    shutil.copytree(root / "labelsTr", preds)
    bad_image(kind, preds / "case_001.nii.gz")
    assert_clean_failure(cli("evaluate", "-r", refs, "-p", preds), "case_001.nii.gz")


# ------------------------------------------------------------------------------ item 13


def test_a_2d_nifti_is_written_back_2d(tmp_path: Path):
    model = make_model(tmp_path / "model")
    image = np.random.default_rng(0).normal(100, 10, (20, 24)).astype(np.float32)
    src = tmp_path / "in" / "slice.nii.gz"
    src.parent.mkdir()
    nib.save(nib.Nifti1Image(image, np.diag([0.8, 0.9, 1.0, 1.0])), str(src))
    out = tmp_path / "out"
    result = cli("predict", "-i", src.parent, "-o", out, "-m", model)
    assert result.exit_code == 0, result.output
    written = nib.load(str(out / "slice.nii.gz"))
    assert written.shape == (20, 24)
    np.testing.assert_allclose(written.affine, nib.load(str(src)).affine)


# ------------------------------------------------------------------------------ item 15


def test_a_read_only_home_message_names_the_real_file(tmp_path: Path, tmpfs):
    root = tiny_dataset(tmp_path / "Task65_ReadOnly")
    disk = tmpfs("50m")
    home = disk / "home"
    assert cli("plan", root, "--home", home, *PLAN).exit_code == 0
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    (tmp_path / "x").write_text("")  # the test folder itself stays writable
    result = cli("plan", root, "--home", home, *PLAN, "--replan")
    assert_clean_failure(result, "Read-only file system", str(home / root.name))
    assert ".part" not in result.output
    from autoseg.serial import atomic_write_text

    with pytest.raises(OSError) as info:
        atomic_write_text(home / root.name / "plans.json", "{}")
    assert info.value.filename == str(home / root.name / "plans.json")


def test_a_dataset_folder_name_with_a_trailing_space_is_found_by_name(tmp_path: Path):
    root = tiny_dataset(tmp_path / "Task66_Space ", n_cases=5)
    home = tmp_path / "home"
    assert cli("plan", root, "--home", home, *PLAN).exit_code == 0
    from autoseg.data.paths import resolve_dataset

    assert resolve_dataset("Task66_Space ", home).raw == root  # the raw folder, space and all
    result = cli("train", "Task66_Space ", "3d_fullres", 0, "--home", home, *QUICK)
    assert result.exit_code == 0, result.output
    fold = home / "Task66_Space " / "models" / "default" / "3d_fullres" / "fold_0"
    assert (fold / "summary.json").is_file()  # validation found the raw images by name


def test_no_empty_output_folder_when_every_case_fails(tmp_path: Path):
    model = make_model(tmp_path / "model")
    bad = tmp_path / "in" / "broken.nii.gz"
    bad.parent.mkdir()
    bad.write_bytes(b"not a nifti")
    out = tmp_path / "nested" / "out"
    result = cli("predict", "-i", bad.parent, "-o", out, "-m", model)
    assert_clean_failure(result, "broken.nii.gz")
    assert not out.exists()
    assert snapshot(bad.parent) == {"broken.nii.gz": snapshot(bad.parent)["broken.nii.gz"]}
