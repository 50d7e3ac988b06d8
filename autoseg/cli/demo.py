"""``autoseg demo``: the whole pipeline on real Hippocampus cases shipped in the package.

plan -> train (fold ``all`` on the 18 training cases) -> predict the 6 held-out cases ->
evaluate against their reference labels -> an overlay picture. The configuration and budget are
the fields of ``DemoSettings``: the 2d network (on a CPU it takes about 3.5x more SGD steps per
second than 3d_fullres at the demo's batch sizes, 27 slices each against 2 patches, and 1.3x
more voxels), 15 epochs x 100 iterations, mirroring TTA with 64 slice tiles per forward pass;
chosen so that the whole command takes a few minutes on 2 CPU cores (docs/benchmarks.md has the
evidence). On a GPU the same budget takes seconds.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from autoseg.cli.options import heading
from autoseg.data.io import read_array
from autoseg.data.model_folder import ModelFolder
from autoseg.data.paths import resolve_dataset
from autoseg.errors import AutosegError
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.overlay import save_overlay as draw_overlay
from autoseg.inference.predictor import Predictor, predict_folder
from autoseg.planning.runner import plan_dataset
from autoseg.training.fold_setup import TrainSettings
from autoseg.training.step import OptimizerSettings
from autoseg.training.train import train_fold

log = logging.getLogger(__name__)
DEMO_DATASET = "Hippocampus"


def demo_dataset_path() -> Path:
    """Folder of the shipped demo dataset (MSD layout, with imagesTs/labelsTs held out)."""
    path = Path(str(resources.files("autoseg") / "demo_data" / DEMO_DATASET))
    if not (path / "dataset.json").is_file():
        raise AutosegError(f"{path}: the demo data is missing from this installation")
    return path


@dataclass(frozen=True)
class DemoResult:
    """Where the demo put things, and how well it did."""

    work: Path
    predictions: Path
    evaluation_json: Path
    overlay_png: Path
    mean_dice: dict[str, float]
    seconds: dict[str, float]


def save_overlay(
    image_path: Path,
    ref_path: Path,
    pred_path: Path,
    out: Path,
    slices: int = 3,
    names: dict[int, str] | None = None,
) -> None:
    """A PNG of a few slices of one case: image, reference and prediction
    (autoseg.evaluation.overlay)."""
    image, _ = read_array(image_path)
    maps = [
        (title, np.rint(read_array(path)[0]).astype(np.int64))
        for title, path in (("reference", ref_path), ("prediction", pred_path))
    ]
    draw_overlay(image, maps, names or {}, out, image_path.name, slices)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's configuration and budget (``autoseg demo`` options override the fields).

    Attributes:
        configuration: the planned configuration trained.
        epochs, iterations: training budget (``iterations`` per epoch).
        val_iterations: validation batches per epoch (only the online pseudo-Dice).
        initial_lr: SGD's initial learning rate (poly decay over ``epochs``).
        augmentation: where training augmentation runs (``cpu``: batchgenerators, with which
            the demo's figures in docs/benchmarks.md were measured).
        tta: mirroring test-time augmentation when predicting the held-out cases.
        tile_batch: network inputs per forward pass when predicting (None: the predictor's
            default for the device).
        seed: data order, augmentation and initial weights.
    """

    configuration: str = "2d"
    epochs: int = 15
    iterations: int = 100
    val_iterations: int = 2
    initial_lr: float = 1e-2
    augmentation: str = "cpu"
    tta: bool = True
    tile_batch: int | None = 64
    seed: int = 0


def run_demo(
    home: Path,
    settings: DemoSettings,
    *,
    device: str,
    workers: int,
    console,
    source: Path | None = None,
) -> DemoResult:
    """Run the whole pipeline on the shipped cases; prints progress and a Dice table.

    Args:
        home: working folder.
        settings: configuration and budget.
        device: ``auto``, ``cuda`` or ``cpu``.
        workers: processes for planning.
        console: a rich console for progress.
        source: a dataset in the demo's layout (imagesTr/labelsTr trained on, imagesTs/labelsTs
            held out) instead of the shipped one (for tuning on other held-out cases).
    """
    source = demo_dataset_path() if source is None else source
    config = settings.configuration
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    heading(console, "1/4 plan: check, fingerprint, plan, preprocess")
    summary = plan_dataset(
        str(source), home=home, planner="default", gpu_memory_gb=8.0, workers=workers
    )
    summary.print(console)
    seconds["plan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    n_train = len(list((source / "imagesTr").glob("*.nii.gz")))
    heading(
        console,
        f"2/4 train {config} on all {n_train} cases: "
        f"{settings.epochs} epochs x {settings.iterations}",
    )
    dirs = resolve_dataset(str(source), home)
    train_settings = TrainSettings(
        epochs=settings.epochs,
        iterations=settings.iterations,
        val_iterations=settings.val_iterations,
        device=device,
        seed=settings.seed,
        augmentation=settings.augmentation,
        resume=True,
        validate=False,
        optimizer=OptimizerSettings(initial_lr=settings.initial_lr),
    )
    model = ModelFolder(dirs.model_folder("default", config))
    if not model.checkpoint("all", "final").exists():
        train_fold(dirs, summary.plans, config, "all", train_settings)
    else:
        console.print(f"already trained: {model.fold_dir('all')} (delete it to train again)")
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tta = "mirroring TTA" if settings.tta else "no TTA"
    heading(console, f"3/4 predict the held-out cases (sliding window, {tta})")
    predictions = dirs.work / "demo_predictions"
    predictor = Predictor.from_folder(
        model.path, folds=["all"], device=device, tta=settings.tta, tile_batch=settings.tile_batch
    )
    report = predict_folder(
        sorted((source / "imagesTs").glob("*.nii.gz")), predictions, predictor, overwrite=True
    )
    if report.failed:
        raise AutosegError("demo prediction failed:\n" + "\n".join(map(str, report.failed)))
    seconds["predict"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    heading(console, "4/4 evaluate against the reference labels")
    evaluation = evaluate_folders(predictions, source / "labelsTs", labels=summary.plans.labels)
    evaluation_json = dirs.work / "demo_evaluation.json"
    evaluation.to_json(evaluation_json)
    evaluation.print_table(console)
    first = sorted((source / "imagesTs").glob("*.nii.gz"))[0]
    overlay = dirs.work / "demo_overlay.png"
    save_overlay(
        first,
        source / "labelsTs" / first.name,
        predictions / first.name,
        overlay,
        names=summary.plans.labels,
    )
    means = {summary.plans.labels[k]: m.dice for k, m in evaluation.label_means.items()}
    seconds["evaluate"] = time.perf_counter() - t0
    return DemoResult(
        work=dirs.work,
        predictions=predictions,
        evaluation_json=evaluation_json,
        overlay_png=overlay,
        mean_dice=means,
        seconds=seconds,
    )
