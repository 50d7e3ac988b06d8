"""What each training path learns: Dice of fold 0's cross-validation cases per path and seed.

A training path is where the augmentation runs (``cpu``: batchgenerators in the loader;
``device``: ``autoseg.training.augment.pipeline_device`` on the training device) and whether the
network runs
under bf16 autocast on the CPU. For each path and seed this trains one fold of one
configuration exactly as ``autoseg train --epochs 1`` does (``TrainingStep`` and
``BatchLoader`` with the trainer's seeds; one epoch, so the learning rate stays at its initial
value), and keeps a snapshot of the weights after ``--iterations`` iterations and after each
count of ``--snapshots``, with the training's wall-clock and CPU seconds so far (loading,
augmenting and stepping all count). The learning rate is constant, so a snapshot after ``n``
iterations is what a run of ``n`` iterations gives; Dice at equal time compares the paths at
iteration counts in the ratio of their speeds.

Each snapshot predicts the fold's validation cases (cross-validation cases, never the
unseen test cases; no mirroring TTA) and is scored by Dice per foreground label. Rows go to
``--output`` (JSON lines) as they finish, so an interrupted run keeps its rows, and a rerun
skips the (path, seed) pairs already there. At the end a table of mean and standard deviation
per path is printed (``--summary`` prints it for an existing file without training).

Usage (after ``autoseg plan DATASET --home HOME``)::

    python benchmarks/accuracy_paths.py DATASET --home HOME --output rows.jsonl \\
        [--paths device-bf16,cpu-bf16,cpu-fp32,device-fp32] [--seeds 0,1,2] \\
        [--iterations 120] [--snapshots 30,60] [--val-cases 40]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from autoseg.data.dataset import load_dataset
from autoseg.data.io import read_array, read_image
from autoseg.data.paths import resolve_dataset, resolve_home
from autoseg.data.plans import Plans
from autoseg.device import cpu_has_bf16
from autoseg.inference.cascade import input_channels
from autoseg.inference.predictor import Predictor
from autoseg.training.loader import BatchLoader
from autoseg.training.step import TrainingStep
from autoseg.training.train import poly_lr, preprocessed_cases, select_split

log = logging.getLogger("accuracy_paths")

PATHS = {  # name -> (augmentation, cpu_bf16)
    "device-bf16": ("device", True),
    "device-fp32": ("device", False),
    "cpu-bf16": ("cpu", True),
    "cpu-fp32": ("cpu", False),
}


def _snapshot(step: TrainingStep) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in step.network.state_dict().items()}


def train(args, plans, config, folder, split, path: str, seed: int, on_snapshot) -> dict:
    """One training run; ``on_snapshot(shot)`` scores each snapshot while the clocks stop."""
    augmentation, bf16 = PATHS[path]
    device = torch.device(args.device)
    step = TrainingStep(
        config,
        input_channels(plans, config),
        plans.num_classes,
        device,
        seed=seed,
        augmentation=augmentation,
        ignore_label=plans.ignore_label,
        cpu_bf16=bf16,
    )
    step.set_lr(poly_lr(step.optimizer.param_groups[0]["lr"], 0, 1))
    epoch_seed = seed * 100_003  # the trainer's seed of epoch 0 (autoseg.training.train)
    if step.augmenter is not None:
        step.augmenter.reseed(epoch_seed)
    step.network.train()
    wanted = sorted({*args.snapshots, args.iterations})
    losses: list[float] = []
    t0 = last = time.perf_counter()
    c0 = time.process_time()
    with BatchLoader(
        folder,
        split.train,
        config,
        seed=epoch_seed,
        augment=True,
        num_workers=0,
        augmentation=step.augmentation,
        ignore_label=plans.ignore_label,
    ) as loader:
        for it in range(1, wanted[-1] + 1):
            losses.append(step.train_batch(next(loader)))
            elapsed = time.perf_counter() - t0
            if it in wanted:
                shot = {
                    "weights": _snapshot(step),
                    "it": it,
                    "s": elapsed,
                    "cpu_s": time.process_time() - c0,
                    "bf16": step.bf16,
                    "aug": step.augmentation,
                    "loss10": float(np.mean(losses[-10:])),
                }
                w0, p0 = time.perf_counter(), time.process_time()
                on_snapshot(shot)
                t0 += time.perf_counter() - w0  # scoring is not training time
                c0 += time.process_time() - p0
            if time.perf_counter() - last > 25:
                last = time.perf_counter()
                log.info(
                    "%s seed %d: iteration %d, %.0f s, loss(last 10) %.4f, load %.1f",
                    path,
                    seed,
                    it,
                    elapsed,
                    float(np.mean(losses[-10:])),
                    os.getloadavg()[0],
                )
    return {"losses": losses}


def score(plans, config, weights, cases, device: str = "cpu") -> list[float]:
    """Mean Dice per foreground label of ``weights`` over ``cases`` (image, reference)."""
    predictor = Predictor([weights], plans, config, device=device, tta=False)
    labels = plans.foreground_labels
    dice = np.zeros((len(cases), len(labels)))
    for i, (image, ref) in enumerate(cases):
        pred, _ = predictor.predict_image(image)
        for j, k in enumerate(labels):
            p, r = pred == k, ref == k
            denom = p.sum() + r.sum()
            dice[i, j] = 2 * (p & r).sum() / denom if denom else 1.0
    return dice.mean(0).tolist()


def mean_dice(row: dict) -> float:
    """Mean foreground Dice of one row (rows carried over from docs/benchmarks.md keep only it)."""
    return float(np.mean(row["dice"])) if row.get("dice") else float(row["mean_dice"])


def summarise(rows: list[dict]) -> str:
    """A markdown table: per path and snapshot, mean (sd) Dice over seeds and the timings."""
    rows = list({(r["path"], r["seed"], r["snapshot"]): r for r in rows}.values())  # last wins
    lines = [
        "| path | iterations | seeds | train s | s/it | train loss (last 10) | mean Dice (sd) | "
        "label 1 | label 2 | per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in dict.fromkeys(r["path"] for r in rows):
        for snap in sorted({r["snapshot"] for r in rows}, key=int):
            mine = sorted(
                (r for r in rows if r["path"] == path and r["snapshot"] == snap),
                key=lambda r: r["seed"],
            )
            if not mine:
                continue
            means = [mean_dice(r) for r in mine]
            sd = statistics.stdev(means) if len(means) > 1 else float("nan")
            labelled = [r["dice"] for r in mine if r.get("dice")]
            per_label = np.array(labelled).mean(0) if labelled else (float("nan"),) * 2
            note = "" if len(labelled) == len(mine) else f" ({len(labelled)} seeds)"
            timed = [r["s"] for r in mine if r.get("s")]
            secs = statistics.mean(timed) if timed else float("nan")
            its = int(snap)
            seeds = ", ".join(f"{r['seed']}: {m:.3f}" for r, m in zip(mine, means, strict=True))
            lines.append(
                f"| {path} | {its} | {len(mine)} | {secs:.0f} | {secs / its:.2f} | "
                f"{statistics.mean(r['loss10'] for r in mine):.3f} | "
                f"{np.mean(means):.3f} ({sd:.3f}) | {per_label[0]:.3f}{note} | "
                f"{per_label[1]:.3f}{note} | {seeds} |"
            )
    return "\n".join(lines)


def paired(rows: list[dict], pairs: list[tuple[str, str]]) -> str:
    """Paired by seed (same cases, positions and initial weights): ``B - A`` for each pair of
    ``PATH@ITERATIONS`` given as ``(A, B)``, with the paired t-test and the sign count."""
    from scipy import stats

    by_key = {(r["path"], int(r["snapshot"]), r["seed"]): mean_dice(r) for r in rows}
    lines = [
        "| B - A | seeds | mean difference (sd) | t | p (paired t) | B lower in | per seed |",
        "|---|---|---|---|---|---|---|",
    ]
    for a, b in pairs:
        (pa, ia), (pb, ib) = ((name.split("@")[0], int(name.split("@")[1])) for name in (a, b))
        seeds = sorted(s for (p, i, s) in by_key if (p, i) == (pa, ia) and (pb, ib, s) in by_key)
        diffs = np.array([by_key[(pb, ib, s)] - by_key[(pa, ia, s)] for s in seeds])
        if len(diffs) < 2:
            lines.append(f"| {b} - {a} | {len(diffs)} | (too few seeds) | | | | |")
            continue
        test = stats.ttest_rel(
            [by_key[(pb, ib, s)] for s in seeds], [by_key[(pa, ia, s)] for s in seeds]
        )
        per_seed = ", ".join(f"{s}: {d:+.3f}" for s, d in zip(seeds, diffs, strict=True))
        lines.append(
            f"| {b} - {a} | {len(diffs)} | {diffs.mean():+.3f} ({diffs.std(ddof=1):.3f}) | "
            f"{test.statistic:+.2f} | {test.pvalue:.2f} | {int((diffs < 0).sum())} of "
            f"{len(diffs)} | {per_seed} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True, help="JSON lines, appended")
    parser.add_argument(
        "--also", type=Path, nargs="*", default=[], help="more row files for the table"
    )
    parser.add_argument("--configuration", default="3d_fullres")
    parser.add_argument("--planner", default="default")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--paths", default="device-bf16,cpu-bf16,cpu-fp32,device-fp32")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--iterations", type=int, default=120)
    parser.add_argument(
        "--snapshots", default="", help="more iteration counts to score, e.g. 30,60"
    )
    parser.add_argument("--val-cases", type=int, default=0, help="first N (0: all)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (bf16 is always on CUDA)")
    parser.add_argument("--summary", action="store_true", help="only print the table")
    parser.add_argument(
        "--compare",
        default="",
        help="with --summary: paired differences, e.g. "
        "cpu-bf16@120:device-bf16@120,cpu-fp32@60:cpu-bf16@120 (B - A per seed)",
    )
    args = parser.parse_args()
    args.snapshots = [int(x) for x in args.snapshots.split(",") if x]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("autoseg").setLevel(logging.WARNING)

    rows = []
    for output in (args.output, *args.also):
        if output.is_file():
            rows += [json.loads(line) for line in output.read_text().splitlines() if line]
    if args.summary:
        print(summarise(rows))
        if args.compare:
            pairs = [tuple(pair.split(":")) for pair in args.compare.split(",")]
            print()
            print(paired(rows, pairs))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.paths.split(",")
    unknown = set(paths) - set(PATHS)
    if unknown:
        parser.error(f"unknown path(s) {sorted(unknown)}; choose from {sorted(PATHS)}")
    dirs = resolve_dataset(args.dataset, resolve_home(args.home))
    plans = Plans.from_json(dirs.require_plans(args.planner))
    config = plans.configuration(args.configuration)
    folder, case_ids = preprocessed_cases(dirs, config)
    split = select_split(dirs, args.fold, case_ids)
    val = list(split.val[: args.val_cases] if args.val_cases else split.val)
    spec = {c.case_id: c for c in load_dataset(dirs.raw).cases}
    cases = [(read_image(spec[c].images), read_array(spec[c].label)[0]) for c in val]
    log.info(
        "%s fold %s: %d training cases, %d validation cases scored; cpu bf16: %s; torch %d threads",
        config.name,
        args.fold,
        len(split.train),
        len(cases),
        cpu_has_bf16(),
        torch.get_num_threads(),
    )
    done = {(r["path"], r["seed"]) for r in rows if r["it"] == args.iterations}
    for seed in (int(s) for s in args.seeds.split(",")):
        for path in paths:
            if (path, seed) in done:
                continue

            def record(shot: dict, path: str = path, seed: int = seed) -> None:
                dice = score(plans, config, shot["weights"], cases, args.device)
                row = {
                    "path": path,
                    "seed": seed,
                    "snapshot": str(shot["it"]),
                    "it": shot["it"],
                    "s": round(shot["s"], 1),
                    "cpu_s": round(shot["cpu_s"], 1),
                    "dice": [round(d, 4) for d in dice],
                    "bf16": shot["bf16"],
                    "augmentation": shot["aug"],
                    "val_cases": len(cases),
                    "loss10": shot["loss10"],
                    "threads": torch.get_num_threads(),
                    "load_avg": os.getloadavg()[0],
                    "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
                rows.append(row)
                with args.output.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                log.info(
                    "%s seed %d: %d it, %.0f s, Dice %s",
                    path,
                    seed,
                    shot["it"],
                    shot["s"],
                    " / ".join(f"{d:.3f}" for d in dice),
                )

            train(args, plans, config, folder, split, path, seed, record)
    print(summarise(rows))


if __name__ == "__main__":
    main()
