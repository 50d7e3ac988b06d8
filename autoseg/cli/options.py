"""Option types and console helpers shared by the command modules (``autoseg.cli.commands``,
``autoseg.cli.predict``, ``autoseg.cli.evaluation``); torch-free, like every module the CLI
imports at start-up."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

__all__ = [
    "MAX_GPU_MEMORY_GB",
    "MAX_SEED",
    "CompileOpt",
    "DeviceOpt",
    "HomeOpt",
    "PlannerOpt",
    "PlansOpt",
    "console",
    "cpu_workers",
    "err",
    "heading",
    "number_in",
]

MAX_SEED = 2**32 - 1  # --seed: 0 .. MAX_SEED, the range every random generator takes
MAX_GPU_MEMORY_GB = 4096  # --gpu-memory: a planning budget far beyond any GPU, still finite

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Working folder (default: $AUTOSEG_HOME, else ./autoseg_home)."),
]
PlannerOpt = Annotated[str, typer.Option("--planner", help="Planner whose plans to use.")]
PlansOpt = Annotated[
    str,
    typer.Option(
        "--plans",
        "--planner",
        help="Plans to use: a planner's automatic plans, or a named plan (autoseg plan --name).",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cuda or cpu.")]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the network, eager if that fails (default: on CUDA only).",
        show_default=False,
    ),
]


def number_in(
    low: float, high: float = math.inf, *, low_open: bool = False
) -> Callable[[float | None], float | None]:
    """A typer callback refusing a float option outside ``[low, high]`` (``(low, high]`` with
    ``low_open``), NaN and infinities included; click's message names the option.

    Integer options take typer's ``min=``/``max=`` instead (also named in the message).
    """
    above = f"> {low:g}" if low_open else f">= {low:g}"
    wanted = f"a finite number {above}" + (f" and <= {high:g}" if high < math.inf else "")

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        inside = low < value if low_open else low <= value
        if not (math.isfinite(value) and inside and value <= high):
            raise typer.BadParameter(f"{value:g} is not {wanted}")
        return value

    return check


#: the width of tables and rules written to a file or a pipe (a terminal uses its own width)
LOG_WIDTH = 1000


def console(stderr: bool = False):
    """A rich console without highlighting, soft-wrapped (paths stay whole).

    Off a terminal (a log file, a pipe) it is ``LOG_WIDTH`` columns wide instead of rich's 80,
    so a table keeps its own width and no row is cut or wrapped.
    """
    from rich.console import Console  # lazily: rich is only needed once a command runs

    out = Console(stderr=stderr, highlight=False, soft_wrap=True)
    if not out.is_terminal:
        out.width = LOG_WIDTH
    return out


def heading(out, title: str) -> None:
    """A section heading: a rule across a terminal, one ``== title ==`` line in a log."""
    if out.is_terminal:
        out.rule(f"[bold]{title}")
    else:
        out.print(f"== {title} ==")


def err(message: str) -> None:
    """Print ``error: message`` in red on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True
    )


def cpu_workers(workers: int | None) -> int:
    """``workers`` when positive, else the CPUs this process may use."""
    from autoseg.device import cpu_count  # torch-free; kept lazy like every library import here

    return workers if workers is not None and workers > 0 else cpu_count()
