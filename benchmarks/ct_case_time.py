"""Network time per CT case, autoseg beside nnU-Net: tiles per case x the measured tile time.

Reads ``ct_scale.py --json`` (tiles per 400-slice case of each setting) and two
``tile_runtime.py --json`` files (one tile's time under each runtime, for autoseg's and for
nnU-Net's network) and prints, per pass (mirroring TTA multiplies every row by 8 alike)::

    python benchmarks/ct_case_time.py ct_scale.json tile_autoseg.json tile_nnunet.json

nnU-Net runs eager fp32 on the CPU; autoseg's rows are its main (no body mask), its default
(body mask) and the default under each runtime variant measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: tile_runtime.py variant -> the ``autoseg predict`` flags that select it
FLAGS = {
    "eager-fp32": "--no-cpu-bf16",
    "eager-bf16": "(the default on a bf16 CPU)",
    "ort-fp32": "(ONNX Runtime: not a predict runtime)",
    "ov-fp32": "--runtime openvino --no-cpu-bf16",
    "ov-bf16": "--runtime openvino",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ct_scale", type=Path)
    parser.add_argument("tile_autoseg", type=Path)
    parser.add_argument("tile_nnunet", type=Path)
    args = parser.parse_args()
    scale = json.loads(args.ct_scale.read_text())
    tiles = {r["setting"]: r["tiles"] for r in scale["rows"]}
    mine = {r["variant"]: r["median_s"] for r in json.loads(args.tile_autoseg.read_text())["rows"]}
    peer = {r["variant"]: r["median_s"] for r in json.loads(args.tile_nnunet.read_text())["rows"]}
    reference = tiles["nnU-Net 3d_fullres, step 0.5"] * peer["eager-fp32"]
    rows = [
        (
            "nnU-Net 3d_fullres (eager fp32)",
            tiles["nnU-Net 3d_fullres, step 0.5"],
            peer["eager-fp32"],
        ),
        (
            "autoseg main: no body mask (eager fp32)",
            tiles["autoseg main: 3d_fullres, step 0.5"],
            mine["eager-fp32"],
        ),
    ]
    masked = tiles["3d_fullres + body mask, step 0.5"]
    for variant, flag in FLAGS.items():
        if variant in mine:
            rows.append((f"autoseg default, body mask, {variant} {flag}", masked, mine[variant]))
    print(f"network time per {scale['test_case']} case, one pass, {scale['size']} size")
    print("| setting | tiles | s per tile | s per case | vs nnU-Net |")
    print("|---|---|---|---|---|")
    for name, count, seconds in rows:
        total = count * seconds
        print(f"| {name} | {count} | {seconds:.2f} | {total:.0f} | {total / reference:.3f} |")


if __name__ == "__main__":
    main()
