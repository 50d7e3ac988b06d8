"""Tiny synthetic microscopy datasets: touching cells as PNG, RGB TIFF or 3D TIFF stacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def cells(
    rng: np.random.Generator, shape: tuple[int, ...], n: int = 4, radius: float = 5.0
) -> np.ndarray:
    """Label map of ``n`` discs (balls in 3D), some nearly touching: 1 = cell, 0 = background.

    Cells are placed in pairs a little more than one diameter apart, so they are separated by
    a thin background gap, the case the U-Net border weights are made for.
    """
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    label = np.zeros(shape, np.uint8)
    for _ in range(n // 2):
        inplane = [rng.uniform(radius + 1, s - 3 * radius - 2) for s in shape[-2:]]
        centre = np.array([shape[0] / 2, *inplane] if len(shape) == 3 else inplane)
        offset = np.zeros(len(shape))
        offset[-1] = 2 * radius + 1.5
        for c in (centre, centre + offset):
            label[((grid - c) ** 2).sum(-1) < radius**2] = 1
    return label


def _image(rng: np.random.Generator, label: np.ndarray) -> np.ndarray:
    return np.clip(40 + 150 * label + rng.normal(0, 10, label.shape), 0, 255)


def write_micro_dataset(root: Path, kind: str = "png", n_cases: int = 3, seed: int = 0) -> Path:
    """A dataset in the nnU-Net v2 layout; ``kind`` is ``png`` (8-bit gray 2D), ``rgb_tiff``
    (3-channel 2D TIFF, one file) or ``tiff3d`` (3D stacks with sidecar spacing).

    Case ids are ``cell_000``, ...; returns ``root``.
    """
    rng = np.random.default_rng(seed)
    ending = ".png" if kind == "png" else ".tif"
    channels = {"0": "microscopy"}
    if kind == "rgb_tiff":
        channels = {"0": "R", "1": "G", "2": "B"}
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        cid = f"cell_{i:03d}"
        shape = (8, 40, 44) if kind == "tiff3d" else (44, 48)
        label = cells(rng, shape)
        image = _image(rng, label).astype(np.uint8)
        if kind == "png":
            Image.fromarray(image).save(root / "imagesTr" / f"{cid}_0000.png")
            Image.fromarray(label).save(root / "labelsTr" / f"{cid}.png")
        elif kind == "rgb_tiff":
            rgb = np.stack([image, 255 - image, image // 2], -1)  # (Y, X, 3)
            tifffile.imwrite(root / "imagesTr" / f"{cid}_0000.tif", rgb, photometric="rgb")
            tifffile.imwrite(root / "labelsTr" / f"{cid}.tif", label)
        else:
            spacing = {"spacing": [2.0, 0.5, 0.5]}
            stack = image.astype(np.uint16) * 200  # 16 bit
            tifffile.imwrite(root / "imagesTr" / f"{cid}_0000.tif", stack, photometric="minisblack")
            tifffile.imwrite(root / "labelsTr" / f"{cid}.tif", label, photometric="minisblack")
            for sub, name in (("imagesTr", f"{cid}_0000"), ("labelsTr", cid)):
                (root / sub / f"{name}.json").write_text(json.dumps(spacing))
    meta = {
        "channel_names": channels,
        "labels": {"background": 0, "cell": 1},
        "numTraining": n_cases,
        "file_ending": ending,
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
