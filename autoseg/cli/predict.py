"""The ``predict`` command: a trained model over image files or DICOM series.

Registered on the main typer app by ``autoseg.cli.commands`` (``register_predict_commands``),
with its error handling; like every command, it imports the library inside the command body so
that ``autoseg --help`` stays instant (and torch is not imported before a command runs). Here:
the model folder found from -d/-c/--plans (or why none matched), image inputs, and DICOM input
(its options checked before the model loads, NIfTI or DICOM SEG out, ``--send``). The commands
on predictions, ``evaluate`` and ``instances``, are :mod:`autoseg.cli.evaluation`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from autoseg.cli.options import CompileOpt, DeviceOpt, HomeOpt, number_in
from autoseg.cli.options import console as _console
from autoseg.cli.options import err as _err

__all__ = ["register_predict_commands"]


def register_predict_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``predict`` to ``app``; ``guard`` turns user errors into exit code 2."""
    app.command()(guard(predict))


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
    body_mask: Annotated[
        bool,
        typer.Option(
            "--body-mask/--no-body-mask",
            help="CT: skip the tiles that hold no body (air is background).",
        ),
    ] = True,
    cpu_bf16: Annotated[
        bool,
        typer.Option(
            "--cpu-bf16/--no-cpu-bf16",
            help="bf16 on a bf16-capable CPU (torch: autocast; openvino: its bf16 precision); "
            "--no-cpu-bf16 predicts in fp32.",
        ),
    ] = True,
    runtime: Annotated[
        str,
        typer.Option(
            "--runtime",
            help="What runs the network: torch, or openvino (CPU only; a CT tile 3.5x faster "
            "than torch fp32 in bf16, 1.75x with --no-cpu-bf16; pip install 'autoseg[openvino]').",
        ),
    ] = "torch",
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
    from autoseg.inference.runtime_openvino import runtime_device
    from autoseg.inference.shards import check_part

    check_part(part, parts)
    runtime_device(runtime, device, compile)  # an unknown or unavailable runtime: refused first
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
        body_mask=body_mask,
        cpu_bf16=cpu_bf16,
        runtime=runtime,
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
