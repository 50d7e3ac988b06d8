"""The planning commands: ``plan`` (automatic or named plans) and ``plans`` (a dataset's plans).

Registered on the main typer app by ``autoseg.cli.commands`` (``register_plan_commands``), with
its error handling; the library is imported inside the commands (``autoseg --help`` is instant).
``--patch-size 128 128 128`` and ``--spacing 1 1 1`` arrive joined by commas
(``autoseg.cli.habits``), as ``128,128,128`` may also be written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from autoseg.cli.options import (
    MAX_GPU_MEMORY_GB,
    HomeOpt,
    PlannerOpt,
    console,
    cpu_workers,
    number_in,
)

__all__ = ["detect_gpu_memory_gb", "numbers", "register_plan_commands"]


def detect_gpu_memory_gb() -> float | None:
    """Total memory of the first CUDA GPU in GB, or None without one."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.get_device_properties(0).total_memory / 1024**3, 1)


def numbers(text: str | None, option: str, kind: type) -> tuple | None:
    """``"128,128,128"`` as a tuple of ``kind`` (None stays None).

    Raises:
        AutosegError: a value that is not a number of that kind, naming ``option``.
    """
    from autoseg.errors import AutosegError

    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.replace(",", " ").split())
    except ValueError:
        what = "whole numbers" if kind is int else "numbers"
        raise AutosegError(f"{option} {text}: expected {what}") from None


def register_plan_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``plan`` and ``plans`` to ``app``; ``guard`` turns user errors into exit code 2."""

    @app.command()
    @guard
    def plan(
        dataset: Annotated[str, typer.Argument(help="Dataset folder, or the name of a known one.")],
        home: HomeOpt = None,
        planner: PlannerOpt = "default",
        gpu_memory: Annotated[
            float | None,
            typer.Option(
                "--gpu-memory",
                callback=number_in(0, MAX_GPU_MEMORY_GB, low_open=True),
                help=f"GPU memory budget in GB (up to {MAX_GPU_MEMORY_GB}).",
            ),
        ] = None,
        workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes.")] = None,
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
                "--storage",
                help="Preprocessed arrays: auto (blosc2 above 2 GiB, else npy), npy (fastest) or "
                "blosc2 (compressed, extra).",
            ),
        ] = "auto",
        name: Annotated[
            str | None,
            typer.Option(
                "--name",
                help="Write named plans (plans_NAME.json; train/predict --plans NAME) with the "
                "values below, beside the automatic ones.",
            ),
        ] = None,
        configuration: Annotated[
            str | None,
            typer.Option(
                "-c",
                "--configuration",
                help="With --name: the configuration to change (default 3d_fullres; 2d for a "
                "2-value patch or a 2D dataset).",
            ),
        ] = None,
        patch_size: Annotated[
            str | None,
            typer.Option("--patch-size", help="With --name: patch, Z Y X (2d: Y X)."),
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", min=1, help="With --name: batch size.")
        ] = None,
        spacing: Annotated[
            str | None,
            typer.Option("--spacing", help="With --name: target spacing Z Y X in mm."),
        ] = None,
    ) -> None:
        """Check the dataset, fingerprint it, plan the configurations and preprocess the cases;
        with --name, a named plan of your own patch, batch or spacing (checked by the planner's
        rules first, printed as a diff against the automatic plan)."""
        from autoseg.errors import AutosegError
        from autoseg.planners.overrides import Overrides
        from autoseg.planning.runner import plan_dataset

        values = {
            "patch_size": numbers(patch_size, "--patch-size", int),
            "batch_size": batch_size,
            "spacing": numbers(spacing, "--spacing", float),
        }
        given = [f"--{k.replace('_', '-')}" for k, v in values.items() if v is not None]
        if name is None and (given or configuration):
            raise AutosegError(
                f"{' '.join(given) or '-c'} makes a named plan: add --name NAME (the automatic "
                "plans stay as the planner made them)"
            )
        if name is not None and not given:
            raise AutosegError(f"--name {name}: give --patch-size, --batch-size or --spacing")
        overrides = None if name is None else Overrides(name, configuration, **values)
        summary = plan_dataset(
            dataset,
            home=home,
            planner=planner,
            gpu_memory_gb=gpu_memory if gpu_memory is not None else detect_gpu_memory_gb() or 8.0,
            workers=cpu_workers(workers),
            preprocess=preprocess,
            replan=replan,
            plans_from=plans_from,
            border_weights=border_weights,
            storage=storage,
            overrides=overrides,
        )
        summary.print(console())

    @app.command("plans")
    @guard
    def plans(
        dataset: Annotated[str, typer.Argument(help="Dataset folder or name.")],
        home: HomeOpt = None,
    ) -> None:
        """Every plan of a dataset (automatic and named) as one table."""
        from rich.table import Table

        from autoseg.data.paths import resolve_dataset, resolve_home
        from autoseg.data.plans import Plans
        from autoseg.errors import AutosegError

        dirs = resolve_dataset(dataset, resolve_home(home))
        names = dirs.plans_names()
        if not names:
            raise AutosegError(f"{dirs.work}: no plans; run `autoseg plan {dataset}` first")
        table = Table(title=f"{dirs.name}: plans")
        columns = ("plans", "planner", "GB", "configuration", "spacing", "patch", "batch")
        for column in (*columns, "stages", "est. GB", "trained folds"):
            table.add_column(column)
        for plans_name in names:
            p = Plans.from_json(dirs.plans(plans_name))
            for config_name, c in p.configurations.items():
                folds = sorted(
                    f.name.removeprefix("fold_")
                    for f in dirs.model_folder(plans_name, config_name).glob("fold_*")
                    if (f / "checkpoint_final.pt").is_file()
                )
                table.add_row(
                    plans_name,
                    p.planner,
                    f"{p.gpu_memory_gb:g}",
                    config_name,
                    "x".join(f"{s:g}" for s in c.spacing),
                    "x".join(map(str, c.patch_size)),
                    str(c.batch_size),
                    str(c.num_stages),
                    f"{c.estimated_memory_gb:.2f}",
                    ",".join(folds) or "-",
                )
        from rich.console import Console

        width = max(console().width, 120)  # whole names, also in a narrow pipe
        Console(highlight=False, width=width).print(table)
