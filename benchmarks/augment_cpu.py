"""CPU data path, side by side: batchgenerators (``--augmentation cpu``) vs the device path on CPU.

For one planned configuration (default ``3d_fullres``) it times whole training batches as the
trainer gets them, cropping from the memory-mapped cases included:

- ``cpu``: ``BatchLoader(augmentation="cpu")`` (crop + batchgenerators), then the tensors;
- ``device``: ``BatchLoader(augmentation="device")`` (crop of the enlarged region), then the
  tensors and ``DeviceAugmentation`` on the CPU (one torch thread, its default there);
- ``device, N torch threads``: the same with torch's own thread count.

Both in this one process, with 0 workers, alternating (the order flips every repetition) so a
busy machine slows both alike. Core-seconds are the process's CPU time (all its threads:
``time.process_time``), wall seconds ``time.perf_counter``; medians over repetitions.

Usage (after ``autoseg plan DATASET --home HOME``)::

    python benchmarks/augment_cpu.py DATASET --home HOME [--repeats 7] [--batches 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.data.paths import resolve_dataset, resolve_home
from autoseg.data.plans import Plans
from autoseg.training.augment.pipeline_device import DeviceAugmentation
from autoseg.training.fold_setup import preprocessed_cases
from autoseg.training.loader import BatchLoader


def _tensors(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(batch["image"]), torch.from_numpy(batch["target"])


def _time(fn, batches: int) -> tuple[float, float]:
    """Core-seconds and wall seconds per batch of ``batches`` calls."""
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(batches):
        fn()
    return (time.process_time() - c0) / batches, (time.perf_counter() - w0) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--planner", default="default")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batches", type=int, default=10, help="batches per timing")
    parser.add_argument("--output", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    dirs = resolve_dataset(args.dataset, resolve_home(args.home))
    plans = Plans.from_json(dirs.require_plans(args.planner))
    config = plans.configuration(args.configuration)
    folder, cases = preprocessed_cases(dirs, config)
    cpu = torch.device("cpu")
    augmenter = DeviceAugmentation(config.patch_size, cpu, seed=0)  # 1 thread: the default
    threaded = DeviceAugmentation(config.patch_size, cpu, seed=0, cpu_threads=None)
    cpu_loader = BatchLoader(folder, cases, config, seed=0, augmentation="cpu")
    dev_loader = BatchLoader(folder, cases, config, seed=0, augmentation="device")

    # as TrainingStep.device_batch does: labels widen to int64 once they are patch-sized
    def cpu_batch() -> None:
        _tensors(next(cpu_loader))[1].long()

    def device_batch() -> None:
        augmenter(*_tensors(next(dev_loader)))[1].long()

    def device_threaded_batch() -> None:
        threaded(*_tensors(next(dev_loader)))[1].long()

    n_threads = torch.get_num_threads()
    paths = {
        "cpu": cpu_batch,
        "device": device_batch,
        f"device, {n_threads} torch threads": device_threaded_batch,
    }
    for fn in paths.values():  # untimed: first reads, thread pools, allocator
        _time(fn, 2)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in paths}
    for rep in range(args.repeats):
        order = list(paths) if rep % 2 == 0 else list(paths)[::-1]
        for name in order:
            runs[name].append(_time(paths[name], args.batches))
    cpu_loader.close()
    dev_loader.close()

    core = {n: statistics.median(c for c, _ in r) for n, r in runs.items()}
    wall = {n: statistics.median(w for _, w in r) for n, r in runs.items()}
    result = {
        "configuration": config.name,
        "patch_size": list(config.patch_size),
        "batch_size": config.batch_size,
        "repeats": args.repeats,
        "batches_per_timing": args.batches,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_end": os.getloadavg()[0],
        "median_core_s_per_batch": core,
        "median_wall_s_per_batch": wall,
        "core_s_all": {n: [round(c, 4) for c, _ in r] for n, r in runs.items()},
        "ratio_device_over_cpu_core": core["device"] / core["cpu"],
        "ratio_device_over_cpu_wall": wall["device"] / wall["cpu"],
    }
    print(
        f"{config.name} patch {'x'.join(map(str, config.patch_size))} batch {config.batch_size}, "
        f"{args.repeats} x {args.batches} batches per path, {torch.get_num_threads()} threads"
    )
    print("| path | core-s/batch (median) | wall s/batch (median) |")
    print("|---|---|---|")
    for name in paths:
        print(f"| {name} | {core[name]:.3f} | {wall[name]:.3f} |")
    print(
        f"| device / cpu | {result['ratio_device_over_cpu_core']:.2f}x | "
        f"{result['ratio_device_over_cpu_wall']:.2f}x |"
    )
    if args.output:
        args.output.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
