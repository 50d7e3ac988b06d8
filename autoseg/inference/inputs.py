"""Input files of ``predict``: which files form which case, and that no output is an input.

``group_input_files`` turns the folders and files a user points ``predict`` at into cases
(channel files ``CASE_0000 .. CASE_000k``, by the channel-suffix rule of ``autoseg.data.dataset``,
or
one file per case). ``refuse_outputs_that_are_inputs`` compares resolved real paths (and
``samefile`` for hard links), so that no symlink, hard link or ``-o`` equal to ``-i`` lets an
output replace a file the user gave.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from autoseg.data.bitmaps import ENDINGS as MICROSCOPY_ENDINGS
from autoseg.data.bitmaps import is_sidecar
from autoseg.data.dataset import split_channel_suffix
from autoseg.data.io import IMAGE_ENDINGS, file_ending, strip_ending
from autoseg.errors import AutosegError, Problem

log = logging.getLogger(__name__)

__all__ = [
    "group_input_files",
    "list_input_files",
    "output_path",
    "refuse_outputs_that_are_inputs",
]


def list_input_files(paths: Sequence[Path]) -> list[Path]:
    """The files of ``paths`` (folders listed, not recursed), each real file once.

    A folder or file given twice (also under another name: a symlink, ``./x`` and ``x``) is
    listed once, at its first mention.

    Raises:
        AutosegError: a path does not exist.
    """
    files: list[Path] = []
    seen: set[str] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            found = [path]
        else:
            raise AutosegError(f"{path}: input not found")
        for file in found:
            real = os.path.realpath(file)
            if real not in seen:
                seen.add(real)
                files.append(file)
    return files


def refuse_outputs_that_are_inputs(inputs: Iterable[Path], outputs: Iterable[Path]) -> None:
    """Refuse any output file that is an input file, under whatever name.

    Two names are the same file when their resolved real paths are equal or when they share
    device and inode (``os.path.samefile``: symlinks and hard links alike).

    Args:
        inputs: every input file.
        outputs: every file that would be written (existing or not).

    Raises:
        AutosegError: naming the first output that is an input, and that input.
    """
    by_path: dict[str, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for path in inputs:
        by_path.setdefault(os.path.realpath(path), path)
        with contextlib.suppress(OSError):
            st = os.stat(path)
            by_inode.setdefault((st.st_dev, st.st_ino), path)
    for out in outputs:
        hit = by_path.get(os.path.realpath(out))
        if hit is None:
            with contextlib.suppress(OSError):  # a missing output is no input
                st = os.stat(out)
                hit = by_inode.get((st.st_dev, st.st_ino))
        if hit is not None:
            raise AutosegError(
                f"{out}: this output would replace the input {hit}; refused (inputs are never "
                "overwritten: choose an output folder that holds none of the inputs)"
            )


def group_input_files(
    paths: Sequence[Path], num_channels: int
) -> tuple[dict[str, list[Path]], list[Problem]]:
    """Group input files (folders are listed, not recursed) into cases.

    Accepted names: ``CASE.nii.gz`` (one channel, or a 4D file holding every channel) and
    ``CASE_0000.nii.gz .. CASE_000k.nii.gz`` (one file per channel, all required). For a
    single-channel model only ``_0000`` is a channel suffix: ``scan_0001.nii.gz`` alone is case
    ``scan_0001``. Hidden files are skipped; other non-image files with a warning.

    Args:
        paths: folders and/or image files.
        num_channels: the model's input channels.

    Returns:
        ``{case_id: channel files in channel order}`` (sorted by case id) and the problems of
        cases that cannot be predicted (missing or unexpected channels, duplicate files).

    Raises:
        AutosegError: an input path does not exist.
    """
    groups: dict[str, list[tuple[int | None, Path]]] = {}
    for path in list_input_files(paths):
        if path.name.startswith("."):
            continue
        if file_ending(path) is None:
            if is_sidecar(path):  # a TIFF's spacing, read with it
                continue
            log.warning("ignoring %s: not an image file (%s)", path, ", ".join(IMAGE_ENDINGS))
            continue
        stem = strip_ending(path)
        split = split_channel_suffix(stem)
        if split is not None:
            groups.setdefault(split[0], []).append((split[1], path))
        else:
            groups.setdefault(stem, []).append((None, path))
    if num_channels == 1:  # X_0001 without X_0000 is a case id, not a channel
        for case in [c for c, g in groups.items() if any(ch not in (0, None) for ch, _ in g)]:
            for channel, path in groups.pop(case):
                key = case if channel is None else strip_ending(path)
                groups.setdefault(key, []).append((None, path))

    cases: dict[str, list[Path]] = {}
    problems: list[Problem] = []
    for case in sorted(groups):
        entries = sorted(groups[case], key=lambda e: (e[0] is not None, e[0] or 0, str(e[1])))
        channels = [ch for ch, _ in entries]
        first = str(entries[0][1])
        if len(set(channels)) != len(channels) or (None in channels and len(channels) > 1):
            names = ", ".join(p.name for _, p in entries)
            problems.append(Problem(first, f"case '{case}' is given more than once ({names})"))
        elif channels == [None] or _one_colour_file(channels, entries[0][1], num_channels):
            cases[case] = [entries[0][1]]
        elif channels != list(range(num_channels)):
            ending = file_ending(entries[0][1])
            missing = [f"{case}_{c:04d}{ending}" for c in range(num_channels) if c not in channels]
            extra = [f"{case}_{c:04d}" for c in channels if c is not None and c >= num_channels]
            why = "; ".join(
                [f"missing channel file(s) {', '.join(missing)}"] * bool(missing)
                + [f"unexpected {', '.join(extra)}"] * bool(extra)
            )
            problems.append(
                Problem(first, f"case '{case}': {why} (the model takes {num_channels} channels)")
            )
        else:
            cases[case] = [p for _, p in entries]
    return cases, problems


def _one_colour_file(channels: list[int | None], path: Path, num_channels: int) -> bool:
    """One ``CASE_0000`` RGB file (PNG/BMP/TIFF) holds all of a multi-channel model's channels,
    as in nnU-Net's natural-image datasets; reading it checks the channel count."""
    return num_channels > 1 and channels == [0] and file_ending(path) in MICROSCOPY_ENDINGS


# endings whose writer would leave a second (data) file behind: write the one-file variant
_OUTPUT_ENDING = {".nhdr": ".nrrd", ".mhd": ".mha"}


def output_path(output_dir: Path, case: str, files: Sequence[Path]) -> Path:
    """Where a case's label map goes: ``output_dir/CASE`` + its first input's ending
    (``.nhdr``/``.mhd`` give ``.nrrd``/``.mha``; no known ending gives ``.nii.gz``)."""
    ending = file_ending(files[0]) or ".nii.gz"
    return output_dir / f"{case}{_OUTPUT_ENDING.get(ending, ending)}"
