"""Training loss: soft Dice + cross-entropy, with deep supervision.

The Dice term is reported as ``1 - mean Dice`` (so the loss is >= 0 and 0 is perfect), not
nnU-Net's ``-mean Dice``; gradients are identical. Everything is computed in float32, also
under autocast, and without host synchronisation (no ``.item()``, no data-dependent branches)
so the loss can be compiled together with the network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DeepSupervisionLoss",
    "DiceCELoss",
    "deep_supervision_weights",
    "dice_counts",
    "downsample_target",
    "one_hot",
    "soft_dice",
]


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """One-hot encode an integer label map without a host sync.

    Args:
        target: ``(B, 1, *S)`` integer labels in ``[0, num_classes)``.
        num_classes: K, background included.
        dtype: output dtype.

    Returns:
        ``(B, K, *S)`` tensor of zeros and ones.
    """
    shape = (target.shape[0], num_classes, *target.shape[2:])
    out = torch.zeros(shape, dtype=dtype, device=target.device)
    return out.scatter_(1, target.long(), 1)


def soft_dice(
    probs: torch.Tensor, target_onehot: torch.Tensor, batch_dice: bool, smooth: float = 1e-5
) -> torch.Tensor:
    """Soft Dice per foreground class: ``(2 tp + smooth) / (2 tp + fp + fn + smooth)``.

    Args:
        probs: ``(B, K, *S)`` class probabilities.
        target_onehot: ``(B, K, *S)`` one-hot target.
        batch_dice: sum over the whole batch per class instead of per sample.
        smooth: added to numerator and denominator (an absent class predicted absent gives 1).

    Returns:
        ``(B, K - 1)`` per sample and foreground class, or ``(K - 1,)`` when ``batch_dice``.
    """
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0, *axes)
    tp = (probs * target_onehot).sum(axes)  # (B, K) or (K,)
    fp = (probs * (1 - target_onehot)).sum(axes)
    fn = ((1 - probs) * target_onehot).sum(axes)
    dice = (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(1e-8)
    return dice[..., 1:]


class DiceCELoss(nn.Module):
    """``(1 - mean soft Dice over foreground classes) + cross-entropy``.

    Args:
        batch_dice: Dice over the whole batch per class (True) or per sample and class (False),
            then averaged.
        smooth: Dice smoothing term.
        ignore_index: target value of unannotated voxels (the ignore label, ``K``): they take
            no part in either term; cross-entropy is the mean over the annotated voxels.
    """

    def __init__(
        self, batch_dice: bool = False, smooth: float = 1e-5, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.smooth = smooth
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss.

        Args:
            logits: ``(B, K, *S)`` raw network outputs (any float dtype).
            target: ``(B, 1, *S)`` integer labels.

        Returns:
            0-dim float32 tensor: Dice term + cross-entropy (mean over voxels).
        """
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits = logits.float()  # (B, K, *S)
            labels = target.long()  # (B, 1, *S)
            probs = torch.softmax(logits, dim=1)
            if self.ignore_index is None:
                ce = F.cross_entropy(logits, labels[:, 0])
                target_1h = one_hot(labels, logits.shape[1], probs.dtype)
            else:
                annotated = labels != self.ignore_index  # (B, 1, *S)
                labels = labels.masked_fill(~annotated, 0)
                weight = annotated.to(probs.dtype)
                ce_map = F.cross_entropy(logits, labels[:, 0], reduction="none")  # (B, *S)
                ce = (ce_map * weight[:, 0]).sum() / weight.sum().clamp_min(1.0)
                probs = probs * weight  # unannotated voxels count nowhere in the Dice
                target_1h = one_hot(labels, logits.shape[1], probs.dtype) * weight
            dice = soft_dice(probs, target_1h, self.batch_dice, self.smooth)
            return (1 - dice.mean()) + ce


def deep_supervision_weights(n: int) -> list[float]:
    """Loss weights for ``n`` outputs: ``1 / 2**i``, the lowest resolution 0, summing to 1.

    Example: ``deep_supervision_weights(4) == [4/7, 2/7, 1/7, 0]``; ``n = 1`` gives ``[1.0]``.
    """
    if n < 1:
        raise ValueError(f"need at least one output, got {n}")
    weights = [1 / 2**i for i in range(n)]
    if n > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of a base loss over the deep-supervision outputs (zero weights skipped).

    Args:
        base: loss taking ``(logits, target)``.
        weights: one per output, highest resolution first.
    """

    def __init__(self, base: nn.Module, weights: Sequence[float]) -> None:
        super().__init__()
        self.base = base
        self.weights = [float(w) for w in weights]

    def forward(
        self,
        outputs: Sequence[torch.Tensor],
        targets: Sequence[torch.Tensor],
        voxel_weights: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Args: outputs and targets, highest resolution first, as many as weights; and, for a
        base loss that takes them (``border_ce``), per-voxel weights at the same resolutions."""
        if not len(outputs) == len(targets) == len(self.weights):
            raise ValueError(
                f"{len(outputs)} outputs, {len(targets)} targets, {len(self.weights)} weights"
            )
        extra = [(m,) for m in voxel_weights] if voxel_weights is not None else [()] * len(outputs)
        terms = [
            w * self.base(o, t, *m)
            for w, o, t, m in zip(self.weights, outputs, targets, extra, strict=True)
            if w != 0
        ]
        # A zero-weighted output is not scored, but it stays in the graph with a zero gradient:
        # DistributedDataParallel requires every parameter to receive one.
        unused = [
            o.float().sum() * 0.0 for w, o in zip(self.weights, outputs, strict=True) if w == 0
        ]
        return torch.stack(terms + unused).sum()


def downsample_target(
    target: torch.Tensor, num_outputs: int, strides: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """Nearest-neighbour targets at the resolution of each deep-supervision output.

    Output ``i`` lives at the resolution of encoder stage ``i``, i.e. the input scaled by the
    product of ``strides[: i + 1]``. Taking every ``s``-th voxel from index 0 matches the centres
    of the encoder's strided convolutions.

    Args:
        target: ``(B, 1, *S)`` label map.
        num_outputs: how many outputs (``num_stages - 1`` for the networks of
        autoseg.networks.unet).
        strides: per stage, per axis strides (``config.strides``); the first is all ones.

    Returns:
        ``num_outputs`` tensors, the first being ``target`` itself.
    """
    if num_outputs > len(strides):
        raise ValueError(f"{num_outputs} outputs but only {len(strides)} stages")
    ndim = target.ndim - 2
    cumulative = [1] * ndim
    targets = []
    for i in range(num_outputs):
        cumulative = [c * s for c, s in zip(cumulative, strides[i], strict=True)]
        index = (slice(None), slice(None), *(slice(None, None, c) for c in cumulative))
        targets.append(target if i == 0 else target[index].contiguous())
    return targets


@torch.no_grad()
def dice_counts(
    logits: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, false positives, false negatives per foreground class (argmax).

    Summed over the batch; the trainer accumulates them for an online pseudo-Dice
    ``2 tp / (2 tp + fp + fn)``.

    Args:
        logits: ``(B, K, *S)``.
        target: ``(B, 1, *S)`` integer labels.
        num_classes: K, background included.
        ignore_index: target value of unannotated voxels, counted nowhere.

    Returns:
        ``(tp, fp, fn)``, each an int64 tensor of shape ``(K - 1,)`` on the logits' device.
    """
    pred = logits.argmax(dim=1, keepdim=True)  # (B, 1, *S)
    if ignore_index is not None:  # background in both: neither TP, FP nor FN of any class
        unannotated = target == ignore_index
        pred = pred.masked_fill(unannotated, 0)
        target = target.masked_fill(unannotated, 0)
    pred_1h = one_hot(pred, num_classes, torch.bool)[:, 1:]  # (B, K-1, *S)
    true_1h = one_hot(target, num_classes, torch.bool)[:, 1:]
    axes = (0, *range(2, pred_1h.ndim))
    tp = (pred_1h & true_1h).sum(axes)  # (K-1,)
    fp = (pred_1h & ~true_1h).sum(axes)
    fn = (~pred_1h & true_1h).sum(axes)
    return tp, fp, fn
