"""The end of a fold: predict its validation cases from the raw images and score them.

``validate_fold`` writes the fold's ``validation/`` predictions (with probabilities: find-best
averages them to score ensembles of configurations), ``summary.json`` and the done marker, then
the cross-validation's post-processing decision. A cascade stage is validated on the previous
stage's cross-validation predictions, as it was trained.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable

from autoseg.data.bitmaps import companion_files
from autoseg.data.dataset import load_dataset
from autoseg.data.io import file_ending, read_array
from autoseg.data.model_folder import ModelFolder
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Configuration, Plans
from autoseg.evaluation.crossval import decide_cv_postprocessing
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.inference.cascade import cv_predictions
from autoseg.inference.predictor import Predictor, predict_folder
from autoseg.serial import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["validate_fold"]


def validate_fold(
    dirs: DatasetDirs,
    plans: Plans,
    config: Configuration,
    model: ModelFolder,
    fold: str,
    val_cases: Iterable[str],
    device: str,
    compile: bool | None = None,
) -> None:
    """Predict the validation cases of ``fold`` from the raw images and score them.

    Args:
        dirs: the dataset's folders (its raw data is read; without it nothing is done).
        plans: the dataset's plans.
        config: the configuration trained.
        model: its model folder (the fold's final checkpoint must be there).
        fold: the fold's name.
        val_cases: the fold's validation case ids.
        device: where to predict.
        compile: ``torch.compile`` the network (None: on CUDA only).
    """
    raw = dirs.raw
    if raw is None or not raw.is_dir():
        log.warning("raw data of %s not found: validation cases not predicted", dirs.name)
        return
    spec = load_dataset(raw)
    wanted = set(val_cases)
    cases = [c for c in spec.cases if c.case_id in wanted]
    out = model.validation_dir(fold)
    predictor = Predictor.from_folder(
        model.path, folds=[fold], device=device, postprocess=False, compile=compile
    )
    if config.previous_stage:  # validate on the previous stage's CV predictions
        sources = cv_predictions(dirs, plans, config)
        predictor.previous_stage = lambda _, case: read_array(sources[case])[0]
    inputs = [p for c in cases for p in c.images]
    # probabilities too: find-best averages them to score ensembles of configurations
    report = predict_folder(inputs, out, predictor, overwrite=True, save_probabilities=True)
    for problem in report.failed:
        log.warning("validation case failed: %s", problem)
    refs = model.validation_refs(fold)
    if refs.is_dir():  # links of an earlier run may carry another ending: made afresh
        shutil.rmtree(refs)
    refs.mkdir()
    for case in cases:  # each link keeps its label's own ending (.nii and .nii.gz may mix)
        if case.label is not None:
            ending = file_ending(case.label) or spec.file_ending
            (refs / f"{case.case_id}{ending}").symlink_to(case.label.resolve())
            for side in companion_files(case.label):  # a TIFF's spacing sidecar
                (refs / f"{case.case_id}.json").symlink_to(side.resolve())
    evaluation = evaluate_folders(out, refs, labels=plans.labels, regions=plans.regions)
    evaluation.to_json(model.summary(fold))
    means = {evaluation.labels[k]: m.dice for k, m in evaluation.label_means.items()}
    log.info("fold %s validation Dice: %s", fold, means)
    atomic_write_text(model.validation_done(fold), "ok\n")
    decide_cv_postprocessing(model, list(plans.foreground_labels), plans.ignore_label)
