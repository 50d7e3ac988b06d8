"""Loss: Dice + CE on hand-computed cases, deep supervision, target downsampling, counts."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from autoseg.training.losses.dice_ce import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    dice_counts,
    downsample_target,
    one_hot,
    soft_dice,
)


def test_perfect_prediction_gives_near_zero_loss() -> None:
    target = torch.randint(0, 3, (2, 1, 4, 5, 6))
    logits = 50.0 * one_hot(target, 3, torch.float32)  # (2, 3, 4, 5, 6)
    probs = logits.softmax(1)
    torch.testing.assert_close(
        soft_dice(probs, one_hot(target, 3, probs.dtype), False), torch.ones(2, 2)
    )
    assert DiceCELoss()(logits, target).item() < 1e-6


def test_hand_computed_two_voxel_dice() -> None:
    # two voxels, labels [1, 0]; p(class 1) = [0.8, 0.3]
    p1 = torch.tensor([0.8, 0.3])
    logits = torch.stack([torch.zeros(2), torch.log(p1 / (1 - p1))]).view(1, 2, 2)
    target = torch.tensor([1, 0]).view(1, 1, 2)
    tp, fp, fn = 0.8, 0.3, 0.2
    dice = (2 * tp + 1e-5) / (2 * tp + fp + fn + 1e-5)  # = 1.6 / 2.1
    ce = -(math.log(0.8) + math.log(0.7)) / 2
    loss = DiceCELoss()(logits, target)
    assert loss.item() == pytest.approx(1 - dice + ce, rel=1e-5)


def test_ce_term_equals_torch_cross_entropy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, 5)
    target = torch.randint(0, 4, (2, 1, 3, 5))
    probs = logits.softmax(1)
    dice = soft_dice(probs, one_hot(target, 4, probs.dtype), False).mean()
    loss = DiceCELoss()(logits, target)
    torch.testing.assert_close(loss - (1 - dice), F.cross_entropy(logits, target[:, 0]))


def test_batch_dice_differs_from_per_sample_dice() -> None:
    # sample 0: foreground everywhere, predicted perfectly; sample 1: no foreground, some
    # predicted. Per-sample Dice averages 1 and ~0; batch Dice pools the voxels.
    target = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]).view(2, 1, 4)
    logits = torch.zeros(2, 2, 4)
    logits[:, 0] = 20.0
    logits[0, 1] = 40.0
    logits[1, 1, 0] = 40.0  # one false positive voxel in sample 1
    per_sample = DiceCELoss(batch_dice=False)(logits, target)
    batch = DiceCELoss(batch_dice=True)(logits, target)
    ce = F.cross_entropy(logits, target[:, 0])
    assert (per_sample - ce).item() == pytest.approx(0.5, abs=1e-3)  # 1 - mean(1, 0)
    assert (batch - ce).item() == pytest.approx(1 - 8 / 9, abs=1e-3)  # 2*4 / (2*4 + 1)


def test_loss_is_float32_under_autocast_and_excludes_background() -> None:
    target = torch.zeros(1, 1, 8, dtype=torch.int16)
    target[..., :4] = 1
    logits = torch.zeros(1, 2, 8, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = DiceCELoss()(logits, target)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    loss.backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    # uniform prediction: foreground Dice = 2*2 / (2*2 + 2 + 2) = 0.5; CE = ln 2
    assert loss.item() == pytest.approx(0.5 + math.log(2), rel=1e-4)


def test_deep_supervision_weights() -> None:
    assert deep_supervision_weights(4) == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert sum(deep_supervision_weights(6)) == pytest.approx(1.0)


def test_deep_supervision_loss_is_weighted_sum_skipping_zeros() -> None:
    calls = []

    def base(o: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(o.shape)
        return (o - t).abs().mean()

    outputs = [torch.full((1, 1, 4), 1.0), torch.full((1, 1, 2), 2.0), torch.full((1, 1, 1), 9.0)]
    targets = [torch.zeros(1, 1, 4), torch.zeros(1, 1, 2), torch.zeros(1, 1, 1)]
    loss = DeepSupervisionLoss(base, [0.75, 0.25, 0.0])(outputs, targets)
    assert loss.item() == pytest.approx(0.75 * 1 + 0.25 * 2)
    assert len(calls) == 2
    with pytest.raises(ValueError):
        DeepSupervisionLoss(base, [1.0])(outputs, targets)


def test_downsample_target_nearest_values() -> None:
    target = torch.arange(4 * 8).view(1, 1, 4, 8)
    out = downsample_target(target, 3, [(1, 1), (1, 2), (2, 2)])
    assert out[0] is target
    assert out[1].tolist() == [
        [[[0, 2, 4, 6], [8, 10, 12, 14], [16, 18, 20, 22], [24, 26, 28, 30]]]
    ]
    assert out[2].tolist() == [[[[0, 4], [16, 20]]]]  # cumulative stride (2, 4)
    with pytest.raises(ValueError):
        downsample_target(target, 4, [(1, 1), (2, 2)])


def test_dice_counts() -> None:
    target = torch.tensor([[0, 1, 1, 2, 2, 0], [1, 1, 0, 0, 2, 2]]).view(2, 1, 6)
    pred = torch.tensor([[0, 1, 2, 2, 0, 1], [1, 1, 0, 2, 2, 2]])
    logits = one_hot(pred.unsqueeze(1), 3, torch.float32)  # (2, 3, 6)
    tp, fp, fn = dice_counts(logits, target, 3)
    assert tp.tolist() == [3, 3]
    assert fp.tolist() == [1, 2]
    assert fn.tolist() == [1, 1]


def test_ignored_voxels_drop_out_as_if_cut_away() -> None:
    # one sample, 8 voxels, labels 0-2 and the ignore label 3 on voxels 1, 4 and 6: the loss
    # must equal the plain loss of the 5 annotated voxels alone (Dice sums and CE mean)
    torch.manual_seed(1)
    logits = torch.randn(1, 3, 8)
    target = torch.tensor([0, 3, 1, 2, 3, 1, 3, 2]).view(1, 1, 8)
    keep = target[0, 0] != 3
    for batch_dice in (False, True):
        ignored = DiceCELoss(batch_dice, ignore_index=3)(logits, target)
        cut = DiceCELoss(batch_dice)(logits[..., keep], target[..., keep])
        torch.testing.assert_close(ignored, cut)


def test_a_single_annotated_voxel_gives_its_own_cross_entropy() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 1.0, 3.0]]])  # (1, K=2, 3 voxels)
    target = torch.tensor([2, 1, 2]).view(1, 1, 3)  # only voxel 1 annotated, label 1
    loss = DiceCELoss(ignore_index=2)(logits, target)
    p1 = 1 / (1 + math.exp(-1.0))  # softmax of (0, 1) for class 1
    dice = (2 * p1 + 1e-5) / (2 * p1 + (1 - p1) + 1e-5)  # tp = p1, fn = 1 - p1, fp = 0
    assert loss.item() == pytest.approx(1 - dice - math.log(p1), rel=1e-5)
    # nothing annotated at all: no NaN, the CE term is 0
    empty = DiceCELoss(ignore_index=2)(logits, torch.full((1, 1, 3), 2))
    assert torch.isfinite(empty) and empty.item() == pytest.approx(0.0, abs=1e-6)


def test_zero_weighted_output_gets_a_zero_gradient_not_none() -> None:
    outputs = [torch.randn(1, 2, 4, requires_grad=True), torch.randn(1, 2, 2, requires_grad=True)]
    targets = [torch.tensor([[[0, 1, 1, 0]]]), torch.tensor([[[0, 1]]])]
    loss = DeepSupervisionLoss(DiceCELoss(), [1.0, 0.0])(outputs, targets)
    torch.testing.assert_close(loss, DiceCELoss()(outputs[0], targets[0]))
    loss.backward()
    assert outputs[1].grad is not None and torch.all(outputs[1].grad == 0)
    assert torch.any(outputs[0].grad != 0)


def test_a_custom_smooth_term_is_used() -> None:
    # the two-voxel case of test_hand_computed_two_voxel_dice with smooth 1
    p1 = torch.tensor([0.8, 0.3])
    logits = torch.stack([torch.zeros(2), torch.log(p1 / (1 - p1))]).view(1, 2, 2)
    target = torch.tensor([1, 0]).view(1, 1, 2)
    dice = (1.6 + 1) / (1.6 + 0.3 + 0.2 + 1)
    ce = -(math.log(0.8) + math.log(0.7)) / 2
    assert DiceCELoss(smooth=1.0)(logits, target).item() == pytest.approx(1 - dice + ce, rel=1e-5)


def test_deep_supervision_passes_each_resolutions_voxel_weights() -> None:
    def base(o: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return (w * (o - t)).sum()

    outputs = [torch.ones(1, 1, 4), torch.ones(1, 1, 2)]
    targets = [torch.zeros(1, 1, 4), torch.zeros(1, 1, 2)]
    weights = [torch.tensor([[[1.0, 2.0, 3.0, 4.0]]]), torch.tensor([[[5.0, 6.0]]])]
    loss = DeepSupervisionLoss(base, [0.5, 0.5])(outputs, targets, weights)
    assert loss.item() == pytest.approx(0.5 * 10 + 0.5 * 11)
    with pytest.raises(ValueError):  # one weight map for two outputs
        DeepSupervisionLoss(base, [0.5, 0.5])(outputs, targets, weights[:1])


def test_length_mismatches_are_refused_with_the_counts() -> None:
    outputs = [torch.zeros(1, 1, 4)] * 2
    with pytest.raises(ValueError, match="2 outputs, 1 targets, 2 weights"):
        DeepSupervisionLoss(DiceCELoss(), [0.5, 0.5])(outputs, outputs[:1])
    with pytest.raises(ValueError, match="at least one output, got 0"):
        deep_supervision_weights(0)
    target = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match="4 outputs but only 2 stages"):
        downsample_target(target, 4, [(1, 1), (2, 2)])
    with pytest.raises(ValueError):  # 3D strides for a 2D target
        downsample_target(target, 2, [(1, 1, 1), (2, 2, 2)])
