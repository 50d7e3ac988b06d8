"""After cross-validation: the post-processing decision and the best configuration.

Once all five folds of a configuration have predicted their validation cases, the pooled
predictions decide whether keeping the largest connected component helps
(``postprocessing.json`` in the model folder, applied by ``autoseg predict``), and
``autoseg find-best`` ranks the configurations by their mean cross-validation Dice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from autoseg.cache import require_planned
from autoseg.evaluate import Evaluation
from autoseg.ignore import mask_ignored
from autoseg.io import read_array, strip_ending
from autoseg.model_folder import CV_FOLDS, ModelFolder, find_model_folders
from autoseg.paths import DatasetDirs
from autoseg.postprocess import decide_postprocessing
from autoseg.splits import NUM_FOLDS

log = logging.getLogger(__name__)


def decide_cv_postprocessing(
    model_folder: ModelFolder, labels: list[int], ignore_label: int | None = None
) -> bool:
    """Decide post-processing on the pooled CV predictions when all folds are validated.

    Voxels the reference labels ``ignore_label`` count as background in both maps.

    Returns:
        True when ``postprocessing.json`` was written.
    """
    folds = model_folder.validated_folds()
    if len(folds) < NUM_FOLDS:
        return False

    def cases():
        for fold in folds:
            refs = model_folder.validation_refs(fold)
            for pred_path in sorted(model_folder.validation_dir(fold).iterdir()):
                if pred_path.name.startswith("."):
                    continue
                refs_for = [r for r in refs.iterdir() if strip_ending(r) == strip_ending(pred_path)]
                if not refs_for:
                    continue
                pred, geometry = read_array(pred_path)
                ref, _ = read_array(refs_for[0])
                yield (*mask_ignored(pred, ref, ignore_label), geometry.spacing)

    decision = decide_postprocessing(cases(), labels)
    decision.to_json(model_folder.postprocessing)
    log.info(
        "post-processing decided on %d folds: foreground LCC %s, per-label LCC %s",
        len(folds),
        decision.largest_component_foreground,
        list(decision.largest_component_labels),
    )
    return True


@dataclass(frozen=True)
class ConfigurationResult:
    """Cross-validation result of one trained configuration."""

    planner: str
    configuration: str
    folds: tuple[str, ...]
    mean_dice: float
    dice_per_label: dict[str, float]

    @property
    def complete(self) -> bool:
        return len(self.folds) == NUM_FOLDS


@dataclass(frozen=True)
class BestConfiguration:
    """The ranking ``autoseg find-best`` prints."""

    dataset: str
    results: tuple[ConfigurationResult, ...]

    @property
    def best(self) -> ConfigurationResult | None:
        complete = [r for r in self.results if r.complete] or list(self.results)
        return max(complete, key=lambda r: r.mean_dice, default=None)

    def print(self, console: Any) -> None:
        if not self.results:
            console.print(f"no validated folds for {self.dataset} yet: train folds 0-4 first")
            return
        table = Table(title=f"{self.dataset}: cross-validation (validation cases of each fold)")
        for column in ("planner", "configuration", "folds", "mean Dice", "per label"):
            table.add_column(column)
        for r in self.results:
            per_label = ", ".join(f"{k} {v:.4f}" for k, v in r.dice_per_label.items())
            table.add_row(
                r.planner, r.configuration, ",".join(r.folds), f"{r.mean_dice:.4f}", per_label
            )
        console.print(table)
        best = self.best
        if best is not None:
            note = "" if best.complete else " (not all 5 folds trained: provisional)"
            console.print(f"best: {best.configuration} (planner {best.planner}){note}")
            console.print(
                f"predict with: autoseg predict -i IN -o OUT -d {self.dataset} "
                f"-c {best.configuration} --planner {best.planner}"
            )
        console.print("ensembles of configurations are not evaluated yet")


def find_best_configuration(dirs: DatasetDirs) -> BestConfiguration:
    """Rank every trained configuration of a dataset by its mean validation Dice.

    Raises:
        AutosegError: the dataset's last ``autoseg plan`` did not finish.
    """
    require_planned(dirs.work, dirs.name)
    results = []
    for model in find_model_folders(dirs.work.parent, dirs.work.name):
        folder = model.path
        summaries = [(k, model.summary(k)) for k in CV_FOLDS]
        found = [(k, Evaluation.from_json(p)) for k, p in summaries if p.is_file()]
        if not found:
            continue
        labels = found[0][1].labels
        per_label = {
            labels[v]: sum(e.label_means[v].dice for _, e in found) / len(found)
            for v in found[0][1].label_means
        }
        results.append(
            ConfigurationResult(
                planner=folder.parent.name,
                configuration=folder.name,
                folds=tuple(k for k, _ in found),
                mean_dice=sum(e.mean_dice for _, e in found) / len(found),
                dice_per_label=per_label,
            )
        )
    return BestConfiguration(dataset=dirs.name, results=tuple(results))
