"""3d_lowres -> 3d_cascade_fullres (issue 11 item 1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from autoseg.data.model_folder import ModelFolder
from autoseg.data.plans import Plans
from autoseg.networks.unet import build_network
from autoseg.planners import Budget, get_planner
from autoseg.preprocessing.case_store import load_case, preprocessed_folder
from autoseg.preprocessing.weightmap import ensure_weight_maps
from autoseg.serial import to_dict
from autoseg.training.augment.cascade import previous_stage_channels
from autoseg.training.loader import BatchLoader
from tests.planning.test_planners import huge_ct
from tests.reliability_helpers import assert_clean_failure, cli, shrink_network, tiny_dataset

CASCADE = "3d_cascade_fullres"


def test_planner_adds_the_cascade_with_every_lowres() -> None:
    plans = get_planner("default")(huge_ct(), Budget(8.0))
    full, low, cascade = (plans.configuration(n) for n in ("3d_fullres", "3d_lowres", CASCADE))
    assert cascade.previous_stage == "3d_lowres" and full.previous_stage is None
    assert cascade.data_identifier == full.data_identifier  # shares 3d_fullres' data
    assert cascade.patch_size == full.patch_size and low.spacing != full.spacing


def _shrink(plans_path: Path) -> Plans:
    shrink_network(plans_path)
    return Plans.from_json(plans_path)


def _fake_lowres_cv(home: Path, root: Path, plans: Plans) -> ModelFolder:
    """3d_lowres 'cross-validation predictions' equal to the references, and random weights."""
    low = ModelFolder(home / root.name / "models/default/3d_lowres")
    for i, label in enumerate(sorted((root / "labelsTr").iterdir())):
        val = low.validation_dir(str(i % 5))
        val.mkdir(parents=True, exist_ok=True)
        shutil.copy(label, val / label.name)
    for k in range(5):
        low.validation_done(str(k)).write_text("ok\n")
    plans.to_json(low.plans)
    config = plans.configuration("3d_lowres")
    net = build_network(config, 1, plans.num_classes)
    meta = CheckpointMeta("3d_lowres", "all", 0, plans.num_classes, 1, to_dict(plans))
    save_checkpoint(low.checkpoint("all"), net.state_dict(), None, meta)
    return low


@pytest.mark.slow
def test_cascade_trains_on_lowres_cv_and_predicts_both_stages(tmp_path: Path, monkeypatch) -> None:
    root = tiny_dataset(tmp_path / "Task82_Cascade", n_cases=5, shape_ijk=(32, 32, 32))
    home = tmp_path / "home"
    result = cli("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 0.5)
    assert result.exit_code == 0, result.output
    plans = _shrink(home / root.name / "plans.json")
    assert CASCADE in plans.configurations
    train = ("train", root.name, CASCADE, "0", "--epochs", 1, "--iterations", 2)
    train += ("--val-iterations", 1, "--device", "cpu", "--workers", 0, "--home", home)
    assert_clean_failure(cli(*train), "3d_lowres", "fold(s) 0, 1, 2, 3, 4")

    _fake_lowres_cv(home, root, plans)
    result = cli(*train, "--augmentation", "device")  # torch's path (here on the CPU)
    assert result.exit_code == 0, result.output
    model = ModelFolder(home / root.name / "models/default" / CASCADE)
    ckpt = load_checkpoint(model.checkpoint("0"))
    assert ckpt.meta.in_channels == 1 + 2  # the image and one channel per foreground label
    assert ckpt.meta.augmentation == "device"
    fold_1 = [a if a != "0" else "1" for a in train]
    result = cli(*fold_1, "--no-validate")  # the default on the CPU: batchgenerators' path
    assert result.exit_code == 0, result.output
    assert load_checkpoint(model.checkpoint("1")).meta.augmentation == "cpu"
    config = plans.configuration(CASCADE)
    data = preprocessed_folder(home / root.name, config)
    index = json.loads(model.previous_stage_index.read_text())
    assert sorted(index) == [f"case_{i:03d}" for i in range(5)]
    for case in index:  # the references as 'predictions': exactly the preprocessed labels
        previous = np.load(model.previous_stage_dir / f"{case}.npy")
        np.testing.assert_array_equal(previous, load_case(data, case).seg)
    loader = BatchLoader(
        data,
        ["case_000"],
        config,
        seed=0,
        augment=False,
        previous_stage=(model.previous_stage_dir, plans.foreground_labels),
    )
    with loader:
        batch = next(loader)
    image, target = batch["image"], batch["target"]
    assert image.shape[1] == 3 and target.shape[1] == 1
    for channel, label in enumerate(plans.foreground_labels, start=1):
        np.testing.assert_array_equal(image[:, channel], (target[:, 0] == label).astype(np.float32))
    # with border weight maps too: labels, weights and previous stage share the label channels
    # (not perturbed here, to see them moved together: tests/training/test_cascade_augment.py)
    monkeypatch.setattr(
        "autoseg.training.sampler.previous_stage_channels",
        lambda previous, labels, rng: previous_stage_channels(previous, labels, None),
    )
    ensure_weight_maps(data, ["case_000"])
    previous = (model.previous_stage_dir, plans.foreground_labels)
    loader = BatchLoader(
        data, ["case_000"], config, seed=1, augment=True, previous_stage=previous, weights=True
    )
    with loader:
        batch = next(loader)
    image, target, weight = batch["image"], batch["target"], batch["weight"]
    assert image.shape[1] == 3 and target.shape[1] == 1 and weight.shape == target.shape
    assert weight.dtype == np.float32 and weight.min() >= 0.0 and weight.max() > 0.0
    for channel, label in enumerate(plans.foreground_labels, start=1):  # augmented together
        np.testing.assert_array_equal(image[:, channel], (target[:, 0] == label).astype(np.float32))
    assert (model.summary("0")).is_file()  # validated with the lowres CV predictions

    out = tmp_path / "pred"
    one = root / "imagesTr" / "case_004.nii.gz"
    args = ("predict", "-i", one, "-o", out, "-c", CASCADE, "--home", home, "-d", root.name)
    result = cli(*args, "--device", "cpu", "--no-tta", "--step-size", 1.0)
    assert result.exit_code == 0, result.output  # 3d_lowres, then the cascade network
    assert [p.name for p in out.glob("*.nii.gz")] == ["case_004.nii.gz"]
    torch.manual_seed(0)  # (keeps later tests' random state independent of this one)
