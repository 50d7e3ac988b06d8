"""``autoseg demo``: the whole pipeline on real Hippocampus cases shipped in the package.

plan -> train (fold ``all`` on the 18 training cases) -> predict the 6 held-out cases ->
evaluate against their reference labels -> an overlay picture. Small enough for a 2-core CPU in a
few minutes; on a GPU the same budget takes seconds (raise ``--epochs`` there).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from autoseg.errors import AutosegError
from autoseg.evaluate import evaluate_folders
from autoseg.io import read_array
from autoseg.model_folder import ModelFolder
from autoseg.overlay import save_overlay as draw_overlay
from autoseg.paths import resolve_dataset
from autoseg.planning import plan_dataset
from autoseg.predictor import Predictor, predict_folder
from autoseg.train import TrainSettings, train_fold

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
    """A PNG of a few slices of one case: image, reference and prediction (autoseg.overlay)."""
    image, _ = read_array(image_path)
    maps = [
        (title, np.rint(read_array(path)[0]).astype(np.int64))
        for title, path in (("reference", ref_path), ("prediction", pred_path))
    ]
    draw_overlay(image, maps, names or {}, out, image_path.name, slices)


def run_demo(
    home: Path, *, epochs: int, iterations: int, device: str, workers: int, console
) -> DemoResult:
    """Run the whole pipeline on the shipped cases; prints progress and a Dice table."""
    source = demo_dataset_path()
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    console.rule("[bold]1/4 plan: check, fingerprint, plan, preprocess")
    summary = plan_dataset(
        str(source), home=home, planner="default", gpu_memory_gb=8.0, workers=workers
    )
    summary.print(console)
    seconds["plan"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    console.rule(f"[bold]2/4 train 3d_fullres on all 18 cases: {epochs} epochs x {iterations}")
    dirs = resolve_dataset(str(source), home)
    settings = TrainSettings(
        epochs=epochs,
        iterations=iterations,
        val_iterations=5,
        device=device,
        seed=0,
        resume=True,
        validate=False,
    )
    model = ModelFolder(dirs.model_folder("default", "3d_fullres"))
    if not model.checkpoint("all", "final").exists():
        train_fold(dirs, summary.plans, "3d_fullres", "all", settings)
    else:
        console.print(f"already trained: {model.fold_dir('all')} (delete it to train again)")
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    console.rule("[bold]3/4 predict the 6 held-out cases (sliding window, mirroring TTA)")
    predictions = dirs.work / "demo_predictions"
    predictor = Predictor.from_folder(model.path, folds=["all"], device=device)
    report = predict_folder(
        sorted((source / "imagesTs").glob("*.nii.gz")), predictions, predictor, overwrite=True
    )
    if report.failed:
        raise AutosegError("demo prediction failed:\n" + "\n".join(map(str, report.failed)))
    seconds["predict"] = time.perf_counter() - t0

    console.rule("[bold]4/4 evaluate against the reference labels")
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
    return DemoResult(
        work=dirs.work,
        predictions=predictions,
        evaluation_json=evaluation_json,
        overlay_png=overlay,
        mean_dice=means,
        seconds=seconds,
    )
