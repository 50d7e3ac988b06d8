"""The ignore label (sparse annotation): excluded from loss, pseudo-Dice, sampling, fingerprint
and evaluation; never predicted (issue 11 item 3)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.dataset import load_dataset
from autoseg.data.plans import Plans
from autoseg.errors import DatasetError
from autoseg.evaluation.evaluate import evaluate_arrays
from autoseg.evaluation.metrics import case_metrics
from autoseg.evaluation.report import Evaluation
from autoseg.planning.fingerprint import inspect_case
from autoseg.preprocessing.case_store import PreprocessedCase
from autoseg.training.losses.dice_ce import DiceCELoss, dice_counts
from autoseg.training.sampler import PatchSampler
from tests.reliability_helpers import cli, shrink_network, tiny_dataset


def _relabel(root: Path, labels: dict[str, str]) -> Path:
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"] = labels
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def sparse_dataset(root: Path, n_cases: int = 3) -> Path:
    """The synthetic dataset with its second label (the small blob) declared as ``ignore``."""
    tiny_dataset(root, n_cases=n_cases)
    return _relabel(root, {"0": "background", "1": "anterior", "2": "ignore"})


def test_ignore_label_must_be_the_highest_value(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task97_Sparse")
    _relabel(root, {"0": "background", "1": "ignore", "2": "posterior"})
    with pytest.raises(DatasetError, match="'ignore' label must have the highest value"):
        load_dataset(root)
    _relabel(root, {"0": "background", "1": "anterior", "2": "ignore"})
    assert load_dataset(root).labels[2] == "ignore"


def test_plans_give_the_network_no_class_for_ignore() -> None:
    plans = Plans("D", "default", 8.0, 8, ("MRI",), {0: "background", 1: "a", 2: "ignore"})
    assert (plans.ignore_label, plans.num_classes) == (2, 2)
    assert plans.predicted_labels == (0, 1) and plans.foreground_labels == (1,)
    plain = Plans("D", "default", 8.0, 8, ("MRI",), {0: "background", 1: "a", 2: "b"})
    assert (plain.ignore_label, plain.num_classes, plain.foreground_labels) == (None, 3, (1, 2))


def test_loss_does_not_see_ignored_voxels() -> None:
    torch.manual_seed(0)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6))  # 2 = ignore; classes 0, 1
    logits = torch.randn(2, 2, 6, 6, 6, requires_grad=True)
    loss_fn = DiceCELoss(ignore_index=2)
    loss = loss_fn(logits, target)
    loss.backward()
    ignored = (target == 2).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.any(logits.grad[~ignored] != 0)
    # whatever the network says where nobody annotated, the loss stays the same
    changed = logits.detach().clone()
    changed[ignored] = 50.0 * torch.randn(int(ignored.sum()))
    assert torch.allclose(loss_fn(changed, target), loss.detach())
    # right on every annotated voxel, wrong on every ignored one: (almost) no loss
    right = torch.where(target == 1, 1, 0)  # (B, 1, *S): background where ignored
    confident = 30.0 * (torch.cat([1 - right, right], dim=1) * 2 - 1).float()
    assert float(loss_fn(confident, target)) < 1e-4
    assert float(DiceCELoss()(confident, target.clamp_max(1))) > 0.1


def test_pseudo_dice_counts_skip_ignored_voxels() -> None:
    target = torch.tensor([0, 1, 1, 2, 2]).view(1, 1, 5)
    logits = torch.tensor([[5.0, 0, 0, 0, 0], [0, 5, 5, 5, 5]]).view(1, 2, 5)  # predicts 0,1,1,1,1
    tp, fp, fn = dice_counts(logits, target, 2, ignore_index=2)
    assert (int(tp[0]), int(fp[0]), int(fn[0])) == (2, 0, 0)


def test_evaluation_skips_ignored_voxels_and_does_not_score_ignore() -> None:
    ref = np.zeros((4, 6, 6), dtype=np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    ref[:, 4:, :] = 2  # unannotated
    pred = np.where(ref == 2, 1, ref).astype(np.uint8)  # foreground all over the ignored part
    metrics = case_metrics(pred, ref, [1, 2], (1.0, 1.0, 1.0), ignore_label=2)
    assert list(metrics) == [1] and metrics[1].dice == 1.0 and metrics[1].fp == 0
    plain = case_metrics(pred, ref, [1], (1.0, 1.0, 1.0))
    assert plain[1].dice < 0.5  # without the ignore rule the same prediction scores badly
    evaluation = evaluate_arrays(
        [("c", pred, ref, (1.0, 1.0, 1.0))], {0: "background", 1: "a", 2: "ignore"}
    )
    assert evaluation.labels == {1: "a"} and evaluation.mean_dice == 1.0


def test_fingerprint_and_sampling_leave_ignore_out(tmp_path: Path) -> None:
    spec = load_dataset(sparse_dataset(tmp_path / "Task97_Sparse"))
    case = spec.cases[0]
    label = np.asarray(nib.load(case.label).dataobj)
    inspection = inspect_case(case, spec, sample_budget=10**6)
    assert inspection.samples[0].size == np.count_nonzero(label == 1)
    assert np.count_nonzero(label == 2) > 0

    from autoseg.data.plans import Configuration, Normalization

    config = Configuration(
        "3d_fullres", (1.0,) * 3, (8, 8, 8), 2, ((1, 1, 1),), ((3, 3, 3),), (4,),
        (Normalization("zscore"),),
    )  # fmt: skip
    sampler = PatchSampler(tmp_path, ("c",), config, False, 1.0, ignore_label=2)
    sampler.reseed(0, 0)
    only_ignore = {2: np.array([[1, 1, 1]], dtype=np.int32)}
    case_data = PreprocessedCase(np.zeros((1, 4, 4, 4)), None, only_ignore, None)
    assert sampler._foreground_voxel(case_data) is None
    both = {**only_ignore, 1: np.array([[3, 2, 1]], dtype=np.int32)}
    for _ in range(5):
        voxel = sampler._foreground_voxel(PreprocessedCase(None, None, both, None))
        assert voxel.tolist() == [3, 2, 1]


@pytest.mark.slow
def test_cli_trains_and_predicts_without_the_ignore_label(tmp_path: Path) -> None:
    root = sparse_dataset(tmp_path / "Task97_Sparse", n_cases=5)
    home = tmp_path / "home"
    assert cli("plan", root, "--home", home, "--workers", 1).exit_code == 0
    shrink_network(home / root.name / "plans.json")
    train = ("train", root.name, "3d_fullres", "0", "--epochs", 1, "--iterations", 2)
    train += ("--val-iterations", 1, "--device", "cpu", "--workers", 0, "--home", home)
    result = cli(*train)
    assert result.exit_code == 0, result.output
    model = home / root.name / "models/default/3d_fullres"
    ckpt = load_checkpoint(model / "fold_0/checkpoint_final.pt")
    assert ckpt.meta.num_classes == 2
    heads = [v for k, v in ckpt.model_state.items() if k.endswith("weight") and v.shape[0] == 2]
    assert heads, "the segmentation head has 2 outputs (background, anterior)"
    summary = Evaluation.from_json(model / "fold_0/summary.json")
    assert summary.labels == {1: "anterior"}
    out = tmp_path / "pred"
    result = cli("predict", "-i", root / "imagesTr", "-o", out, "-m", model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    for path in sorted(out.glob("*.nii.gz")):
        assert set(np.unique(np.asarray(nib.load(path).dataobj)).tolist()) <= {0, 1}
