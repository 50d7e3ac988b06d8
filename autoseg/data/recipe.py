"""A model folder holds one recipe: what a fold was trained with, and the checks that folds agree.

The *recipe* of a fold is the part of the plans its training and its predictions depend on: its
configuration (preprocessing: spacing, normalisation, thick axis; the network: topology, patch,
batch, blocks), a cascade's previous stage, the channels, labels, regions and the planner.
``recipe_digest`` is its canonical hash; every checkpoint records it (``CheckpointMeta.recipe``)
beside the plans themselves, and the checks compare the plans recorded in each checkpoint (so a
digest of an older autoseg never decides alone).

- ``train`` refuses to add a fold whose recipe differs from the folds already in the model
  folder (``check_new_fold``); ``--replace`` moves the old folds aside.
- ``predict`` (so ``load_model``, ``import``, the validation), ``export`` and ``find-best``
  refuse a fold whose checkpoint's recipe differs from the folder's ``plans.json``
  (``check_fold_recipe``), naming the fold and what differs.
- ``train --resume`` refuses settings that change the run's meaning (``check_resume``), and a
  ``--planner`` other than the run's (``refuse_resume_elsewhere``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from autoseg.data.checkpoint import CheckpointMeta, load_checkpoint
from autoseg.data.model_folder import ModelFolder
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError
from autoseg.serial import from_dict, to_dict

log = logging.getLogger(__name__)

__all__ = [
    "RESUME_REFUSED",
    "check_fold_recipe",
    "check_model_folder",
    "check_new_fold",
    "check_resume",
    "recipe",
    "recipe_differences",
    "recipe_digest",
    "refuse_resume_elsewhere",
    "trained_folds",
]

#: configuration fields that neither training nor prediction read (a planner's estimate, a
#: statistic, the preprocessed folder's name): they do not make a recipe differ
_NOT_RECIPE = ("estimated_memory_gb", "median_shape", "data_identifier")

#: ``TrainSettings`` fields whose change makes a resumed run another run (refused); every other
#: field (device, workers, checkpoint_every, validate, tracking, compile, cpu_bf16, val_iterations,
#: augmentation engine) only says how the same run is carried out. ``epochs`` may grow.
RESUME_REFUSED = ("loss", "seed", "augment", "iterations", "optimizer")


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key in value:  # the dataclass order: the main field first
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):  # normalization[0].scheme, ...
            _flatten(item, f"{prefix}[{i}]", out)
    else:
        out[prefix] = value


def recipe(plans: Plans, configuration: str) -> dict[str, Any]:
    """The recipe of ``configuration`` in ``plans``, flat: ``"patch_size" -> [..]``, ...

    Raises:
        AutosegError: the configuration (or its previous stage) is not in the plans.
    """
    config = plans.configuration(configuration)
    whole: dict[str, Any] = {
        "planner": plans.planner,
        "channels": list(plans.channels),
        "labels": {str(k): v for k, v in sorted(plans.labels.items())},
        "regions": to_dict(plans.regions),
        "configuration": {k: v for k, v in to_dict(config).items() if k not in _NOT_RECIPE},
    }
    if config.previous_stage:
        previous = to_dict(plans.configuration(config.previous_stage))
        whole["previous_stage"] = {k: v for k, v in previous.items() if k not in _NOT_RECIPE}
    flat: dict[str, Any] = {}
    _flatten(whole, "", flat)
    return {k.removeprefix("configuration."): v for k, v in flat.items()}


def recipe_digest(plans: Plans, configuration: str) -> str:
    """The canonical hash of ``recipe(plans, configuration)`` (16 hex digits)."""
    text = json.dumps(recipe(plans, configuration), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_differences(
    first: Mapping[str, Any], second: Mapping[str, Any], names: tuple[str, str]
) -> list[str]:
    """What differs between two recipes, one line per field: ``patch_size [..] (A) vs [..] (B)``."""
    lines = []
    for key in [*first, *(k for k in second if k not in first)]:  # the recipe's own order
        a, b = first.get(key, "(none)"), second.get(key, "(none)")
        if a != b:
            lines.append(f"{key} {json.dumps(a)} ({names[0]}) vs {json.dumps(b)} ({names[1]})")
    return lines


def _summary(lines: list[str], at_most: int = 3) -> str:
    more = f"; and {len(lines) - at_most} more" if len(lines) > at_most else ""
    return "; ".join(lines[:at_most]) + more


def _recorded_plans(meta: CheckpointMeta, source: Path) -> Plans | None:
    """The plans a checkpoint records (None for a checkpoint that records none)."""
    if not meta.plans:
        return None
    try:
        return from_dict(Plans, meta.plans)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AutosegError(f"{source}: the plans recorded in the checkpoint are damaged") from exc


def _fold_differences(
    meta: CheckpointMeta, source: Path, plans: Plans, configuration: str, plans_name: str
) -> list[str]:
    """How the recipe recorded in a checkpoint differs from ``plans`` (empty: the same).

    A checkpoint recording no plans is compared by its digest when it has one; one recording
    neither (written by hand, or before recipes) cannot be checked and passes with a warning.
    """
    recorded = _recorded_plans(meta, source)
    name = meta.configuration or configuration
    if recorded is None:
        if meta.recipe and meta.recipe != recipe_digest(plans, configuration):
            return [f"recipe digest {meta.recipe} (checkpoint) vs {plans_name}"]
        if not meta.recipe:
            log.warning("%s records no plans: its recipe cannot be checked", source)
        return []
    if name not in recorded.configurations:
        return [f"configuration '{name}' is not in the checkpoint's plans"]
    return recipe_differences(
        recipe(recorded, name), recipe(plans, configuration), ("checkpoint", plans_name)
    )


def check_fold_recipe(
    folder: ModelFolder, plans: Plans, configuration: str, fold: str, path: Path, meta: Any
) -> None:
    """Refuse a fold trained with another recipe than the folder's ``plans.json``.

    Args:
        folder: the model folder.
        plans: its ``plans.json``.
        configuration: the configuration predicted.
        fold: the fold's name.
        path: its checkpoint file.
        meta: the checkpoint's ``CheckpointMeta``.

    Raises:
        AutosegError: naming the fold, the checkpoint and what differs.
    """
    lines = _fold_differences(meta, path, plans, configuration, "plans.json")
    if lines:
        raise AutosegError(
            f"{path}: fold {fold} was trained with other plans than {folder.plans}: "
            f"{_summary(lines)}. Predicting with these plans would preprocess its inputs unlike "
            f"its training; a model folder holds one recipe. Retrain fold {fold} (`autoseg train "
            "... --replace` moves the old folds aside), or restore the plans.json it was "
            "trained with"
        )


def check_model_folder(folder: ModelFolder, folds: Iterable[str]) -> None:
    """``check_fold_recipe`` for ``folds`` of ``folder`` (their final checkpoints; only the
    metadata is read), as ``find-best`` does before it scores a configuration.

    Raises:
        AutosegError: plans.json is unreadable, or a fold was trained with other plans.
    """
    try:
        plans = Plans.from_json(folder.plans)
    except (ValueError, TypeError, KeyError) as exc:
        raise AutosegError(f"{folder.plans}: not valid autoseg plans ({exc})") from exc
    for fold in folds:
        path = folder.checkpoint(fold)
        if path.is_file():
            meta = load_checkpoint(path, mmap=True).meta
            check_fold_recipe(folder, plans, meta.configuration or folder.name, fold, path, meta)


def trained_folds(folder: ModelFolder) -> dict[str, tuple[Path, CheckpointMeta]]:
    """fold -> (checkpoint, its metadata) for every fold with a checkpoint (final first, then
    latest, then best). Only the metadata is read (the file is memory-mapped)."""
    found: dict[str, tuple[Path, CheckpointMeta]] = {}
    for name in ("final", "latest", "best"):
        for fold in folder.folds_with(name):
            if fold not in found:
                path = folder.checkpoint(fold, name)
                found[fold] = (path, load_checkpoint(path, mmap=True).meta)
    return found


def check_new_fold(
    folder: ModelFolder, plans: Plans, configuration: str, fold: str, replace: bool
) -> Path | None:
    """Before ``train`` writes a fold: refuse (or, with ``replace``, move aside) folds of
    another recipe already in the model folder.

    Args:
        folder: the model folder the fold goes to.
        plans: the plans the fold is trained with now.
        configuration: the configuration trained.
        fold: the fold about to be trained (its own older checkpoints count too: a resumed
            run keeps its recipe).
        replace: move the model folder aside (``ModelFolder.set_aside``) when its folds differ.

    Returns:
        Where the old folds were moved, or None.

    Raises:
        AutosegError: folds of another recipe are there and ``replace`` is False.
    """
    if not folder.path.is_dir():
        return None
    differing: dict[str, list[str]] = {}
    for name, (path, meta) in trained_folds(folder).items():
        lines = _fold_differences(meta, path, plans, configuration, "the plans now")
        if lines:
            differing[name] = lines
    if not differing:
        return None
    folds = ", ".join(differing)
    if replace:
        moved = folder.set_aside()
        log.warning(
            "%s: fold(s) %s were trained with other plans; the model folder was moved aside to %s",
            folder.path,
            folds,
            moved,
        )
        return moved
    first = next(iter(differing))
    resumed = " (--resume continues a run only with its own plans)" if fold in differing else ""
    raise AutosegError(
        f"{folder.path}: fold(s) {folds} were trained with other plans than the ones now in the "
        f"home (fold {first}: {_summary(differing[first])}){resumed}. A model folder holds one "
        "recipe: train into another --home for a separate model, or pass --replace to move the "
        f"old folds aside (to {folder.replaced_root})"
    )


def check_resume(
    source: Path, meta: CheckpointMeta, settings: Mapping[str, Any], done_epochs: int
) -> None:
    """Refuse to resume a run with settings that change its meaning.

    ``loss``, ``seed``, ``augment``, ``iterations`` and the optimiser are the run's; ``epochs``
    may grow (a finished run is then extended, the poly learning rate recomputed over the new
    total: see docs/reliability.md) but not shrink (that would change the schedule of the
    epochs already done).

    Args:
        source: the checkpoint resumed from.
        meta: its metadata (``settings``: the ``TrainSettings`` it was written with).
        settings: the ``TrainSettings`` now, as plain JSON.
        done_epochs: epochs the checkpoint has finished.

    Raises:
        AutosegError: naming each option that differs, with both values.
    """
    recorded = dict(meta.settings)
    if meta.loss and "loss" not in recorded:
        recorded["loss"] = meta.loss
    lines = []
    for key in RESUME_REFUSED:
        if key in recorded and not _same_json(recorded[key], settings.get(key)):
            option = {"optimizer": "optimiser settings"}.get(key, f"--{key}")
            lines.append(
                f"{option} {json.dumps(settings.get(key))} (now) vs "
                f"{json.dumps(recorded[key])} (the run)"
            )
    epochs, planned = int(settings.get("epochs", 0)), recorded.get("epochs")
    if epochs < done_epochs or (isinstance(planned, int) and epochs < planned):
        lines.append(
            f"--epochs {epochs} (now) vs {planned} (the run): a run is extended, never shortened "
            f"(it has done {done_epochs} epochs)"
        )
    if lines:
        raise AutosegError(
            f"{source}: --resume would change the run: {'; '.join(lines)}. Resume with the "
            "run's own options (a larger --epochs extends it), or train a new fold (another "
            "--home, or delete the fold folder)"
        )


def refuse_resume_elsewhere(folder: ModelFolder, fold: str) -> None:
    """``--resume`` of a fold with no run in ``folder``: refuse when the fold has a run under
    another planner (``--planner`` differs from the run's), rather than start a new run.

    Raises:
        AutosegError: naming the run found and the ``--planner`` that continues it.
    """
    for other in sorted(folder.path.parent.parent.glob(f"*/{folder.name}")):
        if other == folder.path:
            continue
        runs = ModelFolder(other)
        if any(runs.checkpoint(fold, c).is_file() for c in ("latest", "final")):
            raise AutosegError(
                f"--resume: {folder.path} holds no run of fold {fold}; the fold's run is in "
                f"{runs.fold_dir(fold)}, planner '{other.parent.name}': resume it with "
                f"--planner {other.parent.name} (a run keeps its planner), or leave out --resume "
                "to start a new run with this planner"
            )


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(to_dict(a), sort_keys=True) == json.dumps(to_dict(b), sort_keys=True)
