"""``autoseg benchmark``: how fast training and prediction run on this machine.

Four measurements on the preprocessed data of ``autoseg plan``, with the trainer's own
``TrainingStep`` (same network, optimiser, loss, autocast and device copy as ``autoseg train``):

(a) training steps fed by the real ``BatchLoader`` (augmentation on, the trainer's worker count
    for the device unless ``workers`` says otherwise), after ``warmup`` untimed steps;
(b) the same steps on one batch kept on the device and re-used: no data loading at all
    ("GPU-only" on a GPU). (a) / (b) is the data-loading overhead: 1.0 means the loader keeps
    up with the network;
(c) peak GPU memory (CUDA only) of training and of prediction, and the peak resident memory of
    this process and of its largest finished child (the data workers);
(d) prediction time per case of a freshly initialised network of the configuration (weights do
    not change the speed): sliding window with mirroring TTA (by default) on preprocessed cases,
    and the whole case from the raw image (read, preprocess, predict, resample back; nothing
    written) when the raw data is at hand.

Epoch times are extrapolated from the timed steps to ``EPOCH_ITERATIONS`` training iterations;
a real epoch adds the validation batches. CUDA is synchronised around every timing.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.table import Table

from autoseg import __version__
from autoseg.data.dataset import load_dataset
from autoseg.data.io import read_image
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Plans
from autoseg.data.splits import make_splits
from autoseg.device import resolve_device
from autoseg.errors import AutosegError
from autoseg.inference.predictor import Predictor
from autoseg.networks.unet import build_network
from autoseg.preprocessing.case_store import load_case
from autoseg.serial import dump_json, remove_temp_files, to_dict
from autoseg.training.fold_setup import default_workers, preprocessed_cases
from autoseg.training.loader import BatchLoader
from autoseg.training.step import TrainingStep

log = logging.getLogger(__name__)

EPOCH_ITERATIONS = 250  # nnU-Net's (and autoseg's) training iterations per epoch
EPOCH_VAL_ITERATIONS = 50  # and validation batches per epoch
_WORKER_BUFFER = 3  # batches a data worker can hold ready: its queue's 2 and the one it is putting


@dataclass(frozen=True)
class BenchmarkResult:
    """What ``run_benchmark`` measured; ``to_json`` writes these fields as they are.

    Attributes:
        dataset, configuration, planner: what was benchmarked.
        device: ``cpu`` or ``cuda:N``; ``device_name`` the GPU's name or the CPU thread count.
        patch_size, batch_size: of the configuration.
        iterations, warmup: timed and untimed training steps per measurement (with data
            workers, (a) warms up ``3 * workers`` steps more: what they can hold ready).
        workers: data-loading processes of (a) (0: in the main process).
        augmentation: where (a) augments: ``cpu`` (batchgenerators in the loader) or ``device``
            (torch on the training device, inside the timed step).
        epoch_iterations: the iterations an epoch time is extrapolated to.
        train_s_per_it, train_it_per_s, epoch_s: (a) with data loading.
        no_loading_s_per_it, no_loading_it_per_s, no_loading_epoch_s: (b) one batch re-used.
        no_loading_val_s_per_it: a validation step (forward pass, loss, Dice counts) on it.
        no_loading_epoch_with_val_s: ``EPOCH_ITERATIONS`` training and ``EPOCH_VAL_ITERATIONS``
            validation steps without data loading: what nnU-Net's noDataLoading benchmark
            trainer times as an epoch.
        data_loading_overhead: ``train_s_per_it / no_loading_s_per_it``.
        peak_gpu_memory_train_gb, peak_gpu_memory_predict_gb: ``torch.cuda.max_memory_allocated``
            (GiB) during training and prediction; None on the CPU.
        peak_rss_gb: this process's peak resident memory (GiB).
        peak_child_rss_gb: the largest finished child process's (the data workers); None when
            there were none.
        predict_cases, tta: prediction settings.
        predict_s_per_case: sliding window (+ softmax) on preprocessed cases; None if skipped.
        predict_whole_s_per_case: from the raw image to the label map on its own grid (reading
            included, writing not); None if skipped or the raw data is not found.
        load_average: the 1-minute load average when the benchmark started (other processes
            sharing the CPUs slow every figure down).
        torch_version, autoseg_version: the software measured.
    """

    dataset: str
    configuration: str
    planner: str
    device: str
    device_name: str
    patch_size: tuple[int, ...]
    batch_size: int
    iterations: int
    warmup: int
    workers: int
    augmentation: str
    epoch_iterations: int
    train_s_per_it: float
    train_it_per_s: float
    epoch_s: float
    no_loading_s_per_it: float
    no_loading_it_per_s: float
    no_loading_epoch_s: float
    no_loading_val_s_per_it: float
    no_loading_epoch_with_val_s: float
    data_loading_overhead: float
    peak_gpu_memory_train_gb: float | None
    peak_gpu_memory_predict_gb: float | None
    peak_rss_gb: float
    peak_child_rss_gb: float | None
    predict_cases: int
    tta: bool
    predict_s_per_case: float | None
    predict_whole_s_per_case: float | None
    load_average: float | None
    torch_version: str
    autoseg_version: str

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values."""
        return to_dict(self)

    def to_json(self, path: str | Path) -> None:
        """Write the fields as deterministic JSON (atomically)."""
        remove_temp_files(path)  # of a killed run
        dump_json(self, path)

    def table(self) -> Any:
        """The figures as a ``rich.table.Table``."""

        def gb(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.2f} GiB"

        def per_case(value: float | None) -> str:
            return "n/a" if value is None else f"{value:.3f} s/case"

        table = Table(
            title=f"autoseg benchmark: {self.dataset} {self.configuration} on {self.device_name} "
            f"(patch {'x'.join(map(str, self.patch_size))}, batch {self.batch_size}, "
            f"{self.iterations} timed iterations after {self.warmup})"
        )
        table.add_column("figure")
        table.add_column("value", justify="right")
        n = self.epoch_iterations
        rows = [
            (
                f"training step, data loading on ({self.workers} workers, "
                f"{self.augmentation} augmentation)",
                f"{self.train_s_per_it:.4f} s/it ({self.train_it_per_s:.2f} it/s)",
            ),
            (f"epoch time, {n} it. (extrapolated)", f"{self.epoch_s:.2f} s"),
            (
                "training step, no data loading (one batch re-used)",
                f"{self.no_loading_s_per_it:.4f} s/it ({self.no_loading_it_per_s:.2f} it/s)",
            ),
            (
                f"epoch time without data loading (GPU-only), {n} it. (extrapolated)",
                f"{self.no_loading_epoch_s:.2f} s",
            ),
            (
                f"same + {EPOCH_VAL_ITERATIONS} validation it. (as nnU-Net's noDataLoading)",
                f"{self.no_loading_epoch_with_val_s:.2f} s",
            ),
            ("data-loading overhead (with / without)", f"{self.data_loading_overhead:.2f}x"),
            ("peak GPU memory, training", gb(self.peak_gpu_memory_train_gb)),
            ("peak GPU memory, prediction", gb(self.peak_gpu_memory_predict_gb)),
            ("peak RSS, main process", gb(self.peak_rss_gb)),
            ("peak RSS, largest data worker", gb(self.peak_child_rss_gb)),
            (
                f"prediction, sliding window (TTA {'on' if self.tta else 'off'}, "
                f"{self.predict_cases} cases)",
                per_case(self.predict_s_per_case),
            ),
            (
                "prediction, whole case (read, preprocess, predict, restore)",
                per_case(self.predict_whole_s_per_case),
            ),
        ]
        for name, value in rows:
            table.add_row(name, value)
        load = "" if self.load_average is None else f"; load average {self.load_average:.1f}"
        table.caption = (
            f"epoch times: {n} training iterations, extrapolated (a training epoch adds its "
            f"validation batches); torch {self.torch_version}, autoseg {self.autoseg_version}{load}"
        )
        return table


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _seconds_per_call(fn: Callable[[], object], n: int, device: torch.device) -> float:
    """Mean wall seconds of ``n`` calls of ``fn``, the device synchronised before and after."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / max(n, 1)


def _peak_gpu_gb(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    _sync(device)
    return torch.cuda.max_memory_allocated(device) / 1024**3


def _reset_gpu_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _max_rss_gb(who: int) -> float:
    """Peak resident memory from ``getrusage`` (kilobytes on Linux, bytes on macOS)."""
    value = resource.getrusage(who).ru_maxrss
    return value / (1024**3 if sys.platform == "darwin" else 1024**2)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def _time_training(
    step: Any, loader: Any, iterations: int, warmup: int
) -> tuple[float, float, float]:
    """Seconds per training step with the loader feeding every step, then with one batch
    re-used; and per validation step on that batch (``iterations // 5`` of them, at least 1).

    With data loading, the warm-up is longer by what the workers can hold ready (each buffers up
    to ``_WORKER_BUFFER`` batches): batches prepared while the network warmed up would otherwise
    arrive for free in the timed steps and flatter the loader.
    """
    step.model.train()
    for _ in range(warmup + (_WORKER_BUFFER * loader.num_workers if warmup else 0)):
        step.train_batch(next(loader))
    with_loading = _seconds_per_call(
        lambda: step.train_batch(next(loader)), iterations, step.device
    )
    image, target = step.device_batch(next(loader))  # kept on the device from here on
    for _ in range(warmup):
        step.train_step(image, target)
    without = _seconds_per_call(lambda: step.train_step(image, target), iterations, step.device)
    step.model.eval()
    step.val_step(image, target)  # untimed: the first pass in eval mode
    val = _seconds_per_call(
        lambda: step.val_step(image, target), max(1, iterations // 5), step.device
    )
    step.model.train()
    return with_loading, without, val


def _time_prediction(
    dirs: DatasetDirs,
    plans: Plans,
    config_name: str,
    case_ids: list[str],
    device: torch.device,
    *,
    tta: bool,
    warmup: bool,
) -> tuple[float, float | None]:
    """Seconds per case on the network grid, and for the whole case from the raw image."""
    config = plans.configuration(config_name)
    folder, _ = preprocessed_cases(dirs, config)
    in_channels, num_classes = len(plans.channels), plans.num_classes
    torch.manual_seed(0)
    net = build_network(config, in_channels, num_classes, deep_supervision=False)
    predictor = Predictor(
        [net.state_dict()], plans, config, device=device, tta=tta, folds=["untrained"]
    )
    arrays = [load_case(folder, c, mmap=False).image for c in case_ids]
    if warmup:
        predictor.predict_preprocessed(arrays[0])
    it = iter(arrays)
    grid = _seconds_per_call(lambda: predictor.predict_preprocessed(next(it)), len(arrays), device)
    raw = dirs.raw
    if raw is None or not raw.is_dir():
        log.warning("raw data of %s not found: whole-case prediction not timed", dirs.name)
        return grid, None
    cases = {c.case_id: c for c in load_dataset(raw).cases}
    files = [cases[c].images for c in case_ids if c in cases]
    if not files:
        return grid, None
    it_files = iter(files)
    whole = _seconds_per_call(
        lambda: predictor.predict_image(read_image(next(it_files))), len(files), device
    )
    return grid, whole


def run_benchmark(
    dirs: DatasetDirs,
    plans: Plans,
    configuration: str,
    *,
    device: str = "auto",
    iterations: int = 50,
    warmup: int = 5,
    workers: int | None = None,
    predict_cases: int = 5,
    tta: bool = True,
    augmentation: str = "auto",
    cpu_bf16: bool = True,
) -> BenchmarkResult:
    """Time training (with and without data loading) and prediction; see the module docstring.

    Args:
        dirs: the dataset's folders (planned and preprocessed).
        plans: its plans.
        configuration: ``2d``, ``3d_fullres``, ...
        device: ``auto``, ``cuda`` or ``cpu``.
        iterations: timed training steps per measurement (>= 1).
        warmup: untimed steps before each measurement (and one untimed prediction if > 0).
        workers: data-loading processes; None = what ``autoseg train`` uses on the device.
        predict_cases: preprocessed cases to predict (0 skips prediction).
        tta: mirroring test-time augmentation in prediction.
        augmentation: ``cpu``, ``device`` or ``auto``, as ``autoseg train --augmentation``.
        cpu_bf16: bf16 autocast of the training step on a bf16-capable CPU (as ``autoseg train``).

    Returns:
        The figures.

    Raises:
        AutosegError: unknown configuration, no preprocessed data, device not available or
            nonsense counts.
    """
    if iterations < 1 or warmup < 0 or predict_cases < 0 or (workers or 0) < 0:
        raise AutosegError("--iterations must be >= 1; --warmup, --predict-cases, --workers >= 0")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    config = plans.configuration(configuration)
    folder, case_ids = preprocessed_cases(dirs, config)
    torch_device = resolve_device(device)
    n_workers = default_workers(torch_device) if workers is None else workers
    device_name = _device_name(torch_device)  # before prediction changes the CPU thread count
    step = TrainingStep(
        config,
        len(plans.channels),
        plans.num_classes,
        torch_device,
        augmentation=augmentation,
        cpu_bf16=cpu_bf16,
    )
    _reset_gpu_peak(torch_device)
    log.info("timing %d training iterations (%d workers)", iterations, n_workers)
    with BatchLoader(
        folder,
        case_ids,
        config,
        seed=0,
        augment=True,
        num_workers=n_workers,
        augmentation=step.augmentation,
    ) as dl:
        with_loading, without, val_step = _time_training(step, dl, iterations, warmup)
    peak_train = _peak_gpu_gb(torch_device)
    augmented_on = step.augmentation
    del step
    grid = whole = None
    peak_predict = None
    if predict_cases:
        # the fold-0 validation cases first: cases a fold-0 model would predict
        first = list(make_splits(case_ids)[0].val) if len(case_ids) >= 5 else []
        chosen = (first + [c for c in case_ids if c not in first])[:predict_cases]
        if torch_device.type == "cuda":
            torch.cuda.empty_cache()
        _reset_gpu_peak(torch_device)
        log.info("timing prediction of %d cases (TTA %s)", len(chosen), "on" if tta else "off")
        grid, whole = _time_prediction(
            dirs, plans, configuration, chosen, torch_device, tta=tta, warmup=warmup > 0
        )
        peak_predict = _peak_gpu_gb(torch_device)
    workers_rss = _max_rss_gb(resource.RUSAGE_CHILDREN) if n_workers else None
    return BenchmarkResult(
        dataset=dirs.name,
        configuration=configuration,
        planner=plans.plans_name,
        device=str(torch_device),
        device_name=device_name,
        patch_size=tuple(config.patch_size),
        batch_size=config.batch_size,
        iterations=iterations,
        warmup=warmup,
        workers=n_workers,
        augmentation=augmented_on,
        epoch_iterations=EPOCH_ITERATIONS,
        train_s_per_it=with_loading,
        train_it_per_s=1.0 / with_loading,
        epoch_s=with_loading * EPOCH_ITERATIONS,
        no_loading_s_per_it=without,
        no_loading_it_per_s=1.0 / without,
        no_loading_epoch_s=without * EPOCH_ITERATIONS,
        no_loading_val_s_per_it=val_step,
        no_loading_epoch_with_val_s=without * EPOCH_ITERATIONS + val_step * EPOCH_VAL_ITERATIONS,
        data_loading_overhead=with_loading / without,
        peak_gpu_memory_train_gb=peak_train,
        peak_gpu_memory_predict_gb=peak_predict,
        peak_rss_gb=_max_rss_gb(resource.RUSAGE_SELF),
        peak_child_rss_gb=workers_rss,
        predict_cases=min(predict_cases, len(case_ids)),
        tta=tta,
        predict_s_per_case=grid,
        predict_whole_s_per_case=whole,
        load_average=load,
        torch_version=torch.__version__,
        autoseg_version=__version__,
    )
