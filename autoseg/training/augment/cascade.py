"""Perturbing the previous stage's segmentation while a cascade trains, as nnU-Net does.

A ``3d_cascade_fullres`` network learns to correct the 3d_lowres segmentation it gets as one-hot
input channels. nnU-Net makes those channels worse than the cross-validation predictions already
are, so that the network does not learn to copy them. After every other augmentation (on the
final patch), and only on the one-hot previous-stage channels, per sample:

1. random binary morphology (p 0.4): the channels in random order, each with p 0.5: one of
   dilation, erosion, opening or closing, with a ball of radius uniform in [1, 8) voxels.
   Voxels a channel gains are taken from every other channel (the channels stay one-hot);
   voxels it loses become background.
2. removal of a connected component (p 0.2): the channels in random order, each with p 0.5:
   one connected component (full connectivity: 26 neighbours in 3D), drawn uniformly among
   those smaller than 15% of the patch, becomes background (nnU-Net's
   ``fill_with_other_class_p`` is 0 in its cascade, so it is never given to another channel).

The ball of radius ``r`` is the set of integer offsets ``d`` with ``|d|^2 <= r^2``: centred
and symmetric for every ``r`` (skimage's ``ball``, which nnU-Net uses, samples an evenly spaced
grid from ``-r`` to ``r`` instead, which for a non-integer ``r`` is off the voxel grid). Outside
the patch counts as neither inside nor outside the mask: dilation adds nothing from there and
erosion removes nothing because of it (scipy's ``border_value`` 0 and 1).

Parameters are drawn first (``draw_perturbation``), then applied deterministically
(``apply_perturbation``), so the CPU path here and the device path of
``autoseg.training.augment.cascade_device`` give the same result for the same draws. The morphology
uses
the exact Euclidean distance transform (``scipy.ndimage.distance_transform_edt``): a voxel is
in the dilation by the ball exactly when its squared distance to the mask is at most ``r^2``;
this costs the same for every radius, some 15 times less than ``binary_dilation`` with a
radius-8 ball (2109 offsets) on a 96^3 patch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoseg.inference.cascade import one_hot_channels

__all__ = [
    "NNUNET",
    "OPERATORS",
    "Morphology",
    "Perturbation",
    "PerturbationSettings",
    "Removal",
    "apply_perturbation",
    "ball_squared_radius",
    "draw_perturbation",
    "morphology",
    "perturb_previous_stage",
    "previous_stage_channels",
    "remove_component",
]

# each binary operator as its steps: dilate or erode with the same ball
OPERATORS: dict[str, tuple[str, ...]] = {
    "dilation": ("dilate",),
    "erosion": ("erode",),
    "opening": ("erode", "dilate"),
    "closing": ("dilate", "erode"),
}


@dataclass(frozen=True)
class PerturbationSettings:
    """Probabilities and ranges of the perturbation (nnU-Net's cascade values by default).

    Attributes:
        p_morphology: per sample, that the morphology step runs.
        p_morphology_channel: then per channel, that it gets an operator.
        radius: the ball's radius is uniform in ``[low, high)`` voxels.
        p_removal: per sample, that the component removal step runs.
        p_removal_channel: then per channel, that one of its components is removed.
        max_component_fraction: only components of fewer voxels than this fraction of the
            patch are removed.
    """

    p_morphology: float = 0.4
    p_morphology_channel: float = 0.5
    radius: tuple[float, float] = (1.0, 8.0)
    p_removal: float = 0.2
    p_removal_channel: float = 0.5
    max_component_fraction: float = 0.15


NNUNET = PerturbationSettings()


@dataclass(frozen=True)
class Morphology:
    """One channel's binary operator: one of ``OPERATORS``, with a ball of ``radius`` voxels."""

    channel: int
    operator: str
    radius: float


@dataclass(frozen=True)
class Removal:
    """One channel loses a component: ``pick`` in [0, 1) chooses among the eligible ones (in
    the order ``scipy.ndimage.label`` numbers them)."""

    channel: int
    pick: float


@dataclass(frozen=True)
class Perturbation:
    """What one sample's previous-stage channels get, in order: morphology, then removals."""

    morphology: tuple[Morphology, ...] = ()
    removals: tuple[Removal, ...] = ()


def draw_perturbation(
    rng: np.random.Generator, channels: int, settings: PerturbationSettings = NNUNET
) -> Perturbation:
    """Draw one sample's perturbation of ``channels`` one-hot channels (rules: module docstring)."""
    s = settings
    morph: list[Morphology] = []
    if rng.random() < s.p_morphology:
        for c in rng.permutation(channels):
            if rng.random() < s.p_morphology_channel:
                operator = list(OPERATORS)[int(rng.integers(len(OPERATORS)))]
                morph.append(Morphology(int(c), operator, float(rng.uniform(*s.radius))))
    removals: list[Removal] = []
    if rng.random() < s.p_removal:
        for c in rng.permutation(channels):
            if rng.random() < s.p_removal_channel:
                removals.append(Removal(int(c), float(rng.random())))
    return Perturbation(tuple(morph), tuple(removals))


def ball_squared_radius(radius: float) -> int:
    """The largest squared integer distance inside a ball of ``radius``: ``floor(radius^2)``."""
    return int(math.floor(radius * radius))


def _near(mask: np.ndarray, squared: int) -> np.ndarray:
    """Voxels whose squared distance to the (non-empty) ``mask`` is at most ``squared``."""
    distance = ndimage.distance_transform_edt(~mask)
    return distance <= math.sqrt(squared + 0.5)  # integers squared: a safe margin of 0.5


def _dilate(mask: np.ndarray, squared: int) -> np.ndarray:
    return _near(mask, squared) if mask.any() else mask.copy()


def _erode(mask: np.ndarray, squared: int) -> np.ndarray:
    return ~_near(~mask, squared) if not mask.all() else mask.copy()


def morphology(mask: np.ndarray, operator: str, radius: float) -> np.ndarray:
    """A binary operator of ``OPERATORS`` with the ball of ``radius`` on a boolean ``(*S)`` mask.

    Only the mask's bounding box, enlarged by twice the ball's reach, can change or matter (the
    same result as on the whole array, for a fraction of the cost on a small object).

    Raises:
        ValueError: an unknown operator.
    """
    if operator not in OPERATORS:
        raise ValueError(f"unknown binary operator {operator!r}; expected one of {list(OPERATORS)}")
    squared = ball_squared_radius(radius)
    if not mask.any():
        return mask.copy()
    margin = 2 * (math.isqrt(squared) + 1)
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + 1 + margin))
    out = np.zeros_like(mask)
    out[tuple(box)] = _operate(mask[tuple(box)], operator, squared)
    return out


def _operate(mask: np.ndarray, operator: str, squared: int) -> np.ndarray:
    for step in OPERATORS[operator]:
        mask = _dilate(mask, squared) if step == "dilate" else _erode(mask, squared)
    return mask


def remove_component(mask: np.ndarray, pick: float, max_fraction: float) -> np.ndarray:
    """``mask`` without one of its connected components smaller than ``max_fraction`` of the
    array (``pick`` in [0, 1) chooses which); unchanged when there is none."""
    structure = np.ones((3,) * mask.ndim, dtype=bool)  # full connectivity
    labels, count = ndimage.label(mask, structure=structure)
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    eligible = np.flatnonzero(sizes < max_fraction * mask.size) + 1
    if len(eligible) == 0:
        return mask.copy()
    chosen = eligible[min(int(pick * len(eligible)), len(eligible) - 1)]
    return mask & (labels != chosen)


def apply_perturbation(
    onehot: np.ndarray, perturbation: Perturbation, settings: PerturbationSettings
) -> np.ndarray:
    """One sample's perturbed channels.

    Args:
        onehot: ``(L, *S)`` boolean, at most one channel true per voxel.
        perturbation: what to do (``draw_perturbation``).
        settings: the component size limit.

    Returns:
        A new ``(L, *S)`` boolean array, still at most one channel per voxel.
    """
    out = onehot.copy()
    for m in perturbation.morphology:
        work = out[m.channel]
        if not work.any():
            continue
        result = morphology(work, m.operator, m.radius)
        out[:, result & ~work] = False  # what it gains, the other channels lose
        out[m.channel] = result
    for r in perturbation.removals:
        out[r.channel] = remove_component(out[r.channel], r.pick, settings.max_component_fraction)
    return out


def perturb_previous_stage(
    onehot: np.ndarray,
    rng: np.random.Generator,
    settings: PerturbationSettings = NNUNET,
) -> np.ndarray:
    """Perturb a batch of one-hot previous-stage channels (the CPU path).

    Args:
        onehot: ``(B, L, *S)`` float 0/1, one channel per foreground label.
        rng: where every random draw comes from (``draw_perturbation`` per sample in turn).
        settings: probabilities and ranges.

    Returns:
        A new ``(B, L, *S)`` array of ``onehot``'s dtype.
    """
    out = np.empty_like(onehot)
    for b, sample in enumerate(onehot):
        perturbation = draw_perturbation(rng, len(sample), settings)
        out[b] = apply_perturbation(sample > 0.5, perturbation, settings)
    return out


def previous_stage_channels(
    previous: np.ndarray,
    labels: Sequence[int],
    rng: np.random.Generator | None,
    settings: PerturbationSettings = NNUNET,
) -> np.ndarray:
    """A batch's previous-stage label maps as one-hot channels, perturbed when ``rng`` is given.

    Args:
        previous: ``(B, 1, *S)`` label maps.
        labels: the foreground label values, one channel each.
        rng: the perturbation's draws (``perturb_previous_stage``); None: not perturbed.
        settings: probabilities and ranges.

    Returns:
        ``(B, len(labels), *S)`` float32.
    """
    onehot = np.stack([one_hot_channels(p, labels) for p in previous[:, 0]])
    return onehot if rng is None else perturb_previous_stage(onehot, rng, settings)
