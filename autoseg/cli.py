"""The ``autoseg`` command: thin typer commands that parse options and call the library.

Heavy modules (torch, nibabel, scipy) are imported inside the commands, so ``autoseg --help``
is instant. Every user-caused error is printed as one clear message with exit code 2 and no
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

app = typer.Typer(
    name="autoseg",
    help="Self-configuring medical image segmentation: plan, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Working folder (default: $AUTOSEG_HOME, else ./autoseg_home)."),
]
PlannerOpt = Annotated[str, typer.Option("--planner", help="Planner whose plans to use.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cuda or cpu.")]


def _err(message: str) -> None:
    from rich.console import Console

    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}", markup=True,
                                                soft_wrap=True)


def user_errors(func: F) -> F:
    """Turn user-caused errors into a message and exit code 2 (traceback only with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from autoseg.errors import AutosegError

        try:
            return func(*args, **kwargs)
        except AutosegError as exc:
            if _state["debug"]:
                raise
            _err(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except OSError as exc:  # disk full, read-only folder, permission denied
            if _state["debug"]:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            _err(f"{where}{exc.strerror or exc}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")] = False,
) -> None:
    _state["debug"] = debug
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, show_time=False, console=_console(stderr=True))],
        force=True,
    )
    logging.getLogger("autoseg").setLevel(logging.DEBUG if debug else logging.INFO)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _workers(workers: int | None) -> int:
    return workers if workers is not None and workers > 0 else (os.cpu_count() or 1)


def detect_gpu_memory_gb() -> float | None:
    """Total memory of the first CUDA GPU in GB, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)


@app.command()
@user_errors
def plan(
    dataset: Annotated[str, typer.Argument(help="Dataset folder, or the name of a known one.")],
    home: HomeOpt = None,
    planner: PlannerOpt = "default",
    gpu_memory: Annotated[
        float | None, typer.Option("--gpu-memory", help="GPU memory budget in GB.")
    ] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes.")] = None,
    preprocess: Annotated[
        bool, typer.Option("--preprocess/--no-preprocess", help="Preprocess after planning.")
    ] = True,
) -> None:
    """Check the dataset, fingerprint it, plan the configurations and preprocess the cases."""
    from autoseg.plan import plan_dataset

    summary = plan_dataset(
        dataset,
        home=home,
        planner=planner,
        gpu_memory_gb=gpu_memory if gpu_memory is not None else detect_gpu_memory_gb() or 8.0,
        workers=_workers(workers),
        preprocess=preprocess,
    )
    summary.print(_console())


@app.command()
@user_errors
def train(
    dataset: Annotated[str, typer.Argument(help="Dataset folder or name.")],
    configuration: Annotated[str, typer.Argument(help="2d, 3d_fullres or 3d_lowres.")],
    fold: Annotated[str, typer.Argument(help="fold0..fold4, 0..4 or all.")],
    home: HomeOpt = None,
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 1000,
    iterations: Annotated[int, typer.Option(min=1, help="Iterations per epoch.")] = 250,
    val_iterations: Annotated[int, typer.Option(min=1, help="Validation batches/epoch.")] = 50,
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue the last run.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    planner: PlannerOpt = "default",
    workers: Annotated[
        int | None, typer.Option("--workers", help="Augmentation processes (default: by device).")
    ] = None,
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Predict validation cases at the end.")
    ] = True,
) -> None:
    """Train one fold of a planned configuration."""
    from autoseg.paths import resolve_dataset, resolve_home
    from autoseg.plans import Plans
    from autoseg.splits import parse_fold
    from autoseg.train import TrainSettings, train_fold

    dirs = resolve_dataset(dataset, resolve_home(home))
    plans = Plans.from_json(dirs.require_plans(planner))
    settings = TrainSettings(
        epochs=epochs, iterations=iterations, val_iterations=val_iterations, device=device,
        seed=seed, workers=workers, resume=resume, validate=validate,
    )
    folder = train_fold(dirs, plans, configuration, parse_fold(fold), settings)
    _console().print(f"trained: {folder}")


def main() -> None:
    """Entry point of the ``autoseg`` script."""
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
