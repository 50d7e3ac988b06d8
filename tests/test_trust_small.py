"""The smaller items of issue 20, item 11: each a test that failed before its fix.

A folder in place of an output; evaluating nothing but background; find-best with nothing to
compare; overlay of a prediction on another grid; an MSD entry pairing differently named
files; ``-f 0 0``; whole-number float maps in ``instances``; and messages that misled
(``-c 3d_bogus``, ``--checkpoint latest``, a channel on another grid, a missing channel, ``-o``
naming a file, ``MODEL/fold_0/..``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.dataset import load_dataset
from tests.reliability_helpers import (
    SHAPE_IJK,
    assert_clean_failure,
    cli,
    files_in,
    load_nifti,
    make_model,
    save_nifti,
    save_npz_beside,
    tiny_dataset,
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with one trained model (folds 0 and 1) of dataset Task97_Tiny."""
    root = tmp_path_factory.mktemp("home")
    make_model(root / "Task97_Tiny" / "models" / "default" / "3d_fullres", folds=("0", "1"))
    return root


@pytest.fixture(scope="module")
def model(home: Path) -> Path:
    return home / "Task97_Tiny" / "models" / "default" / "3d_fullres"


def _image(folder: Path, name: str, seed: int = 0, origin=(0.0, 0.0, 0.0)) -> Path:
    from tests.synthetic import make_case

    image, _ = make_case(np.random.default_rng(seed), SHAPE_IJK)
    return save_nifti(image, folder / name, origin=origin)


def _predict(model: Path, inputs: Path, out: Path, *extra: object):
    return cli(
        "predict", "-i", inputs, "-o", out, "-m", model, "--device", "cpu", "--no-tta", *extra
    )


# ---------------------------------------------------------------- a folder where an output goes


def test_predict_a_folder_named_like_an_output_is_not_a_finished_case(
    model: Path, tmp_path: Path
) -> None:
    _image(tmp_path / "in", "a.nii.gz")
    _image(tmp_path / "in", "b.nii.gz", seed=1)
    (tmp_path / "out" / "a.nii.gz").mkdir(parents=True)  # was: "skipped (existing)", exit 0
    result = _predict(model, tmp_path / "in", tmp_path / "out")
    assert_clean_failure(result, str(tmp_path / "out" / "a.nii.gz"), "in the way")
    assert files_in(tmp_path / "out") == ["b.nii.gz"]


def test_ensemble_and_instances_refuse_a_folder_where_an_output_goes(tmp_path: Path) -> None:
    label = np.zeros((6, 6, 6), np.uint8)
    label[2:4, 2:4, 2:4] = 1
    fg = label.astype(np.float16)
    for folder in ("A", "B"):
        save_nifti(label, tmp_path / folder / "c.nii.gz")
        save_npz_beside(
            tmp_path / folder / "c.npz",
            probabilities=np.stack([1 - fg, fg]),
            labels=np.array([0, 1]),
        )
    (tmp_path / "E" / "c.nii.gz").mkdir(parents=True)
    result = cli("ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", tmp_path / "E")
    assert_clean_failure(result, "in the way")
    (tmp_path / "I" / "c.nii.gz").mkdir(parents=True)
    assert_clean_failure(cli("instances", tmp_path / "A", tmp_path / "I"), "in the way")


# ---------------------------------------------------------------- -o naming a file


@pytest.mark.parametrize("command", ["predict", "ensemble", "instances", "overlay", "evaluate"])
@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_output_folder_that_is_a_file_is_named(
    model: Path, tmp_path: Path, command: str, where: str
) -> None:
    label = np.zeros(SHAPE_IJK, np.uint8)
    label[2:6, 2:6, 2:6] = 1
    _image(tmp_path / "in", "c.nii.gz")
    for folder in ("A", "B"):
        save_nifti(label, tmp_path / folder / "c.nii.gz")
        fg = label.transpose(2, 1, 0).astype(np.float16)
        save_npz_beside(
            tmp_path / folder / "c.npz",
            probabilities=np.stack([1 - fg, fg]),
            labels=np.array([0, 1]),
        )
    blocker = tmp_path / "taken.txt"
    blocker.write_text("mine")
    out = blocker if where == "file" else blocker / "sub"
    args = {
        "predict": ["predict", "-i", tmp_path / "in", "-o", out, "-m", model, "--device", "cpu"],
        "ensemble": ["ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", out],
        "instances": ["instances", tmp_path / "A", out],
        "overlay": ["overlay", tmp_path / "in", tmp_path / "A", "-o", out],
        "evaluate": ["evaluate", "-r", tmp_path / "A", "-p", tmp_path / "B", "-o", out],
    }[command]
    result = cli(*args)
    assert_clean_failure(result, str(blocker), "is a file, not a folder")
    assert "File exists" not in result.output and "Not a directory" not in result.output
    assert blocker.read_text() == "mine"


# ---------------------------------------------------------------- evaluate, find-best, overlay


def test_evaluating_nothing_but_background_says_so(tmp_path: Path) -> None:
    for folder in ("ref", "pred"):
        save_nifti(np.zeros((6, 6, 6), np.uint8), tmp_path / folder / "c.nii.gz")
    result = cli("evaluate", "-r", tmp_path / "ref", "-p", tmp_path / "pred")
    assert_clean_failure(result, "nothing to score", "--dataset-json")  # was: mean Dice 0.0000
    root = tiny_dataset(tmp_path / "Task88_Empty", n_cases=1)
    named = cli("evaluate", "-r", tmp_path / "ref", "-p", tmp_path / "pred", "--dataset-json", root)
    assert named.exit_code == 0, named.output
    assert "1.0000" in named.output


def test_find_best_with_nothing_to_compare_fails(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task87_Nothing", n_cases=2)
    home = tmp_path / "home"
    assert cli("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 8).exit_code == 0
    assert_clean_failure(cli("find-best", root.name, "--home", home), "nothing to compare")


@pytest.mark.parametrize("change", ["origin", "direction"])
def test_overlay_refuses_a_prediction_on_another_grid(tmp_path: Path, change: str) -> None:
    pytest.importorskip("matplotlib")
    _image(tmp_path / "img", "c.nii.gz")
    label = np.zeros(SHAPE_IJK, np.uint8)
    label[2:6, 2:6, 2:6] = 1
    if change == "origin":
        save_nifti(label, tmp_path / "pred" / "c.nii.gz", origin=(5.0, 0.0, 0.0))
    else:
        import nibabel as nib

        (tmp_path / "pred").mkdir()
        nib.save(
            nib.Nifti1Image(label, np.diag([-1.0, 1.0, 1.0, 1.0])), tmp_path / "pred" / "c.nii.gz"
        )
    result = cli("overlay", tmp_path / "img", tmp_path / "pred", "-o", tmp_path / "png")
    assert_clean_failure(result, str(tmp_path / "pred" / "c.nii.gz"), change)
    assert not (tmp_path / "png").exists()
    evaluate = cli("evaluate", "-r", tmp_path / "pred", "-p", tmp_path / "pred")  # same grid
    assert evaluate.exit_code == 0


# ---------------------------------------------------------------- dataset, folds, instances


def test_an_msd_entry_pairing_differently_named_files_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tiny_dataset(tmp_path / "Task86_Pairs", n_cases=3)
    meta = json.loads((root / "dataset.json").read_text())
    with caplog.at_level(logging.WARNING, logger="autoseg"):
        load_dataset(root)
    assert "different names" not in caplog.text  # matching names: quiet
    label = root / meta["training"][0]["label"]
    label.rename(label.with_name("x_053.nii.gz"))
    meta["training"][0]["label"] = "./labelsTr/x_053.nii.gz"
    (root / "dataset.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING, logger="autoseg"):
        spec = load_dataset(root)
    assert "different names" in caplog.text and "x_053.nii.gz" in caplog.text
    assert "case_000.nii.gz" in caplog.text and len(spec.cases) == 3  # a warning, not a refusal


def test_a_fold_named_twice_is_used_once(model: Path, tmp_path: Path) -> None:
    _image(tmp_path / "in", "c.nii.gz")
    outs = {}
    for name, folds in (("twice", ["0", "0", "1"]), ("once", ["0", "1"])):
        result = _predict(
            model, tmp_path / "in", tmp_path / name, "--save-probabilities", "-f", *folds
        )
        assert result.exit_code == 0, result.output
        outs[name] = np.load(tmp_path / name / "c.npz")["probabilities"]
    assert "named more than once" in " ".join(
        _predict(model, tmp_path / "in", tmp_path / "x", "-f", "0", "0").output.split()
    )
    np.testing.assert_array_equal(outs["twice"], outs["once"])  # fold 0 not weighted double


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_instances_take_whole_number_floats_as_evaluate_does(tmp_path: Path, dtype) -> None:
    label = np.zeros((8, 8, 8), np.uint8)
    label[1:3, 1:3, 1:3] = 1
    label[5:7, 5:7, 5:7] = 1
    save_nifti(label, tmp_path / "int" / "c.nii.gz")
    save_nifti(label.astype(dtype), tmp_path / "float" / "c.nii.gz")
    for folder in ("int", "float"):
        result = cli("instances", tmp_path / folder, tmp_path / f"{folder}_out")
        assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(
        load_nifti(tmp_path / "float_out" / "c.nii.gz"),
        load_nifti(tmp_path / "int_out" / "c.nii.gz"),
    )
    assert load_nifti(tmp_path / "int_out" / "c.nii.gz").max() == 2  # two objects
    bad = label.astype(dtype)
    bad[0, 0, 0] = 0.5
    save_nifti(bad, tmp_path / "half" / "c.nii.gz")
    assert_clean_failure(cli("instances", tmp_path / "half", tmp_path / "half_out"), "non-integer")


# ---------------------------------------------------------------- messages


def test_a_configuration_or_checkpoint_not_trained_is_named(home: Path, tmp_path: Path) -> None:
    _image(tmp_path / "in", "c.nii.gz")
    base = ("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "--home", home)
    result = cli(*base, "-c", "3d_bogus")
    assert_clean_failure(result, "3d_bogus", "-c 3d_fullres")
    assert "train one" not in result.output
    result = cli(*base, "--checkpoint", "latest")
    assert_clean_failure(result, "checkpoint_latest.pt", "checkpoint_final.pt")
    assert "train one" not in result.output
    empty = tmp_path / "empty_home"
    empty.mkdir()
    assert_clean_failure(cli(*base[:-1], empty), "train one")  # nothing trained: as before


def test_a_channel_on_another_grid_says_what_differs(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m" / "default" / "3d_fullres", channels=2)
    _image(tmp_path / "in", "c_0000.nii.gz")
    _image(tmp_path / "in", "c_0001.nii.gz", seed=1, origin=(5.0, 0.0, 0.0))
    result = _predict(model, tmp_path / "in", tmp_path / "out")
    assert_clean_failure(result, "c_0001.nii.gz", "origin (5, 0, 0) vs (0, 0, 0)")


def test_a_missing_channel_message_has_no_stray_separator(tmp_path: Path) -> None:
    model = make_model(tmp_path / "m" / "default" / "3d_fullres", channels=2)
    _image(tmp_path / "in", "c_0000.nii.gz")
    _image(tmp_path / "in", "d_0000.nii.gz")
    _image(tmp_path / "in", "d_0001.nii.gz")
    result = _predict(model, tmp_path / "in", tmp_path / "out")
    assert_clean_failure(result, "missing channel file(s) c_0001.nii.gz (the model takes 2")
    assert "; (" not in result.output


def test_a_model_path_with_dot_dot_is_resolved(model: Path, tmp_path: Path) -> None:
    _image(tmp_path / "in", "c.nii.gz")
    result = _predict(model / "fold_0" / "..", tmp_path / "in", tmp_path / "out", "-f", "0")
    assert result.exit_code == 0, result.output
    assert "'..'" not in result.output and "(.." not in result.output
    pytest.importorskip("onnx")
    result = cli("export", model / "fold_0" / "..", "--onnx", tmp_path / "m.onnx", "-f", "0")
    assert result.exit_code == 0, result.output
