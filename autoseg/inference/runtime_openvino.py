"""``predict --runtime openvino``: the networks run by OpenVINO's CPU plugin instead of eager torch.

On this project's 2-core AVX512-BF16 CPU one full-size CT tile (60x176x176, 1 thread) took 16.0 s
in eager fp32 torch, 9.1 s in OpenVINO f32 and 4.5 s in OpenVINO bf16 (median of 3) (``benchmarks/
tile_runtime.py``, issue 22). OpenVINO is an optional extra (``pip install 'autoseg[openvino]'``),
imported only when this runtime is asked for.

Conversion: ``openvino.convert_model(network, example_input=...)`` straight from the eval-mode
torch network (deep supervision off, as ``Predictor`` builds it), once per fold. Going through
autoseg's ONNX export (``autoseg.inference.onnx_export.write_onnx``) gives the same graph: the
logits of both are identical at f32 and bf16, and so are their timings; it converts faster (about
1 s against 2-3 s per fold for the CT network) but needs the ``onnx`` package beside openvino,
so the direct conversion is used and the extra stays one package.

Compilation: for the CPU, with an explicit ``INFERENCE_PRECISION_HINT``: ``f32`` unless bf16 is
asked for (OpenVINO's own default is bf16 on a CPU with native bf16, which would change the labels
silently), ``bf16`` with ``cpu_bf16`` on a CPU whose plugin reports BF16 (elsewhere f32, as
``autoseg.device.autocast`` falls back). Threads: torch's thread count at the call, which the
predictor sets to ``autoseg.device.cpu_share_threads()`` for each case; one stream, no CPU
pinning (the CPUs may be shared). Each input shape (the tile, widened per case, and the batch of
tiles and mirrorings) is compiled as a static shape, kept in a small cache: a dynamic-shape model
compiled once ran as fast at a 12x64x64 tile but 1-6% slower at the full CT tile, and compiling one
shape costs 0.1-0.3 s there.
"""

from __future__ import annotations

import importlib
import logging
import time
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from autoseg.device import resolve_device
from autoseg.errors import AutosegError

__all__ = ["RUNTIMES", "OpenVinoNetwork", "openvino_network", "runtime_device"]

log = logging.getLogger(__name__)

#: the values of ``--runtime``: eager (or compiled) torch, or OpenVINO on the CPU
RUNTIMES = ("torch", "openvino")
#: compiled shapes kept per network: a case's full and last (partial) batch, and one more
CACHE_SIZE = 3


def _openvino() -> Any:
    """The openvino module, imported on first use (it is an optional extra)."""
    try:
        return importlib.import_module("openvino")
    except ImportError as exc:
        raise AutosegError(
            f"--runtime openvino needs the openvino extra: pip install 'autoseg[openvino]' ({exc})"
        ) from exc


def runtime_device(
    runtime: str, device: str | torch.device = "auto", compile: bool | None = None
) -> torch.device:
    """The device a prediction with ``runtime`` runs on; a runtime that cannot run is refused
    here, before any model is loaded.

    Args:
        runtime: one of ``RUNTIMES``.
        device: ``--device`` (``autoseg.device.resolve_device``); ``auto`` is the CPU for
            ``openvino``.
        compile: ``--compile`` as given (None: not given).

    Raises:
        AutosegError: an unknown runtime or device; ``openvino`` on a device other than the
            CPU, with ``--compile`` (torch.compile), or without the openvino package.
    """
    if runtime not in RUNTIMES:
        raise AutosegError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return resolve_device(device)
    if str(device) not in ("auto", "cpu"):  # refused whether or not this machine has a GPU
        raise AutosegError(
            f"--runtime openvino runs on the CPU, not on --device {device}: "
            "use --device cpu, or --runtime torch on the GPU"
        )
    if compile:
        raise AutosegError("--compile is torch.compile: drop it with --runtime openvino")
    _openvino()
    return resolve_device("cpu")


class OpenVinoNetwork:
    """A torch network converted to OpenVINO: ``(B, C, *S)`` tensor -> ``(B, K, *S)`` float32.

    What ``autoseg.inference.sliding_window.sliding_window_logits`` takes as its network; the
    input and output are CPU torch tensors, so the sliding window is unchanged.

    Args:
        model: the converted ``openvino.Model`` (dynamic shapes).
        bf16: compile with the bf16 precision hint (f32 otherwise).
        name: what the log calls it (a fold).

    Attributes:
        precision: the ``INFERENCE_PRECISION_HINT`` every shape is compiled with (``f32``, or
            ``bf16`` when asked for on a CPU with native bf16).
        compiled: ``(input shape, threads) -> compiled model``, most recently used last.
        source: the torch network ``model`` was converted from, kept alive with it.
    """

    def __init__(self, model: Any, bf16: bool = False, name: str = "network") -> None:
        ov = _openvino()
        self.core = ov.Core()
        self.model, self.name = model, name
        self.precision = "f32"
        if bf16:
            if "BF16" in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
                self.precision = "bf16"
            else:
                log.info("OpenVINO: this CPU has no native bf16; %s runs in f32", name)
        self.compiled: OrderedDict[tuple[tuple[int, ...], int], Any] = OrderedDict()
        self.source: torch.nn.Module | None = None  # kept alive with the model (see below)

    def compile(self, shape: tuple[int, ...], threads: int) -> Any:
        """The model compiled for the static input ``shape`` with ``threads`` (cached)."""
        key = (shape, threads)
        if key in self.compiled:
            self.compiled.move_to_end(key)
            return self.compiled[key]
        start = time.perf_counter()
        model = self.model.clone()
        model.reshape({0: list(shape)})
        config = {
            "INFERENCE_PRECISION_HINT": self.precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        compiled = self.core.compile_model(model, "CPU", config)
        self.compiled[key] = compiled
        while len(self.compiled) > CACHE_SIZE:
            self.compiled.popitem(last=False)
        log.debug(
            "OpenVINO: %s compiled for %s (%s, %d thread(s)) in %.2f s",
            self.name, "x".join(map(str, shape)), self.precision, threads,
            time.perf_counter() - start,
        )  # fmt: skip
        return compiled

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        compiled = self.compile(tuple(image.shape), torch.get_num_threads())
        out = compiled({0: image})[0]  # a copy (share_outputs=False)
        return torch.from_numpy(np.asarray(out, dtype=np.float32))  # (B, K, *S)


def openvino_network(
    network: torch.nn.Module, example: torch.Tensor, bf16: bool = False, name: str = "network"
) -> OpenVinoNetwork:
    """Convert an eval-mode torch network to OpenVINO (once; compiled per shape when called).

    Args:
        network: the network in eval mode, deep supervision off, on the CPU.
        example: an input ``(1, C, *S)`` to trace with (any values). The model takes any
            shape afterwards, so the smallest that fits the network is best: tracing runs it
            (the CT network: 2-3 s at 8x32x32, twice its total stride, 86 s at its 60x176x176
            patch, 1 thread).
        bf16: compile with the bf16 precision hint where the CPU has native bf16.
        name: what the log calls it (a fold).

    Returns:
        The ``OpenVinoNetwork``; the conversion time is logged.
    """
    ov = _openvino()
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code
        model = ov.convert_model(network, example_input=example)
    log.info("OpenVINO: %s converted in %.1f s", name, time.perf_counter() - start)
    converted = OpenVinoNetwork(model, bf16, name)
    converted.source = network  # the converted constants may share the torch weights' memory
    return converted
