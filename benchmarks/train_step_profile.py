"""Where a CPU training step's time goes, and fp32 against bf16 autocast side by side.

Builds the trainer's own ``TrainingStep`` for a planned configuration, feeds it one synthetic
batch of the planned shape (the step's cost does not depend on the values), and times
``train_step`` alternately in fp32 and under CPU bf16 autocast (A B A B ...). Times are the
process's CPU seconds per step (``time.process_time``): on a shared machine they move far less
than wall seconds; with one thread (``OMP_NUM_THREADS=1``) they are the work itself. ``--profile``
adds torch.profiler's table of the ops of one step of each kind.

Example:
    OMP_NUM_THREADS=1 python benchmarks/train_step_profile.py Task04_Hippocampus 3d_fullres \\
        --home HOME --repeats 4 --profile
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.data.paths import resolve_dataset
from autoseg.data.plans import Plans
from autoseg.device import cpu_has_bf16
from autoseg.training.step import TrainingStep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("configuration")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=None, help="default: the planned batch")
    parser.add_argument("--repeats", type=int, default=4, help="steps of each kind (first untimed)")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    dirs = resolve_dataset(args.dataset, args.home)
    plans = Plans.from_json(dirs.plans("default"))
    config = plans.configuration(args.configuration)
    batch = args.batch or config.batch_size
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, len(plans.channels), *config.patch_size, generator=g)
    target = torch.randint(0, len(plans.labels), (batch, 1, *config.patch_size), generator=g)
    kinds = {"fp32": False, "bf16": True}
    steps = {
        name: TrainingStep(
            config,
            len(plans.channels),
            len(plans.labels),
            torch.device("cpu"),
            seed=0,
            cpu_bf16=bf16,
        )
        for name, bf16 in kinds.items()
    }
    print(
        f"{args.configuration} patch {config.patch_size} batch {batch}; threads "
        f"{torch.get_num_threads()}, affinity {len(os.sched_getaffinity(0))} CPUs; "
        f"native bf16: {cpu_has_bf16()}; load {os.getloadavg()[0]:.1f}"
    )
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    losses: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            t0 = time.process_time()
            losses[name].append(step.train_step(image, target))
            seconds[name].append(time.process_time() - t0)
    for name in steps:
        timed = seconds[name][1:] or seconds[name]
        print(
            f"{name}: median {np.median(timed):.3f} CPU s/step over {len(timed)} "
            f"(all: {' '.join(f'{s:.2f}' for s in seconds[name])}); "
            f"losses {' '.join(f'{v:.4f}' for v in losses[name])}"
        )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step.train_step(image, target)
            print(f"--- {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
