"""``autoseg init IMAGES LABELS -o DATASET``: a dataset folder from two folders of files.

Registered on the main typer app by ``autoseg.cli.commands``. The library (``autoseg.data.intake``
and ``autoseg.data.intake_write``) is imported inside the command, so ``autoseg --help`` stays
instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from autoseg.cli.options import console as _console
from autoseg.cli.options import number_in

if TYPE_CHECKING:
    from autoseg.data.intake import IntakePlan

__all__ = ["register_init_command"]


def register_init_command(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``init`` to ``app``; ``guard`` turns user errors into exit code 2."""
    app.command("init")(guard(init))


def init(
    images: Annotated[Path, typer.Argument(help="Folder of images (files or DICOM series).")],
    output: Annotated[
        Path,
        typer.Option("-o", "--output", help="Dataset folder to create; its name is the dataset's."),
    ],
    labels: Annotated[
        Path | None,
        typer.Argument(
            help="Folder of label maps (may be IMAGES). Leave out for DICOM series whose labels "
            "are DICOM SEG or RTSTRUCT files in IMAGES."
        ),
    ] = None,
    channel: Annotated[
        list[str] | None,
        typer.Option(
            "--channel",
            help="Channel name, once per channel in file order: --channel CT, or --channel T1 "
            "--channel T2 (files CASE_0000/CASE_0001 or CASE_T1/CASE_T2). CT selects CT "
            "normalisation.",
        ),
    ] = None,
    label: Annotated[
        list[str] | None,
        typer.Option("--label", help="Name of label 1, 2, ... in order (default label_1, ...)."),
    ] = None,
    binarize: Annotated[
        bool, typer.Option("--binarize", help="Write every non-zero label value as 1 (0/255).")
    ] = False,
    fix_geometry: Annotated[
        bool,
        typer.Option(
            "--fix-geometry",
            help="Give a label whose header differs from its image's the image's header (same "
            "shape, within --geometry-tolerance); listed in geometry_fixes.csv.",
        ),
    ] = False,
    geometry_tolerance: Annotated[
        float,
        typer.Option(
            "--geometry-tolerance",
            callback=number_in(0, low_open=True),
            help="Most a label voxel may move (in image voxels) for --fix-geometry.",
        ),
    ] = 0.5,
    skip_unmatched: Annotated[
        bool,
        typer.Option("--skip-unmatched", help="Write the pairs found; leave the rest out."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the dataset folder at -o.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be written; write nothing.")
    ] = False,
) -> None:
    """Pair images with labels by name; write a dataset (nnU-Net v2 layout) for `autoseg plan`.

    The table of what matched and what did not is printed before anything is written. Without
    LABELS, IMAGES is a DICOM folder: each series with a DICOM SEG or RTSTRUCT referencing it
    becomes a case (docs/dicom.md)."""
    if labels is None:
        _init_from_dicom_labels(images, output, channel, label, binarize, fix_geometry, dry_run)
        return
    from autoseg.data.intake import IntakeOptions, plan_intake
    from autoseg.data.intake_write import write_intake
    from autoseg.errors import DatasetError

    options = IntakeOptions(
        channels=tuple(channel or ()),
        label_names=tuple(label or ()),
        binarize=binarize,
        fix_geometry=fix_geometry,
        geometry_tolerance=geometry_tolerance,
        skip_unmatched=skip_unmatched,
        overwrite=overwrite,
    )
    plan = plan_intake(images, labels, output, options)
    print_plan(plan)
    if plan.problems:
        raise DatasetError(plan.problems, what="inputs (nothing written)")
    console = _console()
    if dry_run:
        console.print(f"dry run: nothing written; without --dry-run: {plan.output}")
        return
    result = write_intake(plan)
    console.print(f"written: {result.folder} ({result.cases} cases); report: {result.report}")
    if result.geometry_fixes is not None:
        console.print(f"label headers changed: {result.geometry_fixes}")
    console.print(f"next: autoseg plan {result.folder}")


def _init_from_dicom_labels(
    source: Path,
    output: Path,
    channel: list[str] | None,
    label: list[str] | None,
    binarize: bool,
    fix_geometry: bool,
    dry_run: bool,
) -> None:
    """``autoseg init STUDY -o DATASET``: series + their SEG/RTSTRUCT labels -> a dataset."""
    from autoseg.data.dataset import load_dataset
    from autoseg.data.dicom_dataset import convert_dicom_dataset
    from autoseg.errors import AutosegError

    given = [
        flag
        for flag, value in (
            ("--channel", channel),
            ("--label", label),
            ("--binarize", binarize),
            ("--fix-geometry", fix_geometry),
            ("--dry-run", dry_run),
        )
        if value
    ]
    if given:
        raise AutosegError(
            f"{' '.join(given)}: only with a LABELS folder; without it the channel (the series'"
            " modality), the label names (the segments' or ROIs' names) and the geometry come"
            " from the DICOM files"
        )
    dataset = load_dataset(convert_dicom_dataset(source, output))
    names = ", ".join(f"{v} {n}" for v, n in sorted(dataset.labels.items()) if v)
    _console().print(
        f"{len(dataset.cases)} case(s) written to {output} (labels: {names}); "
        f"next: autoseg plan {output}"
    )


def print_plan(plan: IntakePlan) -> None:
    """The table of what ``init`` matched, what it could not, and what it will write."""
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    table = Table(title=f"{plan.name}: {len(plan.cases)} case(s)", title_justify="left")
    for column in ("case", "image(s)", "label", "values", "writing"):
        table.add_column(column, overflow="fold")
    for case in plan.cases:
        pair = case.pair
        notes = f" ({'; '.join(pair.notes)})" if pair.notes else ""
        table.add_row(
            escape(pair.case_id + notes),
            escape(", ".join(s.path.name for s in pair.images)),
            escape(pair.label.path.name),
            ",".join(map(str, case.values)),
            escape(plan.action(case)),
        )
    console.print(table)
    if plan.pairing.unmatched or plan.ignored:
        left = Table(title="not matched", title_justify="left")
        left.add_column("source", overflow="fold")
        left.add_column("why", overflow="fold")
        for entry in (*plan.pairing.unmatched, *plan.ignored):
            left.add_row(escape(str(entry.path)), escape(entry.reason))
        console.print(left)
    if plan.labels_found:
        labels = ", ".join(f"{v} {n}" for v, n in plan.labels_found.items())
        console.print(escape(f"labels: {labels}; channels: {', '.join(plan.options.channels)}"))
    for note in plan.notes:
        console.print(escape(f"note: {note}"))
