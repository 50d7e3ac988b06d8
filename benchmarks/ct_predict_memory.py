"""Peak host memory of ``autoseg predict`` on one large synthetic CT case, network left out.

::

    python benchmarks/ct_predict_memory.py [--slices 600] [--no-body-mask] [--workdir DIR]

Writes one ``benchmarks/synthetic_ct.py`` case of 512x512xSLICES (seed 0, full size) as
NIfTI, plans it as ``benchmarks/ct_scale.py`` does (default planner, 3d_fullres), builds the
``Predictor`` with random weights and then replaces its networks by a stub that returns zero
logits of the right shape: reading, preprocessing, the body mask, the sliding window's
accumulators, softmax, restoring to the original grid, argmax and writing all run as in
``autoseg predict``; the network's own activations (a few GB on the CPU for one 60x176x176
tile, planned separately) do not. Prints the process's peak RSS (``VmHWM``) as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ct_scale  # noqa: E402
import synthetic_ct  # noqa: E402

from autoseg.inference.predictor import Predictor, predict_folder  # noqa: E402
from autoseg.networks.unet import build_network  # noqa: E402


class ZeroLogits(torch.nn.Module):
    """Stands in for the network: (B, C, *tile) -> (B, K, *tile) zeros, counting tiles."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes, self.tiles = classes, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.tiles += x.shape[0]
        return x.new_zeros((x.shape[0], self.classes, *x.shape[2:]))


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=600)
    parser.add_argument("--no-body-mask", action="store_true")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from autoseg.planners.default import plan

    plans = plan(ct_scale.fingerprint("full", 12, 0))
    config = plans.configuration("3d_fullres")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ct_memory_"))
    image = work / f"ct_{args.slices}.nii.gz"
    if not image.exists():
        preset = synthetic_ct.SIZES["full"]
        rng = synthetic_ct.case_rng(0, 1000 + args.slices)
        _, spacing = synthetic_ct.draw_geometry(rng, preset, True)
        volume, _ = synthetic_ct.make_case(rng, args.slices, spacing, preset)
        synthetic_ct._save(image, volume, spacing)
        del volume
    weights = build_network(config, 1, plans.num_classes, deep_supervision=False).state_dict()
    predictor = Predictor(
        [weights], plans, config, device="cpu", tta=False, body_mask=not args.no_body_mask
    )
    del weights
    stub = ZeroLogits(plans.num_classes)
    predictor.networks = [stub]
    before = _peak_rss_mb()
    start = time.perf_counter()
    predict_folder([image], work / "out", predictor, overwrite=True)
    print(
        json.dumps(
            {
                "slices": args.slices,
                "body_mask": not args.no_body_mask,
                "tiles": stub.tiles,
                "peak_rss_mb_before": round(before),
                "peak_rss_mb": round(_peak_rss_mb()),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
