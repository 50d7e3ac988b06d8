"""Where the time of ``autoseg predict`` goes, stage by stage, one case after the other.

Stages, timed with ``time.perf_counter`` in this one process (no background threads, so every
second is attributed to one stage): ``import`` (torch and autoseg's prediction modules), ``load``
(``Predictor.from_folder``: checkpoints, networks), then per case ``read`` (NIfTI),
``preprocess`` (crop, resample, normalise), ``network`` (the sliding window: forwards, mirroring,
accumulation; the number of forward passes and of tiles is counted), ``finalize`` (softmax
result back to the original grid, argmax, post-processing) and ``write`` (NIfTI).

Usage (a trained model folder and a folder of images)::

    python benchmarks/profile_predict.py MODEL_FOLDER INPUT_DIR [--cases 10] [--threads N]
        [--no-tta] [--output figures.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

_T0 = time.perf_counter()
import torch  # noqa: E402 - timed as the "import" stage

from autoseg.data.io import read_image, write_label  # noqa: E402
from autoseg.inference.inputs import group_input_files  # noqa: E402
from autoseg.inference.predictor import Predictor  # noqa: E402

_IMPORT_S = time.perf_counter() - _T0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("inputs", type=Path)
    parser.add_argument("--cases", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: autoseg's)")
    parser.add_argument("--no-tta", action="store_true")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()

    t = time.perf_counter()
    predictor = Predictor.from_folder(args.model, device="cpu", tta=not args.no_tta)
    if args.threads:
        torch.set_num_threads(args.threads)
    times = {"import": _IMPORT_S, "load": time.perf_counter() - t}
    calls = {"forwards": 0, "inputs": 0}
    for i, net in enumerate(predictor.networks):
        forward = net.forward

        def counted(x: torch.Tensor, forward=forward) -> torch.Tensor:
            calls["forwards"] += 1
            calls["inputs"] += x.shape[0]
            return forward(x)

        predictor.networks[i].forward = counted
    cases, _ = group_input_files([args.inputs], predictor.in_channels)
    stages = ("read", "preprocess", "network", "finalize", "write")
    times.update(dict.fromkeys(stages, 0.0))
    with tempfile.TemporaryDirectory() as out:
        for case, files in list(cases.items())[: args.cases]:
            t = time.perf_counter()
            image = read_image(files)
            times["read"] += time.perf_counter() - t
            t = time.perf_counter()
            array, props = predictor.preprocess(image, case)
            times["preprocess"] += time.perf_counter() - t
            t = time.perf_counter()
            probs = predictor.predict_preprocessed(array)
            times["network"] += time.perf_counter() - t
            t = time.perf_counter()
            labels, _ = predictor.finalize(probs, props)
            times["finalize"] += time.perf_counter() - t
            t = time.perf_counter()
            write_label(labels, image.geometry, Path(out) / f"{case}.nii.gz")
            times["write"] += time.perf_counter() - t
    total = sum(times.values())
    result = {
        "cases": min(args.cases, len(cases)),
        "threads": torch.get_num_threads(),
        "tta": not args.no_tta,
        **calls,
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "total_s": round(total, 3),
    }
    for name, seconds in times.items():
        print(f"{name:>10}: {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    print(f"{'total':>10}: {total:7.2f} s; {calls['forwards']} forwards, {calls['inputs']} inputs")
    if args.output:
        args.output.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
