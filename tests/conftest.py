from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.synthetic import write_dataset

# the 200-case MSD Task04_Hippocampus folder: $AUTOSEG_TEST_HIPPOCAMPUS (.ci/run sets it to the
# shared copy beside the clone), else tests/data/
_HIPPOCAMPUS = os.environ.get("AUTOSEG_TEST_HIPPOCAMPUS")
_IN_REPO = Path(__file__).parent / "data" / "Task04_Hippocampus"
SHARED = Path(_HIPPOCAMPUS) if _HIPPOCAMPUS else _IN_REPO


@pytest.fixture
def real_dataset() -> Path:
    """The real dataset folder; skipped without it, except in CI (``CI=true``), where it fails."""
    if (SHARED / "dataset.json").is_file():
        return SHARED
    why = f"real dataset not found at {SHARED} (set AUTOSEG_TEST_HIPPOCAMPUS)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why + "; .ci/run sets it to ../shared/datasets/Task04_Hippocampus")
    pytest.skip(why)


@pytest.fixture
def msd_dataset(tmp_path: Path) -> Path:
    """Three 24x28x20 single-channel cases in the MSD layout."""
    return write_dataset(tmp_path / "Task99_Synthetic", layout="msd")


@pytest.fixture
def nnunet_dataset(tmp_path: Path) -> Path:
    """Three two-channel cases in the nnU-Net v2 layout."""
    return write_dataset(tmp_path / "Dataset099_Synthetic", layout="nnunet", channels=2)
