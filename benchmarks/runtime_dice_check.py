"""Do the CPU runtimes change accuracy? One model, predicted in torch fp32 and each other runtime.

Variants (``autoseg predict`` flags): ``torch-fp32`` (the reference, the default), ``torch-bf16``
(``--cpu-bf16``), ``openvino-fp32`` (``--runtime openvino``) and ``openvino-bf16`` (both). For
each case: preprocess once, predict with every variant (TTA as given), score each label map against
the reference labels (Dice per foreground label) and count the voxels whose label differs from
the fp32 prediction. Prints the mean Dice per variant, its paired change against fp32 and the
network seconds per case (CPU; after one warm-up case per variant).

Usage::

    python benchmarks/runtime_dice_check.py MODEL_FOLDER IMAGES_DIR LABELS_DIR CASE [CASE ...]
        [--variants torch-fp32,torch-bf16,openvino-fp32,openvino-bf16] [--no-tta]
        [--output figures.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from autoseg.data.io import read_array, read_image
from autoseg.inference.postprocess import label_dice
from autoseg.inference.predictor import Predictor

VARIANTS = {
    "torch-fp32": {"runtime": "torch", "cpu_bf16": False},
    "torch-bf16": {"runtime": "torch", "cpu_bf16": True},
    "openvino-fp32": {"runtime": "openvino", "cpu_bf16": False},
    "openvino-bf16": {"runtime": "openvino", "cpu_bf16": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    names = ["torch-fp32"] + [v for v in args.variants.split(",") if v != "torch-fp32"]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    predictors = {
        n: Predictor.from_folder(args.model, device="cpu", tta=not args.no_tta, **VARIANTS[n])
        for n in names
    }
    ref = predictors["torch-fp32"]
    fg = [int(v) for v in ref.label_values if v != 0]
    rows = []
    for i, case in enumerate(args.cases):
        image = read_image([args.images / f"{case}.nii.gz"])
        truth = read_array(args.labels / f"{case}.nii.gz")[0]
        array, props = ref.preprocess(image, case)
        row: dict = {"case": case}
        labels = {}
        for name, predictor in predictors.items():
            start = time.process_time()
            logits = predictor.predict_preprocessed(array)
            seconds = time.process_time() - start
            labels[name], _ = predictor.finalize(logits, props)
            row[name] = {
                "dice": [label_dice(labels[name], truth, v) for v in fg],
                "cpu_s": None if i == 0 else seconds,  # the first case warms up
                "voxels_differing": int((labels[name] != labels["torch-fp32"]).sum()),
            }
        rows.append(row)
        print(case, {n: [round(d, 4) for d in row[n]["dice"]] for n in names}, flush=True)
    print(f"\n{len(rows)} cases, TTA {'off' if args.no_tta else 'on'}\n")
    print(
        "| variant | mean Dice | per label | change vs fp32 (paired) | cases changed "
        "| voxels differing per case | network CPU s per case |"
    )
    print("|---|---|---|---|---|---|---|")
    base = [float(np.mean(r["torch-fp32"]["dice"])) for r in rows]
    for name in names:
        means = [float(np.mean(r[name]["dice"])) for r in rows]
        per_label = np.array([r[name]["dice"] for r in rows]).mean(0)
        diffs = np.array(means) - np.array(base)
        timed = [r[name]["cpu_s"] for r in rows if r[name]["cpu_s"] is not None]
        print(
            f"| {name} | {np.mean(means):.4f} | {' / '.join(f'{d:.4f}' for d in per_label)} "
            f"| {diffs.mean():+.4f} (se {diffs.std(ddof=1) / np.sqrt(len(diffs)):.4f}) "
            f"| {int((diffs != 0).sum())} of {len(rows)} "
            f"| {statistics.mean(r[name]['voxels_differing'] for r in rows):.0f} "
            f"| {statistics.median(timed) if timed else float('nan'):.2f} |"
        )
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
