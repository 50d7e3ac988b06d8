"""Largest-connected-component post-processing, decided on cross-validation predictions.

As in nnU-Net, two steps are tried on the predictions of the cross-validation, scored by Dice:

1. keep only the largest connected component of all foreground together (voxels of the other
   components become background); accepted only if the mean Dice over labels improves and no
   label's mean Dice gets worse;
2. on top of step 1's result when it was accepted, for each label on its own: keep only that
   label's largest component; accepted only if that label's mean Dice improves. Removing voxels
   of one label only turns them into background, so the other labels' Dice cannot change.

Components use full connectivity (26 neighbours in 3D). The decision is a small frozen
dataclass stored as ``postprocessing.json`` in the model folder and applied to every prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from autoseg.serial import dump_json, load_json

log = logging.getLogger(__name__)

_EPS = 1e-9  # Dice changes smaller than this count as no change


@dataclass(frozen=True)
class PostprocessingDecision:
    """Which largest-component steps to apply, and the mean Dice values that decided it.

    Attributes:
        largest_component_foreground: keep the largest component of all foreground.
        largest_component_labels: labels for which only the largest component is kept.
        dice_before: label -> mean Dice of the raw predictions.
        dice_foreground_lcc: label -> mean Dice with step 1 applied (accepted or not).
        dice_label_lcc: label -> mean Dice of that label with its own largest component kept,
            on top of step 1 when accepted (accepted or not).
        dice_after: label -> mean Dice with the decision applied.
    """

    largest_component_foreground: bool = False
    largest_component_labels: tuple[int, ...] = ()
    dice_before: dict[int, float] = field(default_factory=dict)
    dice_foreground_lcc: dict[int, float] = field(default_factory=dict)
    dice_label_lcc: dict[int, float] = field(default_factory=dict)
    dice_after: dict[int, float] = field(default_factory=dict)

    def to_json(self, path: str | Path) -> None:
        """Write as deterministic JSON (atomically)."""
        dump_json(self, path)

    @classmethod
    def from_json(cls, path: str | Path) -> PostprocessingDecision:
        """Read a decision written by :meth:`to_json`."""
        return load_json(cls, path)


def _keep_largest_in_place(view: np.ndarray, mask: np.ndarray) -> None:
    """Set the voxels of ``mask`` outside its largest component to 0 in ``view``."""
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    components, n = ndimage.label(mask, structure=structure)
    if n <= 1:
        return
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    keep = int(np.argmax(sizes))  # ties: the lowest component index, i.e. deterministic
    view[mask & (components != keep)] = 0


def keep_largest_component(
    labels_array: np.ndarray, label_values: Sequence[int] | None = None
) -> np.ndarray:
    """Keep only the largest connected component(s); returns a new array.

    Args:
        labels_array: label map (any number of dimensions), non-negative integers.
        label_values: None: keep the largest component of all foreground together (voxels of
            every other component become 0, whatever their label); otherwise, for each given
            label on its own, keep only its largest component (its other voxels become 0).

    Returns:
        The post-processed copy of ``labels_array``.

    Raises:
        ValueError: a label value is not positive.
    """
    out = np.array(labels_array, copy=True)
    if label_values is None:
        _keep_largest_in_place(out, out != 0)
        return out
    if any(int(v) <= 0 for v in label_values):
        raise ValueError(f"label values must be positive, got {list(label_values)}")
    if out.size == 0 or not label_values:
        return out
    max_label = max(int(v) for v in label_values)
    boxes = ndimage.find_objects(out.view(np.uint8) if out.dtype == bool else out, max_label)
    for value in (int(v) for v in label_values):
        box = boxes[value - 1]
        if box is None:
            continue
        view = out[box]  # a view: zeroing voxels of this label leaves other boxes valid
        _keep_largest_in_place(view, view == value)
    return out


def apply_postprocessing(labels_array: np.ndarray, decision: PostprocessingDecision) -> np.ndarray:
    """Apply a decision to one label map; returns a new array, the input is left untouched."""
    out = labels_array
    if decision.largest_component_foreground:
        out = keep_largest_component(out, None)  # a new array
    if decision.largest_component_labels:
        out = keep_largest_component(out, decision.largest_component_labels)
    return np.array(labels_array, copy=True) if out is labels_array else out


def label_dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    """Dice of one label; 1 when absent from both (the rule of autoseg.evaluation.evaluate)."""
    p, r = pred == label, ref == label
    denominator = int(p.sum()) + int(r.sum())
    return 1.0 if denominator == 0 else 2.0 * np.count_nonzero(p & r) / denominator


def _means(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=np.float64).mean(axis=0)


def decide_postprocessing(
    cases: Iterable[tuple[np.ndarray, np.ndarray, tuple[float, ...]]],
    labels: Sequence[int],
) -> PostprocessingDecision:
    """Decide the largest-component steps on cross-validation predictions (see module doc).

    Each case is visited once (step 2 is scored both on the raw predictions and on step 1's
    result, whose acceptance is known only at the end), so ``cases`` may be a generator that
    loads one case at a time.

    Args:
        cases: ``(pred, ref, spacing)`` per case; spacing is not needed by Dice and ignored.
        labels: the foreground label values to consider.

    Returns:
        The decision, with the mean Dice values that justified it.

    Raises:
        ValueError: no cases or no labels.
    """
    labels = [int(v) for v in labels]
    if not labels:
        raise ValueError("no labels to decide post-processing for")
    before: list[list[float]] = []
    after_fg: list[list[float]] = []
    label_lcc_raw: list[list[float]] = []  # step 2 on the raw predictions
    label_lcc_fg: list[list[float]] = []  # step 2 on top of step 1
    for pred, ref, _spacing in cases:
        if pred.shape != ref.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from reference {ref.shape}")
        fg = keep_largest_component(pred, None)
        before.append([label_dice(pred, ref, v) for v in labels])
        after_fg.append([label_dice(fg, ref, v) for v in labels])
        label_lcc_raw.append(
            [label_dice(keep_largest_component(pred, [v]), ref, v) for v in labels]
        )
        label_lcc_fg.append([label_dice(keep_largest_component(fg, [v]), ref, v) for v in labels])
    if not before:
        raise ValueError("no cases to decide post-processing on")

    dice_before, dice_fg = _means(before), _means(after_fg)
    improves = dice_fg.mean() > dice_before.mean() + _EPS
    use_fg = bool(improves and np.all(dice_fg >= dice_before - _EPS))
    log.info(
        "largest component of foreground: mean Dice %.4f -> %.4f: %s",
        dice_before.mean(),
        dice_fg.mean(),
        "accepted" if use_fg else "rejected",
    )
    base = dice_fg if use_fg else dice_before
    dice_label = _means(label_lcc_fg if use_fg else label_lcc_raw)
    chosen = []
    final = base.copy()
    for i, value in enumerate(labels):
        accepted = bool(dice_label[i] > base[i] + _EPS)
        log.info(
            "largest component of label %d: Dice %.4f -> %.4f: %s",
            value,
            base[i],
            dice_label[i],
            "accepted" if accepted else "rejected",
        )
        if accepted:
            chosen.append(value)
            final[i] = dice_label[i]

    def as_dict(values: np.ndarray) -> dict[int, float]:
        return {v: float(d) for v, d in zip(labels, values, strict=True)}

    return PostprocessingDecision(
        largest_component_foreground=use_fg,
        largest_component_labels=tuple(chosen),
        dice_before=as_dict(dice_before),
        dice_foreground_lcc=as_dict(dice_fg),
        dice_label_lcc=as_dict(dice_label),
        dice_after=as_dict(final),
    )
