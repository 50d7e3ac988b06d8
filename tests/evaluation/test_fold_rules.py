"""Every "all five folds" rule at 1, 4 and 5 folds: find-best's ranking, the post-processing
decision, find-best's pooled ensembles and the cascade's inputs. A decision that depends on how
many folds exist must be taken on all five, never on the first one validated."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
from autoseg.data.io import read_array, write_label
from autoseg.data.model_folder import ModelFolder
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError
from autoseg.evaluation import crossval
from autoseg.evaluation.crossval import (
    BestConfiguration,
    ConfigurationResult,
    decide_cv_postprocessing,
)
from autoseg.evaluation.ensemble import evaluate_cv_ensembles
from autoseg.evaluation.evaluate import evaluate_arrays
from autoseg.inference.cascade import cv_predictions
from autoseg.serial import to_dict
from tests.inference.test_predict import tiny_config
from tests.reliability_helpers import save_nifti

LABELS = {0: "background", 1: "blob"}
CASES = [f"case_{i:02d}" for i in range(10)]  # two validation cases per fold


def _result(config: str, n_folds: int, dice: float) -> ConfigurationResult:
    return ConfigurationResult(
        planner="default",
        configuration=config,
        folds=tuple(str(k) for k in range(n_folds)),
        mean_dice=dice,
        dice_per_label={"blob": dice},
    )


@pytest.mark.parametrize("n_folds", [1, 4, 5])
def test_find_best_prefers_a_complete_configuration(n_folds: int) -> None:
    """An incomplete configuration scoring higher never beats a complete one; at 5 folds the
    higher score wins."""
    complete = _result("3d_fullres", 5, 0.80)
    other = _result("2d", n_folds, 0.90)
    assert complete.complete and other.complete == (n_folds == 5)
    for order in ((complete, other), (other, complete)):
        best = BestConfiguration("D", order).best
        assert best is (other if n_folds == 5 else complete)


@pytest.mark.parametrize("n_folds", [1, 4])
def test_find_best_without_complete_configurations_is_provisional(n_folds: int) -> None:
    low, high = _result("3d_fullres", n_folds, 0.7), _result("2d", 1, 0.75)
    assert BestConfiguration("D", (low, high)).best is high


def _blob(case: str) -> np.ndarray:
    ref = np.zeros((6, 8, 8), dtype=np.uint8)
    i = CASES.index(case)
    ref[1:4, 1 + i % 3 : 5 + i % 3, 2:6] = 1
    return ref


def _fake_model(home: Path, config: str, folds: list[int], noisy: bool = False) -> ModelFolder:
    """A model folder with ``folds`` validated: predictions, references, probabilities,
    summaries. ``noisy`` adds a small false-positive island (removed by keeping the largest
    component) to every prediction."""
    folder = ModelFolder(home / "D" / "models" / "default" / config)
    folder.path.mkdir(parents=True)
    configuration = dataclasses.replace(tiny_config(), name=config)
    plans = Plans("D", "default", 8.0, 8, ("MRI",), LABELS, {config: configuration})
    plans.to_json(folder.plans)
    for k in folds:
        fold = str(k)
        val, ref_dir = folder.validation_dir(fold), folder.validation_refs(fold)
        val.mkdir(parents=True)
        ref_dir.mkdir()
        pairs = []
        for case in CASES[k::5]:
            ref = _blob(case)
            ref_path = save_nifti(ref.transpose(2, 1, 0), ref_dir / f"{case}.nii.gz")
            _, geometry = read_array(ref_path)
            pred = ref.copy()
            if noisy:
                pred[5, 7, 7] = 1
            fg = pred.astype(np.float32)
            probs = np.stack([1 - fg, fg]).astype(np.float16)
            np.savez_compressed(val / f"{case}.npz", probabilities=probs, labels=np.array([0, 1]))
            write_label(pred, geometry, val / f"{case}.nii.gz")
            pairs.append((case, pred, ref, geometry.spacing))
        evaluate_arrays(pairs, LABELS).to_json(folder.summary(fold))
        # find-best reads only the metadata: the plans the fold was trained with
        meta = CheckpointMeta(config, fold, 0, len(LABELS), 1, to_dict(plans))
        save_checkpoint(folder.checkpoint(fold), {}, None, meta)
        folder.validation_done(fold).write_text("ok\n")
    return folder


@pytest.mark.parametrize("n_folds", [1, 4, 5])
def test_postprocessing_is_decided_on_all_five_folds_only(
    tmp_path: Path, monkeypatch, n_folds: int
) -> None:
    folder = _fake_model(tmp_path, "3d_fullres", list(range(n_folds)), noisy=True)
    seen: list[int] = []
    real = crossval.decide_postprocessing

    def spy(cases, labels):
        cases = list(cases)
        seen.append(len(cases))
        return real(iter(cases), labels)

    monkeypatch.setattr(crossval, "decide_postprocessing", spy)
    written = decide_cv_postprocessing(folder, [1])
    assert written == (n_folds == 5)
    assert folder.postprocessing.is_file() == (n_folds == 5)
    if n_folds == 5:
        assert seen == [len(CASES)]  # every case of every fold, pooled
        text = folder.postprocessing.read_text()
        assert '"largest_component_foreground": true' in text  # the islands go
    else:
        assert seen == []


def test_postprocessing_fold_order_does_not_matter(tmp_path: Path) -> None:
    """Folds validated out of order (4 first, 0 last) decide the same as in order."""
    a = _fake_model(tmp_path / "a", "3d_fullres", [4, 2, 3, 1, 0], noisy=True)
    b = _fake_model(tmp_path / "b", "3d_fullres", [0, 1, 2, 3, 4], noisy=True)
    assert decide_cv_postprocessing(a, [1]) and decide_cv_postprocessing(b, [1])
    assert a.postprocessing.read_text() == b.postprocessing.read_text()


@pytest.mark.parametrize("n_folds", [1, 4, 5])
def test_cv_ensembles_take_only_configurations_with_five_folds(
    tmp_path: Path, n_folds: int
) -> None:
    full = _fake_model(tmp_path, "3d_fullres", list(range(5)))
    other = _fake_model(tmp_path, "2d", list(range(n_folds)))
    third = _fake_model(tmp_path, "3d_lowres", list(range(5)))
    results = evaluate_cv_ensembles([full, other, third], LABELS, size=2)
    groups = {tuple(m.name for m in r.members) for r in results}
    if n_folds == 5:
        assert groups == {("3d_fullres", "2d"), ("3d_fullres", "3d_lowres"), ("2d", "3d_lowres")}
    else:
        assert groups == {("3d_fullres", "3d_lowres")}
    singles = evaluate_cv_ensembles([full, other], LABELS, size=1)
    assert {r.members[0].name for r in singles} == (
        {"3d_fullres", "2d"} if n_folds == 5 else {"3d_fullres"}
    )
    for r in results:  # pooled over every case of the dataset
        assert len(r.evaluation.cases) == len(CASES)


@pytest.mark.parametrize("n_folds", [1, 4, 5])
def test_cascade_inputs_need_all_five_lowres_folds(tmp_path: Path, n_folds: int) -> None:
    _fake_model(tmp_path, "3d_lowres", list(range(n_folds)))
    dirs = DatasetDirs(name="D", raw=None, work=tmp_path / "D")
    config = dataclasses.replace(
        tiny_config(), name="3d_cascade_fullres", previous_stage="3d_lowres"
    )
    plans = Plans("D", "default", 8.0, 8, ("MRI",), LABELS, {config.name: config})
    if n_folds < 5:
        missing = ", ".join(str(k) for k in range(n_folds, 5))
        with pytest.raises(AutosegError, match=f"fold\\(s\\) {missing} first"):
            cv_predictions(dirs, plans, config)
        return
    found = cv_predictions(dirs, plans, config)
    assert sorted(found) == CASES
    for case, path in found.items():
        assert path.name == f"{case}.nii.gz"


@pytest.mark.parametrize("n_folds", [1, 4, 5])
def test_find_best_end_to_end_at_each_fold_count(tmp_path: Path, monkeypatch, n_folds) -> None:
    """From model folders: the folds found are reported, an incomplete configuration is not
    best, and pooled ensembles are listed only when two configurations have five folds."""
    monkeypatch.setattr(crossval, "require_planned", lambda work, name: None)
    monkeypatch.setattr(crossval, "require_unchanged", lambda dirs: None)  # no raw data here
    _fake_model(tmp_path, "3d_fullres", list(range(5)), noisy=True)  # lower Dice
    _fake_model(tmp_path, "2d", list(range(n_folds)))  # perfect
    found = crossval.find_best_configuration(DatasetDirs(name="D", raw=None, work=tmp_path / "D"))
    folds = {r.configuration: r.folds for r in found.results}
    assert folds == {"3d_fullres": tuple("01234"), "2d": tuple("01234"[:n_folds])}
    assert found.best is not None
    assert found.best.configuration == ("2d" if n_folds == 5 else "3d_fullres")
    members = {frozenset(s.members) for s in found.pooled}
    if n_folds == 5:
        assert frozenset({("default", "3d_fullres"), ("default", "2d")}) in members
    else:
        assert found.pooled == ()
