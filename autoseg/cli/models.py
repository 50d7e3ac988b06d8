"""The commands that move, combine and show models' results: ``export``, ``import``,
``ensemble`` and ``overlay``.

Registered on the main typer app by ``autoseg.cli.commands`` (``register_model_commands``), with its
error handling; like every command, they import the library inside the command body so that
``autoseg --help`` stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from autoseg.cli.options import console as _console

__all__ = ["register_model_commands"]


def register_model_commands(app: typer.Typer, guard: Callable[[Any], Any]) -> None:
    """Add the model commands to ``app``; ``guard`` turns user errors into exit code 2."""

    @app.command("export")
    @guard
    def export(
        model: Annotated[Path, typer.Argument(help="Model folder (models/<planner>/<config>).")],
        archive: Annotated[
            Path | None, typer.Argument(help="The .zip to write (model exchange).")
        ] = None,
        onnx: Annotated[
            Path | None, typer.Option("--onnx", help="Write one fold as ONNX here instead.")
        ] = None,
        folds: Annotated[
            str | None,
            typer.Option(
                "-f", "--folds", help="Comma-separated folds (default: every trained; ONNX: one)."
            ),
        ] = None,
        checkpoint: Annotated[
            str, typer.Option("--checkpoint", help="final, best or a file name.")
        ] = "final",
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the output.")] = False,
    ) -> None:
        """Write a trained model as a zip (plans, weights-only checkpoints, post-processing), or
        one fold as ONNX (--onnx)."""
        from autoseg.errors import AutosegError

        fold_list = [f.strip() for f in folds.split(",")] if folds else None
        if (archive is None) == (onnx is None):
            raise AutosegError("give either ARCHIVE (a .zip) or --onnx FILE")
        if onnx is not None:
            from autoseg.inference.onnx_export import export_onnx

            if fold_list is not None and len(fold_list) != 1:
                raise AutosegError("--onnx exports one fold: give one with -f")
            fold = fold_list[0] if fold_list else None
            result = export_onnx(model, onnx, fold, checkpoint, overwrite)
            checked = (
                f"; onnxruntime vs torch: max |logit difference| {result.max_abs_diff:.2e}"
                if result.max_abs_diff is not None
                else "; not checked (onnxruntime not installed)"
            )
            _console().print(f"exported fold {result.fold} to {onnx}{checked}")
            return
        from autoseg.inference.exchange import export_model

        manifest = export_model(model, archive, fold_list, checkpoint, overwrite)
        _console().print(
            f"exported {manifest.dataset} {manifest.configuration} (planner {manifest.planner}, "
            f"folds {','.join(manifest.folds)}) to {archive}"
        )

    @app.command("import")
    @guard
    def import_(
        archive: Annotated[Path, typer.Argument(help="A .zip written by autoseg export.")],
        home: Annotated[
            Path | None,
            typer.Option(
                "--home", help="Working folder (default: $AUTOSEG_HOME, else ./autoseg_home)."
            ),
        ] = None,
        overwrite: Annotated[
            bool, typer.Option("--overwrite", help="Replace a model of the same name.")
        ] = False,
    ) -> None:
        """Install an exported model into the home folder (refuses anything unexpected)."""
        from autoseg.data.paths import resolve_home
        from autoseg.inference.exchange_import import import_model

        folder = import_model(archive, resolve_home(home), overwrite=overwrite)
        _console().print(
            f"imported: {folder}\npredict with: autoseg predict -i IN -o OUT -m {folder}"
        )

    @app.command("ensemble")
    @guard
    def ensemble(
        inputs: Annotated[
            list[Path],
            typer.Option("-i", "--input", help="A folder of predict --save-probabilities output."),
        ],
        output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")],
        overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace outputs.")] = False,
    ) -> None:
        """Average the saved probabilities of several predictions (repeat -i) into label maps."""
        from autoseg.evaluation.ensemble import ensemble_folders

        report = ensemble_folders(inputs, output, overwrite=overwrite)
        n_skipped = len(report.skipped)
        skipped = f", {n_skipped} skipped (existing; --overwrite)" if n_skipped else ""
        _console().print(f"{len(report.written)} written to {output}{skipped}")
        if report.failed:
            from autoseg.cli.options import err

            listing = "\n".join(f"  - {p}" for p in report.failed)
            err(f"{len(report.failed)} case(s) failed:\n{listing}")
            raise typer.Exit(2)

    @app.command("overlay")
    @guard
    def overlay(
        images: Annotated[Path, typer.Argument(help="Folder of the images (CASE[_0000].nii.gz).")],
        predictions: Annotated[Path, typer.Argument(help="Folder of label maps (CASE.nii.gz).")],
        output: Annotated[Path, typer.Option("-o", "--output", help="Folder for CASE.png.")],
        reference: Annotated[
            Path | None, typer.Option("--reference", help="Folder of reference label maps.")
        ] = None,
        dataset: Annotated[
            str | None,
            typer.Option("-d", "--dataset", help="Dataset (folder or name) naming the labels."),
        ] = None,
        home: Annotated[
            Path | None, typer.Option("--home", help="Home folder (for -d NAME).")
        ] = None,
        slices: Annotated[int, typer.Option(min=1, max=12, help="Slices per case.")] = 3,
    ) -> None:
        """PNGs of a few slices per case: image, reference and prediction, with a legend."""
        from autoseg.data.dataset import load_dataset
        from autoseg.data.paths import resolve_dataset, resolve_home
        from autoseg.evaluation.overlay import overlay_folders

        names = None
        if dataset is not None:
            names = load_dataset(resolve_dataset(dataset, resolve_home(home)).require_raw()).labels
        written = overlay_folders(images, predictions, output, reference, names, slices)
        _console().print(f"{len(written)} overlay(s) written to {output}")
