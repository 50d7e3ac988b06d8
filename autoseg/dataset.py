"""Datasets as users have them: MSD layout or nnU-Net v2 layout, read in place.

TODO(helper): load_dataset / check_dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Case:
    """One case: its image file(s) and, for training cases, its label file.

    Attributes:
        case_id: identifier (file name without ending and channel suffix).
        images: one file per channel (nnU-Net layout) or one 3D/4D file (MSD layout).
        label: the label map, or None for an unlabelled case.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset folder as described by its dataset.json.

    Attributes:
        name: the folder's name; everything autoseg writes lives in ``<home>/<name>/``.
        root: absolute path of the folder.
        layout: ``"msd"`` or ``"nnunet"``.
        channels: channel (modality) names in input order.
        labels: label value -> name, background (0) included.
        cases: training cases, sorted by case id.
        file_ending: the image file ending (``.nii.gz``, ``.nrrd``, ...).
    """

    name: str
    root: Path
    layout: str
    channels: tuple[str, ...]
    labels: dict[int, str]
    cases: tuple[Case, ...]
    file_ending: str = ".nii.gz"

    @property
    def is_ct(self) -> tuple[bool, ...]:
        """Per channel: does the modality name say CT?"""
        return tuple(c.strip().upper() == "CT" for c in self.channels)
