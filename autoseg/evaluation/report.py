"""The result of an evaluation and its report: ``Evaluation`` and how it is written.

This module owns what scoring produces: the scores of one case (``CaseResult``), the means over
cases per label (``MeanMetrics``, built by :func:`summarise`, never NaN), and ``Evaluation``
with its report: ``evaluation.json``, the per-case and summary CSV files (with the object
metrics of 2D label maps as extra columns) and the rich table. Scoring the cases is
:mod:`autoseg.evaluation.evaluate`; the metrics themselves are
:mod:`autoseg.evaluation.metrics` and :mod:`autoseg.evaluation.metrics_microscopy`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoseg.data.regions import Region
from autoseg.evaluation.metrics import COUNT_NAMES, METRIC_NAMES, LabelMetrics
from autoseg.evaluation.metrics_microscopy import (
    OBJECT_METRIC_NAMES,
    ObjectMeans,
    ObjectMetrics,
    mean_object_metrics,
    object_table,
)
from autoseg.serial import (
    atomic_write_text,
    check_output_folder,
    dump_json,
    load_json,
    remove_temp_files,
    to_dict,
)

if TYPE_CHECKING:
    from rich.console import Console

REPORT_FILES = ("evaluation.json", "evaluation_cases.csv", "evaluation_summary.csv")
METRIC_DEFINITIONS = "monai"


@dataclass(frozen=True)
class MeanMetrics:
    """Means over cases of the metrics of one label."""

    dice: float
    iou: float
    precision: float
    recall: float
    hd95: float
    nsd: float


@dataclass(frozen=True)
class CaseResult:
    """The scores of every evaluated label in one case (``objects``: 2D label maps only)."""

    case_id: str
    metrics: dict[int, LabelMetrics]
    objects: dict[int, ObjectMetrics] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """Per-case scores, their per-label means and the mean Dice over labels.

    Attributes:
        cases: one result per case, sorted by case id.
        labels: label value -> name, the labels that were scored.
        label_means: label value -> means over cases of every metric.
        mean_dice: mean over labels of ``label_means[label].dice`` (0.0 when no label).
        nsd_tolerance_mm: the NSD tolerance used.
        object_means: label value -> means of the object metrics (2D label maps; else empty).
        command: the command line that produced it ("" when called from Python).
        metrics: whose metric definitions were used: ``"monai"`` (``autoseg.evaluation.metrics``);
        ``""``
            in a file written before autoseg recorded it (other surface definitions).
        regions: for a region-based dataset, the regions scored: then the keys of ``labels``
            and of the metrics are region numbers (1, 2, ... in this order), not label values.
    """

    cases: tuple[CaseResult, ...]
    labels: dict[int, str]
    label_means: dict[int, MeanMetrics]
    mean_dice: float
    nsd_tolerance_mm: float
    object_means: dict[int, ObjectMeans] = field(default_factory=dict)
    command: str = ""
    metrics: str = ""
    regions: tuple[Region, ...] = ()

    def to_json(self, path: str | Path) -> None:
        """Write as deterministic JSON (atomically): per case, per-label means, the command
        (and the regions, only when regions were scored)."""
        record = to_dict(self)
        if not self.regions:
            del record["regions"]
        dump_json(record, path)

    @property
    def _kind(self) -> str:
        return "region" if self.regions else "label"

    @classmethod
    def from_json(cls, path: str | Path) -> Evaluation:
        """Read an evaluation written by :meth:`to_json`."""
        return load_json(cls, path)

    def to_csv(self, path: str | Path) -> None:
        """Write one row per case and label (atomically): ``case, label, name``, metrics, counts
        (and the object metrics of 2D label maps); ``case, region, name`` for regions."""
        extra = OBJECT_METRIC_NAMES if self.object_means else ()
        rows = [
            [case.case_id, label, self.labels.get(label, str(label))]
            + [getattr(m, n) for n in METRIC_NAMES + COUNT_NAMES]
            + [getattr(case.objects[label], n) for n in extra]
            for case in self.cases
            for label, m in case.metrics.items()
        ]
        _write_csv(path, ["case", self._kind, "name", *METRIC_NAMES, *COUNT_NAMES, *extra], rows)

    def summary_to_csv(self, path: str | Path) -> None:
        """Write one row of means per label (or region), then a ``mean`` row of their means."""
        extra = OBJECT_METRIC_NAMES if self.object_means else ()
        rows = [
            [label, self.labels[label], len(self.cases)]
            + [getattr(mean, n) for n in METRIC_NAMES]
            + [getattr(self.object_means[label], n) for n in extra]
            for label, mean in self.label_means.items()
        ]
        if self.label_means:
            overall = [
                float(np.mean([getattr(m, n) for m in self.label_means.values()]))
                for n in METRIC_NAMES
            ]
            overall += [
                float(np.mean([getattr(m, n) for m in self.object_means.values()])) for n in extra
            ]
            rows.append(["mean", f"all {self._kind}s", len(self.cases), *overall])
        _write_csv(path, [self._kind, "name", "cases", *METRIC_NAMES, *extra], rows)

    def write_report(self, folder: str | Path) -> tuple[Path, ...]:
        """Write ``evaluation.json``, ``evaluation_cases.csv`` and ``evaluation_summary.csv``.

        Returns:
            The three paths, in that order (each written atomically).
        """
        folder = Path(folder)
        check_output_folder(folder, "-o")
        folder.mkdir(parents=True, exist_ok=True)
        paths = tuple(folder / n for n in REPORT_FILES)
        remove_temp_files(*paths)  # of a killed run
        self.to_json(paths[0])
        self.to_csv(paths[1])
        self.summary_to_csv(paths[2])
        return paths

    def print_table(self, console: Console) -> None:
        """Print the per-label means as a rich table."""
        from rich.table import Table

        table = Table(
            title=f"Evaluation of {len(self.cases)} case(s)",
            caption=f"NSD tolerance {self.nsd_tolerance_mm:g} mm; HD95 in mm",
        )
        table.add_column(self._kind)
        for header in ("Dice", "IoU", "precision", "recall", "HD95", "NSD"):
            table.add_column(header, justify="right")
        for label, mean in self.label_means.items():
            name = self.labels[label]
            table.add_row(
                str(label) if name == str(label) else f"{label} {name}",
                *(f"{getattr(mean, n):.4f}" for n in ("dice", "iou", "precision", "recall")),
                f"{mean.hd95:.2f}",
                f"{mean.nsd:.4f}",
            )
        table.add_section()
        table.add_row("mean", f"{self.mean_dice:.4f}", *[""] * 5)
        console.print(table)
        if self.object_means:
            console.print(object_table(self.object_means, self.labels))


def _write_csv(path: str | Path, header: list[str], rows: list[list]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def summarise(
    cases: list[CaseResult],
    labels: Mapping[int, str],
    nsd_tolerance_mm: float,
    regions: Sequence[Region] = (),
) -> Evaluation:
    """The evaluation of scored cases: per-label means over cases and their mean Dice.

    Args:
        cases: one result per case, each scoring every label (or region) of ``labels``.
        labels: value (or region number) -> name of what was scored.
        nsd_tolerance_mm: the NSD tolerance used.
        regions: the regions scored, if any.

    Returns:
        The evaluation, cases sorted by case id.

    Raises:
        ValueError: no cases.
    """
    if not cases:
        raise ValueError("no cases to evaluate")
    means = {
        label: MeanMetrics(
            **{
                name: float(np.mean([getattr(c.metrics[label], name) for c in cases]))
                for name in METRIC_NAMES
            }
        )
        for label in labels
    }
    mean_dice = float(np.mean([m.dice for m in means.values()])) if means else 0.0
    return Evaluation(
        cases=tuple(sorted(cases, key=lambda c: c.case_id)),
        labels=dict(labels),
        label_means=means,
        mean_dice=mean_dice,
        nsd_tolerance_mm=float(nsd_tolerance_mm),
        object_means=mean_object_metrics([c.objects for c in cases]),
        metrics=METRIC_DEFINITIONS,
        regions=tuple(regions),
    )
