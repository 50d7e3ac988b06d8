"""Do the two augmentation paths produce the same batches? Distributions over many samples.

Draws batches of one planned configuration (default ``3d_fullres``, fold 0's training cases)
from both training paths with the same seed:

- ``cpu``: ``BatchLoader(augmentation="cpu")`` (crop + batchgenerators);
- ``device``: ``BatchLoader(augmentation="device")`` (crop of the enlarged region) followed
  by ``DeviceAugmentation`` on the CPU, exactly as ``TrainingStep.device_batch`` does.

Both loaders share the sampler's seed, so they read the same cases at the same positions; only
the transforms differ. Per sample it records the foreground share, each label's share, the
image's mean / std / percentiles, the mean intensity inside each label and in the background
(a misaligned label lowers the contrast between them), the share of exact zeros (outside the
image), the foreground's centre of mass in the patch, and whether the labels hold only label
values. Printed: mean and standard deviation per path and the difference in standard errors.

``--per-transform`` applies each transform alone to the same un-augmented regions in both
paths and compares the texture (roughness, std) of what comes out.

Usage (after ``autoseg plan DATASET --home HOME``)::

    python benchmarks/augment_stats.py DATASET --home HOME [--batches 300] [--seed 0]
    python benchmarks/augment_stats.py DATASET --home HOME --per-transform --batches 60
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.data.paths import resolve_dataset, resolve_home
from autoseg.data.plans import Plans
from autoseg.training.augment.pipeline_device import DeviceAugmentation
from autoseg.training.loader import BatchLoader
from autoseg.training.train import preprocessed_cases, select_split

log = logging.getLogger("augment_stats")


def _flips(ndim: int) -> list[tuple[int, ...]]:
    return [tuple(a for a in range(ndim) if mask >> a & 1) for mask in range(2**ndim)]


def agreement_with_crop(target: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Per sample, the share of voxels whose label equals the un-augmented centre crop's, the
    best over the mirrorings (1 when no rotation or scaling moved the labels)."""
    b = len(target)
    seg, ref = target[:, 0], crop[:, 0]
    best = np.zeros(b)
    for axes in _flips(seg.ndim - 1):
        flipped = np.flip(ref, [a + 1 for a in axes]) if axes else ref
        best = np.maximum(best, (seg == flipped).reshape(b, -1).mean(1))
    return best


def sample_stats(image: np.ndarray, target: np.ndarray, labels: tuple[int, ...]) -> dict:
    """Per-sample statistics of a batch ``image (B, C, *patch)``, ``target (B, 1, *patch)``.

    Returns:
        name -> ``(B,)`` float array (NaN where undefined, e.g. no voxel of a label).
    """
    b = len(image)
    img = image[:, 0].reshape(b, -1).astype(np.float64)
    seg = target[:, 0].reshape(b, -1)
    out: dict[str, np.ndarray] = {
        "foreground_share": (seg > 0).mean(1),
        "has_foreground": (seg > 0).any(1).astype(float),
        "image_mean": img.mean(1),
        "image_std": img.std(1),
        "image_p01": np.percentile(img, 1, axis=1),
        "image_p50": np.percentile(img, 50, axis=1),
        "image_p99": np.percentile(img, 99, axis=1),
        "zero_share": (img == 0).mean(1),
        "label_values_valid": np.isin(seg, (0, *labels)).all(1).astype(float),
    }
    for axis in range(image.ndim - 2):
        step = np.abs(np.diff(image[:, 0], axis=axis + 1)).reshape(b, -1).mean(1)
        out[f"roughness_axis{axis}"] = step / np.maximum(out["image_std"], 1e-6)
    bg = np.where(seg == 0, img, np.nan)
    out["mean_in_background"] = np.nanmean(bg, 1)
    shape = target.shape[2:]
    grids = np.meshgrid(*[np.arange(s) - (s - 1) / 2 for s in shape], indexing="ij")
    for k in labels:
        mask = seg == k
        n = mask.sum(1)
        out[f"label{k}_share"] = mask.mean(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"mean_in_label{k}"] = np.where(mask, img, 0).sum(1) / np.where(n, n, np.nan)
            contrast = out[f"mean_in_label{k}"] - out["mean_in_background"]
            out[f"contrast_label{k}_vs_background"] = contrast / np.maximum(out["image_std"], 1e-6)
    fg = seg > 0
    n = fg.sum(1)
    for axis, grid in enumerate(grids):
        g = grid.reshape(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"fg_centre_axis{axis}"] = (fg * g).sum(1) / np.where(n, n, np.nan)
    # left/right-like asymmetry: label 1's centre minus label 2's, per axis (mirroring flips it)
    if len(labels) >= 2:
        for axis, grid in enumerate(grids):
            g = grid.reshape(-1)
            c = []
            for k in labels[:2]:
                m = seg == k
                nk = m.sum(1)
                with np.errstate(invalid="ignore", divide="ignore"):
                    c.append((m * g).sum(1) / np.where(nk, nk, np.nan))
            out[f"label1_minus_label2_axis{axis}"] = c[0] - c[1]
    return out


def collect(batches, n: int, labels: tuple[int, ...], name: str) -> dict[str, np.ndarray]:
    """Statistics of ``n`` batches from the callable ``batches`` -> (image, target, crop)."""
    parts: dict[str, list[np.ndarray]] = {}
    last = time.monotonic()
    for i in range(n):
        image, target, crop = batches()
        stats = sample_stats(image, target, labels)
        stats["label_agreement_with_crop"] = agreement_with_crop(target, crop)
        for key, value in stats.items():
            parts.setdefault(key, []).append(value)
        if time.monotonic() - last > 20:
            log.info("%s: %d/%d batches", name, i + 1, n)
            last = time.monotonic()
    return {k: np.concatenate(v) for k, v in parts.items()}


def compare(stats: dict[str, dict[str, np.ndarray]]) -> list[dict]:
    """Mean, std and difference in standard errors per statistic, cpu vs device."""
    rows = []
    a, b = stats["cpu"], stats["device"]
    for key in a:
        x, y = a[key][~np.isnan(a[key])], b[key][~np.isnan(b[key])]
        se = np.sqrt(x.var() / max(len(x), 1) + y.var() / max(len(y), 1)) + 1e-12
        rows.append(
            {
                "statistic": key,
                "cpu_mean": float(x.mean()),
                "cpu_std": float(x.std()),
                "device_mean": float(y.mean()),
                "device_std": float(y.std()),
                "z": float((y.mean() - x.mean()) / se),
                "n": (len(x), len(y)),
            }
        )
    return rows


_TRANSFORMS = (
    "spatial",
    "noise",
    "blur",
    "brightness",
    "contrast",
    "low_resolution",
    "gamma_inv",
    "gamma",
)  # batchgenerators' pipeline order (mirroring left out: no texture change)


def per_transform(loader: BatchLoader, patch: tuple[int, ...], batches: int, seed: int) -> None:
    """Each transform alone, both paths, on the same regions: roughness and std per sample."""
    from autoseg.training.augment.pipeline import training_transforms

    reference = dict(zip(_TRANSFORMS, training_transforms(patch).transforms, strict=False))
    aug = DeviceAugmentation(patch, torch.device("cpu"), seed=seed)
    device = {
        "noise": aug.noise,
        "blur": aug.blur,
        "brightness": aug.brightness,
        "contrast": aug.contrast,
        "low_resolution": aug.low_resolution,
        "gamma_inv": lambda x: aug.gamma(x, True),
        "gamma": lambda x: aug.gamma(x, False),
    }
    np.random.seed(seed)
    out: dict[str, dict[str, list]] = {t: {"cpu": [], "device": []} for t in _TRANSFORMS}
    for _ in range(batches):
        batch = next(loader)
        image, seg = batch["image"], batch["target"]
        lo = [(r - p) // 2 for r, p in zip(image.shape[2:], patch, strict=True)]
        inner = [slice(a, a + p) for a, p in zip(lo, patch, strict=True)]
        crop = (slice(None), slice(None), *inner)
        for name in _TRANSFORMS:
            if name == "spatial":
                ref = reference[name](data=image.copy(), seg=seg.astype(np.float32))["data"]
                dev = aug.spatial(torch.from_numpy(image), torch.from_numpy(seg))[0].numpy()
            else:
                ref = reference[name](data=image[crop].copy(), seg=seg[crop].astype(np.float32))
                ref = ref["data"]
                dev = device[name](torch.from_numpy(image[crop].copy())).numpy()
            out[name]["cpu"].append(ref)
            out[name]["device"].append(dev)
    print(f"each transform alone, {batches} batches, seed {seed}")
    print("| transform | roughness cpu / device | z | std cpu / device | z |")
    print("|---|---|---|---|---|")
    for name in _TRANSFORMS:
        a, b = (np.concatenate(out[name][k]) for k in ("cpu", "device"))
        cells = []
        for fn in (_roughness, lambda x: x[:, 0].reshape(len(x), -1).std(1)):
            u, v = fn(a), fn(b)
            z = (v.mean() - u.mean()) / np.sqrt(u.var() / len(u) + v.var() / len(v))
            cells.append(f"{u.mean():.4f} / {v.mean():.4f} | {z:+.1f}")
        print(f"| {name} | {' | '.join(cells)} |")


def _roughness(image: np.ndarray) -> np.ndarray:
    n = len(image)
    steps = [np.abs(np.diff(image[:, 0], axis=a + 1)).reshape(n, -1).mean(1) for a in range(3)]
    return np.mean(steps, 0) / np.maximum(image[:, 0].reshape(n, -1).std(1), 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--planner", default="default")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, help="write the rows as JSON here")
    parser.add_argument(
        "--per-transform", action="store_true", help="each transform alone on the same regions"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)

    dirs = resolve_dataset(args.dataset, resolve_home(args.home))
    plans = Plans.from_json(dirs.require_plans(args.planner))
    config = plans.configuration(args.configuration)
    folder, cases = preprocessed_cases(dirs, config)
    split = select_split(dirs, args.fold, cases)
    labels = tuple(int(k) for k in plans.foreground_labels)
    if args.per_transform:
        with BatchLoader(
            folder, split.train, config, seed=args.seed, augmentation="device"
        ) as loader:
            per_transform(loader, tuple(config.patch_size), args.batches, args.seed)
        return
    cpu_loader = BatchLoader(folder, split.train, config, seed=args.seed, augmentation="cpu")
    dev_loader = BatchLoader(folder, split.train, config, seed=args.seed, augmentation="device")
    # the same sampler seed: the same cases and regions as the cpu loader, un-augmented
    raw_loader = BatchLoader(folder, split.train, config, seed=args.seed, augmentation="device")
    augmenter = DeviceAugmentation(config.patch_size, torch.device("cpu"), seed=args.seed)
    patch = tuple(config.patch_size)

    def centre(region: np.ndarray) -> np.ndarray:
        lo = [(r - p) // 2 for r, p in zip(region.shape[2:], patch, strict=True)]
        return region[
            (slice(None), slice(None), *[slice(a, a + p) for a, p in zip(lo, patch, strict=True)])
        ]

    def cpu_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = next(cpu_loader)
        return batch["image"], batch["target"], centre(next(raw_loader)["target"])

    def device_batch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch = next(dev_loader)
        image, target = torch.from_numpy(batch["image"]), torch.from_numpy(batch["target"])
        image, target = augmenter(image, target)
        return image.numpy(), target.numpy(), centre(batch["target"])

    stats = {
        "cpu": collect(cpu_batch, args.batches, labels, "cpu"),
        "device": collect(device_batch, args.batches, labels, "device"),
    }
    for loader in (cpu_loader, dev_loader, raw_loader):
        loader.close()
    rows = compare(stats)
    n = len(stats["cpu"]["image_mean"])
    print(
        f"{config.name} patch {'x'.join(map(str, config.patch_size))}, fold {args.fold} training "
        f"cases, {n} samples per path, seed {args.seed}"
    )
    print("| statistic | cpu mean (std) | device mean (std) | difference / s.e. |")
    print("|---|---|---|---|")
    for r in rows:
        flag = " **" if abs(r["z"]) > 4 else ""
        print(
            f"| {r['statistic']} | {r['cpu_mean']:.4f} ({r['cpu_std']:.4f}) | "
            f"{r['device_mean']:.4f} ({r['device_std']:.4f}) | {r['z']:+.1f}{flag} |"
        )
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
