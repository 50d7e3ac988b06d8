"""What ``autoseg evaluate --dataset-json`` scores: the labels, or the regions of a region-based
dataset.

The file is the one ``autoseg.data.dataset_json.read_label_names`` reads (a dataset.json or
plans.json, or a dataset or model folder holding one). A region-based nnU-Net v2 dataset.json
(labels given as lists of values, ``regions_class_order``) or the plans of a region-based model make
evaluate score each region (the union of its label values, in prediction and reference alike), as
nnU-Net's ``evaluate_folder`` does with such a dataset.json; any other file gives its labels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from autoseg.data.dataset_json import label_file, read_label_names
from autoseg.data.plans import Plans
from autoseg.data.regions import Region, is_region_based, parse_regions
from autoseg.errors import AutosegError

__all__ = ["EvaluationLabels", "read_evaluation_labels"]


@dataclass(frozen=True)
class EvaluationLabels:
    """The label values of the maps and, for a region-based dataset, the regions to score.

    Attributes:
        labels: label value -> name, background (0) included.
        regions: the regions in their file's order; empty: score the labels.
    """

    labels: dict[int, str]
    regions: tuple[Region, ...] = ()


def read_evaluation_labels(path: str | Path) -> EvaluationLabels:
    """Labels and regions from a dataset.json or plans.json (or a folder holding one).

    Raises:
        DatasetError: the file is missing, unreadable, or its labels are not valid.
        AutosegError: plans whose regions name a value that is not one of their labels (or
            the background), or name a region twice; the message names the file.
    """
    labels = read_label_names(path)  # checks the file, and names it in any error
    file = label_file(path)
    meta = json.loads(file.read_text(encoding="utf-8-sig"))
    if "configurations" in meta:  # autoseg plans: their regions, if any
        regions = Plans.from_json(file).regions
    else:
        regions = parse_regions(meta)[0] if is_region_based(meta) else ()
    _check_regions(regions, labels, file)
    return EvaluationLabels(labels, tuple(regions))


def _check_regions(regions: tuple[Region, ...], labels: dict[int, str], file: Path) -> None:
    names = [r.name for r in regions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AutosegError(f"{file}: region(s) {twice} named more than once")
    foreground = sorted(v for v in labels if v != 0)
    for region in regions:
        unknown = [v for v in region.values if v not in foreground]
        if unknown or not region.values:
            raise AutosegError(
                f"{file}: region {region.name!r} holds value(s) {unknown or 'none'} that are "
                f"not foreground labels of this file ({foreground})"
            )
