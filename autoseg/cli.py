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
from autoseg.cli_habits import HabitGroup
from autoseg.cli_models import register_model_commands
from autoseg.cli_options import CompileOpt, DeviceOpt, HomeOpt, PlannerOpt
from autoseg.cli_options import console as _console
from autoseg.cli_options import cpu_workers as _workers
from autoseg.cli_options import err as _err
from autoseg.cli_predict import register_predict_commands

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
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    _state["debug"] = debug
    from rich.logging import RichHandler

    from autoseg.terminal import set_progress  # rich.progress: only once a command runs

    level = logging.DEBUG if debug or verbose else logging.WARNING if quiet else logging.INFO
    handler = RichHandler(show_path=False, show_time=False, console=_console(stderr=True))
    handler.setLevel(level)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", handlers=[handler], force=True)
    # the package logger stays at INFO at least: training.log records INFO whatever the console
    logging.getLogger("autoseg").setLevel(min(level, logging.INFO))
    set_progress(not quiet)


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
    replan: Annotated[
        bool,
        typer.Option(
            "--replan", help="Replace what the home holds for another dataset of this name."
        ),
    ] = False,
    plans_from: Annotated[
        str | None,
        typer.Option("--plans-from", help="Reuse this planned dataset's network topology."),
    ] = None,
    border_weights: Annotated[
        bool,
        typer.Option(
            "--border-weights", help="Also compute the border weight maps of --loss border_ce."
        ),
    ] = False,
    storage: Annotated[
        str,
        typer.Option(
            "--storage", help="Preprocessed arrays: npy (fastest) or blosc2 (compressed, extra)."
        ),
    ] = "npy",
) -> None:
    """Check the dataset, fingerprint it, plan the configurations and preprocess the cases."""
    from autoseg.planning import plan_dataset

    summary = plan_dataset(
        dataset,
        home=home,
        planner=planner,
        gpu_memory_gb=gpu_memory if gpu_memory is not None else detect_gpu_memory_gb() or 8.0,
        workers=_workers(workers),
        preprocess=preprocess,
        replan=replan,
        plans_from=plans_from,
        border_weights=border_weights,
        storage=storage,
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
            "--tracking", help="none, or tensorboard (fold_<k>/tensorboard; needs tensorboard)."
        ),
    ] = "none",
    compile: CompileOpt = None,
) -> None:
    """Train one fold of a planned configuration."""
    from autoseg.paths import resolve_dataset, resolve_home
    from autoseg.plans import Plans
    from autoseg.splits import parse_fold
    from autoseg.train import TrainSettings, train_fold

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
        compile=compile,
    )
    folder = train_fold(dirs, plans, configuration, parse_fold(fold), settings)
    _console().print(f"trained: {folder}")


# predict, evaluate, instances (autoseg.cli_predict), listed after train in --help
register_predict_commands(app, user_errors)  # predict, evaluate, instances


@app.command()
@user_errors
def benchmark(
    dataset: Annotated[str, typer.Argument(help="Dataset folder or name (planned).")],
    configuration: Annotated[str, typer.Argument(help="2d, 3d_fullres or 3d_lowres.")],
    home: HomeOpt = None,
    planner: PlannerOpt = "default",
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
    from autoseg.benchmark import run_benchmark
    from autoseg.paths import resolve_dataset, resolve_home
    from autoseg.plans import Plans

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
) -> None:
    """The best trained configuration by cross-validation Dice, and how to predict with it."""
    from autoseg.crossval import find_best_configuration
    from autoseg.paths import resolve_dataset, resolve_home

    dirs = resolve_dataset(dataset, resolve_home(home))
    find_best_configuration(dirs).print(_console())


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
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: DeviceOpt = "auto",
    workers: Annotated[int | None, typer.Option("--workers", help="Processes.")] = None,
) -> None:
    """Plan, train, predict and evaluate on real hippocampus MRI shipped in the package."""
    from autoseg.demo import DemoSettings, run_demo
    from autoseg.paths import resolve_home

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
    console.rule("[bold]done")
    dice = ", ".join(f"{k} {v:.3f}" for k, v in result.mean_dice.items())
    console.print(f"mean Dice on the 6 held-out cases: {dice}")
    console.print(f"predictions: {result.predictions}")
    console.print(f"evaluation:  {result.evaluation_json}")
    console.print(f"picture:     {result.overlay_png}")
    console.print("times: " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()))


register_model_commands(app, user_errors)  # export, import, ensemble (autoseg.cli_models)


def main() -> None:
    """Entry point of the ``autoseg`` script."""
    try:
        app()
    except SystemExit as exc:
        sys.exit(exc.code)


if __name__ == "__main__":
    main()
