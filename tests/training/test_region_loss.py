"""Region-based loss (Dice + BCE on sigmoid outputs) and its counts, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from autoseg.data.regions import Region
from autoseg.training.losses.region import RegionDiceBCELoss, region_dice_counts, region_targets

REGIONS = (Region("whole", (1, 2), 1), Region("inner", (2,), 2))
SMOOTH = 1e-5


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _hand_loss(logits: list, masks: list, batch_dice: bool) -> float:
    """Dice + BCE from nested lists logits[b][r][v], masks[b][r][v] (0 or 1)."""
    n_b, n_r, n_v = len(logits), len(logits[0]), len(logits[0][0])
    bce = 0.0
    for b in range(n_b):
        for r in range(n_r):
            for v in range(n_v):
                p, m = _sigmoid(logits[b][r][v]), masks[b][r][v]
                bce -= m * math.log(p) + (1 - m) * math.log(1 - p)
    bce /= n_b * n_r * n_v
    groups = (
        [[(b, r) for b in range(n_b)] for r in range(n_r)]
        if batch_dice
        else [[(b, r)] for b in range(n_b) for r in range(n_r)]
    )
    dices = []
    for group in groups:
        tp = fp = fn = 0.0
        for b, r in group:
            for v in range(n_v):
                p, m = _sigmoid(logits[b][r][v]), masks[b][r][v]
                tp, fp, fn = tp + p * m, fp + p * (1 - m), fn + (1 - p) * m
        dices.append((2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH))
    return 1 - sum(dices) / len(dices) + bce


def test_region_targets_are_the_unions_of_their_labels() -> None:
    target = torch.tensor([[0, 1, 2, 3], [2, 2, 0, 1]]).view(2, 1, 4)
    masks = region_targets(target, REGIONS + (Region("other", (3,), 3),))
    assert masks.dtype == torch.bool and masks.shape == (2, 3, 4)
    assert masks[0].int().tolist() == [[0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert masks[1].int().tolist() == [[1, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("batch_dice", [False, True])
def test_region_loss_equals_the_hand_computation(batch_dice: bool) -> None:
    # sample 1 has no "inner" voxel: per-sample and batch Dice differ
    target = torch.tensor([[0, 1, 2, 1], [1, 1, 0, 0]]).view(2, 1, 4)
    logits = torch.tensor(
        [
            [[-1.0, 2.0, 0.5, 0.0], [0.3, -2.0, 1.5, -0.4]],
            [[1.2, 0.7, -3.0, 0.2], [2.0, 0.1, -1.0, 0.0]],
        ]
    )
    masks = [[[0, 1, 1, 1], [0, 0, 1, 0]], [[1, 1, 0, 0], [0, 0, 0, 0]]]
    expected = _hand_loss(logits.tolist(), masks, batch_dice)
    assert abs(expected - _hand_loss(logits.tolist(), masks, not batch_dice)) > 1e-2
    loss = RegionDiceBCELoss(REGIONS, batch_dice=batch_dice)(logits, target)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_region_loss_is_float32_under_autocast() -> None:
    target = torch.tensor([0, 1, 2, 2]).view(1, 1, 4)
    logits = torch.zeros(1, 2, 4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = RegionDiceBCELoss(REGIONS)(logits, target)
    assert loss.dtype == torch.float32
    # p = 0.5 everywhere: BCE = ln 2; Dice whole 2*1.5/(3 + 0.5 + 1.5), inner 2*1/(2+1+1)
    whole, inner = (3 + SMOOTH) / (5 + SMOOTH), (2 + SMOOTH) / (4 + SMOOTH)
    assert loss.item() == pytest.approx(1 - (whole + inner) / 2 + math.log(2), rel=1e-5)


def test_region_counts_call_a_region_present_only_above_probability_one_half() -> None:
    target = torch.tensor([[1, 2, 0], [0, 2, 2]]).view(2, 1, 3)
    logits = torch.tensor(
        [[[0.0, 1.0, 2.0], [-1.0, 3.0, 0.0]], [[1.0, 1.0, -1.0], [0.0, 0.0, 5.0]]]
    )
    # whole: predicted (logit > 0) at [., x, x] and [x, x, .]; true at [x, x, .] and [., x, x]
    # inner: predicted at [., x, .] and [., ., x]; true at [., x, .] and [., x, x]
    tp, fp, fn = region_dice_counts(logits, target, REGIONS)
    assert tp.tolist() == [2, 2] and fp.tolist() == [2, 0] and fn.tolist() == [2, 1]
    assert tp.dtype == torch.int64


def test_confident_right_prediction_with_an_absent_region_costs_nothing() -> None:
    # sample 1 has neither region: predicted absent, its Dice is smooth / smooth = 1 (the
    # default is per-sample Dice, where that matters)
    target = torch.tensor([[1, 2, 0], [0, 0, 0]]).view(2, 1, 3)
    masks = region_targets(target, REGIONS).float()
    logits = 40 * (2 * masks - 1)
    for batch_dice in (False, True):
        loss = RegionDiceBCELoss(REGIONS, batch_dice=batch_dice)(logits, target)
        assert loss.item() == pytest.approx(0.0, abs=1e-4)
    # and the default is per-sample Dice: one sample predicting its absent region everywhere
    logits[1] = 40.0
    default = RegionDiceBCELoss(REGIONS)(logits, target)
    per_sample = RegionDiceBCELoss(REGIONS, batch_dice=False)(logits, target)
    assert default.item() == per_sample.item()
    assert per_sample.item() != pytest.approx(
        RegionDiceBCELoss(REGIONS, batch_dice=True)(logits, target).item(), abs=1e-3
    )
