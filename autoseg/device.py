"""Where computation runs: the torch device, the CPUs this process may use, autocast.

The one place that answers these questions for every command (train, predict, benchmark and the
worker counts of plan and evaluate). torch is imported inside the functions that need it, so that
``cpu_count`` costs nothing at start-up (the CLI calls it before any torch work).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.errors import AutosegError

if TYPE_CHECKING:
    import torch

__all__ = [
    "autocast",
    "configure_cpu_threads",
    "cpu_count",
    "cpu_has_bf16",
    "cpu_share_threads",
    "resolve_device",
    "use_cpu_share",
]

logger = logging.getLogger(__name__)
_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PROC_STAT = Path("/proc/stat")
_PROC_SELF_TASKS = Path("/proc/self/task")


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


def configure_cpu_threads() -> None:
    """Let idle OpenMP threads sleep instead of spinning; call before torch is imported.

    libgomp (torch's OpenMP) reads ``OMP_WAIT_POLICY`` once, when it loads: by default a thread
    that waits at a barrier spins for some 300k iterations first, which on a machine shared with
    other work burns the time slice its partner needs (docs/benchmarks.md, "Progress and CPU
    sharing"). The CLI calls this first thing; a value the user set is kept.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _own_running(tasks: Path) -> int:
    """Threads of this process that are running or runnable now (this one included)."""
    running = 0
    for stat in tasks.glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # a thread that has just ended
            continue
        running += text[text.rfind(")") + 2 : text.rfind(")") + 3] == "R"
    return max(1, running)


def _others_running(
    stat: Path | None = None, tasks: Path | None = None, samples: int = 5, pause: float = 0.005
) -> float:
    """Runnable tasks of other processes on this process's CPUs, now (median of ``samples``).

    ``procs_running`` of /proc/stat counts the whole machine's runnable tasks; this process's
    own running threads (/proc/self/task: the reader, a thread reading the next case) are not
    others. The count is scaled to the share of the machine's CPUs this process may use.
    """
    counts = []
    for i in range(samples):
        try:
            text = (stat or _PROC_STAT).read_text()
        except OSError:
            return 0.0
        for line in text.splitlines():
            if line.startswith("procs_running "):
                own = _own_running(tasks or _PROC_SELF_TASKS)
                counts.append(max(0, int(line.split()[1]) - own))
        if i + 1 < samples:
            time.sleep(pause)
    if not counts:
        return 0.0
    return statistics.median(counts) * cpu_count() / (os.cpu_count() or cpu_count())


def cpu_share_threads(others: float | None = None) -> int:
    """Torch threads for this process's share of the CPUs: ``cpu_count()`` less the tasks of
    other processes that are running now, at least 1.

    Every extra thread on an oversubscribed CPU slows the others down: the threads of one
    kernel wait for partners the scheduler took off the CPU, so a team of 2 threads on 2 busy
    cores took 5 (passive wait) to 17 times the CPU time per training step of one thread
    (docs/benchmarks.md). Read again at every epoch and case, so that a machine that frees up
    is used again.

    Args:
        others: runnable tasks of other processes (None: counted now from /proc/stat).
    """
    if others is None:
        others = _others_running()
    count = cpu_count()
    return max(1, min(count, count - math.floor(others + 0.5)))


def use_cpu_share() -> int:
    """Set torch's CPU threads to ``cpu_share_threads()`` and return the number."""
    import torch  # heavy: not at module import (see the module docstring)

    threads = cpu_share_threads()
    if threads != torch.get_num_threads():
        logger.debug("CPU threads: %d of %d (other work holds the rest)", threads, cpu_count())
        torch.set_num_threads(threads)
    return threads


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

    Training and prediction ask for CPU bf16 by default (about twice as fast there; loss
    curve unchanged within noise, predicted Dice within 0.0005: docs/benchmarks.md).
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

    On the CPU torch uses ``cpu_share_threads()`` (the cgroup quota, not every core of the
    host, less the cores other work holds now); on CUDA cuDNN benchmarks its kernels (one
    patch size: the fastest ones pay off).
    Nothing outlives the ``with``: building or holding a predictor changes no global state.
    """
    import torch  # heavy: not at module import (see the module docstring)

    threads, benchmark = torch.get_num_threads(), torch.backends.cudnn.benchmark
    try:
        if device.type == "cpu":
            use_cpu_share()
        else:
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cudnn.benchmark = benchmark
