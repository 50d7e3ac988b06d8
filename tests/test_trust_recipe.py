"""A model folder holds exactly one recipe (issue 20 item 1).

Before the fix, ``train`` added a fold planned differently to a model folder, replacing its
plans.json, and ``predict`` preprocessed the older folds' inputs with plans they were never
trained with, without a word. Each test here failed then.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import autoseg
from autoseg.data.checkpoint import load_checkpoint, save_checkpoint
from autoseg.errors import AutosegError
from autoseg.serial import file_sha256
from tests.reliability_helpers import (
    assert_clean_failure,
    cli,
    make_model,
    save_nifti,
    shrink_network,
    snapshot,
    tiny_dataset,
)

PLAN = ("--workers", 1, "--gpu-memory", 8)
QUICK = ("--epochs", 1, "--iterations", 1, "--val-iterations", 1, "--no-validate")
PREDICT = ("--device", "cpu", "--no-tta")


def _normalisation(plans: dict) -> None:
    config = plans["configurations"]["3d_fullres"]
    config["normalization"][0] = {
        "scheme": "ct",
        "clip_low": -100.0,
        "clip_high": 200.0,
        "mean": 40.0,
        "std": 60.0,
        "use_nonzero_mask": False,
    }


def _config(key: str, value: object) -> Callable[[dict], None]:
    def edit(plans: dict) -> None:
        plans["configurations"]["3d_fullres"][key] = value

    return edit


def _plans(key: str, value: object) -> Callable[[dict], None]:
    def edit(plans: dict) -> None:
        plans[key] = value

    return edit


# what differs -> (how the plans are edited, the field the message must name)
VARIANTS = {
    "normalisation": (_normalisation, "normalization[0].scheme"),
    "patch size": (_config("patch_size", [32, 32, 32]), "patch_size"),
    "spacing": (_config("spacing", [1.5, 1.5, 1.5]), "spacing"),
    "planner": (_plans("planner", "resenc_m"), "planner"),
    "network": (_config("features_per_stage", [8, 16]), "features_per_stage"),
    "labels": (_plans("labels", {"0": "background", "1": "head", "2": "tail"}), "labels.1"),
}


def edit_plans_json(folder: Path, edit: Callable[[dict], None]) -> None:
    """Edit the model folder's plans.json as a user (or a re-plan) would."""
    raw = json.loads((folder / "plans.json").read_text())
    edit(raw)
    (folder / "plans.json").write_text(json.dumps(raw))


def record_other_plans(
    folder: Path, fold: str, edit: Callable[[dict], None], checkpoint: str = "final"
) -> None:
    """Make ``fold``'s checkpoint record plans edited by ``edit``: as if it had been trained
    after a re-plan that changed them (its weights still fit the network)."""
    path = folder / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"
    ckpt = load_checkpoint(path)
    plans = copy.deepcopy(ckpt.meta.plans)
    edit(plans)
    meta = dataclasses.replace(ckpt.meta, plans=plans, recipe="")
    save_checkpoint(path, ckpt.model_state, None, meta)


@pytest.fixture
def image(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    return save_nifti(
        rng.normal(size=(16, 16, 16)).astype(np.float32), tmp_path / "in" / "a.nii.gz"
    )


def predict(image: Path, out: Path, model: Path, *args: object):
    return cli("predict", "-i", image.parent, "-o", out, "-m", model, *PREDICT, *args)


# ------------------------------------------------------------------ predict, by what differs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_predict_refuses_a_fold_trained_with_other_plans(tmp_path, image, variant):
    edit, field = VARIANTS[variant]
    model = make_model(tmp_path / "model", folds=("0", "1"))
    before = snapshot(model)
    edit_plans_json(model, edit)  # the folder's plans changed after fold 0 and 1 were trained
    for folds in (("-f", "0"), ("-f", "0", "1"), ()):
        result = predict(image, tmp_path / "out", model, *folds)
        assert_clean_failure(result, "fold 0", "fold_0", "plans.json", field)
        assert not (tmp_path / "out").exists()
    with pytest.raises(AutosegError, match="fold 0"):
        autoseg.load_model(model, folds=[0], device="cpu")
    assert {k: v for k, v in snapshot(model).items() if k != "plans.json"} == {
        k: v for k, v in before.items() if k != "plans.json"
    }


@pytest.mark.parametrize("fold", ["0", "3", "all"])
def test_the_fold_with_other_plans_is_named_and_the_others_still_predict(tmp_path, image, fold):
    model = make_model(tmp_path / "model", folds=("0", "1", "2", "3", "4", "all"))
    record_other_plans(model, fold, VARIANTS["patch size"][0])
    refused = [("-f", fold), ("-f", "1", fold), ("-f", f"1,{fold}")]
    refused += [()] if fold != "all" else []  # the default: folds 0-4
    for args in refused:
        result = predict(image, tmp_path / "out", model, *args)
        assert_clean_failure(result, f"fold {fold}", f"fold_{fold}", "patch_size")
    assert not (tmp_path / "out").exists()
    good = [f for f in ("1", "2", "4", "all", "0") if f != fold][:2]
    result = predict(image, tmp_path / "ok", model, "-f", *good)
    assert result.exit_code == 0, result.output


def test_checkpoint_best_is_checked_too(tmp_path, image):
    model = make_model(tmp_path / "model", folds=("0", "1"))
    for fold in ("0", "1"):
        shutil.copy(model / f"fold_{fold}/checkpoint_final.pt", model / f"fold_{fold}/best.pt")
        (model / f"fold_{fold}/best.pt").rename(model / f"fold_{fold}/checkpoint_best.pt")
    record_other_plans(model, "1", VARIANTS["spacing"][0], checkpoint="best")
    result = predict(image, tmp_path / "out", model, "-f", "0", "1", "--checkpoint", "best")
    assert_clean_failure(result, "fold 1", "checkpoint_best.pt", "spacing")
    result = predict(image, tmp_path / "out", model, "-f", "0", "1")  # the final ones agree
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------ the other doors


def test_predict_by_dataset_name_load_model_export_and_import_refuse(tmp_path, image):
    home = tmp_path / "home"
    model = make_model(home / "Task97_Tiny" / "models" / "default" / "3d_fullres", folds=("0",))
    (home / "Task97_Tiny" / "dataset_source.txt").write_text(f"{tmp_path / 'raw'}\n")  # -d finds it
    good_archive = tmp_path / "good.zip"
    assert cli("export", model, good_archive).exit_code == 0
    record_other_plans(model, "0", VARIANTS["normalisation"][0])
    args = ("-d", "Task97_Tiny", "-c", "3d_fullres", "--home", home, *PREDICT)
    result = cli("predict", "-i", image.parent, "-o", tmp_path / "out", *args)
    assert_clean_failure(result, "fold 0", "normalization[0].scheme")
    with pytest.raises(AutosegError, match=r"fold 0 .*normalization\[0\]\.scheme"):
        autoseg.load_model(model, device="cpu")
    result = cli("export", model, tmp_path / "mixed.zip")
    assert_clean_failure(result, "fold 0", "normalization")
    assert not (tmp_path / "mixed.zip").exists()
    # an archive whose fold records other plans than its plans.json (made by hand)
    crafted = tmp_path / "crafted.zip"
    with zipfile.ZipFile(good_archive) as src, zipfile.ZipFile(crafted, "w") as dst:
        manifest = json.loads(src.read("export.json"))
        ckpt = tmp_path / "fold0.pt"
        mixed = load_checkpoint(model / "fold_0/checkpoint_final.pt")
        save_checkpoint(ckpt, mixed.model_state, None, mixed.meta)
        manifest["files"]["fold_0/checkpoint_final.pt"] = file_sha256(ckpt)
        for name in src.namelist():
            if name == "export.json":
                dst.writestr(name, json.dumps(manifest))
            elif name == "fold_0/checkpoint_final.pt":
                dst.write(ckpt, name)
            else:
                dst.writestr(name, src.read(name))
    result = cli("import", crafted, "--home", tmp_path / "elsewhere")
    assert_clean_failure(result, "fold 0", "normalization")
    assert not (
        tmp_path / "elsewhere" / "Task97_Tiny" / "models" / "default" / "3d_fullres"
    ).exists()


def test_find_best_refuses_a_configuration_with_mixed_folds(tmp_path):
    from tests.evaluation.test_ensemble import _fake_cv_model, _planned, _scene

    rng = np.random.default_rng(1)
    home, dataset = _planned(tmp_path, "Task93_Mixed")
    scenes = {f"case_{i}": _scene(rng) for i in range(5)}
    refs = {c: s[0] for c, s in scenes.items()}
    _fake_cv_model(home, dataset, "3d_fullres", {c: s[1] for c, s in scenes.items()}, refs)
    _fake_cv_model(home, dataset, "2d", {c: s[2] for c, s in scenes.items()}, refs)
    assert cli("find-best", dataset, "--home", home).exit_code == 0
    model = home / dataset / "models" / "default" / "2d"
    record_other_plans(model, "3", _plans("channels", ["CT"]))
    result = cli("find-best", dataset, "--home", home)
    assert_clean_failure(result, "fold 3", "channels", str(model))


# ------------------------------------------------------------------ train, for real


def test_train_refuses_a_fold_on_changed_plans_and_replace_moves_the_old_folds(tmp_path):
    """The issue's recipe: train fold 0, change the channel's modality, re-plan, train fold 1."""
    root = tiny_dataset(tmp_path / "Task79_Recipe", n_cases=5)
    home = tmp_path / "home"
    plans_json = home / root.name / "plans.json"

    def plan() -> None:
        assert cli("plan", root, "--home", home, *PLAN).exit_code == 0
        shrink_network(plans_json)

    def train(fold: int, *extra: object):
        return cli("train", root.name, "3d_fullres", fold, "--home", home, *QUICK, *extra)

    plan()
    assert train(0).exit_code == 0
    model = home / root.name / "models" / "default" / "3d_fullres"
    recorded = load_checkpoint(model / "fold_0/checkpoint_final.pt").meta.recipe
    assert len(recorded) == 16
    plan()  # the same data planned again: the same recipe, fold 1 joins
    result = train(1)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(model / "fold_1/checkpoint_final.pt").meta.recipe == recorded

    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = {"0": "CT"}
    (root / "dataset.json").write_text(json.dumps(meta))
    plan()
    before = snapshot(model)
    result = train(2)
    assert_clean_failure(result, "fold(s) 0, 1", "channels", "normalization[0]", "--replace")
    assert snapshot(model) == before  # plans.json not replaced, no fold_2
    result = train(0, "--resume")
    assert_clean_failure(result, "fold(s) 0, 1", "--resume")
    assert snapshot(model) == before

    result = train(2, "--replace")
    assert result.exit_code == 0, result.output
    (moved,) = (home / root.name / "replaced_models" / "default").iterdir()
    assert snapshot(moved) == before  # the old model, whole, beside the new one
    assert sorted(p.name for p in model.glob("fold_*")) == ["fold_2"]
    assert json.loads((model / "plans.json").read_text())["channels"] == ["CT"]
    # the moved folder is not taken for a model: find-best finds nothing validated to compare
    # (the new fold trained without validation), rather than the old folds
    result = cli("find-best", root.name, "--home", home)
    assert_clean_failure(result, "nothing to compare")
