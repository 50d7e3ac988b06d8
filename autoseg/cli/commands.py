"""The ``autoseg`` command: thin typer commands that parse options and call the library.

Heavy modules (torch, nibabel, scipy) are imported inside the commands, so ``autoseg --help``
is instant. Every user-caused error is printed as one clear message with exit code 2 and no
traceback (``--debug`` shows it).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from autoseg import __version__
from autoseg.cli.evaluation import register_evaluation_commands
from autoseg.cli.habits import HabitGroup
from autoseg.cli.init import register_init_command
from autoseg.cli.models import register_model_commands
from autoseg.cli.options import MAX_SEED, CompileOpt, DeviceOpt, HomeOpt, PlansOpt, heading
from autoseg.cli.options import console as _console
from autoseg.cli.options import cpu_workers as _workers
from autoseg.cli.options import err as _err
from autoseg.cli.plans import register_plan_commands
from autoseg.cli.predict import register_predict_commands

app = typer.Typer(
    name="autoseg",
    cls=HabitGroup,
    help="Self-configuring medical image segmentation: plan, train, predict, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": False}
F = TypeVar("F", bound=Callable[..., Any])

AugmentationOpt = Annotated[
    str,
    typer.Option(
        "--augmentation",
        help="Where training augmentation runs: cpu (batchgenerators), device (torch on the "
        "training device) or auto (device on CUDA, cpu on the CPU).",
    ),
]
CpuBf16Opt = Annotated[
    bool,
    typer.Option("--cpu-bf16/--no-cpu-bf16", help="bf16 autocast on a bf16-capable CPU."),
]


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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug messages (any position).")
    ] = False,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", help="Only warnings and the final summary; no bars."),
    ] = False,
    progress_interval: Annotated[
        float,
        typer.Option(
            "--progress-interval",
            min=0,
            envvar="AUTOSEG_PROGRESS_INTERVAL",
            help="Seconds between progress lines in a log (stderr that is not a terminal, "
            "training.log).",
        ),
    ] = 30.0,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    _state["debug"] = debug
    from autoseg.device import configure_cpu_threads
    from autoseg.terminal import set_progress, set_progress_interval  # only once a command runs

    configure_cpu_threads()  # before any command imports torch (OpenMP reads it once)

    level = logging.DEBUG if debug or verbose else logging.WARNING if quiet else logging.INFO
    set_progress(not quiet)
    set_progress_interval(progress_interval)
    handler = _log_handler()
    handler.setLevel(level)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    # the package logger stays at INFO at least: training.log records INFO whatever the console
    logging.getLogger("autoseg").setLevel(min(level, logging.INFO))


def _log_handler() -> logging.Handler:
    """The console's log handler: rich on a terminal (progress lines hidden where bars show
    them), else plain ``LEVEL message`` lines, never wrapped, for a log file or a pipe."""
    from autoseg.terminal import HideProgressLines, bars_shown

    console = _console(stderr=True)
    if not console.is_terminal:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        return handler
    from rich.logging import RichHandler

    handler = RichHandler(show_path=False, show_time=False, console=console)
    if bars_shown():
        handler.addFilter(HideProgressLines())
    return handler


register_init_command(app, user_errors)  # init (autoseg.cli.init): first in --help
# plan, plans (autoseg.cli.plans): first in --help, as in the order of work
register_plan_commands(app, user_errors)


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
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="When the model folder holds folds trained with other plans, move it aside "
            "(to <home>/<dataset>/replaced_models/) instead of refusing.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Random seed.")] = 0,
    planner: PlansOpt = "default",
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="Augmentation processes (default: by device)."),
    ] = None,
    augmentation: AugmentationOpt = "auto",
    validate: Annotated[
        bool, typer.Option("--validate/--no-validate", help="Predict validation cases at the end.")
    ] = True,
    checkpoint_every: Annotated[
        int, typer.Option(min=1, help="Save checkpoint_latest.pt every N epochs.")
    ] = 5,
    pretrained: Annotated[
        Path | None,
        typer.Option(
            "--pretrained", help="Start from this model folder's or checkpoint's weights."
        ),
    ] = None,
    cpu_bf16: CpuBf16Opt = True,
    loss: Annotated[
        str,
        typer.Option(
            "--loss",
            help="dice_ce (default), focal, dice_focal or border_ce (U-Net border weights, for "
            "touching objects); recorded in the model folder.",
        ),
    ] = "dice_ce",
    augment: Annotated[
        list[str] | None,
        typer.Option(
            "--augment",
            help="Extra augmentation on top of nnU-Net's: elastic (the U-Net paper's elastic "
            "deformation). Repeatable.",
        ),
    ] = None,
    tracking: Annotated[
        str,
        typer.Option(
            "--tracking",
            help="none, tensorboard (fold_<k>/tensorboard; needs tensorboard) or mlflow (a run "
            "per fold; needs the mlflow extra).",
        ),
    ] = "none",
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri",
            help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else file:<home>/mlruns).",
        ),
    ] = None,
    compile: CompileOpt = None,
    patience: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Stop early when the smoothed validation pseudo-Dice has not improved for N "
            "epochs (final checkpoint as usual). Default: off.",
        ),
    ] = None,
) -> None:
    """Train one fold of a planned configuration.

    SIGTERM or SIGUSR1 (a scheduler's pre-emption) saves checkpoint_latest.pt after the current
    iteration and exits with code 75; --resume continues from exactly there.
    """
    from autoseg.data.paths import resolve_dataset, resolve_home
    from autoseg.data.plans import Plans
    from autoseg.data.splits import parse_fold
    from autoseg.training.fold_setup import TrainSettings
    from autoseg.training.train import train_fold

    dirs = resolve_dataset(dataset, resolve_home(home))
    plans = Plans.from_json(dirs.require_plans(planner))
    settings = TrainSettings(
        epochs=epochs,
        iterations=iterations,
        val_iterations=val_iterations,
        device=device,
        seed=seed,
        workers=workers,
        augmentation=augmentation,
        resume=resume,
        validate=validate,
        checkpoint_every=checkpoint_every,
        pretrained=str(pretrained.resolve()) if pretrained is not None else None,
        cpu_bf16=cpu_bf16,
        loss=loss,
        augment=tuple(augment or ()),
        tracking=tracking,
        tracking_uri=tracking_uri,
        compile=compile,
        patience=patience,
        replace=replace,
    )
    folder = train_fold(dirs, plans, configuration, parse_fold(fold), settings)
    _console().print(f"trained: {folder}")


# predict (autoseg.cli.predict), evaluate, instances (autoseg.cli.evaluation): after train in --help
register_predict_commands(app, user_errors)  # predict
register_evaluation_commands(app, user_errors)  # evaluate, instances


@app.command()
@user_errors
def benchmark(
    dataset: Annotated[str, typer.Argument(help="Dataset folder or name (planned).")],
    configuration: Annotated[str, typer.Argument(help="2d, 3d_fullres or 3d_lowres.")],
    home: HomeOpt = None,
    planner: PlansOpt = "default",
    device: DeviceOpt = "auto",
    iterations: Annotated[int, typer.Option(min=1, help="Timed training iterations.")] = 50,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed iterations before timing.")] = 5,
    workers: Annotated[int | None, typer.Option(min=0, help="Data workers (as train).")] = None,
    predict_cases: Annotated[int, typer.Option(min=0, help="Cases to predict (0: none).")] = 5,
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Mirroring TTA.")] = True,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write JSON here.")] = None,
    augmentation: AugmentationOpt = "auto",
    cpu_bf16: CpuBf16Opt = True,
) -> None:
    """Epoch time with and without data loading, it/s, peak memory and prediction speed."""
    from autoseg.cli.benchmark import run_benchmark
    from autoseg.data.paths import resolve_dataset, resolve_home
    from autoseg.data.plans import Plans

    dirs = resolve_dataset(dataset, resolve_home(home))
    plans = Plans.from_json(dirs.require_plans(planner))
    result = run_benchmark(
        dirs,
        plans,
        configuration,
        device=device,
        iterations=iterations,
        warmup=warmup,
        workers=workers,
        predict_cases=predict_cases,
        tta=tta,
        augmentation=augmentation,
        cpu_bf16=cpu_bf16,
    )
    console = _console()
    console.print(result.table())
    if output is not None:
        result.to_json(output)
        console.print(f"written: {output}")


@app.command("find-best")
@user_errors
def find_best(
    dataset: Annotated[str, typer.Argument(help="Dataset folder or name.")],
    home: HomeOpt = None,
    plans: Annotated[
        str | None,
        typer.Option("--plans", "--planner", help="Only models of these plans (default: all)."),
    ] = None,
) -> None:
    """The best trained configuration by cross-validation Dice, and how to predict with it."""
    from autoseg.data.paths import resolve_dataset, resolve_home
    from autoseg.evaluation.crossval import find_best_configuration

    dirs = resolve_dataset(dataset, resolve_home(home))
    find_best_configuration(dirs, plans).print(_console())


@app.command()
@user_errors
def demo(
    home: HomeOpt = None,
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Training epochs (default: the demo's).")
    ] = None,
    iterations: Annotated[
        int | None, typer.Option(min=1, help="Iterations per epoch (default: the demo's).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Random seed.")] = 0,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes.")] = None,
) -> None:
    """Plan, train, predict and evaluate on real hippocampus MRI shipped in the package."""
    from autoseg.cli.demo import DemoSettings, run_demo
    from autoseg.data.paths import resolve_home

    console = _console()
    settings = DemoSettings(seed=seed)
    if epochs is not None:
        settings = dataclasses.replace(settings, epochs=epochs)
    if iterations is not None:
        settings = dataclasses.replace(settings, iterations=iterations)
    result = run_demo(
        resolve_home(home),
        settings,
        device=device,
        workers=_workers(workers),
        console=console,
    )
    heading(console, "done")
    dice = ", ".join(f"{k} {v:.3f}" for k, v in result.mean_dice.items())
    console.print(f"mean Dice on the 6 held-out cases: {dice}")
    console.print(f"predictions: {result.predictions}")
    console.print(f"evaluation:  {result.evaluation_json}")
    console.print(f"picture:     {result.overlay_png}")
    console.print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))


register_model_commands(app, user_errors)  # export, import, ensemble (autoseg.cli.models)


def main() -> None:
    """Entry point of the ``autoseg`` script."""
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
