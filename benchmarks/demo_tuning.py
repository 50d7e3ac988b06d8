"""Choose the demo's configuration and budget on cases the demo never scores.

Builds a dataset in the demo's layout: the shipped training cases (plus, optionally, ``--extra``
more cases of the full MSD Task04_Hippocampus set) for training, and ``--tune`` other cases of the
MSD set as held-out cases; then runs ``autoseg.cli.demo.run_demo`` on it with the given settings and
writes one JSON line (Dice per label, seconds per stage). ``--shipped-test`` scores the shipped
held-out cases instead (the demo's own test set: for the final figures only, not for choosing).

Example:
    python benchmarks/demo_tuning.py --msd DATA/Task04_Hippocampus --configuration 2d \\
        --epochs 10 --iterations 100 --seed 0 --out results.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from autoseg.cli.demo import DemoSettings, demo_dataset_path, run_demo


def _ids(folder: Path) -> list[str]:
    return sorted(p.name[: -len(".nii.gz")] for p in folder.glob("*.nii.gz"))


def build_dataset(msd: Path, out: Path, extra: int, tune: int, shipped_test: bool) -> None:
    """Link cases into ``out`` (imagesTr/labelsTr, imagesTs/labelsTs) and write dataset.json."""
    shipped = demo_dataset_path()
    train = [(shipped, c) for c in _ids(shipped / "imagesTr")]
    used = {c for _, c in train} | set(_ids(shipped / "imagesTs"))
    others = [c for c in _ids(msd / "imagesTr") if c not in used]
    order = [others[i] for i in np.random.default_rng(0).permutation(len(others))]
    held = [(shipped, c) for c in _ids(shipped / "imagesTs")] if shipped_test else []
    if not shipped_test:
        held = [(msd, c) for c in order[:tune]]
    train += [(msd, c) for c in order[tune : tune + extra]]
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True)
    for folders, cases in ((("imagesTr", "labelsTr"), train), (("imagesTs", "labelsTs"), held)):
        for root, case in cases:
            src_img = "imagesTr" if root is msd else folders[0]
            src_lab = "labelsTr" if root is msd else folders[1]
            (out / folders[0] / f"{case}.nii.gz").symlink_to(root / src_img / f"{case}.nii.gz")
            (out / folders[1] / f"{case}.nii.gz").symlink_to(root / src_lab / f"{case}.nii.gz")
    spec = json.loads((shipped / "dataset.json").read_text())
    spec["training"] = [
        {"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for _, c in train
    ]
    spec["test"] = [f"./imagesTs/{c}.nii.gz" for _, c in held]
    spec["numTraining"], spec["numTest"] = len(train), len(held)
    (out / "dataset.json").write_text(json.dumps(spec, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--msd", type=Path, required=True, help="Task04_Hippocampus folder")
    parser.add_argument("--extra", type=int, default=0, help="MSD cases added to training")
    parser.add_argument("--tune", type=int, default=12, help="MSD cases held out for scoring")
    parser.add_argument("--shipped-test", action="store_true", help="score the shipped 6")
    parser.add_argument("--configuration", default=DemoSettings.configuration)
    parser.add_argument("--epochs", type=int, default=DemoSettings.epochs)
    parser.add_argument("--iterations", type=int, default=DemoSettings.iterations)
    parser.add_argument("--val-iterations", type=int, default=DemoSettings.val_iterations)
    parser.add_argument("--lr", type=float, default=DemoSettings.initial_lr)
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--tile-batch", type=int, default=DemoSettings.tile_batch)
    parser.add_argument("--augmentation", default=DemoSettings.augmentation)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="append one JSON line here")
    args = parser.parse_args()
    settings = DemoSettings(
        configuration=args.configuration,
        epochs=args.epochs,
        iterations=args.iterations,
        val_iterations=args.val_iterations,
        initial_lr=args.lr,
        tta=not args.no_tta,
        tile_batch=args.tile_batch,
        augmentation=args.augmentation,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "Hippocampus"
        build_dataset(args.msd.resolve(), data, args.extra, args.tune, args.shipped_test)
        t0, cpu0 = time.perf_counter(), time.process_time()
        console = Console(quiet=True)
        result = run_demo(
            Path(tmp) / "home", settings, device="cpu", workers=2, console=console, source=data
        )
        total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    dice = result.mean_dice
    row = {
        "settings": vars(args) | {"msd": None, "out": None},
        "dice": dice,
        "mean_dice": float(np.mean(list(dice.values()))),
        "seconds": result.seconds,
        "total_s": total,
        "cpu_s": cpu,
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(row))
    with args.out.open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
