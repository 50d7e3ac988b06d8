"""Region-based labels (nnU-Net's ``regions_class_order``), as BraTS uses them.

An nnU-Net v2 dataset.json may give a label as a list of values: a *region*, the union of those
label values, e.g. ``{"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3],
"enhancing tumour": 3}`` with ``"regions_class_order": [1, 2, 3]``. Regions may overlap. The
network then has one sigmoid output per region (no background output), trained with Dice + BCE
per region, and a prediction is turned back into a label map by writing, region after region in
the dataset.json order, ``regions_class_order[i]`` wherever region ``i``'s probability exceeds
0.5 (later regions overwrite earlier ones). Evaluation scores each region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Region", "parse_regions", "region_masks", "regions_to_labels"]


@dataclass(frozen=True)
class Region:
    """One region of a region-based dataset.

    Attributes:
        name: its dataset.json name.
        values: the label values it is the union of.
        value: the label value written where the region is predicted (its entry of
            ``regions_class_order``).
    """

    name: str
    values: tuple[int, ...]
    value: int


def is_region_based(meta: Mapping[str, Any]) -> bool:
    """Does this dataset.json use regions (a label given as a list, or regions_class_order)?"""
    labels = meta.get("labels")
    lists = isinstance(labels, dict) and any(isinstance(v, list) for v in labels.values())
    return lists or "regions_class_order" in meta


def parse_regions(meta: Mapping[str, Any]) -> tuple[tuple[Region, ...], dict[int, str], list[str]]:
    """Regions of a region-based nnU-Net v2 dataset.json.

    Returns:
        ``(regions, labels, problems)``: the regions in dataset.json order, the label values
        the label maps may hold (value -> name, background 0 included, names ``"label <v>"``
        except for labels declared with a single value), and what is wrong (empty when
        usable).
    """
    problems: list[str] = []
    labels = meta.get("labels")
    order = meta.get("regions_class_order")
    if not isinstance(labels, dict):
        return (), {}, ["'labels' must be an object"]
    entries: list[tuple[str, tuple[int, ...]]] = []
    for name, value in labels.items():
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            problems.append(f"'labels': {name!r} must be an integer or a list of integers")
            continue
        if any(v < 0 for v in values):
            problems.append(f"'labels': {name!r} has a negative value")
            continue
        entries.append((str(name), tuple(sorted(set(values)))))
    background = [n for n, v in entries if v == (0,)]
    if not background:
        problems.append("'labels' has no background (value 0)")
    if any(0 in v for n, v in entries if v != (0,)):
        problems.append("a region cannot contain the background value 0")
    regions_in = [(n, v) for n, v in entries if v != (0,)]
    if any(n == "ignore" for n, _ in regions_in):
        problems.append("an 'ignore' label together with regions is not supported")
    if not isinstance(order, list) or any(
        isinstance(v, bool) or not isinstance(v, int) for v in order
    ):
        problems.append("region-based labels need 'regions_class_order': a list of integers")
    elif len(order) != len(regions_in):
        problems.append(
            f"'regions_class_order' has {len(order)} entries for {len(regions_in)} region(s)"
        )
    if problems:
        return (), {}, problems
    regions = tuple(
        Region(name, values, int(v)) for (name, values), v in zip(regions_in, order, strict=True)
    )
    for region in regions:
        if region.value not in region.values:
            problems.append(
                f"'regions_class_order': {region.value} is not a value of {region.name!r} "
                f"{list(region.values)}"
            )
    singles = {v[0]: n for n, v in entries if len(v) == 1}
    values = sorted({0} | {v for r in regions for v in r.values})
    names = {v: singles.get(v, f"label {v}") for v in values}
    names[0] = background[0]
    return (regions if not problems else ()), names, problems


def region_masks(labels: np.ndarray, regions: Sequence[Region]) -> np.ndarray:
    """``(R, *S)`` boolean masks of each region in a label map ``(*S)``."""
    return np.stack([np.isin(labels, r.values) for r in regions])


def regions_to_labels(
    probs: np.ndarray, regions: Sequence[Region], threshold: float = 0.5
) -> np.ndarray:
    """A label map from per-region probabilities ``(R, *S)``, regions in order, later ones on
    top."""
    top = max(r.value for r in regions)
    out = np.zeros(probs.shape[1:], dtype=np.uint8 if top < 256 else np.int32)
    for region, p in zip(regions, probs, strict=True):
        out[p > threshold] = region.value
    return out
