"""The commands on predicted label maps: ``evaluate`` and ``instances``.

This module owns the command line of the evaluation stage: ``autoseg evaluate`` (the reference
and prediction folders by name, the labels or regions of ``--dataset-json``, or else the ignore
label of the dataset.json beside the references; scored by
:mod:`autoseg.evaluation.evaluate`) and ``autoseg instances`` (semantic predictions split into
objects, :mod:`autoseg.evaluation.instances`). Registered on the main typer app by
``autoseg.cli.commands`` (``register_evaluation_commands``), with its error handling; like every
command, they import the library inside the command body so that ``autoseg --help`` stays
instant. ``predict`` is :mod:`autoseg.cli.predict`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from autoseg.cli.options import console as _console
from autoseg.cli.options import cpu_workers as _workers
from autoseg.cli.options import number_in

ObjectsOpt = Annotated[
    str,
    typer.Option(
        "--objects",
        help="2D objects: foreground (connected components of each label) or background (the "
        "regions a label separates: cells between membranes, as ISBI 2012 scores EM).",
    ),
]

__all__ = ["register_evaluation_commands"]


def register_evaluation_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``evaluate`` and ``instances`` to ``app``; ``guard`` turns user errors into exit
    code 2."""
    for command in (evaluate, instances):
        app.command()(guard(command))


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
    nsd_tolerance: Annotated[
        float, typer.Option(callback=number_in(0, low_open=True), help="NSD tolerance in mm.")
    ] = 1.0,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Processes.")] = None,
    chill: Annotated[
        bool,
        typer.Option("--chill", help="Score only the cases that have a prediction (as nnU-Net)."),
    ] = False,
    objects: ObjectsOpt = "foreground",
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
    ignore = _ignore_beside(reference) if named is None else None
    evaluation = evaluate_folders(
        predictions,
        reference,
        labels=named.labels if named else None,
        nsd_tolerance_mm=nsd_tolerance,
        workers=_workers(workers),
        chill=chill,
        regions=named.regions if named else (),
        ignore=ignore,
        objects=objects,
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
        typer.Option(
            "--border-label",
            min=1,
            max=2**31 - 1,
            help="Class that separates touching objects, if trained.",
        ),
    ] = None,
    min_size: Annotated[
        int, typer.Option(min=0, help="Drop objects smaller than this many pixels.")
    ] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs.")] = False,
    objects: ObjectsOpt = "foreground",
) -> None:
    """Split semantic predictions into objects: an instance label map per file (same format)."""
    from autoseg.evaluation.instances import instances_folder

    report = instances_folder(predictions, output, border_label, min_size, overwrite, objects)
    total = sum(report.objects.values())
    _console().print(
        f"{len(report.written)} written to {output} ({total} objects)"
        + (f", {len(report.skipped)} skipped (existing; --overwrite)" if report.skipped else "")
    )


def _ignore_beside(reference: Path) -> int | None:
    """Without --dataset-json: the ignore label of the dataset.json beside the reference folder
    (the dataset layout's ``labelsTr``/``labelsTs``), so that its voxels are never scored as a
    class; None when there is no such file or it names no ignore label."""
    from autoseg.data.dataset_json import read_label_names
    from autoseg.data.ignore import ignore_label
    from autoseg.errors import AutosegError

    meta = reference.resolve().parent / "dataset.json"
    if not meta.is_file():
        return None
    try:
        value = ignore_label(read_label_names(meta))
    except AutosegError:  # not a readable dataset.json: evaluate as without one
        return None
    if value is not None:
        logging.getLogger("autoseg").warning(
            "label value %d is the 'ignore' label of %s: its voxels are left out (pass "
            "--dataset-json to score by that file's labels)",
            value,
            meta,
        )
    return value
