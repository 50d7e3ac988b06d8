"""The train -> predict hand-over: which folds and checkpoints predict uses, inputs never
overwritten, what a failed or small training leaves behind (issue 10, items 5, 6, 14, 15)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.model_folder import ModelFolder, find_model_folders
from autoseg.data.paths import resolve_dataset
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError
from autoseg.inference.inputs import group_input_files, refuse_outputs_that_are_inputs
from autoseg.inference.predictor import Predictor
from autoseg.planning.runner import plan_dataset
from autoseg.training.fold_setup import TrainSettings
from autoseg.training.step import TrainingStep
from autoseg.training.train import train_fold
from tests.reliability_helpers import (
    SHAPE_IJK,
    assert_clean_failure,
    cli,
    files_in,
    make_model,
    save_nifti,
    tiny_dataset,
)
from tests.synthetic import make_case


def _image(path: Path, seed: int = 0) -> Path:
    image, _ = make_case(np.random.default_rng(seed), SHAPE_IJK)
    return save_nifti(image, path)


def _model_folder(home: Path, folds: tuple[str, ...]) -> Path:
    return make_model(home / "Task97_Tiny" / "models" / "default" / "3d_fullres", folds=folds)


# ---------------------------------------------------------------------------- item 5: folds


def test_default_folds_are_the_five_cv_folds_never_mixed_with_all(tmp_path: Path, caplog) -> None:
    folder = _model_folder(tmp_path, ("0", "1", "2", "3", "4", "all"))
    with caplog.at_level(logging.INFO, logger="autoseg"):
        predictor = Predictor.from_folder(folder, device="cpu", tta=False)
    assert predictor.folds == ("0", "1", "2", "3", "4") and len(predictor.networks) == 5
    assert "5 cross-validation folds" in caplog.text


def test_default_folds_fall_back_to_all_when_cv_is_incomplete(tmp_path: Path, caplog) -> None:
    folder = _model_folder(tmp_path, ("0", "1", "all"))
    with caplog.at_level(logging.INFO, logger="autoseg"):
        predictor = Predictor.from_folder(folder, device="cpu", tta=False)
    assert predictor.folds == ("all",) and len(predictor.networks) == 1
    assert "using fold 'all'" in caplog.text and "0, 1" in caplog.text
    assert ModelFolder(folder).default_folds() == ("all",)
    assert Predictor.from_folder(folder, folds=[0, 1], device="cpu").folds == ("0", "1")


def test_checkpoint_best_finds_a_model_without_checkpoint_final(tmp_path: Path) -> None:
    home = tmp_path / "home"
    folder = _model_folder(home, ("all",))
    final = folder / "fold_all" / "checkpoint_final.pt"
    final.rename(final.with_name("checkpoint_best.pt"))
    assert find_model_folders(home) == []
    assert find_model_folders(home, checkpoint="best") == [ModelFolder(folder)]
    _image(tmp_path / "in" / "a.nii.gz")
    out = tmp_path / "out"
    base = ["predict", "-i", tmp_path / "in", "-o", out, "--home", home, "--device", "cpu"]
    result = cli(*base, "--no-tta", "--checkpoint", "best")
    assert result.exit_code == 0, result.output
    assert files_in(out) == ["a.nii.gz"]
    assert_clean_failure(cli(*base, "--overwrite"), "no trained model")  # no final anywhere


# ---------------------------------------------------------------------------- item 6: inputs


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _model_folder(tmp_path_factory.mktemp("home"), ("0",))


def _predict(model: Path, *args: object):
    return cli("predict", "-m", model, "--device", "cpu", "--no-tta", *args)


@pytest.mark.parametrize("overwrite", [True, False])
@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_predict_never_replaces_an_input_reached_through_a_link(
    model: Path, tmp_path: Path, link: str, overwrite: bool
) -> None:
    data = tmp_path / "data"
    original = _image(data / "a.nii.gz")
    before = original.read_bytes()
    links = tmp_path / "links"
    links.mkdir()
    if link == "symlink":
        (links / "a.nii.gz").symlink_to(original)
    else:
        os.link(original, links / "a.nii.gz")
    extra = ["--overwrite"] if overwrite else []
    result = _predict(model, "-i", links, "-o", data, *extra)
    assert_clean_failure(result, "a.nii.gz", "would replace the input", "refused")
    assert original.read_bytes() == before
    assert sorted(p.name for p in data.iterdir()) == ["a.nii.gz"]


def test_an_input_file_given_inside_the_output_folder_is_refused(
    model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    image = _image(out / "a.nii.gz")
    before = image.read_bytes()
    result = _predict(model, "-i", tmp_path / "out" / ".." / "out" / "a.nii.gz", "-o", out)
    assert result.exit_code == 2 and image.read_bytes() == before


def test_refuse_outputs_that_are_inputs_compares_real_files(tmp_path: Path) -> None:
    a = _image(tmp_path / "a.nii.gz")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "link.nii.gz").symlink_to(a)
    with pytest.raises(AutosegError, match="would replace the input"):
        refuse_outputs_that_are_inputs([tmp_path / "sub" / "link.nii.gz"], [a])
    with pytest.raises(AutosegError, match="would replace the input"):
        refuse_outputs_that_are_inputs([a], [tmp_path / "sub" / ".." / "a.nii.gz"])
    refuse_outputs_that_are_inputs([a], [tmp_path / "b.nii.gz", tmp_path / "sub" / "a.nii.gz"])


def test_the_same_input_folder_given_twice_is_read_once(model: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    _image(inputs / "a.nii.gz")
    _image(inputs / "b.nii.gz", seed=1)
    (tmp_path / "alias").symlink_to(inputs)
    cases, problems = group_input_files([inputs, tmp_path / "in" / ".", tmp_path / "alias"], 1)
    assert sorted(cases) == ["a", "b"] and problems == []
    out = tmp_path / "out"
    result = _predict(model, "-i", inputs, "-i", tmp_path / "alias", "-o", out)
    assert result.exit_code == 0, result.output
    assert files_in(out) == ["a.nii.gz", "b.nii.gz"]


# ---------------------------------------------------------------------------- item 14: train


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A planned 3-case dataset (too few for 5-fold cross-validation): (home, name)."""
    root = tmp_path_factory.mktemp("small")
    dataset = tiny_dataset(root / "Task96_Three", n_cases=3)
    home = root / "home"
    plan_dataset(str(dataset), home=home, planner="default", gpu_memory_gb=8.0, workers=1)
    return home, "Task96_Three"


def _settings() -> TrainSettings:
    return TrainSettings(epochs=1, iterations=1, val_iterations=1, device="cpu", validate=False)


def test_fold_all_trains_with_fewer_than_five_cases(small) -> None:
    home, name = small
    dirs = resolve_dataset(name, home)
    plans = Plans.from_json(dirs.plans())
    fold_dir = train_fold(dirs, plans, "3d_fullres", "all", _settings())
    assert (fold_dir / "checkpoint_final.pt").is_file()
    assert not dirs.splits.exists()  # fold all needs no splits
    model = ModelFolder(dirs.model_folder("default", "3d_fullres"))
    assert model.plans.is_file() and model.folds_with("final") == ["all"]


def test_a_cv_fold_with_too_few_cases_is_a_clear_error(small) -> None:
    home, name = small
    result = cli("train", name, "3d_fullres", "0", "--home", home, "--device", "cpu")
    assert_clean_failure(result, "fold 0", "3 case(s) are too few", "fold 'all'")
    assert not (home / name / "models" / "default" / "3d_fullres" / "fold_0").exists()


def test_a_failed_training_leaves_nothing_that_looks_like_a_model(
    small, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, name = small
    dirs = resolve_dataset(name, home)
    plans = Plans.from_json(dirs.plans())

    def fail(self, batch):
        raise AutosegError("injected failure in the first training step")

    monkeypatch.setattr(TrainingStep, "train_batch", fail)
    with pytest.raises(AutosegError, match="injected"):
        train_fold(dirs, plans, "2d", "all", _settings())
    model = dirs.model_folder("default", "2d")
    assert not model.exists(), sorted(p.name for p in model.rglob("*"))
    assert "2d" not in [m.name for m in find_model_folders(home, name)]
