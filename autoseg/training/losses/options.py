"""The losses chosen by name (``autoseg train --loss NAME``), each with deep supervision.

- ``dice_ce`` (default): soft Dice + cross-entropy
(``autoseg.training.losses.dice_ce.DiceCELoss``), nnU-Net's.
- ``focal``: focal loss ``-alpha_k (1 - p_t)**gamma log p_t`` (gamma 2, alpha 1 per class),
  averaged over voxels: down-weights the many easy voxels, for rare small objects.
- ``dice_focal``: soft Dice + focal.
- ``border_ce``: cross-entropy weighted per voxel by the U-Net paper's border weight map
  (``autoseg.preprocessing.weightmap``), for touching objects that must stay apart; it needs the
  weight maps,
  which the trainer computes once per preprocessed case.

Losses are registered by decorator in the one registry rule (``autoseg.registry``; plug-ins:
entry points of group ``autoseg.losses``). A builder takes the configuration and returns the
per-output loss ``(logits, target[, weight]) -> scalar``; ``build_loss`` wraps it in the
deep-supervision sum of ``autoseg.training.losses.dice_ce``. With an ignore label
(``Plans.ignore_label``) or
region-based labels (``Plans.regions``) only ``dice_ce`` is available: it becomes Dice + CE
without the unannotated voxels, or Dice + BCE per region (``autoseg.training.losses.region``); the
other
losses are refused for such datasets. Like ``autoseg.training.losses.dice_ce``, everything is
float32 and free
of host synchronisation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.data.plans import Configuration
from autoseg.data.regions import Region
from autoseg.errors import AutosegError
from autoseg.registry import Registry
from autoseg.training.losses.dice_ce import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    one_hot,
    soft_dice,
)
from autoseg.training.losses.region import RegionDiceBCELoss

__all__ = [
    "LOSSES",
    "BorderWeightedCELoss",
    "DiceFocalLoss",
    "FocalLoss",
    "build_loss",
    "loss_needs_weights",
    "register_loss",
]

DEFAULT_LOSS = "dice_ce"
LossBuilder = Callable[[Configuration], nn.Module]
LOSSES: Registry[LossBuilder] = Registry("loss function", "autoseg.losses")


def register_loss(name: str) -> Callable[[LossBuilder], LossBuilder]:
    """Register ``builder(config) -> nn.Module`` under ``name``; a module with a true
    ``needs_weights`` attribute gets the border weight map as a third argument."""
    return LOSSES.register(name)


def focal_terms(
    logits: torch.Tensor, target: torch.Tensor, gamma: float, alpha: torch.Tensor | None
) -> torch.Tensor:
    """Per-voxel focal loss ``-alpha_t (1 - p_t)**gamma log p_t``.

    Args:
        logits: ``(B, K, *S)`` float32.
        target: ``(B, 1, *S)`` integer labels.
        gamma: focusing exponent (0 gives cross-entropy).
        alpha: ``(K,)`` class weights or None (all 1).

    Returns:
        ``(B, *S)`` float32.
    """
    log_p = torch.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, target.long())[:, 0]  # (B, *S)
    terms = -((1 - log_pt.exp()).clamp_min(0) ** gamma) * log_pt
    if alpha is not None:
        terms = terms * alpha.to(terms.device)[target.long()[:, 0]]
    return terms


class FocalLoss(nn.Module):
    """Focal loss averaged over voxels.

    Args:
        gamma: focusing exponent.
        alpha: per-class weights (K values) or None.
    """

    needs_weights = False

    def __init__(self, gamma: float = 2.0, alpha: tuple[float, ...] | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.alpha = None if alpha is None else torch.tensor(alpha, dtype=torch.float32)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: logits ``(B, K, *S)``, target ``(B, 1, *S)``. Returns a 0-dim float32."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return focal_terms(logits.float(), target, self.gamma, self.alpha).mean()


class DiceFocalLoss(nn.Module):
    """``(1 - mean soft Dice over foreground classes) + focal``."""

    needs_weights = False

    def __init__(self, batch_dice: bool = False, gamma: float = 2.0, smooth: float = 1e-5):
        super().__init__()
        self.batch_dice, self.smooth = batch_dice, smooth
        self.focal = FocalLoss(gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: logits ``(B, K, *S)``, target ``(B, 1, *S)``. Returns a 0-dim float32."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()
            probs = torch.softmax(logits, dim=1)
            onehot = one_hot(target.long(), logits.shape[1], probs.dtype)
            dice = soft_dice(probs, onehot, self.batch_dice, self.smooth)
            return (1 - dice.mean()) + self.focal(logits, target)


class BorderWeightedCELoss(nn.Module):
    """Cross-entropy weighted per voxel: ``mean(w * ce)`` (the U-Net paper's energy)."""

    needs_weights = True

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
    ) -> torch.Tensor:
        """Args: logits ``(B, K, *S)``, target ``(B, 1, *S)``, weight ``(B, 1, *S)`` float.
        Returns a 0-dim float32."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            ce = F.cross_entropy(logits.float(), target.long()[:, 0], reduction="none")
            return (ce * weight[:, 0].float()).mean()


@register_loss("dice_ce")
def _dice_ce(config: Configuration) -> nn.Module:
    return DiceCELoss(batch_dice=config.batch_dice)


@register_loss("focal")
def _focal(config: Configuration) -> nn.Module:
    return FocalLoss()


@register_loss("dice_focal")
def _dice_focal(config: Configuration) -> nn.Module:
    return DiceFocalLoss(batch_dice=config.batch_dice)


@register_loss("border_ce")
def _border_ce(config: Configuration) -> nn.Module:
    return BorderWeightedCELoss()


def build_loss(
    name: str,
    config: Configuration,
    ignore_label: int | None = None,
    regions: Sequence[Region] = (),
) -> DeepSupervisionLoss:
    """The loss ``name`` over the deep-supervision outputs of ``config``'s network.

    Args:
        name: a registered loss name.
        config: the configuration trained.
        ignore_label: target value of unannotated voxels, left out of the loss.
        regions: region-based labels: one sigmoid output per region.

    Raises:
        AutosegError: unknown loss (the message lists the registered ones), or a loss other
            than ``dice_ce`` for a dataset with an ignore label or regions.
    """
    builder = LOSSES.get(name)  # an unknown name fails first, with the list
    weights = deep_supervision_weights(config.num_stages - 1)
    if (regions or ignore_label is not None) and name != DEFAULT_LOSS:
        what = "region-based labels" if regions else f"an ignore label ({ignore_label})"
        raise AutosegError(
            f"--loss {name} is not supported for a dataset with {what}: only "
            f"{DEFAULT_LOSS} is (Dice + {'BCE per region' if regions else 'CE'})"
        )
    if regions:
        return DeepSupervisionLoss(RegionDiceBCELoss(regions, config.batch_dice), weights)
    if ignore_label is not None:
        base = DiceCELoss(batch_dice=config.batch_dice, ignore_index=ignore_label)
        return DeepSupervisionLoss(base, weights)
    return DeepSupervisionLoss(builder(config), weights)


def loss_needs_weights(loss: nn.Module) -> bool:
    """Whether ``loss`` (a per-output loss or its ``DeepSupervisionLoss``) takes the border
    weight map as a third argument."""
    return bool(getattr(getattr(loss, "base", loss), "needs_weights", False))
