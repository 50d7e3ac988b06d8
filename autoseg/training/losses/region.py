"""Loss and pseudo-Dice counts of region-based training (``autoseg.data.regions``).

The network has one output per region; a region's target is the set of voxels whose label is
one of its values. Loss = (1 - mean soft Dice over regions, on sigmoid probabilities) + binary
cross-entropy with logits (mean over voxels and regions), as nnU-Net trains regions. Computed in
float32 without host synchronisation, like ``autoseg.training.losses.dice_ce``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.data.regions import Region

__all__ = ["RegionDiceBCELoss", "region_dice_counts", "region_targets"]


def region_targets(target: torch.Tensor, regions: Sequence[Region]) -> torch.Tensor:
    """``(B, 1, *S)`` integer labels -> ``(B, R, *S)`` boolean region masks."""
    masks = []
    for region in regions:
        values = torch.tensor(region.values, device=target.device, dtype=target.dtype)
        masks.append(torch.isin(target[:, 0], values))
    return torch.stack(masks, dim=1)


class RegionDiceBCELoss(nn.Module):
    """``(1 - mean soft Dice over regions) + BCE``, sigmoid outputs.

    Args:
        regions: the regions, in output order.
        batch_dice: Dice over the whole batch per region instead of per sample.
        smooth: Dice smoothing term.
    """

    def __init__(
        self, regions: Sequence[Region], batch_dice: bool = False, smooth: float = 1e-5
    ) -> None:
        super().__init__()
        self.regions = tuple(regions)
        self.batch_dice = batch_dice
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Args: logits ``(B, R, *S)``, target ``(B, 1, *S)`` integer labels. Returns a scalar."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()  # (B, R, *S)
            masks = region_targets(target.long(), self.regions).to(logits.dtype)
            bce = F.binary_cross_entropy_with_logits(logits, masks)
            probs = torch.sigmoid(logits)
            axes = tuple(range(2, logits.ndim))
            if self.batch_dice:
                axes = (0, *axes)
            tp = (probs * masks).sum(axes)  # (B, R) or (R,)
            fp = (probs * (1 - masks)).sum(axes)
            fn = ((1 - probs) * masks).sum(axes)
            dice = (2 * tp + self.smooth) / (2 * tp + fp + fn + self.smooth).clamp_min(1e-8)
            return (1 - dice.mean()) + bce


@torch.no_grad()
def region_dice_counts(
    logits: torch.Tensor, target: torch.Tensor, regions: Sequence[Region]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TP, FP, FN per region (probability > 0.5, i.e. logit > 0), summed over the batch.

    Returns:
        ``(tp, fp, fn)``, int64 tensors of shape ``(R,)``.
    """
    pred = logits > 0  # (B, R, *S)
    true = region_targets(target, regions)
    axes = (0, *range(2, pred.ndim))
    return (pred & true).sum(axes), (pred & ~true).sum(axes), (~pred & true).sum(axes)
