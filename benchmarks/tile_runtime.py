"""One sliding-window tile forward on the CPU under each inference lever of issue 22, timed.

Times ``network(tile)`` (batch 1, inference mode, no deep supervision: what
``autoseg.inference.sliding_window`` calls per tile) for one network under each variant, and
compares each variant's logits with fp32 eager's::

    python benchmarks/tile_runtime.py --network autoseg [--tile 20x64x64] [--threads 1] \\
        [--repeats 3] [--variants eager-fp32,eager-bf16,...] [--json OUT]

Networks (``benchmarks/ct_scale.py``'s plan of the full-size synthetic CT set, seed 0):
``autoseg`` is autoseg's default-planned 3d_fullres (patch 60x176x176, 5 stages) at the tile
``predict`` would use on the 400-slice test case; ``nnunet`` is nnU-Net v2.8.1's 3d_fullres
architecture (64x192x160, 6 stages, 32..320 features) built with autoseg's plain U-Net builder.

Variants (one that needs a missing package or CPU feature is skipped, with the reason):

- ``eager-fp32``: ``autoseg predict`` on the CPU by default (the reference of every row);
- ``eager-bf16``: ``--cpu-bf16``: ``autoseg.device.autocast`` (bf16 autocast on a CPU with
  native bf16, as the predictor enters it);
- ``cl-fp32``, ``cl-bf16``: weights and input in ``torch.channels_last_3d`` (not in predict);
- ``ort-fp32``: ONNX Runtime, CPU execution provider, on the graph autoseg's exporter writes
  (``autoseg.inference.onnx_export.write_onnx``);
- ``ov-fp32``, ``ov-bf16``: OpenVINO's CPU plugin compiling that ONNX file for the tile's static
  shape, with the f32 or bf16 ``INFERENCE_PRECISION_HINT``;
- ``compile-fp32``, ``compile-bf16``: ``autoseg.networks.compiled.compile_with_fallback`` (what
  ``predict --compile`` does); not in the default list: compiling costs minutes on the CPU.

Each variant: its setup timed once (the ONNX export counts in the first ONNX row's; OpenVINO's
compile in its own), one warm-up forward, then ``--repeats`` timed forwards: median and min
wall seconds, median process CPU seconds (all threads: over the wall time, the threads really
busy), the speed-up of the medians over fp32 eager, the largest |logit - fp32 eager logit|
and the share of voxels whose argmax differs. ``eager-fp32`` always runs, first.
``--threads`` sets torch's, ONNX Runtime's and OpenVINO's intra-op threads alike (default 1;
``predict`` would take ``cpu_share_threads()``); ``OMP_WAIT_POLICY=PASSIVE`` as the CLI sets it.

The input is realistic, not noise: the centre of a synthetic CT case (``--case-size small`` by
default: 256x256, cheap to make) cut to the tile's extent in mm, resampled (cubic) to the
tile's voxels on the 3d_fullres grid and CT-normalised with the plan's values
(``autoseg.preprocessing.normalize``), air outside the case. The weights are the builder's
default initialisation under ``--seed`` (nothing is trained): fine for timing, and the output
differences measure numerical fidelity, but the argmax itself means nothing anatomically.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # autoseg.device.configure_cpu_threads

import argparse  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ct_scale  # noqa: E402 - the plans and nnU-Net's architecture beside this script
import synthetic_ct  # noqa: E402

from autoseg.data.plans import Configuration  # noqa: E402
from autoseg.device import autocast, cpu_has_bf16  # noqa: E402
from autoseg.inference.tiles import inference_tile_size  # noqa: E402
from autoseg.networks.unet import build_network, forward_flops  # noqa: E402
from autoseg.preprocessing.normalize import normalize_channel  # noqa: E402
from autoseg.preprocessing.resample import resample_image, target_shape  # noqa: E402

log = logging.getLogger("tile_runtime")

VARIANTS = tuple(
    f"{engine}-{precision}"
    for engine in ("eager", "cl", "ort", "ov", "compile")
    for precision in ("fp32", "bf16")
    if (engine, precision) != ("ort", "bf16")  # bf16 in ORT needs a converted graph: not here
)
DEFAULT_VARIANTS = VARIANTS[:7]
Runner = Callable[[torch.Tensor], torch.Tensor]  # (1, C, *tile) -> (1, K, *tile) float32


class Skip(Exception):
    """A variant that cannot run here; the message says why."""


@contextlib.contextmanager
def heartbeat(what: str, every: float = 30.0) -> Iterator[None]:
    """Log ``still <what>`` every ``every`` seconds while the block runs."""
    done, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            log.info("  still %s (%.0f s)", what, time.perf_counter() - start)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def fidelity(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """``(max |other - reference|, share of voxels whose argmax over channels differs)``.

    Args:
        reference, other: ``(B, K, *S)`` logits of the same shape (any float dtype).
    """
    if reference.shape != other.shape:
        raise ValueError(f"shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    ref, out = reference.float(), other.float()
    diff = float((out - ref).abs().max())
    changed = (out.argmax(dim=1) != ref.argmax(dim=1)).float().mean()
    return diff, float(changed)


def parse_tile(text: str) -> tuple[int, int, int]:
    """``"20x64x64"`` -> ``(20, 64, 64)``."""
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"tile {text!r}: give ZxYxX, e.g. 20x64x64")
    return parts  # type: ignore[return-value]


def network_config(
    name: str, seed: int, nnunet_plans: Path | None = None, size: str = "full", train: int = 12
) -> tuple[Configuration, int, tuple[int, ...]]:
    """The configuration, classes and default tile of ``--network`` (ct_scale.py's plan of the
    ``size`` set; nnU-Net's from its ``nnUNetPlans.json`` when given)."""
    plans, full, nnunet = ct_scale.configurations(size, train, seed, nnunet_plans)
    if name == "nnunet":
        return nnunet, plans.num_classes, tuple(nnunet.patch_size)
    _, slices, spacing = ct_scale.test_geometry(size, train, seed)
    edge = synthetic_ct.SIZES[size].edge
    grid = target_shape((slices, edge, edge), spacing, full.spacing)
    return full, plans.num_classes, inference_tile_size(grid, full.patch_size, full.total_stride())


def ct_tile(config: Configuration, tile: tuple[int, ...], size: str, seed: int) -> torch.Tensor:
    """``(1, 1, *tile)`` float32: a synthetic CT case's centre on the config's grid, normalised."""
    preset = synthetic_ct.SIZES[size]
    rng, slices, spacing = ct_scale.test_geometry(size, 12, seed)
    image, _ = synthetic_ct.make_case(rng, slices, spacing, preset)  # (Z, Y, X) int16 HU
    extent = np.array(tile) * np.array(config.spacing)  # mm
    need = [max(1, round(e / s)) for e, s in zip(extent, spacing, strict=True)]
    crop = np.full(need, synthetic_ct.AIR, dtype=np.float32)
    src, dst = [], []
    for n, m in zip(image.shape, need, strict=True):
        lo = (n - m) // 2  # the centre; negative where the case is smaller than the tile
        src.append(slice(max(lo, 0), max(lo, 0) + min(n, m)))
        dst.append(slice(max(-lo, 0), max(-lo, 0) + min(n, m)))
    crop[tuple(dst)] = image[tuple(src)]
    anisotropic = 0 if spacing[0] > 3 * spacing[1] else None
    array = resample_image(crop[None], tile, order=3, anisotropic_axis=anisotropic)
    normalize_channel(array[0], config.normalization[0])
    return torch.from_numpy(array[None])  # (1, 1, *tile)


def _eager(net: torch.nn.Module, bf16: bool, channels_last: bool) -> Runner:
    if bf16 and not cpu_has_bf16():
        raise Skip("this CPU has no native bf16 (predict --cpu-bf16 would run fp32)")
    if channels_last:  # a copy: .to() converts the parameters in place
        net = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    precision = autocast(torch.device("cpu"), bf16)

    def run(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with torch.inference_mode(), precision:
            return net(x).float()

    return run


def _compiled(net: torch.nn.Module, example: torch.Tensor, bf16: bool) -> Runner:
    from autoseg.networks.compiled import CompiledModule, compile_with_fallback

    if bf16 and not cpu_has_bf16():
        raise Skip("this CPU has no native bf16")
    with autocast(torch.device("cpu"), bf16):
        wrapped = compile_with_fallback(net, example)
    if not isinstance(wrapped, CompiledModule):
        raise Skip("torch.compile failed (see the log); predict would run eager")
    return _eager(wrapped, bf16, False)


def _onnx_file(net: torch.nn.Module, example: torch.Tensor, folder: Path) -> Path:
    """The network written once by autoseg's exporter (shared by the ORT and OpenVINO rows)."""
    path = folder / "tile.onnx"
    if not path.exists():
        try:
            import onnx  # noqa: F401 - the exporter's check needs it; say so here

            from autoseg.inference.onnx_export import write_onnx
        except ImportError as exc:
            raise Skip(f"no onnx package ({exc}): pip install 'autoseg[onnx]'") from exc
        with heartbeat("exporting ONNX"):
            write_onnx(net, example, path)
    return path


def _ort(path: Path, threads: int) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise Skip(f"no onnxruntime ({exc})") from exc
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])

    return run


def _openvino(path: Path, example: torch.Tensor, threads: int, bf16: bool) -> Runner:
    try:
        import openvino as ov
    except ImportError as exc:
        raise Skip(f"no openvino ({exc}): pip install openvino") from exc
    core = ov.Core()
    if bf16 and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise Skip("OpenVINO's CPU plugin reports no BF16 capability here")
    model = core.read_model(str(path))
    model.reshape({"image": list(example.shape)})  # static: the tile
    config = {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32",
    }
    request = core.compile_model(model, "CPU", config).create_infer_request()

    def run(x: torch.Tensor) -> torch.Tensor:
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def make_runner(
    variant: str, net: torch.nn.Module, example: torch.Tensor, threads: int, folder: Path
) -> Runner:
    """The callable of ``variant`` (setup done: export, compile); raises ``Skip``."""
    engine, precision = variant.split("-")
    bf16 = precision == "bf16"
    if engine in ("eager", "cl"):
        return _eager(net, bf16, engine == "cl")
    if engine == "compile":
        return _compiled(net, example, bf16)
    path = _onnx_file(net, example, folder)
    return _ort(path, threads) if engine == "ort" else _openvino(path, example, threads, bf16)


def time_variant(
    variant: str, runner: Runner, x: torch.Tensor, repeats: int
) -> tuple[list[float], list[float], torch.Tensor]:
    """One warm-up, then ``repeats`` timed forwards: (wall s, process CPU s, last output).

    The CPU seconds count every thread of the process: over the wall seconds they show how
    many threads a runtime really kept busy."""
    walls, cpus = [], []
    for i in range(repeats + 1):
        what = "warm-up" if i == 0 else f"repeat {i}/{repeats}"
        with heartbeat(f"{variant}: {what}"):
            wall, cpu = time.perf_counter(), time.process_time()
            out = runner(x)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        log.info("%s: %s %.2f s (CPU %.2f s)", variant, what, wall, cpu)
        if i:
            walls.append(wall)
            cpus.append(cpu)
    return walls, cpus, out


def measure(args: argparse.Namespace) -> dict:
    """Every requested variant on one network and tile: the result written with ``--json``."""
    torch.set_num_threads(args.threads)
    log.info("planning %s (ct_scale.py, full size, seed %d)", args.network, args.seed)
    config, classes, tile = network_config(
        args.network, args.seed, args.nnunet_plans, args.plan_size, args.train
    )
    tile = args.tile or tile
    stride = config.total_stride()
    if any(t % s for t, s in zip(tile, stride, strict=True)):
        raise SystemExit(f"tile {tile}: every edge must be a multiple of the stride {stride}")
    gflop = forward_flops(config, 1, classes, tile) / 1e9
    log.info("input: %s case centre -> tile %s on %s mm", args.case_size, tile, config.spacing)
    x = ct_tile(config, tile, args.case_size, args.seed)  # (1, 1, *tile)
    torch.manual_seed(args.seed)
    net = build_network(config, 1, classes, deep_supervision=False).eval()  # as predict builds
    rows: list[dict] = []
    reference, scale = x, {}  # fp32 eager's logits: the first variant, always run
    with tempfile.TemporaryDirectory(prefix="tile_runtime_") as folder:
        for variant in args.variants:
            row: dict = {"variant": variant}
            rows.append(row)
            log.info("%s: setting up", variant)
            start = time.perf_counter()
            try:
                with heartbeat(f"{variant}: setting up"):
                    runner = make_runner(variant, net, x, args.threads, Path(folder))
            except Skip as exc:
                row["skipped"] = str(exc)
                log.info("%s: skipped: %s", variant, exc)
                continue
            row["setup_s"] = round(time.perf_counter() - start, 2)
            times, cpus, out = time_variant(variant, runner, x, args.repeats)
            row["times_s"] = [round(t, 4) for t in times]
            row["median_s"], row["min_s"] = statistics.median(times), min(times)
            row["median_cpu_s"] = statistics.median(cpus)
            if variant == "eager-fp32":
                reference = out
                scale = {"abs_max": float(out.abs().max()), "std": float(out.std())}
            row["speedup"] = rows[0]["median_s"] / row["median_s"]
            row["max_abs_diff"], row["argmax_diff_share"] = fidelity(reference, out)
            del runner
    return {
        "network": args.network,
        "tile": "x".join(map(str, tile)),
        "gflop_per_tile": round(gflop, 1),
        "fp32_logits": scale,
        "threads": args.threads,
        "repeats": args.repeats,
        "seed": args.seed,
        "input": f"synthetic CT ({args.case_size}) centre, CT-normalised",
        "cpu_bf16": cpu_has_bf16(),
        "torch": torch.__version__,
        "versions": _versions(),
        "rows": rows,
    }


def _versions() -> dict[str, str]:
    found = {}
    for name in ("onnx", "onnxruntime", "openvino"):
        with contextlib.suppress(ImportError):
            found[name] = __import__(name).__version__
    return found


def table(result: dict) -> str:
    """The markdown table of ``measure``'s result."""
    lines = [
        f"{result['network']}, tile {result['tile']} ({result['gflop_per_tile']} GFLOP), "
        f"{result['threads']} thread(s), {result['repeats']} repeats after 1 warm-up; "
        f"fp32 eager logits: max |x| {result['fp32_logits'].get('abs_max', 0):.2f}, "
        f"std {result['fp32_logits'].get('std', 0):.2f}",
        "",
        "| variant | setup s | median s | min s | CPU s | speed-up vs fp32 eager "
        "| max abs logit diff | argmax differs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['variant']} | skipped: {r['skipped']} | | | | | | |")
            continue
        lines.append(
            f"| {r['variant']} | {r['setup_s']:.1f} | {r['median_s']:.3f} | {r['min_s']:.3f} "
            f"| {r['median_cpu_s']:.3f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.2e} "
            f"| {100 * r['argmax_diff_share']:.3f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=("autoseg", "nnunet"), default="autoseg")
    parser.add_argument("--tile", type=parse_tile, help="ZxYxX; default the planned tile")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, of: {','.join(VARIANTS)}",
    )
    parser.add_argument("--case-size", choices=sorted(synthetic_ct.SIZES), default="small")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--plan-size", choices=sorted(synthetic_ct.SIZES), default="full", help="set planned"
    )
    parser.add_argument("--train", type=int, default=12, help="training cases planned")
    parser.add_argument(
        "--nnunet-plans", type=Path, help="nnU-Net's nnUNetPlans.json (ct_vs_nnunet.sh keeps it)"
    )
    args = parser.parse_args()
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.variants = ["eager-fp32"] + [v for v in chosen if v != "eager-fp32"]  # the reference
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or args.repeats < 1 or args.threads < 1:
        parser.error(f"unknown variants {unknown}" if unknown else "repeats, threads >= 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    result = measure(args)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
