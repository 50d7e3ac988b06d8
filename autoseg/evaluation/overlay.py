"""Overlay pictures: a few slices of a case with its label maps on top, and a legend.

``autoseg overlay IMAGES PREDICTIONS [--reference REF] -o DIR`` writes ``DIR/CASE.png`` for
every prediction: one row per label map (reference first, when given, then prediction) over
the first channel of the image, on slices spread over the foreground, each label value in its
own colour, named in the legend. The demo's picture is the same drawing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from autoseg.data.dataset import split_channel_suffix
from autoseg.data.io import file_ending, grid_difference, read_array, strip_ending
from autoseg.errors import AutosegError, DatasetError, Problem
from autoseg.serial import atomic_output, check_output_folder, remove_temp_files

log = logging.getLogger(__name__)

__all__ = ["overlay_folders", "pick_slices", "save_overlay"]


def pick_slices(maps: Sequence[np.ndarray], count: int) -> list[int]:
    """``count`` Z-slices spread over the slices where any map has foreground (else all)."""
    depth = maps[0].shape[0]
    with_fg = sorted({int(z) for m in maps for z in np.nonzero(m.reshape(depth, -1).any(1))[0]})
    lo, hi = (with_fg[0], with_fg[-1]) if with_fg else (0, depth - 1)
    picks = np.linspace(lo, hi, count + 2)[1:-1] if hi > lo else np.full(count, lo)
    return sorted({int(round(z)) for z in picks})


def save_overlay(
    image: np.ndarray,
    maps: Sequence[tuple[str, np.ndarray]],
    names: Mapping[int, str],
    out: Path,
    title: str = "",
    slices: int = 3,
) -> Path:
    """Draw a few slices of ``image`` with each label map on top, and write a PNG atomically.

    Args:
        image: ``(Z, Y, X)`` (or ``(C, Z, Y, X)``: the first channel is shown).
        maps: ``(row title, (Z, Y, X) label map)`` per row.
        names: label value -> name for the legend (values without a name show their number).
        out: the PNG.
        title: the figure's title (the case).
        slices: how many slices (columns).

    Returns:
        ``out``.
    """
    import matplotlib  # heavy and only for pictures: imported when one is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    image = image[0] if image.ndim == 4 else image
    picks = pick_slices([m for _, m in maps], slices)
    values = sorted(
        {int(v) for _, m in maps for v in np.unique(m) if v != 0}
        | {int(v) for v in names if int(v) != 0}
    )
    colours = plt.get_cmap("tab10")
    colour_of = {v: colours(i % 10) for i, v in enumerate(values)}
    fig, axes = plt.subplots(
        len(maps), len(picks), figsize=(3.2 * len(picks), 3.2 * len(maps) + 0.6), squeeze=False
    )
    for row, (row_title, labels) in enumerate(maps):
        for col, z in enumerate(picks):
            ax = axes[row, col]
            ax.imshow(image[z], cmap="gray", interpolation="nearest")
            rgba = np.zeros((*labels[z].shape, 4))  # (Y, X, RGBA)
            for v in values:
                rgba[labels[z] == v] = (*colour_of[v][:3], 0.45)
            ax.imshow(rgba, interpolation="nearest")
            ax.set_title(f"{row_title}, slice {z}", fontsize=9)
            ax.axis("off")
    handles = [Patch(color=colour_of[v], label=names.get(v, str(v))) for v in values]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)  # of a killed run
    try:
        with atomic_output(out) as (fd, _), os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png", dpi=90)
    finally:
        plt.close(fig)
    return out


def _files(folder: Path, role: str, problems: list[Problem]) -> dict[str, Path]:
    """case id -> file (channel 0 of an image: ``CASE_0000`` or ``CASE``)."""
    if not folder.is_dir():
        problems.append(Problem(str(folder), f"{role} folder not found"))
        return {}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or file_ending(path) is None:
            continue
        case = strip_ending(path)
        split = split_channel_suffix(case) if role == "image" else None
        if split is not None:
            if split[1] != 0:
                continue
            case = split[0]
        found.setdefault(case, path)
    return found


def overlay_folders(
    images: Path,
    predictions: Path,
    output: Path,
    reference: Path | None = None,
    names: Mapping[int, str] | None = None,
    slices: int = 3,
) -> list[Path]:
    """``output/CASE.png`` for every prediction in ``predictions``.

    Raises:
        DatasetError: a folder is missing, a prediction has no image (or reference), or their
            shapes differ; everything is checked before anything is drawn.
        AutosegError: ``output`` is one of the input folders.
    """
    images, predictions, output = Path(images), Path(predictions), Path(output)
    inputs = [p for p in (images, predictions, reference) if p is not None]
    if output.resolve() in {p.resolve() for p in inputs}:
        raise AutosegError(f"{output}: the output folder must not be an input folder")
    check_output_folder(output, "-o")
    problems: list[Problem] = []
    image_files = _files(images, "image", problems)
    pred_files = _files(predictions, "prediction", problems)
    ref_files = _files(reference, "reference", problems) if reference is not None else {}
    if not pred_files and not problems:
        problems.append(Problem(str(predictions), "no prediction files found"))
    for case, path in pred_files.items():
        if case not in image_files:
            problems.append(Problem(str(path), f"no image for case {case!r} in {images}"))
        if reference is not None and case not in ref_files:
            problems.append(Problem(str(path), f"no reference for case {case!r} in {reference}"))
    if problems:
        raise DatasetError(problems, what="overlay inputs")

    def load(case: str) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
        image, grid = read_array(image_files[case])
        rows = [("prediction", pred_files[case])]
        if reference is not None:
            rows.insert(0, ("reference", ref_files[case]))
        shape = (image[0] if image.ndim == 4 else image).shape
        maps = []
        for row, path in rows:
            labels, geometry = read_array(path)
            if labels.shape != shape:
                problems.append(
                    Problem(str(path), f"{row} shape {labels.shape} differs from the image {shape}")
                )
            elif not geometry.same_grid(grid):  # as evaluate: not drawn on the wrong voxels
                problems.append(
                    Problem(
                        str(path),
                        f"{row} spacing or affine differs from the image {image_files[case]} "
                        f"({grid_difference(geometry, grid)})",
                    )
                )
            maps.append((row, np.rint(labels).astype(np.int64)))
        return image, maps

    for case in pred_files:  # every pair checked before the first picture
        load(case)
    if problems:
        raise DatasetError(problems, what="overlay inputs")
    written = []
    for case in pred_files:
        image, maps = load(case)
        written.append(save_overlay(image, maps, names or {}, output / f"{case}.png", case, slices))
    log.info("%d overlay(s) written to %s", len(written), output)
    return written
