"""Names near the file-system limit (issue 20, item 6).

A file name may be 255 bytes. Temp files (``.NAME.XXXXXXXX.part``) of such a name get a
shortened, hashed stem; a name that cannot be written fails its own case, not the run; and a
case id too long for the preprocessed files is refused by ``plan`` before anything is written.
Checked at predict, plan, evaluate, ensemble and export.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import autoseg.inference.folder
from autoseg.serial import NAME_MAX, atomic_write_text, temp_files, temp_stem
from tests.reliability_helpers import (
    SHAPE_IJK,
    assert_clean_failure,
    cli,
    files_in,
    make_model,
    save_nifti,
    save_npz_beside,
    snapshot,
    tiny_dataset,
)

LONG = "x" * (NAME_MAX - len(".nii.gz"))  # CASE.nii.gz: exactly 255 bytes
LONG_UTF8 = "ü" * ((NAME_MAX - len(".nii.gz")) // 2)  # 248 bytes of two-byte letters


def _image(folder: Path, name: str, seed: int = 0) -> Path:
    from tests.synthetic import make_case

    image, _ = make_case(np.random.default_rng(seed), SHAPE_IJK)
    return save_nifti(image, folder / name)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "models" / "default" / "3d_fullres")


@pytest.mark.parametrize("name", ["a.nii.gz", "x" * 240, "x" * 255, "ü" * 127 + "x", "€" * 85])
def test_temp_names_fit_and_stay_distinct(tmp_path: Path, name: str) -> None:
    stem = temp_stem(name)
    assert len(f".{stem}.12345678.part".encode()) <= NAME_MAX
    assert stem == name or temp_stem(name + "y") != stem  # two long names, two stems
    stem.encode("utf-8")  # no half character left by the cut
    target = tmp_path / name
    atomic_write_text(target, "done")  # failed with "File name too long" before
    assert target.read_text() == "done" and temp_files(target) == []


@pytest.mark.parametrize("long", [LONG, LONG_UTF8], ids=["ascii", "utf8"])
@pytest.mark.parametrize("probabilities", [False, True])
def test_predict_writes_a_case_with_a_name_at_the_limit(
    model: Path, tmp_path: Path, long: str, probabilities: bool
) -> None:
    inputs = tmp_path / "in"
    for i, name in enumerate(["a.nii.gz", f"{long}.nii.gz", "z.nii.gz"]):
        _image(inputs, name, seed=i)
    out = tmp_path / "out"
    extra = ["--save-probabilities"] if probabilities else []
    result = cli(
        "predict", "-i", inputs, "-o", out, "-m", model, "--device", "cpu", "--no-tta", *extra
    )
    assert result.exit_code == 0, result.output
    expected = {f"{n}.nii.gz" for n in ("a", long, "z")}
    if probabilities:
        expected |= {f"{n}.npz" for n in ("a", long, "z")}
    assert set(files_in(out)) == expected  # every case, no temp file


def test_predict_one_unwritable_name_fails_one_case(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system with a shorter limit (eCryptfs: 143 bytes): the others go on."""
    real = autoseg.inference.folder.write_label

    def short_limit(labels, geometry, path):
        if len(Path(path).name) > 143:
            raise OSError(errno.ENAMETOOLONG, "File name too long", str(path))
        real(labels, geometry, path)

    monkeypatch.setattr(autoseg.inference.folder, "write_label", short_limit)
    inputs = tmp_path / "in"
    for i, name in enumerate(["a.nii.gz", f"{LONG}.nii.gz", "z.nii.gz"]):
        _image(inputs, name, seed=i)
    out = tmp_path / "out"
    result = cli("predict", "-i", inputs, "-o", out, "-m", model, "--device", "cpu", "--no-tta")
    assert_clean_failure(result, "1 case(s) failed", LONG, "file name too long")
    assert files_in(out) == ["a.nii.gz", "z.nii.gz"]


def _msd_with_case_id(root: Path, case_id: str) -> Path:
    """A 4-case MSD dataset whose third case is renamed ``case_id``."""
    ds = tiny_dataset(root, n_cases=4)
    meta = json.loads((ds / "dataset.json").read_text())
    entry = meta["training"][2]
    for key in ("image", "label"):
        old = ds / entry[key]
        new = old.with_name(f"{case_id}.nii.gz")
        old.rename(new)
        entry[key] = f"./{new.parent.name}/{new.name}"
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds


@pytest.mark.parametrize("long", [LONG, LONG_UTF8, "y" * 247], ids=["255", "utf8", "247"])
def test_plan_refuses_a_case_id_too_long_for_its_files(tmp_path: Path, long: str) -> None:
    ds = _msd_with_case_id(tmp_path / "Task90_Long", long)
    before = snapshot(ds)
    home = tmp_path / "home"
    result = cli("plan", ds, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert_clean_failure(result, f"{long}.nii.gz", "case id is", "shorter name")
    assert files_in(home) == [] and snapshot(ds) == before


def test_plan_preprocesses_a_case_id_at_the_limit(tmp_path: Path) -> None:
    longest = "y" * (NAME_MAX - len(".img.b2nd"))  # 246 bytes: CASE.img.b2nd is 255
    ds = _msd_with_case_id(tmp_path / "Task90_Long", longest)
    home = tmp_path / "home"
    result = cli("plan", ds, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert result.exit_code == 0, result.output
    done = [p for p in files_in(home) if Path(p).name.startswith(longest)]
    assert any(p.endswith(".json") for p in done), done
    assert not [p for p in files_in(home) if p.endswith(".part")]


def test_evaluate_and_ensemble_with_names_at_the_limit(tmp_path: Path) -> None:
    label = np.zeros(SHAPE_IJK, dtype=np.uint8)
    label[4:8, 4:8, 4:8] = 1
    for folder in ("ref", "A", "B"):
        for case in (LONG, "short"):
            save_nifti(label, tmp_path / folder / f"{case}.nii.gz")
    fg = label.transpose(2, 1, 0).astype(np.float16)  # (Z, Y, X)
    for folder in ("A", "B"):
        for case in (LONG, "short"):
            save_npz_beside(
                tmp_path / folder / f"{case}.npz",
                probabilities=np.stack([1 - fg, fg]),
                labels=np.array([0, 1]),
            )
    out = tmp_path / "E"
    result = cli("ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", out)
    assert result.exit_code == 0, result.output
    assert sorted(files_in(out)) == sorted([f"{LONG}.nii.gz", "short.nii.gz"])
    report = tmp_path / "report"
    result = cli("evaluate", "-r", tmp_path / "ref", "-p", out, "-o", report)
    assert result.exit_code == 0, result.output
    cases = json.loads((report / "evaluation.json").read_text())
    assert LONG in json.dumps(cases)


def test_export_to_an_archive_name_at_the_limit(tmp_path: Path) -> None:
    from tests.inference.test_exchange import make_model as planned_model

    _, folder = planned_model(tmp_path)
    archive = tmp_path / ("m" * (NAME_MAX - len(".zip")) + ".zip")
    result = cli("export", folder, archive)
    assert result.exit_code == 0, result.output
    assert archive.is_file() and not temp_files(archive)
    shutil.rmtree(tmp_path / "home")
    result = cli("import", archive, "--home", tmp_path / "home")
    assert result.exit_code == 0, result.output
