"""The DICOM command: ``init-dicom`` (series with SEG or RTSTRUCT labels -> a dataset).

Registered on the main typer app by ``autoseg.cli.commands`` (``register_dicom_commands``).
Predicting DICOM series and sending SEGs are options of ``predict`` (``autoseg.cli.predict``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from autoseg.cli.options import console as _console

__all__ = ["register_dicom_commands"]


def register_dicom_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add ``init-dicom`` to ``app``; ``guard`` turns user errors into exit code 2."""
    app.command("init-dicom")(guard(init_dicom))


def init_dicom(
    source: Annotated[
        Path, typer.Argument(help="Folder of DICOM series with their DICOM SEG or RTSTRUCT labels.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="New dataset folder.")],
    name: Annotated[str | None, typer.Option("--name", help="dataset.json's name.")] = None,
) -> None:
    """Convert DICOM series with DICOM SEG or RTSTRUCT labels into a new dataset (NIfTI, nnU-Net
    v2 layout); the DICOM files are only read."""
    from autoseg.data.dataset import load_dataset
    from autoseg.data.dicom_dataset import convert_dicom_dataset

    dataset = load_dataset(convert_dicom_dataset(source, output, name=name))
    labels = ", ".join(f"{v} {n}" for v, n in sorted(dataset.labels.items()) if v)
    _console().print(
        f"{len(dataset.cases)} case(s) written to {output} (labels: {labels}); "
        f"next: autoseg plan {output}"
    )
