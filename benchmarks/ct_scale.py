"""Network work per CT case, autoseg (main's settings and the change) beside nnU-Net v2.8.1.

Counts what transfers to any device: tiles per case x FLOPs per tile (``forward_flops``: the
planned network on the meta device, nothing computed). One run::

    python benchmarks/ct_scale.py [--size full] [--train 12] [--seed 0] [--json OUT]

1. Plans the synthetic CT set of ``benchmarks/synthetic_ct.py`` (same seed and size) with
   autoseg's default planner from a fingerprint of the generator's geometry (the nonzero crop
   removes nothing from CT: air is -1000) and an 8 GiB budget, as ``autoseg plan`` would.
2. Makes one test case (``test_slices`` slices: 400 at full size) and its body mask
   (``autoseg.preprocessing.body_mask``) on the 3d_fullres grid.
3. Counts the tiles of each setting; nnU-Net's 3d_fullres is its plan for this data (patch
   64x192x160, 6 stages, features 32..320, kernels 1x3x3 then 3x3x3) built with autoseg's plain
   U-Net builder (the same conv-norm-LeakyReLU blocks), at the same target spacing.

``main`` is today's default: step 0.5, no body mask (``--no-body-mask``); every other row is one
lever on top (one flag of ``autoseg predict``). Mirroring TTA multiplies every row by 8 (3D)
or 4 (2D) alike and is left out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_ct  # noqa: E402 - the generator beside this script

from autoseg.data.plans import Configuration, Plans  # noqa: E402
from autoseg.inference.tiles import inference_tile_size, keep_positions, run_corners
from autoseg.networks.unet import forward_flops  # noqa: E402
from autoseg.planning.fingerprint import (  # noqa: E402
    CaseFingerprint,
    Fingerprint,
    IntensityStats,
)
from autoseg.preprocessing.body_mask import body_mask  # noqa: E402
from autoseg.preprocessing.resample import target_shape  # noqa: E402

log = logging.getLogger("ct_scale")

NNUNET_3D = {  # nnU-Net v2.8.1's 3d_fullres plan for this data (docs/benchmarks.md, "CT scale")
    "patch_size": (64, 192, 160),
    "strides": ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)),
    "kernel_sizes": ((1, 3, 3),) + ((3, 3, 3),) * 5,
    "features_per_stage": (32, 64, 128, 256, 320, 320),
    "blocks_per_stage": (2,) * 6,
}


def nnunet_architecture(plans_file: Path | None) -> dict:
    """nnU-Net's 3d_fullres patch and topology: from its own ``nnUNetPlans.json`` when given
    (``nnUNetv2_plan_and_preprocess`` on the same data, see ``ct_vs_nnunet.sh``), else the plan
    it made for the issue's CT set (``NNUNET_3D``)."""
    if plans_file is None:
        return dict(NNUNET_3D)
    config = json.loads(plans_file.read_text())["configurations"]["3d_fullres"]
    arch = config["architecture"]["arch_kwargs"]
    return {
        "patch_size": tuple(config["patch_size"]),
        "strides": tuple(tuple(s) for s in arch["strides"]),
        "kernel_sizes": tuple(tuple(k) for k in arch["kernel_sizes"]),
        "features_per_stage": tuple(arch["features_per_stage"]),
        "blocks_per_stage": tuple(arch["n_conv_per_stage"]),
        "spacing": tuple(config["spacing"]),
    }


def fingerprint(size: str, train: int, seed: int) -> Fingerprint:
    """The fingerprint ``autoseg plan`` takes from the generator's training cases (geometry
    only; CT intensity statistics of its foreground HU)."""
    preset = synthetic_ct.SIZES[size]
    cases = []
    for i in range(train):
        slices, spacing = synthetic_ct.draw_geometry(synthetic_ct.case_rng(seed, i), preset, False)
        shape = (slices, preset.edge, preset.edge)
        cases.append(CaseFingerprint(f"ct_{i:03d}", spacing, shape, shape, 1.0))
    hu = np.array(list(synthetic_ct.ORGAN_HU.values()), dtype=np.float64)
    noise = synthetic_ct.NOISE_HU
    stats = IntensityStats(
        mean=float(hu.mean()),
        median=float(np.median(hu)),
        std=float(math.sqrt(hu.var() + noise**2)),
        min=float(hu.min() - 4 * noise),
        max=float(hu.max() + 4 * noise),
        percentile_00_5=float(hu.min() - 2.6 * noise),
        percentile_99_5=float(hu.max() + 2.6 * noise),
    )
    labels = {int(k): v for k, v in synthetic_ct.LABELS.items()}
    return Fingerprint("SyntheticCT", ("CT",), labels, tuple(cases), (stats,))


def configurations(
    size: str, train: int, seed: int, nnunet_plans: Path | None = None
) -> tuple[Plans, Configuration, Configuration]:
    """autoseg's default plans of the generator's set, their 3d_fullres, and nnU-Net's
    3d_fullres architecture (from ``nnunet_plans``, else ``NNUNET_3D``) with autoseg's
    normalisation."""
    from autoseg.planners.default import plan

    plans = plan(fingerprint(size, train, seed))
    full = plans.configuration("3d_fullres")
    nnunet = nnunet_architecture(nnunet_plans)
    nnunet.pop("spacing", None)
    return plans, full, dataclasses.replace(full, name="nnunet_3d_fullres", **nnunet)


def test_geometry(
    size: str, train: int, seed: int
) -> tuple[np.random.Generator, int, tuple[float, float, float]]:
    """The first test case's generator, slice count and spacing (Z, Y, X) mm; the generator
    continues into ``synthetic_ct.make_case``."""
    rng = synthetic_ct.case_rng(seed, train)
    slices, spacing = synthetic_ct.draw_geometry(rng, synthetic_ct.SIZES[size], True)
    return rng, slices, spacing


def organ_box(
    foreground: np.ndarray, spacing: tuple[float, ...], shape: tuple[int, ...], margin_mm: float
) -> np.ndarray:
    """A bool map of ``shape`` (the 3d_fullres grid) that is True in the labelled organs'
    bounding box widened by ``margin_mm``: the best a low-resolution first pass could hand the
    full-resolution pass (it finds every organ, no more)."""
    where = np.nonzero(foreground)
    keep = np.zeros(shape, dtype=bool)
    if not where[0].size:
        return keep
    box = []
    for axis, index in enumerate(where):
        scale = shape[axis] / foreground.shape[axis]  # original voxels -> grid voxels
        pad = margin_mm / spacing[axis]
        lo = max(0, math.floor((index.min() - pad) * scale))
        hi = min(shape[axis], math.ceil((index.max() + 1 + pad) * scale))
        box.append(slice(lo, hi))
    keep[tuple(box)] = True
    return keep


def _round_up(shape: tuple[int, ...], divisor: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.ceil(s / d) * d for s, d in zip(shape, divisor, strict=True))


def count(
    config: Configuration, shape: tuple[int, ...], tile: tuple[int, ...], step: float, keep
) -> int:
    """Tiles run over a preprocessed image of ``shape``; 2D configurations tile every slice."""
    spatial = shape[1:] if config.ndim == 2 else shape
    if keep is not None and any(s < t for s, t in zip(spatial, tile, strict=True)):
        pad = [
            (max(t - s, 0) // 2, max(t - s, 0) - max(t - s, 0) // 2)
            for s, t in zip(spatial, tile, strict=True)
        ]
        keep = np.pad(keep, ([(0, 0)] if config.ndim == 2 else []) + pad)  # as the window pads
        shape = keep.shape
    if config.ndim == 2:
        plane = keep_positions(shape[1:], tile, step, None if keep is None else keep.any(axis=0))
        corners = [(z, *c) for z in range(shape[0]) for c in plane]
        return len(run_corners(corners, (1, *tile), keep))
    return len(run_corners(keep_positions(shape, tile, step, keep), tile, keep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(synthetic_ct.SIZES), default="full")
    parser.add_argument("--train", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", default="0.5,0.6,0.75", help="steps to count, with the mask")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--roi-margin", type=float, default=20.0, help="mm around the organs (low-res pass row)"
    )
    parser.add_argument(
        "--nnunet-plans", type=Path, help="nnU-Net's nnUNetPlans.json for this data (its patch)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plans, full, nn_config = configurations(args.size, args.train, args.seed, args.nnunet_plans)
    preset = synthetic_ct.SIZES[args.size]
    rng, slices, spacing = test_geometry(args.size, args.train, args.seed)
    image, label = synthetic_ct.make_case(rng, slices, spacing, preset)
    shape = target_shape(image.shape, spacing, full.spacing)
    box = tuple((0, n) for n in image.shape)
    keep = body_mask(image[None], spacing, (0,), box, shape)
    low = plans.configurations.get("3d_lowres")
    if low is not None:
        low_shape = target_shape(image.shape, spacing, low.spacing)
        low_keep = body_mask(image[None], spacing, (0,), box, low_shape)
    roi = organ_box(label > 0, spacing, shape, args.roi_margin)
    image_shape = image.shape
    del image, label
    classes = plans.num_classes
    rows = []

    def row(
        name: str, config: Configuration, tile: tuple[int, ...], step: float, mask, grid=None
    ) -> None:
        tiles = count(config, grid or shape, tile, step, mask)
        flops = forward_flops(config, 1, classes, tile)
        rows.append(
            {
                "setting": name,
                "tile": "x".join(map(str, tile)),
                "tiles": tiles,
                "gflop_per_tile": round(flops / 1e9, 1),
                "tflop_per_case": round(tiles * flops / 1e12, 2),
            }
        )
        log.info("%s: %d tiles of %s", name, tiles, tile)

    nnunet = nnunet_architecture(args.nnunet_plans)
    nn_spacing = nnunet.get("spacing", full.spacing)  # nnU-Net's own target spacing
    nn_shape = target_shape(image_shape, spacing, nn_spacing)
    row("nnU-Net 3d_fullres, step 0.5", nn_config, nn_config.patch_size, 0.5, None, nn_shape)
    tile = inference_tile_size(shape, full.patch_size, full.total_stride())
    row("autoseg main: 3d_fullres, step 0.5", full, tile, 0.5, None)
    for step in (float(s) for s in args.steps.split(",")):
        row(f"3d_fullres + body mask, step {step}", full, tile, step, keep)
    wide = _round_up(
        (full.patch_size[0], *(math.ceil(p * 1.5) for p in full.patch_size[1:])),
        full.total_stride(),
    )
    row("3d_fullres + body mask, tile 1.5x in-plane, step 0.5", full, wide, 0.5, keep)
    if low is not None:  # a first pass at low resolution, then full resolution only where it found
        low_tile = inference_tile_size(low_shape, low.patch_size, low.total_stride())
        row("first pass: 3d_lowres + body mask, step 0.5", low, low_tile, 0.5, low_keep, low_shape)
        row("then: 3d_fullres over the organs' box only, step 0.5", full, tile, 0.5, roi)
        first, then = rows[-2], rows[-1]
        rows.append(
            {
                "setting": "low-res first pass + full res in its box (counted, oracle box)",
                "tile": f"{first['tile']} + {then['tile']}",
                "tiles": first["tiles"] + then["tiles"],
                "gflop_per_tile": float("nan"),
                "tflop_per_case": round(first["tflop_per_case"] + then["tflop_per_case"], 2),
            }
        )
    if "2d" in plans.configurations:
        flat = plans.configuration("2d")
        row("2d, step 0.5", flat, flat.patch_size, 0.5, None)
        row("2d + body mask, step 0.5", flat, flat.patch_size, 0.5, keep)
    reference = rows[0]["tflop_per_case"]
    for r in rows:
        r["vs_nnunet"] = round(r["tflop_per_case"] / reference, 3)
    result = {
        "size": args.size,
        "seed": args.seed,
        "test_case": "x".join(map(str, (slices, preset.edge, preset.edge))),
        "grid_3d_fullres": "x".join(map(str, shape)),
        "spacing_3d_fullres": full.spacing,
        "patch_3d_fullres": full.patch_size,
        "nnunet_patch_3d_fullres": nnunet["patch_size"],
        "nnunet_spacing_3d_fullres": nn_spacing,
        "nnunet_grid_3d_fullres": "x".join(map(str, nn_shape)),
        "nnunet_plans": str(args.nnunet_plans) if args.nnunet_plans else "issue's CT set",
        "body_fraction": round(float(keep.mean()), 3),
        "rows": rows,
    }
    print("| setting | tile | tiles | GFLOP/tile | TFLOP/case | vs nnU-Net |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['setting']} | {r['tile']} | {r['tiles']} | {r['gflop_per_tile']} "
            f"| {r['tflop_per_case']} | {r['vs_nnunet']} |"
        )
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
