"""Training-loader read throughput of preprocessed data stored as npy vs blosc2.

Two homes planned from the same dataset, one per format::

    autoseg plan DATASET_FOLDER --home HOME_NPY
    autoseg plan DATASET_FOLDER --home HOME_B2 --storage blosc2
    python benchmarks/storage_read.py NAME HOME_NPY HOME_B2 [--repeats 7] [--batches 20]

For one configuration (default ``3d_fullres``) it times whole loader batches with
``BatchLoader(augmentation="device")`` (draw cases, crop the enlarged regions from the stored
arrays: the reading part of a training step, no augmentation) and with ``augmentation="cpu"``
(reading plus batchgenerators, what a CPU-augmented step waits for). One process, 0 workers;
the formats alternate (order flipped every repetition) so a busy machine slows both alike; the
same seed gives both the same regions. Also the size on disk of each folder's image and label
arrays. Prints a JSON record; medians over repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from autoseg.data.paths import resolve_dataset, resolve_home
from autoseg.data.plans import Plans
from autoseg.training.fold_setup import preprocessed_cases
from autoseg.training.loader import BatchLoader


def _per_batch(folder: Path, ids: list[str], config, augmentation: str, batches: int, seed: int):
    with BatchLoader(
        folder, ids, config, seed=seed, augment=True, augmentation=augmentation
    ) as loader:
        c0, w0 = time.process_time(), time.perf_counter()
        nbytes = sum(next(loader)["image"].nbytes for _ in range(batches))
        return (time.process_time() - c0) / batches, (time.perf_counter() - w0) / batches, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("home_npy", type=Path)
    parser.add_argument("home_blosc2", type=Path)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    setups = {}
    for name, home in (("npy", args.home_npy), ("blosc2", args.home_blosc2)):
        dirs = resolve_dataset(args.dataset, resolve_home(home))
        config = Plans.from_json(dirs.require_plans("default")).configuration(args.configuration)
        folder, ids = preprocessed_cases(dirs, config)
        size = sum(
            p.stat().st_size for p in folder.iterdir() if ".img." in p.name or ".seg." in p.name
        )
        setups[name] = (folder, list(ids), config, size)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for rep in range(args.repeats):
        order = list(setups) if rep % 2 == 0 else list(reversed(setups))
        for augmentation in ("device", "cpu"):
            for name in order:
                folder, ids, config, _ = setups[name]
                core, wall, nbytes = _per_batch(
                    folder, ids, config, augmentation, args.batches, seed=rep
                )
                times.setdefault((name, augmentation), []).append((core, wall))
    result = {
        "configuration": args.configuration,
        "repeats": args.repeats,
        "batches": args.batches,
        "load1_end": os.getloadavg()[0],
        "disk_mb": {n: round(s[3] / 1e6, 1) for n, s in setups.items()},
        "cases": len(setups["npy"][1]),
    }
    for (name, augmentation), values in times.items():
        core = statistics.median(v[0] for v in values)
        wall = statistics.median(v[1] for v in values)
        result[f"{name}/{'read' if augmentation == 'device' else 'read+cpu_aug'}"] = {
            "core_s_per_batch": round(core, 4),
            "wall_s_per_batch": round(wall, 4),
            "batches_per_core_s": round(1 / core, 1),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
