"""The ignore label of sparsely annotated datasets: one rule, used by every stage.

A dataset.json label named ``ignore`` marks voxels nobody annotated. It must be the highest label
value (so the network's classes stay ``0..K-1`` and the ignore value is ``K``). Those voxels take
no part in the loss, the online pseudo-Dice, foreground sampling, the fingerprint's foreground
intensities, evaluation or the post-processing decision, and the network has no output for them,
so a prediction never contains the value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = [
    "IGNORE_NAME",
    "ignore_label",
    "ignore_label_problem",
    "mask_ignored",
    "predicted_labels",
]

IGNORE_NAME = "ignore"


def ignore_label(labels: Mapping[int, str]) -> int | None:
    """The value of the label named ``ignore``, or None when there is none."""
    found = [int(v) for v, name in labels.items() if name == IGNORE_NAME]
    return found[0] if found else None


def ignore_label_problem(labels: Mapping[int, str]) -> str | None:
    """Why ``labels``' ignore label is not usable, or None when it is (or there is none)."""
    near = [name for name in labels.values() if name != IGNORE_NAME and _looks_like_ignore(name)]
    if near:
        return (
            f"label {near[0]!r} looks like the ignore label but is not spelled 'ignore'; write "
            "'ignore' to leave its voxels out of training, or rename it if it is a real "
            "structure (it must not be trained as an ordinary class by accident)"
        )
    values = [int(v) for v, name in labels.items() if name == IGNORE_NAME]
    if not values:
        return None
    if len(values) > 1:
        return f"more than one label is named '{IGNORE_NAME}': values {sorted(values)}"
    if values[0] == 0:
        return f"the '{IGNORE_NAME}' label cannot be the background (value 0)"
    if values[0] != max(int(v) for v in labels):
        return (
            f"the '{IGNORE_NAME}' label must have the highest value, got {values[0]} "
            f"(highest: {max(int(v) for v in labels)})"
        )
    if len(labels) < 3:
        return f"the '{IGNORE_NAME}' label needs at least one other label besides background"
    return None


def _looks_like_ignore(name: object) -> bool:
    return isinstance(name, str) and name.strip().lower() == IGNORE_NAME


def predicted_labels(labels: Mapping[int, str]) -> tuple[int, ...]:
    """The label values a network predicts (background included, ignore excluded), sorted."""
    ignore = ignore_label(labels)
    return tuple(sorted(int(v) for v in labels if int(v) != ignore))


def mask_ignored(
    pred: np.ndarray, ref: np.ndarray, ignore: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Background in both maps wherever the reference says ``ignore``; unchanged without one.

    TP, FP and FN of every other label then count annotated voxels only.
    """
    if ignore is None:
        return pred, ref
    unlabelled = ref == ignore
    if not unlabelled.any():
        return pred, ref
    return np.where(unlabelled, 0, pred).astype(pred.dtype), np.where(unlabelled, 0, ref).astype(
        ref.dtype
    )
