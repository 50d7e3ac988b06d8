"""Training batches: an endless iterator over patch samples, in background worker processes.

``BatchLoader`` is an endless iterator of ``dict(image=(B, C, *patch) float32,
target=(B, 1, *patch) int16)``. Which cases and patches a batch holds, and their augmentation,
are ``autoseg.training.sampler`` (``PatchSampler``); this module owns the worker processes that
run samplers in the background (their queues, errors and shutdown).

Worker ``k`` is seeded from ``(seed, k)`` and batches are taken from the workers in turn, so a
given ``(seed, num_workers)`` always yields the same batches in the same order (``num_workers``
0 and 1 coincide).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import queue as queue_module
import signal
import time
import traceback
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoseg.data.plans import Configuration
from autoseg.errors import AutosegError
from autoseg.training.sampler import PatchSampler

log = logging.getLogger(__name__)

_QUEUE_DEPTH = 2  # batches buffered per worker
_POLL_S = 0.1
_GRACE_S = 1.0  # how long close() lets workers finish a batch before terminating them


class WorkerError(RuntimeError):
    """A background worker failed or died; the message holds the worker's traceback."""


def _put(q: Any, item: Any, stop: Any) -> bool:
    """Put ``item`` on a bounded queue unless ``stop`` is set first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue_module.Full:
            continue
    return False


def _worker_main(sampler: PatchSampler, seed: int, worker: int, q: Any, stop: Any) -> None:
    """Worker process: produce batches until ``stop``; report an exception and exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C
    try:
        from threadpoolctl import threadpool_limits  # in the worker only: never in the trainer

        with threadpool_limits(limits=1):
            sampler.reseed(seed, worker)
            while not stop.is_set():
                if not _put(q, ("batch", sampler.next_batch(), ""), stop):
                    break
        q.cancel_join_thread()  # unread batches may be dropped at exit
    except BaseException as exc:
        text = traceback.format_exc()
        payload: BaseException | None = exc
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            payload = None  # the traceback text still reaches the main process
        _put(q, ("error", payload, text), stop)


def _shutdown(processes: list[Any], queues: list[Any], stop: Any) -> None:
    """Stop workers: let them finish briefly, then terminate, then kill; never blocks long."""
    stop.set()
    deadline = time.monotonic() + _GRACE_S
    for p in processes:
        p.join(timeout=max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            p.terminate()
            p.join(timeout=1.0)
        if p.is_alive():
            p.kill()
            p.join(timeout=1.0)
    for q in queues:
        q.cancel_join_thread()
        q.close()


class BatchLoader:
    """Endless iterator of training batches; the sampling rules are ``autoseg.training.sampler``.

    Args:
        folder: preprocessed-data folder (``<case>.img.npy``, ``.seg.npy``, ``.fg.npz``,
            ``.json``).
        case_ids: cases to draw from (with replacement).
        config: the configuration (``patch_size``, ``batch_size``; 2 patch values = 2D slices).
        seed: non-negative; fixes every batch for a given ``num_workers``.
        augment: apply nnU-Net's augmentation (``autoseg.training.augment.pipeline``); False gives
        plain crops.
        augmentation: ``cpu`` augments here with batchgenerators; ``device`` (with ``augment``)
            yields the enlarged regions of ``autoseg.training.augment.pipeline.sample_size``
            un-augmented, for
            ``autoseg.training.augment.pipeline_device.DeviceAugmentation`` on the training device.
        num_workers: 0 samples in the calling process; more starts that many worker processes
            (``fork`` where available), each buffering up to two batches.
        oversample_foreground: fraction of each batch forced to contain foreground.
        elastic: add elastic deformation to the CPU augmentation
        (``autoseg.training.augment.elastic``).
        weights: also yield each patch's border weight map (``weight``, from
            ``autoseg.preprocessing.weightmap``; CPU augmentation only).
        ignore_label: a label value that is not foreground (``Plans.ignore_label``): forced
            samples never centre on it.
        previous_stage: for a cascade, ``(folder of CASE.npy, foreground labels)``: the
            previous stage's label maps are cropped and augmented with the target, then added
            one-hot (one channel per label) to the image channels, perturbed when augmenting
            (``autoseg.training.augment.cascade``). With ``augmentation="device"`` they are yielded
            as
            ``previous`` (B, 1, *region) uint8 instead, for
            ``autoseg.training.augment.cascade_device.DevicePreviousStage``.

    Raises:
        AutosegError: no cases, or a case's preprocessed files are missing.

    Yields:
        ``dict(image=(B, C, *patch) float32, target=(B, 1, *patch) int16)`` (``*region``
        instead of ``*patch`` for ``augmentation="device"``).
    """

    def __init__(
        self,
        folder: Path,
        case_ids: Sequence[str],
        config: Configuration,
        *,
        seed: int,
        augment: bool = True,
        num_workers: int = 0,
        oversample_foreground: float = 1 / 3,
        augmentation: str = "cpu",
        elastic: bool = False,
        weights: bool = False,
        ignore_label: int | None = None,
        previous_stage: tuple[Path, tuple[int, ...]] | None = None,
    ) -> None:
        folder = Path(folder)
        case_ids = tuple(case_ids)
        if not case_ids:
            raise AutosegError(f"{folder}: no training cases to sample from")
        missing = [c for c in case_ids if not (folder / f"{c}.json").is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise AutosegError(
                f"{folder}: {len(missing)} case(s) not preprocessed ({shown}); "
                "run preprocessing first"
            )
        if seed < 0 or num_workers < 0 or config.batch_size < 1:
            raise ValueError("seed and num_workers must be >= 0 and batch_size >= 1")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise ValueError(
                f"oversample_foreground must be in [0, 1], not {oversample_foreground}"
            )
        self.num_workers = num_workers
        if augmentation not in ("cpu", "device"):
            raise ValueError(f"augmentation must be cpu or device, not {augmentation!r}")
        on_device = augmentation == "device"
        if weights and on_device and augment:
            raise AutosegError(
                "border weight maps are augmented on the CPU only: --augmentation cpu"
            )
        self._sampler = PatchSampler(
            folder,
            case_ids,
            config,
            augment,
            oversample_foreground,
            on_device,
            elastic,
            weights,
            ignore_label,
            previous_stage,
        )
        self._sampler.reseed(seed, 0)
        self._closed = False
        self._turn = 0
        self._processes: list[Any] = []
        self._queues: list[Any] = []
        self._finalizer: weakref.finalize | None = None
        if num_workers:
            self._start(seed)

    def _start(self, seed: int) -> None:
        methods = mp.get_all_start_methods()
        ctx = mp.get_context("fork" if "fork" in methods else "spawn")
        stop = ctx.Event()
        self._finalizer = weakref.finalize(self, _shutdown, self._processes, self._queues, stop)
        for worker in range(self.num_workers):
            q = ctx.Queue(maxsize=_QUEUE_DEPTH)
            p = ctx.Process(
                target=_worker_main,
                args=(self._sampler, seed, worker, q, stop),
                name=f"autoseg-data-{worker}",
                daemon=True,
            )
            self._queues.append(q)
            self._processes.append(p)
            p.start()
        log.debug("started %d data workers", self.num_workers)

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._closed:
            raise RuntimeError("BatchLoader is closed")
        if not self.num_workers:
            return self._sampler.next_batch()
        worker = self._turn
        kind, payload, text = self._receive(worker)
        self._turn = (worker + 1) % self.num_workers
        if kind == "error":
            self.close()
            cause = WorkerError(f"data worker {worker} failed:\n{text}")
            if payload is not None:
                raise payload from cause
            raise cause
        return payload

    def _receive(self, worker: int) -> tuple[str, Any, str]:
        q, p = self._queues[worker], self._processes[worker]
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue_module.Empty:
                if p.is_alive():
                    continue
            try:  # it may have written its last message just before exiting
                return q.get(timeout=_GRACE_S)
            except queue_module.Empty:
                code = p.exitcode
                self.close()
                raise WorkerError(
                    f"data worker {worker} exited unexpectedly (exit code {code})"
                ) from None

    def close(self) -> None:
        """Stop the workers (within about a second, terminating them if needed)."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
