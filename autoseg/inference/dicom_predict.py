"""``predict`` on DICOM studies: each series is one case, written as NIfTI or DICOM SEG.

``is_dicom_input`` decides (no input holds a file with an image ending: the inputs are study
folders or DICOM files); ``predict_dicom`` finds the series (``autoseg.data.dicom``), keeps
those chosen with ``--series``, and predicts them one by one, writing ``OUT/<name>.nii.gz``
(the default) or ``OUT/<name>.seg.dcm`` (``autoseg.data.dicom_seg``). A series that is refused
is reported with its file and reason and the others go on, as for a folder of NIfTI files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rich.progress import MofNCompleteColumn, Progress

from autoseg.data.dicom import DicomSeries, find_dicom, read_series
from autoseg.data.dicom_seg import SegmentCode, write_seg
from autoseg.data.io import IMAGE_ENDINGS, file_ending, write_label
from autoseg.errors import AutosegError, Problem
from autoseg.inference.folder import CasePredictor
from autoseg.inference.inputs import list_input_files
from autoseg.inference.probability_files import save_probabilities as write_probabilities
from autoseg.inference.shards import select_part
from autoseg.terminal import progress_bar

log = logging.getLogger(__name__)

__all__ = ["OUTPUT_FORMATS", "DicomReport", "is_dicom_input", "list_series", "predict_dicom"]

OUTPUT_FORMATS = ("nifti", "dicom-seg")
_SUFFIX = {"nifti": ".nii.gz", "dicom-seg": ".seg.dcm"}


@dataclass(frozen=True)
class DicomReport:
    """What ``predict_dicom`` did: files written (NIfTI or SEG), refused series, skipped files."""

    written: tuple[Path, ...]
    failed: tuple[Problem, ...]
    skipped: tuple[Path, ...] = ()
    series: tuple[DicomSeries, ...] = ()


def is_dicom_input(paths: Sequence[Path]) -> bool:
    """True when no input is (or, for a folder, directly holds) a file with an image ending:
    the inputs are DICOM study folders or DICOM files."""
    files = list_input_files(paths)
    return not any(file_ending(f) is not None for f in files if not f.name.startswith("."))


def list_series(paths: Sequence[Path], uids: Sequence[str] | None = None) -> list[DicomSeries]:
    """The image series of the input folders, only those with ``uids`` when given.

    Raises:
        AutosegError: an input holds no series, or a UID is not one of the inputs' series.
    """
    import importlib.util

    if importlib.util.find_spec("pydicom") is None:
        raise AutosegError(
            f"{', '.join(map(str, paths))}: no image files found ({', '.join(IMAGE_ENDINGS)}); "
            "to read DICOM series install the dicom extra (pip install 'autoseg[dicom]')"
        )
    found: list[DicomSeries] = []
    for path in paths:
        folder = find_dicom(path)
        if not folder.series:
            segs = f" (only {len(folder.segs)} DICOM SEG file(s))" if folder.segs else ""
            raise AutosegError(f"{path}: no image files or DICOM image series found{segs}")
        found += folder.series
    if uids:
        by_uid = {s.uid: s for s in found}
        missing = [u for u in uids if u not in by_uid]
        if missing:
            listing = "\n".join(f"  {s.summary()}" for s in found)
            raise AutosegError(
                f"--series {', '.join(missing)}: no such SeriesInstanceUID in "
                f"{', '.join(map(str, paths))}; the series found are:\n{listing}"
            )
        found = [by_uid[u] for u in dict.fromkeys(uids)]
    names = [s.name for s in found]  # two folders may hold series of the same name
    return [s if names.count(s.name) == 1 else replace(s, name=s.uid) for s in found]


def predict_dicom(
    inputs: Sequence[Path],
    output_dir: Path,
    predictor: CasePredictor,
    *,
    label_names: Mapping[int, str],
    model_name: str,
    series_uids: Sequence[str] | None = None,
    output_format: str = "nifti",
    codes: Mapping[str, SegmentCode] | None = None,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = True,
    part: int = 0,
    parts: int = 1,
) -> DicomReport:
    """Predict every (chosen) series of the DICOM inputs into ``output_dir``.

    Args:
        inputs: study folders (any nesting) or DICOM files.
        output_dir: destination (created); not inside an input folder.
        predictor: the loaded model (one input channel).
        label_names: label value -> name (segment labels of a SEG).
        model_name: recorded in the SEG as the algorithm's source.
        series_uids: predict only these series (SeriesInstanceUID); all when empty.
        output_format: ``nifti`` or ``dicom-seg``.
        codes: segment-code overrides by label name (``load_code_map``).
        overwrite: replace existing outputs (else they are skipped).
        save_probabilities: also write ``<name>.npz``.
        progress: show a progress bar.
        part, parts: predict only this share of the series (``autoseg.inference.shards``).

    Returns:
        The files written, the series refused (file and reason) and the outputs skipped.

    Raises:
        AutosegError: bad output folder or format, a multi-channel model, no series, an
            unknown ``--series`` UID.
    """
    if output_format not in OUTPUT_FORMATS:
        raise AutosegError(
            f"--output-format {output_format!r}: expected one of {', '.join(OUTPUT_FORMATS)}"
        )
    output_dir = Path(output_dir)
    for path in map(Path, inputs):
        folder = (path if path.is_dir() else path.parent).resolve()
        if output_dir.resolve() == folder or folder in output_dir.resolve().parents:
            raise AutosegError(
                f"{output_dir}: the output folder must not be (inside) the DICOM input folder "
                f"{path}: its files would become inputs of the next run"
            )
    if predictor.in_channels != 1:
        raise AutosegError(
            f"{', '.join(map(str, inputs))}: a DICOM series is one channel, but the model takes "
            f"{predictor.in_channels}; predict NIfTI files with one file per channel instead"
        )
    series = list_series(inputs, series_uids)
    chosen = select_part({s.name: s for s in series}, part, parts)
    log.debug(
        "%d DICOM series found%s:\n%s",
        len(series),
        f", {len(chosen)} in part {part} of {parts}" if parts > 1 else "",
        "\n".join(f"  {s.summary()}" for s in chosen.values()),
    )
    written: list[Path] = []
    skipped: list[Path] = []
    failed: list[Problem] = []
    bar = progress_bar(*Progress.get_default_columns(), MofNCompleteColumn(), enabled=progress)
    with bar:
        task = bar.add_task("predicting", total=len(chosen))
        for name, item in chosen.items():
            out = output_dir / f"{name}{_SUFFIX[output_format]}"
            probs_out = output_dir / f"{name}.npz"
            if not overwrite and out.exists() and (probs_out.exists() or not save_probabilities):
                skipped.append(out)
                bar.advance(task)
                continue
            try:
                volume = read_series(item)
            except AutosegError as exc:
                log.warning("series %s not predicted: %s", item.uid, exc)
                failed.append(Problem(f"series {item.uid}", str(exc)))
                bar.advance(task)
                continue
            array, props = predictor.preprocess(volume.image, name)
            labels, restored = predictor.finalize(predictor.predict_preprocessed(array), props)
            output_dir.mkdir(parents=True, exist_ok=True)
            if save_probabilities:
                regions = bool(predictor.regions)
                write_probabilities(restored, predictor.label_values, probs_out, regions=regions)
            if output_format == "dicom-seg":
                write_seg(
                    labels,
                    volume.datasets,
                    label_names,
                    out,
                    model=model_name,
                    codes=codes,
                    affine=volume.image.geometry.affine,
                )
            else:
                write_label(labels, volume.image.geometry, out)
            written.append(out)
            bar.advance(task)
    if skipped:
        log.warning(
            "%d series already have outputs in %s: skipped (overwrite)", len(skipped), output_dir
        )
    return DicomReport(tuple(written), tuple(failed), tuple(skipped), tuple(chosen.values()))
