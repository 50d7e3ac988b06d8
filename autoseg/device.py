"""Where computation runs: the torch device, the CPUs this process may use, autocast.

The one place that answers these questions for every command (train, predict, benchmark and the
worker counts of plan and evaluate). torch is imported inside the functions that need it, so that
``cpu_count`` costs nothing at start-up (the CLI calls it before any torch work).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.errors import AutosegError

if TYPE_CHECKING:
    import torch

__all__ = ["autocast", "cpu_count", "cpu_has_bf16", "resolve_device"]

_CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_limit(root: Path = _CGROUP_ROOT) -> float | None:
    """CPUs allowed by a cgroup CPU quota (Docker ``--cpus``, SLURM, Kubernetes), or None.

    Reads cgroup v2 ``cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``), else cgroup v1
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` (quota -1: no limit).
    """
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max" and float(period) > 0:
            return float(quota) / float(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cpu_count() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota; at least 1.

    ``os.cpu_count()`` counts the machine's CPUs, which oversubscribes a SLURM job or a Docker
    container that may use only some of them.
    """
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        count = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        count = min(count, math.ceil(limit))
    return max(1, count)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for ``--device``.

    Args:
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or a ``torch.device``.

    Raises:
        AutosegError: an unknown device name, or CUDA asked for where there is none.
    """
    import torch  # heavy: not at module import (see the module docstring)

    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise AutosegError(f"--device {name}: expected auto, cuda, cuda:N or cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise AutosegError(f"--device {name}: not a device ({exc})") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise AutosegError(f"--device {name}: no CUDA GPU is available here (use --device cpu)")
    return resolved


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AVX512-BF16 or AMX, as oneDNN says)."""
    import torch  # heavy: not at module import (see the module docstring)

    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def autocast(device: torch.device, cpu_bf16: bool = False) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA, and on a CPU with native bf16 when ``cpu_bf16``; else a no-op.

    Training asks for CPU bf16 (about twice as fast there, loss curve unchanged within noise:
    docs/benchmarks.md); prediction does not, so its labels stay those of fp32.
    """
    import torch  # heavy: not at module import (see the module docstring)

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if device.type == "cpu" and cpu_bf16 and cpu_has_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def inference_settings(device: torch.device) -> Iterator[None]:
    """Process-wide torch settings for a prediction, restored afterwards.

    On the CPU torch uses ``cpu_count()`` threads (the cgroup quota, not every core of the
    host); on CUDA cuDNN benchmarks its kernels (one patch size: the fastest ones pay off).
    Nothing outlives the ``with``: building or holding a predictor changes no global state.
    """
    import torch  # heavy: not at module import (see the module docstring)

    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            torch.set_num_threads(cpu_count())
        else:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
