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

from autoseg.data.ignore import mask_ignored
from autoseg.data.io import file_ending, read_array, strip_ending
from autoseg.data.model_folder import CV_FOLDS, ModelFolder, find_model_folders
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Plans
from autoseg.data.recipe import check_model_folder
from autoseg.data.splits import NUM_FOLDS
from autoseg.errors import AutosegError
from autoseg.evaluation.ensemble import evaluate_cv_ensembles
from autoseg.evaluation.report import Evaluation
from autoseg.inference.postprocess import decide_postprocessing
from autoseg.preprocessing.cache import require_planned, require_unchanged

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
                if pred_path.name.startswith(".") or file_ending(pred_path) is None:
                    continue  # hidden, or CASE.npz probabilities
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
class EnsembleScore:
    """Configurations (one, or a pair averaged) scored on their pooled CV probabilities.

    Attributes:
        members: ``(planner, configuration)`` of each member.
        mean_dice: mean over labels of the mean Dice over all cross-validation cases.
        dice_per_label: label name -> mean Dice.
    """

    members: tuple[tuple[str, str], ...]
    mean_dice: float
    dice_per_label: dict[str, float]

    @property
    def name(self) -> str:
        return " + ".join(f"{c} ({p})" for p, c in self.members)


@dataclass(frozen=True)
class BestConfiguration:
    """The ranking ``autoseg find-best`` prints.

    Attributes:
        dataset: the dataset's name.
        results: every trained configuration, by the mean of its folds' validation summaries.
        pooled: the complete configurations whose validation saved probabilities, scored on
            all their CV cases at once, then every pair of them averaged; empty without two.
    """

    dataset: str
    results: tuple[ConfigurationResult, ...]
    pooled: tuple[EnsembleScore, ...] = ()

    @property
    def best(self) -> ConfigurationResult | None:
        complete = [r for r in self.results if r.complete] or list(self.results)
        return max(complete, key=lambda r: r.mean_dice, default=None)

    @property
    def best_pooled(self) -> EnsembleScore | None:
        """The highest pooled score; on a tie the single configuration (listed first)."""
        return max(self.pooled, key=lambda r: r.mean_dice, default=None)

    def commands(self) -> list[str]:
        """The exact commands that predict new cases with the best model or ensemble."""
        best = self.best_pooled
        if best is None or len(best.members) == 1:
            single = self.best
            if best is not None:
                planner, config = best.members[0]
            elif single is not None:
                planner, config = single.planner, single.configuration
            else:
                return []
            return [
                f"autoseg predict -i IN -o OUT -d {self.dataset} -c {config} --planner {planner}"
            ]
        lines = [
            f"autoseg predict -i IN -o OUT_{c} -d {self.dataset} -c {c} --planner {p} "
            "--save-probabilities"
            for p, c in best.members
        ]
        inputs = " ".join(f"-i OUT_{c}" for _, c in best.members)
        return [*lines, f"autoseg ensemble {inputs} -o OUT"]

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
        if self.pooled:
            table = Table(title="pooled over all cross-validation cases (averaged probabilities)")
            for column in ("configuration(s)", "mean Dice", "per label"):
                table.add_column(column)
            for r in self.pooled:
                per_label = ", ".join(f"{k} {v:.4f}" for k, v in r.dice_per_label.items())
                table.add_row(r.name, f"{r.mean_dice:.4f}", per_label)
            console.print(table)
        pooled, best = self.best_pooled, self.best
        if pooled is not None:
            what = "ensemble" if len(pooled.members) > 1 else "configuration"
            console.print(f"best {what}: {pooled.name}, pooled mean Dice {pooled.mean_dice:.4f}")
        elif best is not None:
            note = "" if best.complete else " (not all 5 folds trained: provisional)"
            console.print(f"best: {best.configuration} (planner {best.planner}){note}")
            console.print(
                "ensembles: need two configurations with 5 validated folds and saved probabilities"
            )
        commands = self.commands()
        if commands:
            console.print("predict with:\n" + "\n".join(f"  {c}" for c in commands))


def find_best_configuration(dirs: DatasetDirs, plans: str | None = None) -> BestConfiguration:
    """Rank every trained configuration of a dataset by its mean validation Dice.

    Args:
        dirs: the dataset.
        plans: only the models of this plans name (a planner's or a named plan's); None: all.

    Raises:
        AutosegError: the dataset's last ``autoseg plan`` did not finish, its files changed
            since, ``plans`` names no plans of the dataset, a configuration's folds were
            trained with other plans, or no configuration has a validated fold (nothing to
            compare).
    """
    require_planned(dirs.work, dirs.name)
    require_unchanged(dirs)  # scores of models trained on data that has changed since
    if plans is not None:
        dirs.require_plans(plans)
    results = []
    for model in find_model_folders(dirs.work.parent, dirs.work.name, planner=plans):
        folder = model.path
        summaries = [(k, model.summary(k)) for k in CV_FOLDS]
        found = [(k, Evaluation.from_json(p)) for k, p in summaries if p.is_file()]
        if not found:
            continue
        check_model_folder(model, [k for k, _ in found])  # one recipe, or no score
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
    if not results:
        raise AutosegError(
            f"{dirs.work}: no configuration of {dirs.name} has a validated fold, so there is "
            "nothing to compare; train folds 0-4 (autoseg train, with validation) first"
        )
    pooled = _pooled_scores(dirs, plans)
    return BestConfiguration(dataset=dirs.name, results=tuple(results), pooled=pooled)


def _pooled_scores(dirs: DatasetDirs, plans: str | None) -> tuple[EnsembleScore, ...]:
    """Single complete configurations and every pair, on their pooled CV probabilities."""
    models = [
        m
        for m in find_model_folders(dirs.work.parent, dirs.work.name, planner=plans)
        if len(m.validated_folds()) == NUM_FOLDS and m.plans.is_file()
    ]
    if len(models) < 2:
        return ()
    plans = Plans.from_json(models[0].plans)
    if plans.regions:  # sigmoid outputs: averaging them as classes would be wrong
        return ()
    labels = plans.labels
    scores = []
    for size in (1, 2):
        for result in evaluate_cv_ensembles(models, labels, size):
            names = result.evaluation.labels
            scores.append(
                EnsembleScore(
                    members=tuple((m.path.parent.name, m.name) for m in result.members),
                    mean_dice=result.evaluation.mean_dice,
                    dice_per_label={
                        names[v]: m.dice for v, m in result.evaluation.label_means.items()
                    },
                )
            )
    if not any(len(s.members) == 2 for s in scores):
        return ()
    return tuple(scores)
