"""A case's outputs go together; ``ensemble`` averages only probabilities that belong to their
label map (issue 20 item 4).

Before the fix, ``predict --overwrite`` (without ``--save-probabilities``) left the ``CASE.npz``
of an earlier model beside the new label map, and ``ensemble`` averaged those stale
probabilities. Each test failed then.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint, save_checkpoint
from autoseg.inference.probability_files import check_pairing
from tests.reliability_helpers import assert_clean_failure, cli, make_model, save_nifti

PREDICT = ("--device", "cpu", "--no-tta")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(input folder, model A, model B): two tiny models that predict differently."""
    tmp = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        data = rng.normal(size=(16, 16, 16)).astype(np.float32)
        save_nifti(data, tmp / "in" / f"{case}.nii.gz")
    first = make_model(tmp / "A")
    second = tmp / "B"
    shutil.copytree(first, second)
    path = second / "fold_0" / "checkpoint_final.pt"
    ckpt = load_checkpoint(path)
    torch.manual_seed(1)
    weights = {
        k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v
        for k, v in ckpt.model_state.items()
    }
    save_checkpoint(path, weights, None, ckpt.meta)
    return tmp / "in", first, second


def predict(inputs: Path, out: Path, model: Path, *args: object) -> None:
    result = cli("predict", "-i", inputs, "-o", out, "-m", model, *PREDICT, *args)
    assert result.exit_code == 0, result.output


def labels(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


# ------------------------------------------------------------------ predict --overwrite


def test_overwrite_without_probabilities_removes_the_old_ones(models, tmp_path):
    inputs, first, second = models
    out = tmp_path / "out"
    predict(inputs, out, first, "--save-probabilities")
    from_first = labels(out / "a.nii.gz")
    predict(inputs, out, second, "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert not np.array_equal(labels(out / "a.nii.gz"), from_first)  # B's, and alone


def test_overwrite_with_probabilities_writes_a_matching_pair(models, tmp_path):
    inputs, first, second = models
    out = tmp_path / "out"
    predict(inputs, out, first, "--save-probabilities")
    predict(inputs, out, second, "--overwrite", "--save-probabilities")
    for case in ("a", "b"):
        assert check_pairing(out / f"{case}.npz", out / f"{case}.nii.gz") is None


def test_a_case_predicted_again_loses_its_older_probabilities(models, tmp_path):
    """No --overwrite: a case whose label map is missing is predicted again, without probs."""
    inputs, first, second = models
    out = tmp_path / "out"
    predict(inputs, out, first, "--save-probabilities")
    (out / "a.nii.gz").unlink()
    predict(inputs, out, second)
    assert not (out / "a.npz").exists()
    assert check_pairing(out / "b.npz", out / "b.nii.gz") is None  # skipped: still a pair


# ------------------------------------------------------------------ ensemble


@pytest.fixture
def two(models, tmp_path) -> tuple[Path, Path]:
    """Two prediction folders of the same cases, by model A and model B, with probabilities."""
    inputs, first, second = models
    predict(inputs, tmp_path / "A", first, "--save-probabilities")
    predict(inputs, tmp_path / "B", second, "--save-probabilities")
    return tmp_path / "A", tmp_path / "B"


def ensemble(two: tuple[Path, Path], out: Path):
    return cli("ensemble", "-i", two[0], "-i", two[1], "-o", out)


def _save_like(data: np.ndarray, like: Path, to: Path, shift: float = 0.0) -> None:
    img = nib.load(str(like))
    affine = img.affine.copy()
    affine[:3, 3] += shift
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine, img.header), str(to))


def test_ensemble_of_matching_pairs_works(two, tmp_path):
    assert ensemble(two, tmp_path / "E").exit_code == 0


@pytest.mark.parametrize(
    "how, named",
    [
        ("label map of the other model", "not the label map predicted"),
        ("label map edited", "not the label map predicted"),
        ("old npz after --overwrite of the labels", "not the label map predicted"),
        ("label map moved in space", "geometry"),
        ("label map of another shape", "shape"),
        ("npz without identifier", "names no label map"),
        ("label map missing", "no label map beside"),
    ],
)
def test_ensemble_refuses_probabilities_that_are_not_their_label_maps(
    two, models, tmp_path, how, named
):
    first, second = two
    target = second / "a.nii.gz"
    if how == "label map of the other model":
        shutil.copy(first / "a.nii.gz", target)
    elif how == "label map edited":
        data = labels(target).copy()
        data[0, 0, 0] = 1 - min(int(data[0, 0, 0]), 1)
        _save_like(data, target, target)
    elif how == "old npz after --overwrite of the labels":  # as the code before the fix left it
        shutil.copy(second / "a.npz", tmp_path / "kept.npz")
        predict(models[0], second, models[1], "--overwrite")  # model A's labels now
        shutil.copy(tmp_path / "kept.npz", second / "a.npz")
    elif how == "label map moved in space":
        _save_like(labels(target), target, target, shift=5.0)
    elif how == "label map of another shape":
        _save_like(np.zeros((16, 16, 8)), target, target)
    elif how == "npz without identifier":
        with np.load(second / "a.npz") as npz:
            kept = {k: npz[k] for k in ("probabilities", "labels")}
        np.savez_compressed(second / "a.npz", **kept)
    elif how == "label map missing":
        target.unlink()
    result = ensemble(two, tmp_path / "E")
    assert_clean_failure(result, str(second / "a.npz"), named)
    assert not (tmp_path / "E").exists()
