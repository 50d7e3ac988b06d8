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

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", help="Working folder (default: $AUTOSEG_HOME, else ./autoseg_home)."),
]
PlannerOpt = Annotated[str, typer.Option("--planner", help="Planner whose plans to use.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cuda or cpu.")]
CompileOpt = Annotated[
    bool | None,
    typer.Option(
        "--compile/--no-compile",
        help="torch.compile the network, eager if that fails (default: on CUDA only).",
        show_default=False,
    ),
]
AugmentationOpt = Annotated[
    str,
    typer.Option(
        "--augmentation",
        help="Where training augmentation runs: cpu (batchgenerators), device (torch on the "
        "training device) or auto (device on CUDA and on the CPU).",
    ),
]
CpuBf16Opt = Annotated[
    bool,
    typer.Option("--cpu-bf16/--no-cpu-bf16", help="bf16 autocast on a bf16-capable CPU."),
]


def _err(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True
    )


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


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _workers(workers: int | None) -> int:
    from autoseg.device import cpu_count  # torch-free; kept lazy like every library import here

    return workers if workers is not None and workers > 0 else cpu_count()


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


@app.command()
@user_errors
def predict(
    inputs: Annotated[
        list[Path], typer.Option("-i", "--input", help="Input folder or image file (repeatable).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
    dataset: Annotated[str | None, typer.Option("-d", "--dataset", help="Dataset name.")] = None,
    configuration: Annotated[
        str | None, typer.Option("-c", "--configuration", help="2d, 3d_fullres, ...")
    ] = None,
    folds: Annotated[
        str | None,
        typer.Option(
            "-f",
            "--folds",
            help="Folds: -f 0 1 or -f 0,1 (default: 0-4 when all are trained, else all).",
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("-m", "--model", help="A model folder (models/<planner>/<config>)."),
    ] = None,
    planner: Annotated[str | None, typer.Option("--planner", help="Planner of the model.")] = None,
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="final, best or a file name.")
    ] = "final",
    home: HomeOpt = None,
    device: DeviceOpt = "auto",
    tta: Annotated[bool, typer.Option("--tta/--no-tta", help="Mirroring test-time aug.")] = True,
    postprocess: Annotated[
        bool, typer.Option("--postprocess/--no-postprocess", help="Apply the CV decision.")
    ] = True,
    save_probabilities: Annotated[
        bool, typer.Option("--save-probabilities", help="Also write CASE.npz.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs.")] = False,
    step_size: Annotated[
        float, typer.Option("--step-size", help="Sliding-window step, fraction of the patch.")
    ] = 0.5,
    part: Annotated[int, typer.Option("--part", help="This process's share (0-based).")] = 0,
    parts: Annotated[
        int, typer.Option("--parts", help="Shares the cases are split into (one per machine).")
    ] = 1,
    io_workers: Annotated[
        int, typer.Option("--workers", min=1, help="Threads reading and writing cases.")
    ] = 1,
    compile: CompileOpt = None,
) -> None:
    """Predict images with a trained model; outputs keep each input's format and exact geometry."""
    from autoseg.errors import AutosegError
    from autoseg.model_folder import find_model_folders
    from autoseg.paths import resolve_dataset, resolve_home
    from autoseg.predictor import Predictor, predict_folder
    from autoseg.shards import check_part

    check_part(part, parts)
    for path in inputs:
        if not path.exists():
            raise AutosegError(f"{path}: input not found")
    if model is None:
        root = resolve_home(home)
        name = "*" if dataset is None else resolve_dataset(dataset, root).name
        found = find_model_folders(root, name, checkpoint, configuration, planner)
        candidates = [m.path for m in found]
        if not candidates:
            raise AutosegError(
                f"no trained model found in {root}"
                + (f" for dataset {dataset}" if dataset else "")
                + "; train one (autoseg train) or pass -m MODEL_FOLDER"
            )
        if len(candidates) > 1:
            listing = "\n".join(
                f"  {c.parent.parent.parent.name} -c {c.name} --planner {c.parent.name}"
                for c in candidates
            )
            raise AutosegError(f"several trained models; choose with -d/-c/--planner:\n{listing}")
        model = candidates[0]
    fold_list = [f.strip() for f in folds.split(",")] if folds else None
    predictor = Predictor.from_folder(
        model,
        folds=fold_list,
        checkpoint=checkpoint,
        device=device,
        tta=tta,
        step=step_size,
        postprocess=postprocess,
        compile=compile,
    )
    report = predict_folder(
        inputs,
        output,
        predictor,
        overwrite=overwrite,
        save_probabilities=save_probabilities,
        part=part,
        parts=parts,
        workers=io_workers,
    )
    console = _console()
    console.print(
        f"{len(report.written)} written to {output}"
        + (f", {len(report.skipped)} skipped (existing; --overwrite)" if report.skipped else "")
    )
    if report.failed:
        _err(
            f"{len(report.failed)} case(s) failed:\n" + "\n".join(f"  - {p}" for p in report.failed)
        )
        raise typer.Exit(2)


@app.command()
@user_errors
def evaluate(
    reference: Annotated[
        Path | None,
        typer.Option("-r", "--reference", help="Folder of reference (ground-truth) label maps."),
    ] = None,
    predictions: Annotated[
        Path | None, typer.Option("-p", "--predictions", help="Folder of predicted label maps.")
    ] = None,
    folders: Annotated[
        list[Path] | None, typer.Argument(hidden=True, help="Refused: use -r and -p.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Write evaluation.json, evaluation_cases.csv and evaluation_summary.csv here.",
        ),
    ] = None,
    dataset_json: Annotated[
        Path | None,
        typer.Option(
            "--dataset-json",
            help="dataset.json or plans.json (or a dataset or model folder) naming the labels.",
        ),
    ] = None,
    nsd_tolerance: Annotated[float, typer.Option(help="NSD tolerance in mm.")] = 1.0,
    workers: Annotated[int | None, typer.Option("--workers", help="Processes.")] = None,
    chill: Annotated[
        bool,
        typer.Option("--chill", help="Score only the cases that have a prediction (as nnU-Net)."),
    ] = False,
) -> None:
    """Score predictions against references (-r REF -p PRED): Dice, IoU, precision, recall,
    HD95 and NSD per case and label, with means per label."""
    import dataclasses

    from autoseg.cli_habits import command_line
    from autoseg.dataset import read_label_names
    from autoseg.errors import AutosegError
    from autoseg.evaluate import evaluate_folders

    if folders:
        raise AutosegError(
            "evaluate takes its folders by name: `autoseg evaluate -r REFERENCE -p PREDICTIONS` "
            "(folder order differs between tools: nnU-Net's evaluate_folder takes the reference "
            "first, autoseg used to take it second; swapping them swaps precision and recall)"
        )
    if reference is None or predictions is None:
        raise AutosegError("evaluate needs both -r/--reference and -p/--predictions folders")
    if reference.resolve() == predictions.resolve():
        logging.getLogger("autoseg").warning(
            "%s: the reference and prediction folders are the same folder; every score is "
            "perfect by construction",
            reference,
        )
    labels = read_label_names(dataset_json) if dataset_json is not None else None
    evaluation = evaluate_folders(
        predictions,
        reference,
        labels=labels,
        nsd_tolerance_mm=nsd_tolerance,
        workers=_workers(workers),
        chill=chill,
    )
    evaluation = dataclasses.replace(evaluation, command=command_line())
    evaluation.print_table(_console())
    if output is not None:
        paths = evaluation.write_report(output)
        _console().print("written: " + ", ".join(map(str, paths)))


@app.command()
@user_errors
def instances(
    predictions: Annotated[Path, typer.Argument(help="Folder of predicted label maps.")],
    output: Annotated[Path, typer.Argument(help="Folder for the instance label maps.")],
    border_label: Annotated[
        int | None,
        typer.Option("--border-label", help="Class that separates touching objects, if trained."),
    ] = None,
    min_size: Annotated[
        int, typer.Option(min=0, help="Drop objects smaller than this many pixels.")
    ] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs.")] = False,
) -> None:
    """Split semantic predictions into objects: an instance label map per file (same format)."""
    from autoseg.instances import instances_folder

    report = instances_folder(predictions, output, border_label, min_size, overwrite)
    total = sum(report.objects.values())
    _console().print(
        f"{len(report.written)} written to {output} ({total} objects)"
        + (f", {len(report.skipped)} skipped (existing; --overwrite)" if report.skipped else "")
    )


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
