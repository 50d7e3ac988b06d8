"""Preprocessing a whole dataset: every case of every data identifier, idempotently.

``run_preprocessing`` keeps the cases stored from the same files with the same settings, redoes
the others (in spawned worker processes when asked), removes stored cases no longer in the
dataset and writes each folder's completeness marker after its last case
(``autoseg.preprocessing.cache``). One case is ``autoseg.preprocessing.preprocess``; the stored
layout ``autoseg.preprocessing.case_store``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from autoseg.data.dataset import Case, DatasetSpec
from autoseg.data.plans import Configuration, Plans
from autoseg.errors import AutosegError, DatasetError, Problem
from autoseg.preprocessing import cache
from autoseg.preprocessing.case_store import (
    case_array_paths,
    case_paths,
    load_case,
    plans_key,
    preprocessed_folder,
)
from autoseg.preprocessing.preprocess import preprocess_case
from autoseg.preprocessing.storage import check_storage
from autoseg.terminal import Heartbeat

logger = logging.getLogger(__name__)


def _is_done(folder: Path, case: Case, key: str, source_key: str, storage: str) -> bool:
    """Whether the case is stored completely, from the same files (content) with the settings
    ``key``, in ``storage``, and its files are readable."""
    try:
        stored = load_case(folder, case.case_id, mmap=True)  # mmap checks the sizes, reads little
    except AutosegError:
        return False
    has_seg = stored.seg is not None or case.label is None
    props = stored.properties
    same = props.plans_key == key and props.source_key == source_key
    return same and props.storage == storage and has_seg


def _case_size(case: Case) -> int:
    try:
        return sum(p.stat().st_size for p in case.images)
    except OSError:
        return 0


def run_preprocessing(
    spec: DatasetSpec,
    plans: Plans,
    config_names: Iterable[str],
    home_dataset_dir: Path,
    workers: int,
    sources: cache.DatasetSources | None = None,
    storage: str = "npy",
) -> None:
    """Preprocess every case of ``spec`` for each distinct data identifier of ``config_names``.

    Idempotent: a case stored from the same files (content) with the current settings is kept,
    so a second run (or one after an interrupted run) only does what is missing; a case whose
    files changed is redone, and stored cases that are no longer in the dataset are removed.
    Each folder gets its completeness marker after its last case. ``workers > 1`` runs cases in
    that many spawned processes (a calling script needs the ``__main__`` guard); each task holds
    one case in memory and returns only its id.

    Args:
        sources: ``cache.dataset_sources(spec)`` when the caller has it (else computed here).
        storage: ``npy`` or ``blosc2`` (``autoseg.preprocessing.storage``); a case stored in the
        other
            format is redone.

    Raises:
        AutosegError: unknown configuration or storage, or cases that cannot be read (all of
            them listed).
    """
    check_storage(storage)
    groups: dict[Path, Configuration] = {}
    for name in config_names:
        config = plans.configuration(name)
        folder = preprocessed_folder(home_dataset_dir, config)
        known = groups.setdefault(folder, config)
        if plans_key(known) != plans_key(config):
            raise AutosegError(
                f"configurations '{known.name}' and '{config.name}' share the data identifier "
                f"'{folder.name}' but preprocess differently"
            )
    if sources is None:
        sources = cache.dataset_sources(spec, workers)
    cache.invalidate_markers(
        home_dataset_dir, {f: plans_key(c) for f, c in groups.items()}, sources
    )
    problems: list[Problem] = []
    for folder, config in groups.items():
        start = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        for leftover in folder.glob(".*.part"):
            leftover.unlink(missing_ok=True)
        if _remove_other_cases(folder, {c.case_id for c in spec.cases}):
            cache.remove_marker(folder)
        key = plans_key(config)
        keys = {c.case_id: cache.case_key(sources.keys[c.case_id], key) for c in spec.cases}
        todo = [c for c in spec.cases if not _is_done(folder, c, key, keys[c.case_id], storage)]
        todo.sort(key=_case_size, reverse=True)  # big cases first balances the workers
        reused = len(spec.cases) - len(todo)
        if todo:
            cache.remove_marker(folder)
        with Heartbeat(title="plan") as progress:
            task = progress.add_task(f"preprocess {folder.name}", total=len(todo), unit="case")
            if reused:
                logger.info("%s: %d case(s) already preprocessed", folder.name, reused)
            failed = len(problems)
            for case, error in _run_tasks(todo, config, folder, workers, keys, storage):
                if error is not None:
                    problems.append(Problem(f"case {case.case_id}", str(error)))
                progress.advance(task)
        if len(problems) == failed:  # every case of the folder is stored: mark it, last
            cache.write_marker(folder, key, sources)
        took = time.perf_counter() - start
        logger.info("%s: %d case(s) done, %d reused, %.1f s", folder, len(todo), reused, took)
    if problems:
        raise DatasetError(problems, what="preprocessing")


def _remove_other_cases(folder: Path, keep: set[str]) -> bool:
    """Remove the stored cases whose ids are not in ``keep`` (cases since removed); returns
    whether there were any."""
    removed = False
    for props in folder.glob("*.json"):
        case_id = props.name[: -len(".json")]
        if case_id not in keep:
            props.unlink(missing_ok=True)  # first: the case no longer looks complete
            for path in [*case_paths(folder, case_id).values(), *case_array_paths(folder, case_id)]:
                path.unlink(missing_ok=True)
            removed = True
    return removed


def _run_tasks(
    todo: list[Case],
    config: Configuration,
    folder: Path,
    workers: int,
    keys: dict[str, str],
    storage: str,
):
    """Yield ``(case, error or None)`` as cases finish, in-process or in a process pool."""
    if workers <= 1 or len(todo) <= 1:
        for case in todo:
            try:
                preprocess_case(case, config, folder, keys[case.case_id], storage)
                yield case, None
            except AutosegError as exc:
                yield case, exc
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")  # never fork a (possibly threaded) parent
    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context)
    try:
        futures = {
            pool.submit(preprocess_case, case, config, folder, keys[case.case_id], storage): case
            for case in todo
        }
        for future in as_completed(futures):
            try:
                future.result()
                yield futures[future], None
            except AutosegError as exc:
                yield futures[future], exc
    finally:  # on an error or Ctrl-C, queued cases are dropped; running ones finish atomically
        pool.shutdown(wait=True, cancel_futures=True)
