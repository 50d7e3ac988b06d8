from __future__ import annotations

from pathlib import Path

import pytest

from tests.synthetic import write_dataset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "Task04_Hippocampus"


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    """Three 24x28x20 single-channel cases in the MSD layout."""
    return write_dataset(tmp_path / "Task99_Synthetic", layout="msd")


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    """Three two-channel cases in the nnU-Net v2 layout."""
    return write_dataset(tmp_path / "Dataset099_Synthetic", layout="nnunet", channels=2)
