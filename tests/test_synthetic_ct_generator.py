"""benchmarks/synthetic_ct.py: the same seed gives the same voxels; the dataset is MSD-layout CT."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "synthetic_ct.py"
_spec = importlib.util.spec_from_file_location("synthetic_ct", _PATH)
synthetic_ct = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("synthetic_ct", synthetic_ct)  # dataclasses look their module up
_spec.loader.exec_module(synthetic_ct)


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj), img.affine


def test_same_seed_same_voxels_other_seed_other_voxels(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic_ct.write_dataset(tmp_path / name, "tiny", train=1, test=1, seed=seed)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        case = "ct_000.nii.gz" if sub.endswith("Tr") else "ct_001.nii.gz"
        a, affine_a = _read(tmp_path / "a" / sub / case)
        b, affine_b = _read(tmp_path / "b" / sub / case)
        c, _ = _read(tmp_path / "c" / sub / case)
        assert np.array_equal(a, b) and np.array_equal(affine_a, affine_b)
        assert a.shape != c.shape or not np.array_equal(a, c)


def test_dataset_is_ct_with_air_body_and_three_labels(tmp_path: Path) -> None:
    synthetic_ct.write_dataset(tmp_path, "tiny", train=1, test=1, seed=0)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"} and meta["numTraining"] == 1
    assert set(meta["labels"]) == {"0", "1", "2", "3"}
    image, affine = _read(tmp_path / "imagesTr" / "ct_000.nii.gz")
    labels, _ = _read(tmp_path / "labelsTr" / "ct_000.nii.gz")
    assert image.dtype == np.int16 and image.shape[:2] == (128, 128)
    assert affine[0, 0] < 0 and affine[1, 1] < 0 and affine[2, 2] > affine[1, 1] * -2  # flipped
    assert (image < -900).mean() > 0.3  # air around the body, not 0
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    sizes = np.bincount(labels.ravel(), minlength=4)[1:]
    assert sizes[0] > 10 * sizes[1] > 10 * sizes[2] > 0  # very different organ sizes
    test_image, _ = _read(tmp_path / "imagesTs" / "ct_001.nii.gz")
    assert test_image.shape[2] == synthetic_ct.SIZES["tiny"].test_slices
