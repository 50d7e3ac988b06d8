"""The losses chosen by name: focal, Dice + focal, border-weighted CE; each one trains."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from autoseg.data.regions import Region
from autoseg.errors import AutosegError
from autoseg.preprocessing.weightmap import border_weight_map
from autoseg.training.losses.dice_ce import DiceCELoss
from autoseg.training.losses.options import (
    LOSSES,
    BorderWeightedCELoss,
    DiceFocalLoss,
    FocalLoss,
    build_loss,
    loss_needs_weights,
    register_loss,
)
from autoseg.training.step import OptimizerSettings, TrainingStep
from tests.networks.test_network import CONFIG_2D
from tests.synthetic_micro import cells


def _example(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 5, 6, generator=g), torch.randint(0, 3, (2, 1, 5, 6), generator=g)


def test_focal_with_gamma_zero_is_cross_entropy() -> None:
    logits, target = _example()
    expected = F.cross_entropy(logits, target[:, 0])
    torch.testing.assert_close(FocalLoss(gamma=0.0)(logits, target), expected)


def test_focal_matches_the_formula_per_voxel_with_class_alpha() -> None:
    logits, target = _example(1)
    alpha = (0.25, 1.0, 2.0)
    p = torch.softmax(logits, 1).gather(1, target)[:, 0]
    a = torch.tensor(alpha)[target[:, 0]]
    expected = (-a * (1 - p) ** 2 * torch.log(p)).mean()
    torch.testing.assert_close(FocalLoss(2.0, alpha)(logits, target), expected)


def test_focal_down_weights_easy_voxels() -> None:
    target = torch.zeros(1, 1, 1, 2, dtype=torch.long)
    easy = torch.tensor([[[[4.0, 4.0]], [[0.0, 0.0]]]])  # p_t about 0.98
    ratio = FocalLoss(2.0)(easy, target) / F.cross_entropy(easy, target[:, 0])
    assert ratio < 0.01


def test_dice_focal_is_dice_term_plus_focal() -> None:
    logits, target = _example(2)
    dice_term = DiceCELoss()(logits, target) - F.cross_entropy(logits, target[:, 0])
    expected = dice_term + FocalLoss(2.0)(logits, target)
    torch.testing.assert_close(DiceFocalLoss()(logits, target), expected)


def test_border_ce_weights_each_voxel() -> None:
    logits, target = _example(3)
    ones = torch.ones(2, 1, 5, 6)
    ce = F.cross_entropy(logits, target[:, 0], reduction="none")
    loss = BorderWeightedCELoss()
    torch.testing.assert_close(loss(logits, target, ones), ce.mean())
    weights = torch.zeros(2, 1, 5, 6)
    weights[0, 0, 2, 3] = 6.0
    torch.testing.assert_close(loss(logits, target, weights), 6.0 * ce[0, 2, 3] / ce.numel())


def test_losses_by_name_and_unknown_name() -> None:
    assert {"dice_ce", "focal", "dice_focal", "border_ce"} <= set(LOSSES.names())
    assert loss_needs_weights(build_loss("border_ce", CONFIG_2D))
    assert not loss_needs_weights(build_loss("focal", CONFIG_2D))
    with pytest.raises(AutosegError, match="unknown loss function 'tversky'.*border_ce"):
        build_loss("tversky", CONFIG_2D)


def test_deep_supervision_passes_downsampled_weights() -> None:
    loss = build_loss("border_ce", CONFIG_2D)  # 3 stages: 2 outputs, weights [1, 0]
    logits, target = _example(4)
    outputs = [logits, logits[..., ::2, ::2]]
    targets = [target, target[..., ::2, ::2]]
    w = torch.rand(2, 1, 5, 6)
    value = loss(outputs, targets, [w, w[..., ::2, ::2]])
    torch.testing.assert_close(value, BorderWeightedCELoss()(logits, target, w))


@pytest.mark.parametrize("name", ["dice_ce", "focal", "dice_focal", "border_ce"])
def test_a_tiny_cpu_training_with_each_loss_lowers_it(name: str) -> None:
    config = dataclasses.replace(CONFIG_2D, patch_size=(32, 32), batch_size=2)
    rng = np.random.default_rng(0)
    labels = np.stack([cells(rng, (32, 32), n=2, radius=5.0) for _ in range(2)])  # (B, Y, X)
    image = labels + rng.normal(0, 0.3, labels.shape)
    weights = np.stack([border_weight_map(lab) for lab in labels])
    batch = {
        "image": image[:, None].astype(np.float32),
        "target": labels[:, None].astype(np.int16),
    }
    if name == "border_ce":
        batch["weight"] = weights[:, None].astype(np.float32)
    torch.set_num_threads(1)
    step = TrainingStep(
        config,
        1,
        2,
        torch.device("cpu"),
        OptimizerSettings(initial_lr=1e-2),
        loss=build_loss(name, config),
        augmentation="cpu",
    )
    losses = [step.train_batch(batch) for _ in range(12)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_ignore_label_and_regions_go_through_build_loss_or_are_refused() -> None:
    from autoseg.data.regions import Region
    from autoseg.training.losses.region import RegionDiceBCELoss

    # dice_ce with an ignore label: the ignored voxels' logits change nothing
    loss = build_loss("dice_ce", CONFIG_2D, ignore_label=3)
    assert loss.base.ignore_index == 3
    logits, target = _example(4)
    target[:, :, :2] = 3
    other = logits.clone()
    other[:, :, :2] = torch.randn_like(other[:, :, :2]) * 5
    torch.testing.assert_close(loss.base(logits, target), loss.base(other, target))
    # regions: Dice + BCE per region
    regions = (Region("whole", (1, 2), 1), Region("inner", (2,), 2))
    assert isinstance(build_loss("dice_ce", CONFIG_2D, regions=regions).base, RegionDiceBCELoss)
    # the other losses are refused with a message, unknown names still list the registered ones
    for name in ("focal", "dice_focal", "border_ce"):
        with pytest.raises(AutosegError, match="ignore label"):
            build_loss(name, CONFIG_2D, ignore_label=3)
        with pytest.raises(AutosegError, match="region-based"):
            build_loss(name, CONFIG_2D, regions=regions)
    with pytest.raises(AutosegError, match="dice_ce"):
        build_loss("no_such_loss", CONFIG_2D, ignore_label=3)


def test_registered_losses_keep_their_documented_defaults() -> None:
    logits, target = _example(5)
    # "focal" is gamma 2, no class weights
    p = torch.softmax(logits, 1).gather(1, target)[:, 0]
    expected = (-((1 - p) ** 2) * torch.log(p)).mean()
    torch.testing.assert_close(build_loss("focal", CONFIG_2D).base(logits, target), expected)
    torch.testing.assert_close(FocalLoss()(logits, target), expected)
    # Dice + focal takes the configuration's batch_dice and a custom smooth term
    batch = dataclasses.replace(CONFIG_2D, batch_dice=True)
    for config in (CONFIG_2D, batch):
        dice_term = DiceCELoss(config.batch_dice)(logits, target) - F.cross_entropy(
            logits, target[:, 0]
        )
        got = build_loss("dice_focal", config).base(logits, target)
        torch.testing.assert_close(got, dice_term + expected)
    assert DiceFocalLoss(True)(logits, target) != pytest.approx(DiceFocalLoss()(logits, target))
    smooth = DiceFocalLoss(smooth=1.0)(logits, target) - FocalLoss()(logits, target)
    dice_ce = DiceCELoss(smooth=1.0)(logits, target) - F.cross_entropy(logits, target[:, 0])
    torch.testing.assert_close(smooth, dice_ce)


def test_ignore_label_and_region_losses_take_the_configurations_batch_dice() -> None:
    regions = (Region("whole", (1, 2), 1),)
    for batch_dice in (False, True):
        config = dataclasses.replace(CONFIG_2D, batch_dice=batch_dice)
        assert build_loss("dice_ce", config, ignore_label=3).base.batch_dice is batch_dice
        assert build_loss("dice_ce", config, regions=regions).base.batch_dice is batch_dice


def test_refusals_say_what_the_dataset_has_and_what_is_allowed() -> None:
    with pytest.raises(
        AutosegError, match=r"an ignore label \(3\): only dice_ce is \(Dice \+ CE\)"
    ):
        build_loss("focal", CONFIG_2D, ignore_label=3)
    regions = (Region("whole", (1, 2), 1),)
    with pytest.raises(
        AutosegError, match=r"region-based labels: only dice_ce is \(Dice \+ BCE per region\)"
    ):
        build_loss("focal", CONFIG_2D, regions=regions)


def test_which_losses_need_weight_maps() -> None:
    assert loss_needs_weights(BorderWeightedCELoss())  # a bare per-output loss
    assert not loss_needs_weights(FocalLoss())
    assert not loss_needs_weights(DiceCELoss())  # no needs_weights attribute at all
    assert not loss_needs_weights(build_loss("dice_ce", CONFIG_2D))


def test_a_registered_loss_is_found_by_its_name() -> None:
    @register_loss("test_only_l1")
    def _l1(config: object) -> FocalLoss:
        return FocalLoss(gamma=0.0)

    try:
        assert "test_only_l1" in LOSSES
        logits, target = _example(6)
        got = build_loss("test_only_l1", CONFIG_2D).base(logits, target)
        torch.testing.assert_close(got, F.cross_entropy(logits, target[:, 0]))
    finally:
        LOSSES._entries.pop("test_only_l1", None)
