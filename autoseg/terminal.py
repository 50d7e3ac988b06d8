"""Progress bars that show only where someone watches: a terminal, and not under ``-q``.

Every long loop (fingerprint, preprocessing, epochs, prediction) builds its bar with
:func:`progress_bar`. The CLI's ``-q`` turns bars off with :func:`set_progress`; when stderr is
not a terminal (a log file, CI, a pipe) they are off anyway, so logs hold no bar redraws.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import Progress

_enabled = {"progress": True}


def set_progress(enabled: bool) -> None:
    """Allow (True) or forbid (False) progress bars for the rest of the process."""
    _enabled["progress"] = bool(enabled)


def progress_bar(*columns: Any, enabled: bool = True, **kwargs: Any) -> Progress:
    """A rich ``Progress`` on stderr, disabled off a terminal, under ``-q`` or if not ``enabled``.

    Args:
        *columns: rich progress columns (default: rich's).
        enabled: the caller's own condition (for instance: rank 0 of a distributed run).
        **kwargs: passed to ``Progress`` (``transient``, ...).
    """
    console = Console(stderr=True)
    show = enabled and _enabled["progress"] and console.is_terminal
    return Progress(*columns, console=console, disable=not show, **kwargs)
