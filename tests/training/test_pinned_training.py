"""The training step honours the plans' loss settings (issue 16, behaviour 4).

The loss of one batch is recomputed here in numpy from the formulas in REFERENCE.md (soft Dice
with smooth 1e-5 over the foreground classes, per sample or over the batch, plus mean
cross-entropy; deep-supervision weights 1/2^i with the lowest resolution at 0, normalised;
targets subsampled with the cumulative strides from index 0), independently of
autoseg.training.losses.dice_ce.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autoseg.data.plans import Configuration, Normalization
from autoseg.training.step import TrainingStep

SMOOTH = 1e-5


def _config(batch_dice: bool) -> Configuration:
    return Configuration(
        name="3d_fullres",
        spacing=(1.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
        kernel_sizes=((3, 3, 3),) * 4,
        features_per_stage=(2, 4, 4, 4),
        normalization=(Normalization("zscore"),),
        batch_dice=batch_dice,
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def hand_loss(logits: np.ndarray, target: np.ndarray, batch_dice: bool) -> float:
    """Dice + CE of one output: logits (B, K, *S), target (B, *S) integers."""
    k = logits.shape[1]
    probs = _softmax(logits.astype(np.float64))
    onehot = np.stack([target == c for c in range(k)], axis=1).astype(np.float64)
    picked = np.take_along_axis(probs, target[:, None].astype(np.int64), axis=1)
    ce = float(-np.log(picked).mean())
    axes = (0, 2, 3, 4) if batch_dice else (2, 3, 4)
    tp = (probs * onehot).sum(axes)
    fp = (probs * (1 - onehot)).sum(axes)
    fn = ((1 - probs) * onehot).sum(axes)
    dice = (2 * tp + SMOOTH) / (2 * tp + fp + fn + SMOOTH)
    return float(1 - dice[..., 1:].mean()) + ce


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(5)
    image = torch.from_numpy(rng.normal(size=(2, 1, 16, 16, 16)).astype(np.float32))
    target = np.zeros((2, 1, 16, 16, 16), dtype=np.int64)
    target[0, 0, 2:10, 3:12, 4:9] = 1
    target[0, 0, 10:14, 3:12, 4:9] = 2
    target[1, 0, 5:9, 5:9, 5:9] = 1  # label 2 absent from sample 1: per-sample != batch Dice
    return image, torch.from_numpy(target)


@pytest.mark.parametrize("batch_dice", [True, False])
def test_training_step_loss_equals_the_hand_computation(batch_dice: bool) -> None:
    config = _config(batch_dice)
    # fp32: the hand computation is exact; bf16 autocast is pinned in test_train
    step = TrainingStep(config, 1, 3, torch.device("cpu"), seed=3, cpu_bf16=False)
    assert step.loss.base.batch_dice is batch_dice
    image, target = _batch()
    with torch.no_grad():
        outputs = [o.numpy() for o in step.network(image)]
    assert len(outputs) == 3  # 4 stages: 3 outputs, highest resolution first
    weights = [2 / 3, 1 / 3, 0.0]  # 1, 1/2, 0 (lowest resolution), normalised
    t = target[:, 0].numpy()
    targets = [t, t[:, ::2, ::2, ::2], t[:, ::4, ::4, ::4]]
    expected = sum(
        w * hand_loss(o, tt, batch_dice)
        for w, o, tt in zip(weights, outputs, targets, strict=True)
        if w
    )
    other = sum(
        w * hand_loss(o, tt, not batch_dice)
        for w, o, tt in zip(weights, outputs, targets, strict=True)
        if w
    )
    assert abs(expected - other) > 1e-3  # the batch really tells the two settings apart
    assert step.train_step(image, target) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_batch_dice_travels_from_the_plans_through_serialisation(tmp_path) -> None:
    from autoseg.data.plans import Plans

    config = _config(True)
    plans = Plans("Task99_X", "default", 8.0, 4, ("MRI",), {0: "bg", 1: "a"}, {config.name: config})
    plans.to_json(tmp_path / "plans.json")
    loaded = Plans.from_json(tmp_path / "plans.json").configuration("3d_fullres")
    assert loaded.batch_dice is True
    step = TrainingStep(loaded, 1, 2, torch.device("cpu"))
    assert step.loss.base.batch_dice is True
    off = dataclasses.replace(loaded, batch_dice=False)
    step_off = TrainingStep(off, 1, 2, torch.device("cpu"))
    assert step_off.loss.base.batch_dice is False
