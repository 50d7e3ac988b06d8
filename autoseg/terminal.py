"""Progress of every long loop: bars where someone watches, plain lines where a log is read later.

Every long loop (fingerprint, preprocessing, the iterations of an epoch, the tiles of a case and
the cases of a prediction) reports through one :class:`Heartbeat`:

- on a terminal, and not under ``-q``, it draws rich bars on stderr (tasks done, rate, time left);
- whatever the terminal, it logs one plain INFO line (logger ``autoseg.progress``) whenever at
  least ``interval`` seconds have passed since its last line (30 s by default,
  ``--progress-interval`` / ``$AUTOSEG_PROGRESS_INTERVAL``; a background thread also writes one
  when a single step outlasts the interval). The line carries each task's done/total, its rate
  and the time left, e.g. ``predict: cases 1/2; case_007 tiles 120/420 (29%), 1.9 s/tile, 9m30s
  left``. These lines go to a log file (``training.log``) always and to stderr when it is not a
  terminal; the CLI's console handler drops them where a bar already shows the same
  (:class:`HideProgressLines`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import Progress, TaskID

__all__ = [
    "DEFAULT_INTERVAL",
    "Heartbeat",
    "HideProgressLines",
    "bars_shown",
    "format_duration",
    "progress_bar",
    "set_progress",
    "set_progress_interval",
]

#: seconds between two progress lines in a log, by default
DEFAULT_INTERVAL = 30.0
#: the attribute that marks a log record as a progress line (see ``HideProgressLines``)
PROGRESS_LINE = "autoseg_progress_line"

_state: dict[str, Any] = {"progress": True, "interval": DEFAULT_INTERVAL}
_log = logging.getLogger("autoseg.progress")


def set_progress(enabled: bool) -> None:
    """Allow (True) or forbid (False) progress bars for the rest of the process."""
    _state["progress"] = bool(enabled)


def set_progress_interval(seconds: float) -> None:
    """Seconds between two progress lines (0: a line at every step) for the rest of the process."""
    if not seconds >= 0:  # also refuses NaN
        raise ValueError(f"progress interval {seconds}: must be >= 0 seconds")
    _state["interval"] = float(seconds)


def bars_shown(enabled: bool = True) -> bool:
    """Whether progress bars are drawn: stderr is a terminal, not ``-q``, and ``enabled``."""
    return enabled and _state["progress"] and Console(stderr=True).is_terminal


def progress_bar(*columns: Any, enabled: bool = True, **kwargs: Any) -> Progress:
    """A rich ``Progress`` on stderr, disabled off a terminal, under ``-q`` or if not ``enabled``.

    Args:
        *columns: rich progress columns (default: rich's).
        enabled: the caller's own condition (for instance: rank 0 of a distributed run).
        **kwargs: passed to ``Progress`` (``transient``, ...).
    """
    console = Console(stderr=True)
    show = enabled and _state["progress"] and console.is_terminal
    return Progress(*columns, console=console, disable=not show, **kwargs)


class HideProgressLines(logging.Filter):
    """A handler filter that drops progress lines (for a console that shows the bars instead)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, PROGRESS_LINE, False)


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: a short human duration (``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Task:
    description: str
    total: float | None
    unit: str
    completed: float = 0.0
    started: float = 0.0  # clock at add/reset
    visible: bool = True

    def line(self, now: float) -> str:
        """``case_007 tiles 120/420 (29%), 1.9 s/tile, 9m30s left``."""
        if self.total is None and not self.completed:
            return f"{self.description} starting"
        done = f"{self.completed:g}" + (f"/{self.total:g}" if self.total is not None else "")
        text = f"{self.description} {done}"
        if self.total:
            text += f" ({100 * self.completed / self.total:.0f}%)"
        elapsed = now - self.started
        if self.completed > 0 and elapsed > 0:
            rate = self.completed / elapsed  # units per second since the task (re)started
            unit = self.unit or "step"
            text += f", {rate:.2f} {unit}/s" if rate >= 1 else f", {1 / rate:.2f} s/{unit}"
            if self.total is not None:
                text += f", {format_duration((self.total - self.completed) / rate)} left"
        return text


class Heartbeat:
    """Progress of a long loop: rich bars on a terminal, and a log line every ``interval`` s.

    Used like rich's ``Progress`` (``add_task``, ``advance``, ``update``, ``reset``), as a
    context manager; safe to call from several threads.

    Args:
        *columns: rich progress columns of the bars (default: rich's).
        title: the first word of each line (``predict``, ``train``, ``preprocess``).
        enabled: the caller's own condition (rank 0; ``progress=False``): neither bars nor lines.
        transient: remove the bars when done.
        interval: seconds between two lines; None = the process setting (30 s by default).
        clock: monotonic seconds (injected in tests; a given clock starts no background thread).
        logger: where lines go (default ``autoseg.progress``).
    """

    def __init__(
        self,
        *columns: Any,
        title: str,
        enabled: bool = True,
        transient: bool = False,
        interval: float | None = None,
        clock: Callable[[], float] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.title, self.enabled = title, enabled
        self.interval = _state["interval"] if interval is None else float(interval)
        self._ticking = clock is None and enabled and self.interval > 0
        self._clock = clock or time.monotonic
        self._logger = logger or _log
        self.bar = progress_bar(*columns, enabled=enabled, transient=transient)
        self._tasks: dict[TaskID, _Task] = {}
        self._lock = threading.RLock()
        self._last = self._clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        self.bar.__enter__()
        self._last = self._clock()
        if self._ticking:  # a line even while one step outlasts the interval
            self._thread = threading.Thread(target=self._tick, name="autoseg-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.bar.__exit__(*exc)

    def _tick(self) -> None:
        while not self._stop.wait(self.interval / 4):
            self.poll()

    # ------------------------------------------------------------------ rich's Progress API
    def add_task(
        self,
        description: str,
        total: float | None = None,
        *,
        unit: str = "",
        visible: bool = True,
        **fields: Any,
    ) -> TaskID:
        """A new task (``unit`` names one step in the lines: ``case``, ``tile``, ``it``)."""
        with self._lock:
            task = self.bar.add_task(description, total=total, visible=visible, **fields)
            state = _Task(description, total, unit, started=self._clock(), visible=visible)
            self._tasks[task] = state
            return task

    def advance(self, task: TaskID, amount: float = 1) -> None:
        """``amount`` more steps of ``task`` done."""
        with self._lock:
            self.bar.advance(task, amount)
            self._tasks[task].completed += amount
            self.poll()

    def update(
        self,
        task: TaskID,
        *,
        total: float | None = None,
        completed: float | None = None,
        description: str | None = None,
        visible: bool | None = None,
        **fields: Any,
    ) -> None:
        """Change a task's figures (as rich's ``Progress.update``)."""
        with self._lock:
            self.bar.update(
                task,
                total=total,
                completed=completed,
                description=description,
                visible=visible,
                **fields,
            )
            state = self._tasks[task]
            if total is not None:
                state.total = total
            if completed is not None:
                state.completed = completed
            if description is not None:
                state.description = description
            if visible is not None:
                state.visible = visible
            self.poll()

    def reset(
        self, task: TaskID, *, total: float | None = None, description: str | None = None, **fields
    ) -> None:
        """Start ``task`` again at 0 (its rate and time left are measured afresh); ``total``
        None: not known yet (the bar keeps its last total until an ``update`` gives one)."""
        with self._lock:
            kwargs = {"description": description} if description is not None else {}
            self.bar.reset(task, total=total, visible=True, **kwargs, **fields)
            state = self._tasks[task]
            state.completed, state.started, state.visible = 0.0, self._clock(), True
            state.total = total
            if description is not None:
                state.description = description

    # ------------------------------------------------------------------ the lines
    def line(self) -> str:
        """The progress line as of now: the title and every visible task."""
        now = self._clock()
        with self._lock:
            tasks = [t.line(now) for t in self._tasks.values() if t.visible]
        return f"{self.title}: " + "; ".join(tasks)

    def poll(self) -> None:
        """Log the progress line if ``interval`` seconds have passed since the last one."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            if now - self._last < self.interval or not self._tasks:
                return
            self._last = now
            text = self.line()
        self._logger.info("%s", text, extra={PROGRESS_LINE: True})
