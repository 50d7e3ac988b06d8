"""Ensembles of configurations: `autoseg ensemble` and find-best's pairs (issue 11 item 6)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
from autoseg.data.io import read_array, write_label
from autoseg.data.model_folder import ModelFolder
from autoseg.data.plans import Configuration, Normalization, Plans
from autoseg.evaluation.evaluate import evaluate_arrays
from autoseg.inference.probability_files import save_probabilities
from autoseg.serial import to_dict
from tests.inference.test_exchange import make_model
from tests.reliability_helpers import assert_clean_failure, cli, save_nifti, tiny_dataset

LABELS = {0: "background", 1: "blob"}


def _npz(path: Path, probs: np.ndarray, label_map: Path | None = None) -> None:
    """``CASE.npz`` as predict writes it: with ``label_map``, it names that label map."""
    labels, geometry = read_array(label_map) if label_map is not None else (None, None)
    affine = np.asarray(geometry.affine) if geometry is not None else None
    save_probabilities(probs, np.array([0, 1]), path, label_map=labels, affine=affine)


def _two_class(fg: np.ndarray) -> np.ndarray:
    return np.stack([1 - fg, fg]).astype(np.float32)  # (K, Z, Y, X)


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A reference blob and two predictions, each right on it with its own false positives."""
    ref = np.zeros((6, 8, 8), dtype=np.uint8)
    ref[2:4, 2:6, 2:6] = 1
    a, b = 0.9 * ref, 0.9 * ref
    a[0, :3, :3] = 0.6  # false positives of A only
    b[5, 5:, 5:] = 0.6  # false positives of B only
    a += rng.uniform(0, 0.05, a.shape)
    b += rng.uniform(0, 0.05, b.shape)
    return ref, _two_class(np.clip(a, 0, 1)), _two_class(np.clip(b, 0, 1))


def test_ensemble_averages_probabilities(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref_img = save_nifti(np.zeros((8, 8, 6), dtype=np.uint8), tmp_path / "ref.nii.gz")
    _, geometry = read_array(ref_img)
    expected = {}
    for case in ("c1", "c2"):
        _, pa, pb = _scene(rng)
        for folder, probs in (("A", pa), ("B", pb)):
            (tmp_path / folder).mkdir(exist_ok=True)
            labels = probs.argmax(0).astype(np.uint8)
            write_label(labels, geometry, tmp_path / folder / f"{case}.nii.gz")
            _npz(tmp_path / folder / f"{case}.npz", probs, tmp_path / folder / f"{case}.nii.gz")
        mean = (pa.astype(np.float16).astype(np.float32) + pb.astype(np.float16)) / 2
        expected[case] = mean.argmax(0)
    result = cli("ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", tmp_path / "E")
    assert result.exit_code == 0, result.output
    for case, labels in expected.items():
        got, got_geometry = read_array(tmp_path / "E" / f"{case}.nii.gz")
        np.testing.assert_array_equal(got, labels)
        assert got_geometry.same_grid(geometry)
        single, _ = read_array(tmp_path / "A" / f"{case}.nii.gz")
        assert not np.array_equal(single, labels)  # the ensemble is not just the first member

    (tmp_path / "B" / "c2.npz").unlink()
    out = tmp_path / "E2"
    assert_clean_failure(
        cli("ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", out), "c2.npz", "missing"
    )
    assert_clean_failure(cli("ensemble", "-i", tmp_path / "A", "-o", out), "at least two")
    assert not out.exists()


def test_ensemble_of_two_predicted_models(tmp_path: Path) -> None:
    root, first = make_model(tmp_path / "a", "Task94_Ens", n_cases=2, seed=0)
    _, second = make_model(tmp_path / "b", "Task94_Ens", n_cases=2, seed=1)
    for tag, model in (("A", first), ("B", second)):
        args = ("predict", "-i", root / "imagesTr", "-o", tmp_path / tag, "-m", model)
        result = cli(*args, "--device", "cpu", "--no-tta", "--save-probabilities")
        assert result.exit_code == 0, result.output
    result = cli("ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", tmp_path / "E")
    assert result.exit_code == 0, result.output
    for path in sorted((tmp_path / "A").glob("*.npz")):
        probs = [np.load(tmp_path / d / path.name)["probabilities"] for d in "AB"]
        probs = [p.astype(np.float32) for p in probs]
        got, _ = read_array(tmp_path / "E" / path.name.replace(".npz", ".nii.gz"))
        np.testing.assert_array_equal(got, ((probs[0] + probs[1]) / 2).argmax(0))


def _planned(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A planned (tiny) dataset in a home, for find-best to accept: (home, name)."""
    root = tiny_dataset(tmp_path / name, n_cases=2)
    home = tmp_path / "home"
    result = cli("plan", root, "--home", home, "--workers", 1)
    assert result.exit_code == 0, result.output
    return home, name


def _fake_cv_model(home: Path, dataset: str, config: str, probs_of: dict, refs: dict) -> None:
    """A model folder whose 5 folds are validated, each with saved probabilities."""
    folder = ModelFolder(home / dataset / "models" / "default" / config)
    folder.path.mkdir(parents=True)
    tiny = Configuration(
        config, (1.0,) * 3, (8,) * 3, 2, ((1,) * 3,), ((3,) * 3,), (4,), (Normalization("zscore"),)
    )
    plans = Plans(dataset, "default", 8.0, 8, ("MRI",), LABELS, {config: tiny})
    plans.to_json(folder.plans)
    cases = sorted(probs_of)
    for k in range(5):
        fold = str(k)
        val, ref_dir = folder.validation_dir(fold), folder.validation_refs(fold)
        val.mkdir(parents=True)
        ref_dir.mkdir()
        mine = cases[k::5]
        pairs = []
        for case in mine:
            ref_path = save_nifti(refs[case].transpose(2, 1, 0), ref_dir / f"{case}.nii.gz")
            _, geometry = read_array(ref_path)
            _npz(val / f"{case}.npz", probs_of[case])
            pred = probs_of[case].argmax(0).astype(np.uint8)
            write_label(pred, geometry, val / f"{case}.nii.gz")
            pairs.append((case, pred, refs[case], geometry.spacing))
        evaluate_arrays(pairs, LABELS).to_json(folder.summary(fold))
        # find-best reads only the metadata: the plans the fold was trained with
        meta = CheckpointMeta(config, fold, 0, len(LABELS), 1, to_dict(plans))
        save_checkpoint(folder.checkpoint(fold), {}, None, meta)
        folder.validation_done(fold).write_text("ok\n")


def test_find_best_reports_a_better_pair_with_its_commands(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    home, dataset = _planned(tmp_path, "Task93_Best")
    scenes = {f"case_{i}": _scene(rng) for i in range(5)}
    refs = {c: s[0] for c, s in scenes.items()}
    _fake_cv_model(home, dataset, "3d_fullres", {c: s[1] for c, s in scenes.items()}, refs)
    _fake_cv_model(home, dataset, "2d", {c: s[2] for c, s in scenes.items()}, refs)
    result = cli("find-best", dataset, "--home", home)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "best ensemble: 2d (default) + 3d_fullres (default)" in text, result.output
    assert "pooled mean Dice 1.0000" in text
    assert f"-d {dataset} -c 2d --planner default --save-probabilities" in text
    assert "autoseg ensemble -i OUT_2d -i OUT_3d_fullres -o OUT" in text


def test_find_best_keeps_the_single_configuration_when_the_pair_is_not_better(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(2)
    home, dataset = _planned(tmp_path, "Task92_Best")
    scenes = {f"case_{i}": _scene(rng) for i in range(5)}
    refs = {c: s[0] for c, s in scenes.items()}
    perfect = {c: _two_class(r.astype(np.float32)) for c, r in refs.items()}
    _fake_cv_model(home, dataset, "3d_fullres", perfect, refs)
    _fake_cv_model(home, dataset, "2d", perfect, refs)  # the same: the pair ties
    result = cli("find-best", dataset, "--home", home)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "best configuration:" in text and "autoseg ensemble" not in text


@pytest.mark.parametrize("bad", ["not a zip", "pickle"])
def test_ensemble_refuses_foreign_probability_files(tmp_path: Path, bad: str) -> None:
    for folder in ("A", "B"):
        (tmp_path / folder).mkdir()
        label_map = save_nifti(np.zeros((4, 4, 4), dtype=np.uint8), tmp_path / folder / "c.nii.gz")
        _npz(tmp_path / folder / "c.npz", _two_class(np.zeros((4, 4, 4))), label_map)
    evil = tmp_path / "B" / "c.npz"
    if bad == "not a zip":
        evil.write_bytes(b"garbage")
    else:
        np.savez(evil, probabilities=np.array([object()], dtype=object), labels=np.array([0, 1]))
        assert zipfile.is_zipfile(evil)
    result = cli("ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", tmp_path / "E")
    assert_clean_failure(result, "c.npz", "not a probability file")
    assert not (tmp_path / "E").exists()
