"""Synthetic abdominal CT in the MSD layout: the size of data users bring, with a fixed seed.

Each case is an int16 HU volume: air (-1000) around an elliptic body (soft tissue ~40 HU with a
subcutaneous fat ring at -100), a spine (bone 500-700 HU), gas pockets inside the body (-900:
holes a body mask must fill), a patient table below the body (a separate thin slab, which
the body mask's largest-component rule removes) and three labelled organs of very different
sizes: 1 ``liver`` (about 1.2 M voxels at full size), 2 ``kidney`` (about 50 k) and
3 ``lesion`` (about 1.5 k). Spacing is anisotropic (about 0.8 x 0.8 mm in-plane, 2.7 mm
slices, varying per case) and the affine flips x and y (as DICOM-converted CT usually is).

Everything is given in millimetres, so ``--size`` changes the voxel grid but not the anatomy:

- ``full``: 512 x 512 slices, 120-220 slices per training case, 400 per test case;
- ``small``: 256 x 256 at twice the spacing (50-90 slices; test 100): a CPU run in minutes;
- ``tiny``: 128 x 128 at four times the spacing (20-40 slices; test 40): tests and Dice checks.

Usage::

    python benchmarks/synthetic_ct.py OUT_DIR [--size small] [--train 12] [--test 2] [--seed 0]

writes ``OUT_DIR/{imagesTr,labelsTr,imagesTs,labelsTs}/ct_XXX.nii.gz`` and a ``dataset.json``
with ``modality {"0": "CT"}``. The same arguments always give the same voxels.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("synthetic_ct")

LABELS = {"0": "background", "1": "liver", "2": "kidney", "3": "lesion"}
AIR, FAT, TISSUE, GAS, TABLE = -1000, -100, 40, -900, 250
ORGAN_HU = {1: 60, 2: 160, 3: 110}  # liver, kidney (contrast), lesion
NOISE_HU = 12.0


@dataclass(frozen=True)
class SizePreset:
    """Voxel grid of one ``--size``: in-plane edge, slice counts, and a spacing multiplier."""

    edge: int
    train_slices: tuple[int, int]
    test_slices: int
    spacing_scale: float


SIZES = {
    "full": SizePreset(512, (120, 220), 400, 1.0),
    "small": SizePreset(256, (50, 90), 100, 2.0),
    "tiny": SizePreset(128, (20, 40), 40, 4.0),
}


def _ellipsoid(
    shape: tuple[int, ...],
    spacing: np.ndarray,
    centre_mm: np.ndarray,
    radii_mm: np.ndarray,
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Boolean ellipsoid, computed only inside its bounding box: (box slices, mask in the box)."""
    lo = np.maximum(np.floor((centre_mm - radii_mm) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre_mm + radii_mm) / spacing).astype(int) + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    axes = [
        ((np.arange(a, b) * s - c) / r) ** 2
        for a, b, s, c, r in zip(lo, hi, spacing, centre_mm, radii_mm, strict=True)
    ]
    inside = axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :] <= 1.0
    return box, inside


def case_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of case ``index``: cases are independent of each other's sizes."""
    return np.random.default_rng([seed, index])


def draw_geometry(
    rng: np.random.Generator, preset: SizePreset, test: bool
) -> tuple[int, tuple[float, float, float]]:
    """A case's slice count and spacing (Z, Y, X) mm: the first draws of its generator, so a
    benchmark can plan from the geometry without making the voxels."""
    lo, hi = preset.train_slices
    slices = preset.test_slices if test else int(rng.integers(lo, hi + 1))
    inplane = float(rng.uniform(0.72, 0.88)) * preset.spacing_scale
    thick = float(rng.uniform(2.5, 3.0)) * preset.spacing_scale
    return slices, (thick, inplane, inplane)


def make_case(
    rng: np.random.Generator,
    slices: int,
    spacing_zyx: tuple[float, float, float],
    preset: SizePreset,
) -> tuple[np.ndarray, np.ndarray]:
    """One case: ``(image int16 (Z, Y, X) HU, labels uint8 (Z, Y, X))``; ``rng`` continues
    from ``draw_geometry``."""
    spacing = np.array(spacing_zyx, dtype=np.float64)
    inplane = float(spacing[1])
    shape = (slices, preset.edge, preset.edge)
    extent = np.array(shape) * spacing  # mm
    image = np.empty(shape, dtype=np.int16)
    labels = np.zeros(shape, dtype=np.uint8)

    # body: an elliptic cylinder whose radii vary slowly along Z; fat ring; table below it
    yy = (np.arange(preset.edge) + 0.5) * inplane
    centre_yx = extent[1:] / 2 + rng.uniform(-10, 10, size=2)
    ry0, rx0 = rng.uniform(105, 125), rng.uniform(150, 175)
    table_y = centre_yx[0] + ry0 * 1.15 + 8  # mm: a gap below the back
    dy = (yy - centre_yx[0])[:, None]
    dx = (yy - centre_yx[1])[None, :]
    phase = rng.uniform(0, 2 * np.pi)
    for z in range(slices):
        scale = 1.0 + 0.08 * np.sin(phase + z * spacing[0] / 90.0)
        r = (dy / (ry0 * scale)) ** 2 + (dx / (rx0 * scale)) ** 2
        plane = np.full(r.shape, AIR, dtype=np.float32)
        plane[r <= 1.0] = FAT
        plane[r <= 0.85] = TISSUE
        slab = (yy >= table_y) & (yy <= table_y + 6)
        plane[slab, :] = TABLE
        image[z] = np.rint(plane).astype(np.int16)

    # spine: bone cylinder along Z near the back
    spine_c = np.array([centre_yx[0] + ry0 * 0.55, centre_yx[1]])
    spine = (dy - (spine_c[0] - centre_yx[0])) ** 2 + (dx - (spine_c[1] - centre_yx[1])) ** 2
    spine_mask = spine <= 15.0**2
    image[:, spine_mask] = rng.integers(500, 700, size=(slices, 1), dtype=np.int16)

    mid_z = extent[0] / 2 + rng.uniform(-20, 20)
    organs = (  # (label, centre offset (z, y, x) mm from the body centre, radii mm)
        (1, (0, -10, -55), (90, 68, 75)),
        (2, (-40, 45, 70), (45, 24, 20)),
        (3, (30, -25, 10), (8.5, 8.5, 8.5)),
    )
    for label, offset, radii in organs:
        centre = np.array([mid_z, *centre_yx]) + np.array(offset) + rng.uniform(-6, 6, size=3)
        box, inside = _ellipsoid(
            shape, spacing, centre, np.array(radii) * rng.uniform(0.9, 1.1, size=3)
        )
        labels[box][inside] = label
        image[box][inside] = ORGAN_HU[label]
    for _ in range(3):  # gas pockets inside the body, off the organs
        centre = np.array([mid_z, *centre_yx]) + rng.uniform([-60, 10, -30], [60, 40, 30])
        box, inside = _ellipsoid(shape, spacing, centre, rng.uniform(6, 14, size=3))
        inside &= labels[box] == 0
        image[box][inside] = GAS

    for z in range(slices):  # noise slice by slice: no float64 copy of the volume
        noise = rng.standard_normal(shape[1:], dtype=np.float32) * NOISE_HU
        image[z] = np.clip(image[z] + np.rint(noise), -1024, 3071).astype(np.int16)
    return image, labels


def _save(path: Path, volume: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Write a (Z, Y, X) volume as NIfTI (i, j, k) = (X, Y, Z) with x and y flipped."""
    import nibabel as nib

    sz, sy, sx = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [sx * volume.shape[2], sy * volume.shape[1], 0.0]
    img = nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def write_dataset(
    out: Path, size: str = "small", train: int = 12, test: int = 2, seed: int = 0
) -> list[str]:
    """Write the dataset to ``out`` (MSD layout); returns the case ids, training cases first.

    Args:
        out: the dataset folder (created; existing case files are overwritten).
        size: a key of ``SIZES``.
        train, test: number of training and test cases (test cases have ``test_slices``).
        seed: the generator's seed; equal arguments give equal files.
    """
    preset = SIZES[size]
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    training, testing, ids = [], [], []
    for i in range(train + test):
        case = f"ct_{i:03d}"
        is_test = i >= train
        rng = case_rng(seed, i)
        slices, spacing = draw_geometry(rng, preset, is_test)
        image, labels = make_case(rng, slices, spacing, preset)
        images, label_dir = ("imagesTs", "labelsTs") if is_test else ("imagesTr", "labelsTr")
        _save(out / images / f"{case}.nii.gz", image, spacing)
        _save(out / label_dir / f"{case}.nii.gz", labels, spacing)
        entry = {"image": f"./{images}/{case}.nii.gz", "label": f"./{label_dir}/{case}.nii.gz"}
        (testing if is_test else training).append(entry)
        ids.append(case)
        log.info("%s: %s voxels, spacing %s", case, "x".join(map(str, image.shape)), spacing)
    meta = {
        "name": "SyntheticCT",
        "description": f"benchmarks/synthetic_ct.py --size {size} --seed {seed}",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": len(training),
        "numTest": len(testing),
        "training": training,
        "test": [t["image"] for t in testing],
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--test", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    write_dataset(args.out, args.size, args.train, args.test, args.seed)


if __name__ == "__main__":
    main()
