"""Tiny synthetic datasets for tests, written as real NIfTI files in the layouts users have."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np


def make_case(
    rng: np.random.Generator,
    shape_ijk: tuple[int, int, int],
    channels: int = 1,
    num_labels: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """An image (i, j, k[, c]) with blobs and their label map (i, j, k), both in file order.

    Label 1 is an ellipsoid, label 2 (if any) a smaller one touching it; intensities differ per
    label, plus noise, so a network can learn them. A zero border mimics skull-stripped MRI.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape_ijk], indexing="ij"), -1)
    centre = np.array(shape_ijk) / 2 + rng.uniform(-1.5, 1.5, size=3)
    radius = np.array(shape_ijk) / 5
    d = (((grid - centre) / radius) ** 2).sum(-1)
    label = np.zeros(shape_ijk, dtype=np.uint8)
    label[d < 1] = 1
    if num_labels >= 2:
        centre2 = centre + np.array([radius[0] * 1.2, 0, 0])
        d2 = (((grid - centre2) / (radius * 0.6)) ** 2).sum(-1)
        label[(d2 < 1) & (label == 0)] = 2
    base = 100.0 + 40.0 * label + rng.normal(0, 8, size=shape_ijk)
    base[:2] = 0
    base[-2:] = 0
    imgs = [base * (1 + 0.5 * c) for c in range(channels)]
    image = np.stack(imgs, -1) if channels > 1 else imgs[0]
    return image.astype(np.float32), label


def _save(array: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> None:
    affine = np.diag([*spacing, 1.0])
    img = nib.Nifti1Image(array, affine)
    img.header.set_zooms(tuple(spacing) + ((1.0,) if array.ndim == 4 else ()))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_dataset(
    root: Path,
    layout: str = "msd",
    n_cases: int = 3,
    shape_ijk: tuple[int, int, int] = (24, 28, 20),
    spacing_ijk: tuple[float, float, float] = (1.0, 1.0, 1.0),
    channels: int = 1,
    num_labels: int = 2,
    modality: str = "MRI",
    seed: int = 0,
) -> Path:
    """Write a dataset folder ``root`` in the MSD or nnU-Net v2 layout; returns ``root``.

    Case ids are ``case_000``, ``case_001``, ...
    """
    rng = np.random.default_rng(seed)
    labels = {0: "background", 1: "anterior", 2: "posterior"}
    labels = {k: v for k, v in labels.items() if k <= num_labels}
    training = []
    for i in range(n_cases):
        cid = f"case_{i:03d}"
        image, label = make_case(rng, shape_ijk, channels, num_labels)
        _save(label, root / "labelsTr" / f"{cid}.nii.gz", spacing_ijk)
        if layout == "msd":
            _save(image, root / "imagesTr" / f"{cid}.nii.gz", spacing_ijk)
            training.append(
                {"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"}
            )
        else:
            for c in range(channels):
                chan = image[..., c] if channels > 1 else image
                _save(chan, root / "imagesTr" / f"{cid}_{c:04d}.nii.gz", spacing_ijk)
    names = [modality] + [f"{modality}{c}" for c in range(1, channels)]
    if layout == "msd":
        meta = {
            "name": root.name,
            "tensorImageSize": "4D" if channels > 1 else "3D",
            "modality": {str(c): names[c] for c in range(channels)},
            "labels": {str(k): v for k, v in labels.items()},
            "numTraining": n_cases,
            "training": training,
        }
    else:
        meta = {
            "channel_names": {str(c): names[c] for c in range(channels)},
            "labels": {v: k for k, v in labels.items()},
            "numTraining": n_cases,
            "file_ending": ".nii.gz",
        }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root
