"""The cascade's previous-stage perturbation on the training device (``--augmentation device``).

The same draws and the same results as the CPU path of ``autoseg.training.augment.cascade`` (its
module
docstring has the rules), on tensors:

- Morphology: a voxel is in the dilation of a mask by the ball of radius ``r`` exactly when its
  squared distance to the mask is at most ``floor(r^2)``. The squared Euclidean distance is a
  sum over axes, so it is computed one axis at a time (a min-plus convolution with ``k^2``,
  ``|k| <= floor(r)``): ``3 (2 floor(r) + 1)`` elementwise minima of the patch, exact within the
  ball, instead of a convolution with the ball's up to 2109 taps (radius 8). Erosion is the
  complement of the dilation of the complement; outside the patch is neither (see the CPU
  path), which padding with a large distance gives.
- Component removal: only some 10% of the sample-channels are drawn for it, and torch has no
  connected-component labelling (label propagation would take as many passes as the longest
  path through a component). The drawn channels are copied to the host, labelled with
  ``scipy.ndimage.label`` as on the CPU path, and copied back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from autoseg.training.augment.cascade import (
    NNUNET,
    OPERATORS,
    Perturbation,
    PerturbationSettings,
    ball_squared_radius,
    draw_perturbation,
    remove_component,
)

__all__ = ["DevicePreviousStage", "apply_perturbation_torch", "morphology_torch"]

_FAR = 1e6  # a squared distance beyond any ball (exact in float32 after the additions)


def _squared_distance(mask: torch.Tensor, reach: int) -> torch.Tensor:
    """``(*S)`` bool -> float32 squared distance of each voxel to ``mask``: exact where it is
    at most ``reach^2``, larger than ``reach^2`` elsewhere (outside the array is far)."""
    dist = torch.where(mask, 0.0, _FAR).to(torch.float32)
    for axis in range(mask.dim()):
        n = dist.shape[axis]
        pad_shape = list(dist.shape)
        pad_shape[axis] = reach
        pad = dist.new_full(pad_shape, _FAR)
        padded = torch.cat([pad, dist, pad], axis)
        out = dist.clone()
        for k in range(1, reach + 1):
            out = torch.minimum(out, padded.narrow(axis, reach - k, n) + k * k)
            out = torch.minimum(out, padded.narrow(axis, reach + k, n) + k * k)
        dist = out
    return dist


def _dilate(mask: torch.Tensor, squared: int) -> torch.Tensor:
    return _squared_distance(mask, math.isqrt(squared)) <= squared


def _erode(mask: torch.Tensor, squared: int) -> torch.Tensor:
    return ~_dilate(~mask, squared)


def morphology_torch(mask: torch.Tensor, operator: str, radius: float) -> torch.Tensor:
    """``autoseg.training.augment.cascade.morphology`` on a boolean ``(*S)`` tensor (any device).

    Raises:
        ValueError: an unknown operator.
    """
    if operator not in OPERATORS:
        raise ValueError(f"unknown binary operator {operator!r}; expected one of {list(OPERATORS)}")
    squared = ball_squared_radius(radius)
    for step in OPERATORS[operator]:
        mask = _dilate(mask, squared) if step == "dilate" else _erode(mask, squared)
    return mask


def apply_perturbation_torch(
    onehot: torch.Tensor, perturbation: Perturbation, settings: PerturbationSettings
) -> torch.Tensor:
    """``autoseg.training.augment.cascade.apply_perturbation`` on a boolean ``(L, *S)`` tensor."""
    out = onehot.clone()
    for m in perturbation.morphology:
        work = out[m.channel]
        if not bool(work.any()):
            continue
        result = morphology_torch(work, m.operator, m.radius)
        out[:, result & ~work] = False  # what it gains, the other channels lose
        out[m.channel] = result
    for r in perturbation.removals:
        mask = out[r.channel].cpu().numpy()
        kept = remove_component(mask, r.pick, settings.max_component_fraction)
        out[r.channel] = torch.from_numpy(kept).to(out.device)
    return out


class DevicePreviousStage:
    """The previous stage's moved labels as one-hot channels, perturbed, after the image's.

    Args:
        labels: foreground label values, one channel each, in order.
        seed: see ``reseed``.
        settings: probabilities and ranges (nnU-Net's by default).
    """

    def __init__(
        self,
        labels: Sequence[int],
        seed: int = 0,
        settings: PerturbationSettings = NNUNET,
    ) -> None:
        self.labels = tuple(int(v) for v in labels)
        self.settings = settings
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the parameter stream (a numpy generator: the CPU path's draws)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Append the perturbed one-hot previous stage to the image channels.

        Args:
            image: ``(B, C, *patch)`` float, augmented.
            previous: ``(B, 1, *patch)`` integer labels, moved with the target.

        Returns:
            ``(B, C + len(labels), *patch)`` in ``image``'s dtype; ``image`` is not changed.
        """
        onehot = torch.stack([previous[:, 0] == v for v in self.labels], 1)  # (B, L, *patch)
        for b in range(len(onehot)):
            perturbation = draw_perturbation(self.rng, len(self.labels), self.settings)
            if perturbation.morphology or perturbation.removals:
                onehot[b] = apply_perturbation_torch(onehot[b], perturbation, self.settings)
        return torch.cat([image, onehot.to(image.dtype)], 1)
