"""The commands on images: ``predict``, ``evaluate`` and ``instances``.

Registered on the main typer app by ``autoseg.cli.commands`` (``register_predict_commands``), with
its
error handling; like every command, they import the library inside the command body so that
``autoseg --help`` stays instant (and torch is not imported before a command runs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from autoseg.cli.options import CompileOpt, DeviceOpt, HomeOpt
from autoseg.cli.options import console as _console
from autoseg.cli.options import cpu_workers as _workers
from autoseg.cli.options import err as _err

__all__ = ["register_predict_commands"]


def register_predict_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``predict``, ``evaluate`` and ``instances`` to ``app``; ``guard`` turns user errors
    into exit code 2."""
    for command in (predict, evaluate, instances):
        app.command()(guard(command))


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
    tile_scale: Annotated[
        float | None,
        typer.Option(
            "--tile-scale",
            help="Largest tile edge as a multiple of the patch's, 1 to 2 (1: the training "
            "patch; default 1.25 in 3D, 1 in 2D).",
        ),
    ] = None,
    body_mask: Annotated[
        bool,
        typer.Option(
            "--body-mask/--no-body-mask",
            help="CT: skip the tiles that hold no body (air is background).",
        ),
    ] = True,
    cpu_bf16: Annotated[
        bool,
        typer.Option("--cpu-bf16/--no-cpu-bf16", help="bf16 autocast on a bf16-capable CPU."),
    ] = False,
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
    from autoseg.data.model_folder import find_model_folders
    from autoseg.data.paths import resolve_dataset, resolve_home
    from autoseg.errors import AutosegError
    from autoseg.inference.predictor import Predictor, predict_folder
    from autoseg.inference.shards import check_part

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
        max_tile_scale=tile_scale,  # None: the predictor's default for 2D / 3D
        compile=compile,
        body_mask=body_mask,
        cpu_bf16=cpu_bf16,
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
            help="dataset.json or plans.json (or a dataset or model folder) naming the labels; "
            "a region-based one scores its regions.",
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
    HD95 and NSD per case and label (per region for a region-based --dataset-json), with means."""
    import dataclasses

    from autoseg.cli.habits import command_line
    from autoseg.errors import AutosegError
    from autoseg.evaluation.evaluate import evaluate_folders
    from autoseg.evaluation.labels import read_evaluation_labels

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
    named = read_evaluation_labels(dataset_json) if dataset_json is not None else None
    evaluation = evaluate_folders(
        predictions,
        reference,
        labels=named.labels if named else None,
        nsd_tolerance_mm=nsd_tolerance,
        workers=_workers(workers),
        chill=chill,
        regions=named.regions if named else (),
    )
    evaluation = dataclasses.replace(evaluation, command=command_line())
    evaluation.print_table(_console())
    if output is not None:
        paths = evaluation.write_report(output)
        _console().print("written: " + ", ".join(map(str, paths)))


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
    from autoseg.evaluation.instances import instances_folder

    report = instances_folder(predictions, output, border_label, min_size, overwrite)
    total = sum(report.objects.values())
    _console().print(
        f"{len(report.written)} written to {output} ({total} objects)"
        + (f", {len(report.skipped)} skipped (existing; --overwrite)" if report.skipped else "")
    )
