"""Loading the trained folds of a model folder, with every check before a case is predicted.

Owns ``load_folds`` (what ``autoseg.inference.predictor.Predictor.from_folder`` reads): the model
folder and its ``plans.json``, which folds (``ModelFolder.default_folds``: the 5
cross-validation folds when all are trained, else ``all``), their checkpoints (each checked
against the folder's plans: ``autoseg.data.recipe``, classes, input channels) and the
cross-validation's ``postprocessing.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.model_folder import ModelFolder, checkpoint_file, named_folds
from autoseg.data.plans import Configuration, Plans
from autoseg.data.recipe import check_fold_recipe
from autoseg.errors import AutosegError
from autoseg.inference.cascade import input_channels
from autoseg.inference.postprocess import PostprocessingDecision


@dataclass(frozen=True)
class LoadedFolds:
    """The checked folds of a model folder.

    Attributes:
        folder: the model folder (resolved).
        plans: its ``plans.json``.
        configuration: the configuration the folds were trained with.
        folds: the fold names, in the order of ``paths`` and ``weights``.
        paths: each fold's checkpoint file.
        weights: each fold's network state dict (on the CPU).
        postprocessing: the post-processing decision, or None (none, or not asked for).
    """

    folder: ModelFolder
    plans: Plans
    configuration: Configuration
    folds: tuple[str, ...]
    paths: tuple[Path, ...]
    weights: tuple[Mapping[str, torch.Tensor], ...]
    postprocessing: PostprocessingDecision | None


def load_folds(
    model_folder: str | Path,
    folds: Sequence[int | str] | None = None,
    checkpoint: str = "final",
    postprocess: bool = True,
) -> LoadedFolds:
    """Read and check the trained folds of a model folder (arguments as for ``from_folder``).

    Raises:
        AutosegError: the folder is not a model folder, a fold or checkpoint is missing or
            does not match the plans (a fold trained with other plans than the folder's
            ``plans.json`` is refused, naming the fold: ``autoseg.data.recipe``).
    """
    # resolved: MODEL/fold_0/.. is MODEL (its name is the configuration), not '..'
    folder = ModelFolder(Path(model_folder).resolve())
    if not folder.path.is_dir():
        raise AutosegError(f"{folder.path}: model folder not found")
    if not folder.plans.is_file():
        raise folder.not_a_model("no plans.json")
    available = folder.folds_with(checkpoint)
    if not available:
        raise folder.not_a_model(f"no fold_<k>/{checkpoint_file(checkpoint)}")
    chosen = folder.default_folds(checkpoint) if folds is None else named_folds(folds)
    missing = [f for f in chosen if f not in available]
    if missing:
        raise AutosegError(
            f"{folder.path}: no {checkpoint_file(checkpoint)} for fold(s) "
            f"{', '.join(missing)}; available: {', '.join(available)}"
        )
    try:
        plans = Plans.from_json(folder.plans)
    except (ValueError, TypeError, KeyError) as exc:
        raise AutosegError(f"{folder.plans}: not valid autoseg plans ({exc})") from exc
    paths = [folder.checkpoint(fold, checkpoint) for fold in chosen]
    checkpoints = [load_checkpoint(path, map_location="cpu") for path in paths]
    names = {c.meta.configuration or folder.name for c in checkpoints}
    if len(names) > 1:
        raise AutosegError(f"{folder.path}: folds trained with different configurations {names}")
    config = plans.configuration(names.pop())
    for fold, path, ckpt in zip(chosen, paths, checkpoints, strict=True):
        check_fold_recipe(folder, plans, config.name, fold, path, ckpt.meta)
        for key, planned in (
            ("num_classes", plans.num_classes),
            ("in_channels", input_channels(plans, config)),
        ):
            recorded = getattr(ckpt.meta, key)
            if recorded is not None and recorded != planned:
                raise AutosegError(f"{path}: {key} {recorded} differs from plans.json")
    decision = None
    if postprocess and folder.postprocessing.is_file():
        decision = PostprocessingDecision.from_json(folder.postprocessing)
    return LoadedFolds(
        folder=folder,
        plans=plans,
        configuration=config,
        folds=tuple(chosen),
        paths=tuple(paths),
        weights=tuple(c.model_state for c in checkpoints),
        postprocessing=decision,
    )
