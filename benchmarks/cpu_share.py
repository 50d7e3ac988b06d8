"""Training throughput on a CPU shared with other work: thread settings, idle and under load.

Each measurement is a fresh child process (OpenMP reads its wait policy once, when torch loads,
so a setting can only be tried in a new process) that builds the trainer's own ``TrainingStep``
for a planned configuration and runs SGD steps on one synthetic batch of the planned shape for
``--seconds`` (after one untimed step). It reports steps per wall second and the process's CPU
seconds per step (all its threads): on a machine with spare cores the two agree with the work;
when threads spin while their partners wait for a core, CPU seconds per step grow.

The load is fixed and synthetic: ``--hogs`` processes that busy-loop, pinned to the same CPUs as
the child (its affinity mask). Rounds alternate idle and loaded, and within each the settings in
turn (order reversed every round), so that the other work on a shared machine, which this script
does not control, falls on every setting alike: compare ratios within one run.

Settings (``--settings``, comma-separated):
    ``old``: what autoseg did before issue 22: OpenMP's default wait policy (libgomp spins
    about 300k iterations before sleeping), torch threads = ``autoseg.device.cpu_count()``.
    ``new``: what autoseg does now: ``autoseg.device.configure_cpu_threads`` (the CLI calls it
    first: ``OMP_WAIT_POLICY=PASSIVE``), then ``use_cpu_share`` (threads = the CPUs not held by
    other runnable tasks at the start, as the trainer sets at every epoch).
    ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, threads = cpu_count.
    ``one``: the default wait policy with one torch thread.

Example:
    autoseg plan autoseg/demo_data/Hippocampus --home /tmp/share_home
    python benchmarks/cpu_share.py Hippocampus 2d --home /tmp/share_home --rounds 3 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

_OMP_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _child_env(setting: str) -> dict[str, str]:
    """The environment of a child measuring ``setting`` (no OpenMP variables of our own)."""
    env = {k: v for k, v in os.environ.items() if k not in _OMP_VARS}
    env["CPU_SHARE_SETTING"] = setting
    if setting == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def child(args: argparse.Namespace) -> None:
    """Measure one setting in this (fresh) process; print one JSON line."""
    setting = os.environ["CPU_SHARE_SETTING"]
    from autoseg.device import cpu_count

    if setting == "new":
        from autoseg.device import configure_cpu_threads

        configure_cpu_threads()  # before torch: as the CLI does
    import torch

    from autoseg.data.paths import resolve_dataset
    from autoseg.data.plans import Plans
    from autoseg.training.step import TrainingStep

    if setting == "new":
        from autoseg.device import use_cpu_share

        use_cpu_share()  # as the trainer does at the start of every epoch
    elif setting in ("old", "passive"):
        torch.set_num_threads(cpu_count())
    elif setting == "one":
        torch.set_num_threads(1)
    plans = Plans.from_json(resolve_dataset(args.dataset, args.home).plans("default"))
    config = plans.configuration(args.configuration)
    batch = args.batch or config.batch_size
    g = torch.Generator().manual_seed(0)
    image = torch.randn(batch, len(plans.channels), *config.patch_size, generator=g)
    target = torch.randint(0, len(plans.labels), (batch, 1, *config.patch_size), generator=g)
    step = TrainingStep(
        config, len(plans.channels), len(plans.labels), torch.device("cpu"), seed=0, cpu_bf16=True
    )
    step.train_step(image, target)  # untimed: first-call allocations
    steps, wall0, times0 = 0, time.perf_counter(), os.times()
    while steps < 2 or time.perf_counter() - wall0 < args.seconds:
        step.train_step(image, target)
        steps += 1
    wall, times = time.perf_counter() - wall0, os.times()
    user, system = times.user - times0.user, times.system - times0.system
    print(
        json.dumps(
            {
                "setting": setting,
                "threads": torch.get_num_threads(),
                "wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                "steps": steps,
                "steps_per_s": steps / wall,
                "cpu_s_per_step": (user + system) / steps,
                "sys_s_per_step": system / steps,
                "wall_s": wall,
            }
        )
    )


def _start_hogs(count: int) -> list[subprocess.Popen]:
    """``count`` busy-looping processes pinned to this process's CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    code = f"import os; os.sched_setaffinity(0, {cpus})\nwhile True: pass"
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def _stop(hogs: list[subprocess.Popen]) -> None:
    for hog in hogs:
        hog.kill()
        hog.wait()


def _measure(args: argparse.Namespace, setting: str, load: int) -> dict:
    command = [sys.executable, __file__, args.dataset, args.configuration, "--child"]
    command += ["--home", str(args.home), "--seconds", str(args.seconds)]
    if args.batch:
        command += ["--batch", str(args.batch)]
    load1 = os.getloadavg()[0]
    out = subprocess.run(
        command, env=_child_env(setting), capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(hogs=load, load1_before=round(load1, 2))
    print(json.dumps(result), flush=True)
    return result


def parent(args: argparse.Namespace) -> None:
    """Alternate settings, idle and under ``--hogs`` busy loops; print the table."""
    settings = args.settings.split(",")
    results: list[dict] = []
    start = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"# {start}; {len(os.sched_getaffinity(0))} CPUs, load1 {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    for r in range(args.rounds):
        order = settings if r % 2 == 0 else settings[::-1]
        for load in (0, args.hogs) if r % 2 == 0 else (args.hogs, 0):
            hogs = _start_hogs(load)
            try:
                results += [_measure(args, s, load) for s in order]
            finally:
                _stop(hogs)
    if args.output:
        args.output.write_text("".join(json.dumps(r) + "\n" for r in results))
    print(table(results, settings, args.hogs))


def table(results: list[dict], settings: list[str], hogs: int) -> str:
    """Markdown table: medians per setting, idle and loaded, and loaded/idle throughput."""

    def median(setting: str, load: int, key: str) -> float:
        values = [r[key] for r in results if r["setting"] == setting and r["hogs"] == load]
        return statistics.median(values) if values else float("nan")

    lines = [
        f"| setting | threads | steps/s idle | steps/s {hogs} hogs | loaded/idle | "
        f"CPU s/step idle | CPU s/step {hogs} hogs |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in settings:
        threads = next(r["threads"] for r in results if r["setting"] == s)
        idle, busy = median(s, 0, "steps_per_s"), median(s, hogs, "steps_per_s")
        lines.append(
            f"| {s} | {threads} | {idle:.3f} | {busy:.3f} | {busy / idle:.2f} | "
            f"{median(s, 0, 'cpu_s_per_step'):.3f} | {median(s, hogs, 'cpu_s_per_step'):.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("configuration")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=None, help="default: the planned batch")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=2, help="busy-looping processes when loaded")
    parser.add_argument("--settings", default="old,new")
    parser.add_argument("--output", type=Path, default=None, help="also write JSON lines here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child(args) if args.child else parent(args)


if __name__ == "__main__":
    main()
