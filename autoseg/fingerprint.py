"""Dataset fingerprint: what the planner needs to know about the data.

Written as ``<home>/<dataset>/fingerprint.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from autoseg.serial import dump_json, load_json


@dataclass(frozen=True)
class CaseFingerprint:
    """One training case.

    Attributes:
        case_id: the case's identifier.
        spacing: voxel spacing (Z, Y, X) in mm.
        shape_before_crop: spatial shape as stored.
        shape_after_crop: spatial shape after cropping to the nonzero region.
        relative_size_after_crop: voxels after / before cropping.
    """

    case_id: str
    spacing: tuple[float, ...]
    shape_before_crop: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    relative_size_after_crop: float


@dataclass(frozen=True)
class IntensityStats:
    """Foreground (label > 0) intensity statistics of one channel over the dataset."""

    mean: float
    median: float
    std: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float


@dataclass(frozen=True)
class Fingerprint:
    """Everything measured about a dataset.

    Attributes:
        dataset_name: the dataset folder's name.
        channels: channel (modality) names, e.g. ``("CT",)`` or ``("T1", "T2")``.
        labels: label value -> name, background included.
        cases: one entry per training case, sorted by case id.
        intensities: one entry per channel.
    """

    dataset_name: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[CaseFingerprint, ...]
    intensities: tuple[IntensityStats, ...]

    def to_json(self, path: str | Path) -> None:
        dump_json(self, path)

    @classmethod
    def from_json(cls, path: str | Path) -> Fingerprint:
        return load_json(cls, path)
