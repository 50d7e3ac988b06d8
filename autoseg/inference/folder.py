"""A folder of cases through a predictor: read, predict, write, with the files overlapping.

Reading and preprocessing the next case and exporting the previous one run in background
threads while the network works on the current one. Every output goes through a temp name and
the label map is written last, so an interrupted run can be resumed. The predictor is anything
with ``autoseg.inference.predictor.Predictor``'s case stages (``CasePredictor``).
"""

from __future__ import annotations

import errno
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.progress import MofNCompleteColumn, Progress

from autoseg.data.io import Geometry, Image, read_image, write_label
from autoseg.errors import AutosegError, Problem
from autoseg.inference.inputs import (
    group_input_files,
    list_input_files,
    output_path,
    refuse_outputs_that_are_inputs,
)
from autoseg.inference.probability_files import save_probabilities as write_probabilities
from autoseg.inference.shards import select_part
from autoseg.serial import check_output_folder, temp_files
from autoseg.terminal import Heartbeat

log = logging.getLogger(__name__)

__all__ = ["CasePredictor", "PredictionReport", "predict_folder"]


class CasePredictor(Protocol):
    """The stages of one case that ``predict_folder`` calls (``Predictor`` has them)."""

    in_channels: int
    label_values: np.ndarray
    regions: tuple  # region-based outputs (sigmoids) when not empty

    def preprocess(self, image: Image, case_id: str = "") -> tuple[np.ndarray, Any]: ...

    def body(self, image: Image, props: Any) -> np.ndarray | None: ...

    def predict_preprocessed(
        self,
        array: np.ndarray,
        body: np.ndarray | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray: ...

    def finalize(self, probs: np.ndarray, props: Any) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class PredictionReport:
    """What ``predict_folder`` did.

    Attributes:
        written: label maps written (one per case, in case order).
        failed: cases that could not be read or grouped, with the reason; the others went on.
        skipped: existing outputs left untouched (``overwrite=False``).
        inputs: the input files of each written or skipped output (output -> channel files),
            so that what was predicted from what is known (``predict --stats`` reads them).
    """

    written: tuple[Path, ...]
    failed: tuple[Problem, ...]
    skipped: tuple[Path, ...] = ()
    inputs: dict[Path, tuple[Path, ...]] = field(default_factory=dict)


def _in_the_way(target: Path) -> bool:
    """Something that is not a file (a folder) has the name of an output."""
    return target.exists() and not target.is_file()


def predict_folder(
    inputs: Sequence[Path],
    output_dir: Path,
    predictor: CasePredictor,
    *,
    overwrite: bool = False,
    save_probabilities: bool = False,
    progress: bool = True,
    part: int = 0,
    parts: int = 1,
    workers: int = 1,
) -> PredictionReport:
    """Predict every case of ``inputs`` into ``output_dir``.

    Each case is written as ``output_dir/CASE<ending of its input>`` (``.nhdr``/``.mhd`` inputs
    give ``.nrrd``/``.mha``) with the input's exact geometry, and with ``save_probabilities``
    also ``output_dir/CASE.npz`` (``probabilities`` float16 (K, Z, Y, X), ``labels`` (K,), and
    the identifier of the label map: ``autoseg.inference.probability_files``); without it, a
    ``CASE.npz``
    left by an earlier prediction of the case is removed when the case is predicted.
    Reading and preprocessing the next case and exporting the previous one run in background
    threads while the network works. A case that cannot be read is recorded in ``failed`` and
    the others go on. A case whose outputs all exist is skipped (with a warning) and listed in
    ``skipped`` unless ``overwrite``, so an interrupted run can be resumed: every file goes
    through a temp name, and the label map is written last.

    Args:
        inputs: folders and/or image files (see ``group_input_files``).
        output_dir: destination folder (created); must not be a folder holding inputs.
        predictor: the loaded model.
        overwrite: replace existing outputs.
        save_probabilities: also write the probabilities.
        progress: show progress (``autoseg.terminal.Heartbeat``): bars of the cases and of the
            current case's tiles on a terminal, else a line every 30 s (tiles done, time left).
        part, parts: predict only share ``part`` of ``parts`` (``autoseg.inference.shards``): n
            processes with parts n and parts 0 .. n-1 predict every case once.
        workers: threads reading (and, as many, writing) cases beside the network.

    Returns:
        The written, failed and skipped cases.

    Raises:
        AutosegError: ``output_dir`` holds inputs, an input is missing, or nothing to predict.
    """
    output_dir = Path(output_dir)
    check_output_folder(output_dir, "-o")
    input_dirs = {(p if p.is_dir() else p.parent).resolve() for p in map(Path, inputs)}
    if output_dir.resolve() in input_dirs:
        raise AutosegError(f"{output_dir}: the output folder must not be an input folder")
    cases, problems = group_input_files(inputs, predictor.in_channels)
    if not cases and not problems:
        raise AutosegError(f"no image files found in {', '.join(map(str, inputs))}")
    total = len(cases)
    cases = select_part(cases, part, parts)
    if parts > 1:
        log.info("part %d of %d: %d of %d case(s)", part, parts, len(cases), total)
    workers = max(1, int(workers))
    targets_of = {
        case: [output_path(output_dir, case, files)]
        + ([output_dir / f"{case}.npz"] if save_probabilities else [])
        for case, files in cases.items()
    }
    # never write over a file the user gave (symlinks, hard links, -o equal to -i, ...);
    # CASE.npz too when it is not written: an older prediction's is removed (below)
    probability_paths = [output_dir / f"{case}.npz" for case in cases]
    refuse_outputs_that_are_inputs(
        list_input_files(inputs),
        [t for targets in targets_of.values() for t in targets] + probability_paths,
    )
    todo: list[tuple[str, list[Path], Path]] = []
    skipped: list[Path] = []
    blocked = {t for targets in targets_of.values() for t in targets if _in_the_way(t)}
    for case, files in cases.items():
        targets = targets_of[case]
        out = targets[0]
        in_the_way = [t for t in targets if t in blocked]
        if in_the_way:  # a folder of the output's name: never a finished output
            problems.append(Problem(str(in_the_way[0]), "a folder of this name is in the way"))
            continue
        # the label map is written last: a case with all its outputs is complete
        if not overwrite and all(t.is_file() for t in targets):
            skipped.append(out)
        else:
            todo.append((case, files, out))
            for target in targets:  # temp files of a run that was killed
                for stale in temp_files(target):
                    stale.unlink(missing_ok=True)
    if skipped:
        log.warning(
            "%d case(s) already have outputs in %s: skipped (overwrite to replace them)",
            len(skipped),
            output_dir,
        )
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)

    def load(files: list[Path], case: str) -> tuple[Geometry, np.ndarray, Any, Any]:
        image = read_image(files)
        array, props = predictor.preprocess(image, case)
        return image.geometry, array, props, predictor.body(image, props)  # image let go

    def export(
        probs: np.ndarray, props: Any, geometry: Geometry, case: str, out: Path
    ) -> Path | Problem:
        labels, restored = predictor.finalize(probs, props)
        del probs
        npz = output_dir / f"{case}.npz"
        try:
            if save_probabilities:  # it names the label map written with it (ensemble checks)
                write_probabilities(
                    restored,
                    predictor.label_values,
                    npz,
                    regions=bool(predictor.regions),
                    label_map=labels,
                    affine=np.asarray(geometry.affine),
                )
            else:  # a case's outputs go together: an older prediction's probabilities go
                npz.unlink(missing_ok=True)
            del restored
            write_label(labels, geometry, out)  # last: its presence marks the case done
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:  # a full disk stops the run; a name, one case
                raise
            log.warning("case %s not written: %s: file name too long", case, exc.filename)
            return Problem(str(exc.filename), "file name too long for this file system")
        return out

    written: list[Path] = []
    failed = list(problems)

    def collect(done: Future) -> None:
        result = done.result()
        (failed if isinstance(result, Problem) else written).append(result)

    columns = (*Progress.get_default_columns(), MofNCompleteColumn())
    with (
        Heartbeat(*columns, title="predict", enabled=progress) as bar,
        ThreadPoolExecutor(workers, thread_name_prefix="autoseg-read") as reader,
        ThreadPoolExecutor(workers, thread_name_prefix="autoseg-write") as writer,
    ):
        task = bar.add_task("cases", total=len(todo), unit="case")
        tiles = bar.add_task("tiles", unit="tile", visible=False)
        reads: deque[tuple[str, list[Path], Path, Future]] = deque()
        writes: deque[Future] = deque()
        queue = iter(todo)

        def prefetch() -> None:
            for case, files, out in itertools.islice(queue, 1):
                reads.append((case, files, out, reader.submit(load, files, case)))

        for _ in range(workers + 1):  # cases in flight: being read, and one ready
            prefetch()
        while reads:
            case, files, out, pending = reads.popleft()
            prefetch()
            try:
                geometry, array, props, body = pending.result()
                del pending  # the future would keep the arrays alive
            except AutosegError as exc:
                log.warning("case %s not predicted: %s", case, exc)
                message = str(exc).removeprefix(f"{files[0]}: ")  # the path is the Problem's
                failed.append(Problem(str(files[0]), message))
                bar.advance(task)
                continue
            bar.reset(tiles, total=None, description=f"{case} tiles")
            probs = predictor.predict_preprocessed(
                array,
                body,
                progress=lambda done, total: bar.update(tiles, completed=done, total=total),
            )
            del array, body
            writes.append(writer.submit(export, probs, props, geometry, case, out))
            del probs  # the export holds it, until it is written
            writes[-1].add_done_callback(lambda _: bar.advance(task))
            while len(writes) > workers:  # bound the memory held by finished cases
                collect(writes.popleft())
        while writes:
            collect(writes.popleft())
    if created and not written and not any(output_dir.iterdir()):
        output_dir.rmdir()  # every case failed: leave no empty folder behind
    log.info("%d case(s) written to %s, %d failed", len(written), output_dir, len(failed))
    done = set(written) | set(skipped)
    inputs = {
        targets_of[case][0]: tuple(files)
        for case, files in cases.items()
        if targets_of[case][0] in done
    }
    return PredictionReport(tuple(written), tuple(failed), tuple(skipped), inputs)
