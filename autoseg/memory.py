"""How much memory this process may still allocate, and a check before a large allocation.

Memory bombs (a 1 MB file that holds a billion voxels, a header whose spacing makes
resampling produce trillions) are refused from the sizes alone, before anything is allocated:
``require_memory`` compares the bytes an operation needs with what the machine, the cgroup
and the process's address-space limit (``ulimit -v``) still allow.
"""

from __future__ import annotations

import os
import resource
from pathlib import Path

from autoseg.errors import AutosegError

GIB = 1024**3


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_available() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def _address_space_available() -> int | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return max(0, soft - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        return soft
    return soft


def available_memory() -> int | None:
    """Bytes this process can still allocate (the smallest of machine, cgroup and ``ulimit
    -v`` limits), or None when none of them can be read."""
    found = [v for v in (_meminfo_available(), _cgroup_available(), _address_space_available())]
    known = [v for v in found if v is not None]
    return min(known) if known else None


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``12.0 MiB``."""
    for unit, size in (("TiB", 1024**4), ("GiB", GIB), ("MiB", 1024**2)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def require_memory(nbytes: float, what: str, where: str | os.PathLike) -> None:
    """Refuse an allocation of ``nbytes`` that cannot fit.

    Args:
        nbytes: bytes the operation will allocate.
        what: the operation, for the message (``"reading 1000x1000x1000 voxels"``).
        where: the file it is for.

    Raises:
        AutosegError: more than the memory available is needed; the message states both.
    """
    free = available_memory()
    if free is not None and nbytes > free:
        raise AutosegError(
            f"{where}: {what} needs {format_bytes(nbytes)} of memory, "
            f"only {format_bytes(free)} available; refused"
        )
