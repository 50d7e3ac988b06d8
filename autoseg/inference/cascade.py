"""The 3d_lowres -> 3d_cascade_fullres cascade: the low-resolution segmentation as extra inputs.

``3d_cascade_fullres`` is the 3d_fullres network with one more input channel per foreground
label: the one-hot 3d_lowres segmentation, brought to the full-resolution grid exactly like a
label map (crop, per-label resampling). For training, each case's low-resolution segmentation is
its 3d_lowres cross-validation prediction (the fold that did not train on it), prepared once by
``prepare_previous_stage`` into the cascade's model folder (``ModelFolder.previous_stage_dir``,
keyed by the SHA-256 of each source prediction, so a retrained 3d_lowres is picked up). For
prediction, ``Predictor`` runs the 3d_lowres model first (``previous_stage_input``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from autoseg.data.dataset import load_dataset
from autoseg.data.io import Image, file_ending, read_array, read_image, strip_ending
from autoseg.data.model_folder import CV_FOLDS, ModelFolder
from autoseg.data.paths import DatasetDirs
from autoseg.data.plans import Configuration, Plans
from autoseg.errors import AutosegError
from autoseg.preprocessing.case_store import CaseProperties
from autoseg.preprocessing.preprocess import preprocess_image
from autoseg.serial import atomic_output, atomic_write_text, file_sha256

log = logging.getLogger(__name__)

__all__ = [
    "input_channels",
    "one_hot_channels",
    "prepare_previous_stage",
    "previous_stage_input",
]

PreviousStage = Callable[[Image, str], np.ndarray]  # (image, case id) -> (Z, Y, X) label map


def input_channels(plans: Plans, config: Configuration) -> int:
    """The network's input channels: the image's, plus one per foreground label in a cascade."""
    extra = len(plans.foreground_labels) if config.previous_stage else 0
    return len(plans.channels) + extra


def one_hot_channels(seg: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """``(*S)`` label map -> float32 ``(len(labels), *S)``: 1 where the map holds that label."""
    return np.stack([seg == v for v in labels]).astype(np.float32)


def cv_predictions(dirs: DatasetDirs, plans: Plans, config: Configuration) -> dict[str, Path]:
    """case id -> the 3d_lowres cross-validation prediction of that case.

    Raises:
        AutosegError: not all 5 folds of the previous stage are validated.
    """
    lowres = ModelFolder(dirs.model_folder(plans.plans_name, config.previous_stage or ""))
    missing = [k for k in CV_FOLDS if k not in lowres.validated_folds()]
    if missing:
        raise AutosegError(
            f"{lowres.path}: {config.name} trains on the cross-validation predictions of "
            f"{config.previous_stage}; train (and validate) its fold(s) {', '.join(missing)} "
            "first"
        )
    found: dict[str, Path] = {}
    for fold in CV_FOLDS:
        for path in sorted(lowres.validation_dir(fold).iterdir()):
            if path.name.startswith(".") or file_ending(path) is None:
                continue  # hidden, or CASE.npz probabilities
            found[strip_ending(path)] = path
    return found


def prepare_previous_stage(dirs: DatasetDirs, plans: Plans, config: Configuration) -> Path:
    """Write every training case's low-resolution segmentation on the full-resolution grid.

    Returns:
        The folder (``CASE.npy`` uint8 ``(1, Z, Y, X)``; ``index.json`` written last).

    Raises:
        AutosegError: the previous stage is not cross-validated, or a case has no prediction.
    """
    folder = ModelFolder(dirs.model_folder(plans.plans_name, config.name))
    out, index_path = folder.previous_stage_dir, folder.previous_stage_index
    spec = load_dataset(dirs.require_raw())
    sources = cv_predictions(dirs, plans, config)
    absent = [c.case_id for c in spec.cases if c.case_id not in sources]
    if absent:
        raise AutosegError(
            f"{config.previous_stage}: no cross-validation prediction for case(s) "
            f"{', '.join(absent[:5])}"
        )
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    out.mkdir(parents=True, exist_ok=True)
    done = 0
    for case in spec.cases:
        key = file_sha256(sources[case.case_id])
        target = out / f"{case.case_id}.npy"
        if index.get(case.case_id) == key and target.is_file():
            continue
        image = read_image(case.images)
        labels, _ = read_array(sources[case.case_id])
        labels = np.rint(labels).astype(np.int16)
        _, seg, _ = preprocess_image(image, config, labels, case.case_id)
        with atomic_output(target) as (fd, _), os.fdopen(fd, "wb") as fh:
            np.save(fh, seg)
        index[case.case_id] = key
        done += 1
    atomic_write_text(index_path, json.dumps(index, indent=1, sort_keys=True) + "\n")
    log.info("%s: %d previous-stage segmentation(s) prepared in %s", config.name, done, out)
    return out


def previous_stage_input(
    image: Image,
    config: Configuration,
    previous: PreviousStage,
    labels: Sequence[int],
    case_id: str = "",
) -> tuple[np.ndarray, CaseProperties]:
    """The cascade network's input: the preprocessed image and the one-hot previous stage.

    Args:
        image: the case on its own grid.
        config: the cascade configuration.
        previous: gives the case's low-resolution label map on the image's grid.
        labels: the foreground label values, one channel each.
        case_id: names the case in errors.

    Returns:
        ``((C + len(labels), Z, Y, X) float32, properties)``.
    """
    low = np.asarray(previous(image, case_id)).astype(np.int16)
    array, seg, props = preprocess_image(image, config, low, case_id)
    return np.concatenate([array, one_hot_channels(seg[0], labels)]), props
