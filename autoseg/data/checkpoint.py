"""Checkpoints that load without running foreign code.

A checkpoint is a plain dict of tensors saved with ``torch.save``: ``model`` (state dict),
``optimizer`` (optional state dict, tensors and numbers only) and ``meta`` (JSON text stored as a
uint8 tensor). Loading always uses ``torch.load(weights_only=True)``, which refuses pickled
objects; such a file is reported as untrusted, not executed. Writes go through a temp file and a
rename, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoseg.errors import AutosegError
from autoseg.serial import atomic_output, from_dict, temp_files, to_dict

FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself (stored as JSON inside the file).

    Attributes:
        configuration: the configuration's name (``3d_fullres``, ...).
        fold: ``"0"`` .. ``"4"`` or ``"all"``.
        epoch: the last finished epoch (0-based).
        num_classes: classes, background included; None when not recorded.
        in_channels: input channels; None when not recorded.
        plans: the plans trained with, as plain JSON.
        settings: the ``TrainSettings``, as plain JSON.
        history: the training curves (``autoseg.training.progress.History.to_dict``).
        augmentation: where training batches were augmented (``cpu`` or ``device``).
        loss: the registered loss trained with (``autoseg.training.losses.options``); empty in
        checkpoints
            written before losses had names (they trained ``dice_ce``).
        autoseg_version: the version that wrote it.
        iteration: training iterations already done in epoch ``epoch + 1`` (a checkpoint saved
            on a stop signal, ``autoseg.training.preemption``); 0 when that epoch has not begun.
        iteration_losses: the training losses of those iterations.
        recipe: ``autoseg.data.recipe.recipe_digest`` of ``plans`` for this configuration (empty in
            checkpoints written before recipes; the checks compare ``plans`` themselves).
    """

    configuration: str = ""
    fold: str = ""
    epoch: int = 0
    num_classes: int | None = None
    in_channels: int | None = None
    plans: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)
    augmentation: str = ""
    loss: str = ""
    autoseg_version: str = ""
    iteration: int = 0
    iteration_losses: tuple[float, ...] = ()
    recipe: str = ""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint file holds."""

    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    meta: CheckpointMeta


def _encode_meta(meta: CheckpointMeta) -> torch.Tensor:
    text = json.dumps(to_dict(meta), sort_keys=True)
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).clone()


def _decode_meta(tensor: torch.Tensor) -> CheckpointMeta:
    return from_dict(CheckpointMeta, json.loads(bytes(tensor.cpu().numpy().tobytes()).decode()))


def save_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any] | None,
    meta: CheckpointMeta,
) -> None:
    """Save atomically (temp file in the same folder, then rename).

    Args:
        path: destination file.
        model_state: the network's ``state_dict()``.
        optimizer_state: the optimizer's ``state_dict()`` or None.
        meta: what the checkpoint says about itself (configuration, fold, epoch, ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format_version": torch.tensor(FORMAT_VERSION),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "meta": _encode_meta(meta),
    }
    if optimizer_state is not None:
        payload["optimizer"] = optimizer_state
    for stale in temp_files(path):  # from a killed run
        stale.unlink(missing_ok=True)
    # serialised in memory first, then written in one call: a full disk is then an OSError
    # naming the file (torch's own writer turns it into "unexpected pos" RuntimeErrors)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_output(path) as (fd, _), os.fdopen(fd, "wb") as fh:
        fh.write(buffer.getbuffer())
        fh.flush()


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False
) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint``, weights only.

    Args:
        path: the checkpoint file.
        map_location: where tensors go.
        mmap: memory-map the file instead of reading it (cheap when only ``meta`` is wanted).

    Raises:
        AutosegError: the file is missing, corrupt, holds pickled objects (refused: loading them
            could run foreign code) or is not an autoseg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise AutosegError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        text = str(exc)
        if "GLOBAL" in text or "Unsupported global" in text:  # a class or function to import
            raise AutosegError(
                f"{path}: refused: the checkpoint contains pickled Python objects, which could run "
                "foreign code; autoseg only loads plain tensors and JSON"
            ) from exc
        # torch's weights-only message is long; its last part says what it met
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
        first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        raise AutosegError(
            f"{path}: not a readable checkpoint ({detail.group(1) if detail else first})"
        ) from exc
    if not isinstance(payload, dict) or "model" not in payload or "meta" not in payload:
        raise AutosegError(f"{path}: not an autoseg checkpoint (no 'model' and 'meta' entries)")
    try:
        meta = _decode_meta(payload["meta"])
    except (
        ValueError,
        TypeError,
        KeyError,
        UnicodeDecodeError,
        AttributeError,
        RecursionError,
    ) as exc:
        raise AutosegError(f"{path}: checkpoint metadata is corrupt") from exc
    return Checkpoint(
        model_state=payload["model"], optimizer_state=payload.get("optimizer"), meta=meta
    )
