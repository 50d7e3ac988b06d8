"""Does the widened inference tile change accuracy? One model, tiles of the patch vs widened.

For each case: preprocess once, predict with ``max_tile_scale=1.0`` (the training patch
everywhere, the default) and with ``max_tile_scale=1.25`` (widened tiles), TTA as given, and
score both label maps against the reference labels (Dice per foreground label).

Usage::

    python benchmarks/tile_dice_check.py MODEL_FOLDER IMAGES_DIR LABELS_DIR CASE [CASE ...]
        [--no-tta] [--output figures.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from autoseg.data.io import read_array, read_image
from autoseg.inference.postprocess import label_dice
from autoseg.inference.predictor import Predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("cases", nargs="+")
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    tta = not args.no_tta
    ref = Predictor.from_folder(args.model, device="cpu", tta=tta, max_tile_scale=1.0)
    new = Predictor.from_folder(args.model, device="cpu", tta=tta, max_tile_scale=1.25)
    fg = [int(v) for v in ref.label_values if v != 0]
    rows = []
    for case in args.cases:
        image = read_image([args.images / f"{case}.nii.gz"])
        truth = read_array(args.labels / f"{case}.nii.gz")[0]  # (Z, Y, X)
        array, props = ref.preprocess(image, case)
        spatial = array.shape[1:]
        row = {
            "case": case,
            "shape": list(spatial),
            "tile_widened": new.tile_size(spatial) != ref.tile_size(spatial),
        }
        labels = {}
        for name, predictor in (("patch", ref), ("widened", new)):
            labels[name], _ = predictor.finalize(predictor.predict_preprocessed(array), props)
            row[name] = [label_dice(labels[name], truth, v) for v in fg]
        row["voxels_differing"] = int((labels["patch"] != labels["widened"]).sum())
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {
        "cases": len(rows),
        "cases_widened": sum(r["tile_widened"] for r in rows),
        "tta": tta,
        **{
            f"mean_dice_{name}": [
                round(statistics.mean(r[name][i] for r in rows), 4) for i in range(len(fg))
            ]
            for name in ("patch", "widened")
        },
    }
    for name in ("patch", "widened"):
        summary[f"mean_dice_{name}_all"] = round(
            statistics.mean(statistics.mean(r[name]) for r in rows), 4
        )
    print(json.dumps(summary))
    if args.output:
        args.output.write_text(json.dumps({"summary": summary, "cases": rows}, indent=2))


if __name__ == "__main__":
    main()
