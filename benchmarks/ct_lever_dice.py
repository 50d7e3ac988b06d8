"""Dice and network work of each prediction lever on held-out synthetic CT cases.

::

    python benchmarks/synthetic_ct.py DATA --size tiny --train 10 --test 3 --seed 1
    autoseg plan DATA --home HOME --gpu-memory 0.62      # a small 3d_fullres patch: many tiles
    autoseg train SyntheticCT 3d_fullres all --home HOME --epochs 20 --iterations 20 ...
    python benchmarks/ct_lever_dice.py HOME/SyntheticCT/models/default/3d_fullres DATA \\
        [--checkpoint best]

Predicts every ``imagesTs`` case once per setting (no TTA, CPU) with the same weights and
prints, per setting, the tiles run (network inputs), the CPU seconds of the predictions and the
Dice per label against ``labelsTs``, with the change from ``main`` (step 0.5, no body mask,
fp32). The machine's load is printed: seconds are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from autoseg.data.io import read_array, read_image
from autoseg.inference.predictor import Predictor

SETTINGS = {  # name -> Predictor keyword arguments on top of main's
    "main (step 0.5)": {"body_mask": False},
    "body mask": {},
    "body mask, step 0.6": {"step": 0.6},
    "body mask, step 0.75": {"step": 0.75},
    "body mask, bf16 (CPU)": {"cpu_bf16": True},
}


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    total = int(p.sum() + r.sum())
    return float("nan") if total == 0 else 2.0 * int((p & r).sum()) / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--checkpoint", default="best")
    args = parser.parse_args()
    cases = sorted((args.data / "imagesTs").glob("*.nii.gz"))
    images = [read_image([c]) for c in cases]
    refs = [np.asarray(read_array(args.data / "labelsTs" / c.name)[0]) for c in cases]
    rows = {}
    for name, kwargs in SETTINGS.items():
        predictor = Predictor.from_folder(
            args.model, checkpoint=args.checkpoint, device="cpu", tta=False, **kwargs
        )
        tiles = [0]

        def count(_module, inputs, _out, tiles=tiles):
            tiles[0] += inputs[0].shape[0]

        predictor.networks[0].register_forward_hook(count)
        start = time.process_time()
        preds = [predictor.predict_image(image)[0] for image in images]
        seconds = time.process_time() - start
        labels = sorted(v for v in np.unique(np.concatenate([r.ravel() for r in refs])) if v)
        scores = {
            int(k): float(np.nanmean([dice(p, r, k) for p, r in zip(preds, refs, strict=True)]))
            for k in labels
        }
        rows[name] = {"tiles": tiles[0], "cpu_s": round(seconds, 1), "dice": scores}
    main_row = rows["main (step 0.5)"]
    print(f"load average {os.getloadavg()[0]:.1f}; {len(cases)} test cases, no TTA")
    print("| setting | tiles | CPU s | Dice per label | mean | change vs main |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        mean = float(np.mean(list(row["dice"].values())))
        base = float(np.mean(list(main_row["dice"].values())))
        per = " / ".join(f"{v:.4f}" for v in row["dice"].values())
        change = f"{mean - base:+.4f}"
        print(f"| {name} | {row['tiles']} | {row['cpu_s']} | {per} | {mean:.4f} | {change} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
