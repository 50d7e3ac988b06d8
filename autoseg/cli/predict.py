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

from autoseg.cli.options import CompileOpt, DeviceOpt, HomeOpt, number_in
from autoseg.cli.options import console as _console
from autoseg.cli.options import cpu_workers as _workers
from autoseg.cli.options import err as _err

ObjectsOpt = Annotated[
    str,
    typer.Option(
        "--objects",
        help="2D objects: foreground (connected components of each label) or background (the "
        "regions a label separates: cells between membranes, as ISBI 2012 scores EM).",
    ),
]

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
    planner: Annotated[
        str | None,
        typer.Option("--plans", "--planner", help="Plans of the model (planner or named plan)."),
    ] = None,
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
        float,
        typer.Option(
            "--step-size",
            callback=number_in(0, 1, low_open=True),
            help="Sliding-window step, fraction of the patch (0 to 1).",
        ),
    ] = 0.5,
    tile_scale: Annotated[
        float | None,
        typer.Option(
            "--tile-scale",
            callback=number_in(1, 2),
            help="Largest tile edge as a multiple of the patch's, 1 to 2 (1: the training "
            "patch; default 1.25 in 3D, 1 in 2D).",
        ),
    ] = None,
    part: Annotated[int, typer.Option("--part", min=0, help="This process's share (0-based).")] = 0,
    parts: Annotated[
        int,
        typer.Option("--parts", min=1, help="Shares the cases are split into (one per machine)."),
    ] = 1,
    io_workers: Annotated[
        int, typer.Option("--workers", min=1, help="Threads reading and writing cases.")
    ] = 1,
    compile: CompileOpt = None,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="Also write statistics.csv and statistics.json: per case and label the volume "
            "(ml), voxels, connected components (26-connected) and the image's mean/std inside "
            "(HU for CT). With --parts: statistics.part<i>of<n>.csv/.json.",
        ),
    ] = False,
    series: Annotated[
        list[str] | None,
        typer.Option(
            "--series", help="DICOM input: predict only this SeriesInstanceUID (repeatable)."
        ),
    ] = None,
    output_format: Annotated[
        str | None,
        typer.Option(
            "--output-format",
            help="DICOM input: nifti (default) or dicom-seg (one DICOM SEG per series).",
        ),
    ] = None,
    seg_codes: Annotated[
        Path | None,
        typer.Option("--seg-codes", help="JSON map of segment codes by label name (dicom-seg)."),
    ] = None,
    send: Annotated[
        list[str] | None,
        typer.Option(
            "--send",
            help="Send the SEGs: dicomweb://HOST:PORT/PATH (STOW-RS) or dicom://AET@HOST:PORT "
            "(C-STORE); implies --output-format dicom-seg.",
        ),
    ] = None,
) -> None:
    """Predict images with a trained model; outputs keep each input's format and exact geometry.

    DICOM study folders: each series is a case (NIfTI or DICOM SEG out; docs/dicom.md)."""
    from autoseg.data.model_folder import find_model_folders
    from autoseg.data.paths import resolve_dataset, resolve_home
    from autoseg.errors import AutosegError
    from autoseg.inference.predictor import Predictor, predict_folder
    from autoseg.inference.shards import check_part

    check_part(part, parts)
    for path in inputs:
        if not path.exists():
            raise AutosegError(f"{path}: input not found")
    dicom = _dicom_request(inputs, series, output_format, seg_codes, send)
    if model is None:
        root = resolve_home(home)
        name = "*" if dataset is None else resolve_dataset(dataset, root).name
        found = find_model_folders(root, name, checkpoint, configuration, planner)
        candidates = [m.path for m in found]
        if not candidates:
            raise AutosegError(
                _why_no_model(root, name, dataset, checkpoint, configuration, planner)
            )
        if len(candidates) > 1:
            listing = "\n".join(
                f"  {c.parent.parent.parent.name} -c {c.name} --planner {c.parent.name}"
                for c in candidates
            )
            raise AutosegError(f"several trained models; choose with -d/-c/--plans:\n{listing}")
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
    )
    if dicom is not None:
        _predict_dicom(predictor, inputs, output, dicom, overwrite, save_probabilities, part, parts)
        return
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
    if stats:
        from autoseg.evaluation.statistics import predicted_statistics

        paths = predicted_statistics(report.inputs, predictor.plans, output, part, parts)
        if paths:
            console.print("statistics: " + ", ".join(map(str, paths)))
    if report.failed:
        _err(
            f"{len(report.failed)} case(s) failed:\n" + "\n".join(f"  - {p}" for p in report.failed)
        )
        raise typer.Exit(2)


def _why_no_model(
    root: Path,
    name: str,
    dataset: str | None,
    checkpoint: str,
    configuration: str | None,
    planner: str | None,
) -> str:
    """Why no model folder matched -d/-c/--planner/--checkpoint: the filter that excluded the
    trained models, with what there is, or that nothing is trained at all."""
    from autoseg.data.model_folder import checkpoint_file, find_model_folders

    where = f"in {root}" + (f" for dataset {dataset}" if dataset else "")
    trained = find_model_folders(root, name, checkpoint)
    if trained:  # -c or --planner excluded them
        listing = ", ".join(f"-c {m.name} --planner {m.path.parent.name}" for m in trained)
        asked = " ".join(
            f"{flag} {value}"
            for flag, value in (("-c", configuration), ("--planner", planner))
            if value is not None
        )
        return f"no trained model {where} matches {asked}; trained: {listing}"
    others = sorted({p.name for p in root.glob(f"{name}/models/*/*/fold_*/checkpoint_*.pt")})
    if others:
        return (
            f"no trained model {where} has {checkpoint_file(checkpoint)} "
            f"(--checkpoint {checkpoint}); found: {', '.join(others)}"
        )
    return f"no trained model found {where}; train one (autoseg train) or pass -m MODEL_FOLDER"


def _dicom_request(
    inputs: list[Path],
    series: list[str] | None,
    output_format: str | None,
    seg_codes: Path | None,
    send: list[str] | None,
) -> dict[str, Any] | None:
    """The DICOM options checked before the model is loaded; None for non-DICOM inputs."""
    from autoseg.errors import AutosegError
    from autoseg.inference.dicom_predict import OUTPUT_FORMATS, is_dicom_input

    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise AutosegError(
            f"--output-format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}"
        )
    if not is_dicom_input(inputs):
        asked = [
            name
            for name, value in (
                ("--series", series),
                ("--output-format dicom-seg", output_format == "dicom-seg"),
                ("--seg-codes", seg_codes),
                ("--send", send),
            )
            if value
        ]
        if asked:
            raise AutosegError(
                f"{', '.join(asked)}: only for DICOM input (a DICOM SEG references its source "
                f"series), but {', '.join(map(str, inputs))} holds image files"
            )
        return None
    from autoseg.data.dicom_seg import load_code_map
    from autoseg.inference.send import parse_destination

    if send and output_format == "nifti":
        raise AutosegError("--send sends DICOM SEG objects: drop --output-format nifti")
    return {
        "series": series or [],
        "format": "dicom-seg" if send else (output_format or "nifti"),
        "codes": load_code_map(seg_codes) if seg_codes is not None else None,
        "send": [parse_destination(s) for s in send or []],
    }


def _predict_dicom(
    predictor: Any,
    inputs: list[Path],
    output: Path,
    request: dict[str, Any],
    overwrite: bool,
    save_probabilities: bool,
    part: int,
    parts: int,
) -> None:
    from autoseg.inference.dicom_predict import predict_dicom
    from autoseg.inference.send import send_files

    plans = predictor.plans
    report = predict_dicom(
        inputs,
        output,
        predictor,
        label_names={
            int(v): plans.labels.get(int(v), f"label {v}") for v in predictor.label_values
        },
        model_name=f"{plans.dataset_name}/{plans.planner}/{predictor.configuration.name}",
        series_uids=request["series"],
        output_format=request["format"],
        codes=request["codes"],
        overwrite=overwrite,
        save_probabilities=save_probabilities,
        part=part,
        parts=parts,
    )
    console = _console()
    for item in report.series:
        console.print(f"series {item.summary()}")
    console.print(
        f"{len(report.written)} written to {output}"
        + (f", {len(report.skipped)} skipped (existing; --overwrite)" if report.skipped else "")
    )
    segs = [p for p in (*report.written, *report.skipped) if p.name.endswith(".seg.dcm")]
    for destination in request["send"]:
        count = send_files(segs, destination)
        console.print(f"{count} DICOM SEG(s) sent to {destination}")
    if report.failed:
        _err(
            f"{len(report.failed)} series failed:\n" + "\n".join(f"  - {p}" for p in report.failed)
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
