"""Region-based training: regions_class_order labels, sigmoid outputs, Dice + BCE, evaluation
per region (issue 11 item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.dataset import load_dataset
from autoseg.data.regions import Region, region_masks, regions_to_labels
from autoseg.errors import DatasetError
from autoseg.evaluation.metrics import case_metrics
from autoseg.evaluation.report import Evaluation
from autoseg.training.losses.region import RegionDiceBCELoss, region_dice_counts
from tests.reliability_helpers import cli, shrink_network, tiny_dataset

REGIONS = (Region("whole", (1, 2), 1), Region("inner", (2,), 2))


def region_dataset(root: Path, n_cases: int = 3, **meta: object) -> Path:
    """Labels 1 (outer blob) and 2 (touching blob) declared as regions whole = {1, 2}, inner = 2."""
    tiny_dataset(root, layout="nnunet", n_cases=n_cases)
    data = json.loads((root / "dataset.json").read_text())
    data["labels"] = {"background": 0, "whole": [1, 2], "inner": 2}
    data["regions_class_order"] = [1, 2]
    data.update(meta)
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_dataset_reads_regions_and_refuses_bad_ones(tmp_path: Path) -> None:
    spec = load_dataset(region_dataset(tmp_path / "Dataset088_Regions"))
    assert spec.regions == REGIONS
    assert spec.labels == {0: "background", 1: "label 1", 2: "inner"}
    for bad, message in (
        ({"regions_class_order": [1]}, "has 1 entries for 2 region"),
        ({"regions_class_order": [1, 1]}, "1 is not a value of 'inner'"),
        ({"labels": {"background": 0, "whole": [0, 1]}, "regions_class_order": [1]}, "value 0"),
    ):
        root = region_dataset(tmp_path / f"Dataset087_{len(message)}", **bad)
        with pytest.raises(DatasetError, match=message):
            load_dataset(root)


def test_label_map_and_regions_convert_both_ways() -> None:
    labels = np.zeros((4, 5, 6), dtype=np.uint8)
    labels[1:3, 1:4, 1:5] = 1
    labels[2, 2:3, 2:4] = 2
    masks = region_masks(labels, REGIONS)
    assert masks.shape == (2, 4, 5, 6) and masks[0].sum() == np.count_nonzero(labels)
    np.testing.assert_array_equal(regions_to_labels(masks.astype(np.float32), REGIONS), labels)


def test_region_loss_and_counts() -> None:
    target = torch.tensor([0, 1, 2, 2, 1, 0]).view(1, 1, 6)
    masks = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]], dtype=torch.float32)[None]
    loss = RegionDiceBCELoss(REGIONS)
    assert float(loss(40 * (2 * masks - 1), target)) < 1e-4  # right on both regions
    wrong = 40 * (2 * masks.flip(1) - 1)  # the two regions swapped
    assert float(loss(wrong, target)) > 1.0
    logits = torch.randn(1, 2, 6, requires_grad=True)
    loss(logits, target).backward()
    assert torch.all(logits.grad != 0)  # both outputs are trained at every voxel (sigmoid)
    tp, fp, fn = region_dice_counts(wrong, target, REGIONS)
    assert (tp.tolist(), fp.tolist(), fn.tolist()) == ([2, 2], [0, 2], [2, 0])


def test_evaluation_per_region() -> None:
    ref = np.zeros((3, 4, 4), dtype=np.uint8)
    ref[1, 1:3, 1:3] = 1
    ref[1, 1, 1] = 2
    pred = ref.copy()
    pred[1, 1, 1] = 1  # inner missed, whole right
    metrics = case_metrics(pred, ref, [1, 2], (1.0, 1.0, 1.0), regions=REGIONS)
    assert list(metrics) == [1, 2]
    assert metrics[1].dice == 1.0 and metrics[2].dice == 0.0


@pytest.mark.slow
def test_cli_trains_regions_and_predicts_label_maps(tmp_path: Path) -> None:
    root = region_dataset(tmp_path / "Dataset086_Regions", n_cases=5)
    home = tmp_path / "home"
    assert cli("plan", root, "--home", home, "--workers", 1).exit_code == 0
    plans = shrink_network(home / root.name / "plans.json")
    assert [r["name"] for r in plans["regions"]] == ["whole", "inner"]
    train = ("train", root.name, "3d_fullres", "0", "--epochs", 1, "--iterations", 2)
    train += ("--val-iterations", 1, "--device", "cpu", "--workers", 0, "--home", home)
    result = cli(*train)
    assert result.exit_code == 0, result.output
    model = home / root.name / "models/default/3d_fullres"
    assert load_checkpoint(model / "fold_0/checkpoint_final.pt").meta.num_classes == 2
    summary = Evaluation.from_json(model / "fold_0/summary.json")
    assert summary.labels == {1: "whole", 2: "inner"}
    out = tmp_path / "pred"
    args = ("predict", "-i", root / "imagesTr", "-o", out, "-m", model, "--device", "cpu")
    result = cli(*args, "--save-probabilities", "--no-tta")
    assert result.exit_code == 0, result.output
    for path in sorted(out.glob("*.nii.gz")):
        assert set(np.unique(np.asarray(nib.load(path).dataobj)).tolist()) <= {0, 1, 2}
        with np.load(path.with_name(path.name.replace(".nii.gz", ".npz"))) as npz:
            assert npz["region_probabilities"].shape[0] == 2
    refused = cli("ensemble", "-i", out, "-i", out, "-o", tmp_path / "e")
    assert refused.exit_code == 2
