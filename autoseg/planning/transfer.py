"""Transfer learning: another dataset's topology (``plan --plans-from``), and its weights
(``train --pretrained``).

``plans_from`` keeps a source dataset's network topology (spacing, patch, strides, kernels,
features, blocks, batch) for every configuration it planned, and takes everything that belongs
to the new data from the new dataset's own plans: its name, channels, labels, per-channel
normalisation and median shape. Training on the new dataset then builds networks whose weights
fit the source model's (nnU-Net's move_plans_between_datasets, without carrying the source's
CT intensity statistics over).

``load_pretrained`` fills a freshly built network with the tensors of an autoseg checkpoint or
model folder wherever name and shape agree. The segmentation heads (the decoder's 1x1 output
convolutions) are always left at their new initialisation, and so is every tensor whose shape
differs (another channel count, another label set) or that the source lacks; the trainer logs
both lists.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autoseg.data.model_folder import ModelFolder
from autoseg.data.plans import Plans
from autoseg.errors import AutosegError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = ["TransferReport", "load_pretrained", "plans_from", "pretrained_checkpoint"]

#: the fields of a configuration that make its network (and its weights' shapes)
TOPOLOGY_FIELDS = (
    "spacing",
    "patch_size",
    "batch_size",
    "strides",
    "kernel_sizes",
    "features_per_stage",
    "network",
    "blocks_per_stage",
    "anisotropic_axis",
    "batch_dice",
    "previous_stage",
    "estimated_memory_gb",
    "data_identifier",
)


def plans_from(source: Plans, own: Plans) -> Plans:
    """``own``'s plans with ``source``'s topology for every configuration ``source`` planned.

    Args:
        source: the plans of the dataset whose model will be fine-tuned.
        own: the new dataset's plans, planned by the same planner from its own fingerprint.

    Returns:
        Plans named for the new dataset, with its channels, labels and normalisation.

    Raises:
        AutosegError: the two plans have no configuration in common.
    """
    common = [name for name in source.configurations if name in own.configurations]
    if not common:
        raise AutosegError(
            f"plans of {source.dataset_name} and {own.dataset_name} share no configuration "
            f"({', '.join(source.configurations)} vs {', '.join(own.configurations)})"
        )
    configurations = {}
    for name in common:
        topology = {f: getattr(source.configurations[name], f) for f in TOPOLOGY_FIELDS}
        configurations[name] = dataclasses.replace(own.configurations[name], **topology)
    return dataclasses.replace(own, configurations=configurations)


def pretrained_checkpoint(source: str | Path, configuration: str) -> Path:
    """The checkpoint file that ``--pretrained SOURCE`` means.

    Args:
        source: a checkpoint file, or a model folder (its fold ``all`` when trained, else its
            first trained fold, ``checkpoint_final.pt``).
        configuration: the configuration being trained (a model folder of another one is
            refused: its topology differs).

    Raises:
        AutosegError: neither a checkpoint nor a model folder with a trained fold.
    """
    path = Path(source)
    if path.is_file():
        return path
    folder = ModelFolder(path)
    if not path.is_dir():
        raise AutosegError(f"{path}: --pretrained: no such checkpoint file or model folder")
    folds = folder.folds_with("final")
    if not folds:
        raise folder.not_a_model("no fold_<k>/checkpoint_final.pt")
    if folder.name != configuration:
        raise AutosegError(
            f"{path}: --pretrained model is a {folder.name} model; training {configuration}"
        )
    fold = "all" if "all" in folds else folds[0]
    return folder.checkpoint(fold)


@dataclass(frozen=True)
class TransferReport:
    """What ``load_pretrained`` did.

    Attributes:
        source: the checkpoint file read.
        loaded: state-dict keys copied from it.
        reinitialised: keys left at their new initialisation, each with why.
    """

    source: Path
    loaded: tuple[str, ...]
    reinitialised: tuple[tuple[str, str], ...]


def _head_keys(network: torch.nn.Module) -> set[str]:
    heads = getattr(getattr(network, "decoder", None), "heads", None)
    if heads is None:
        return set()
    return {f"decoder.heads.{k}" for k in heads.state_dict()}


def load_pretrained(
    network: torch.nn.Module, source: str | Path, configuration: str
) -> TransferReport:
    """Copy compatible weights of an autoseg model into ``network`` (in place).

    Args:
        network: the freshly built network to fine-tune.
        source: a checkpoint file or a model folder (see ``pretrained_checkpoint``).
        configuration: the configuration being trained.

    Returns:
        Which keys were loaded and which re-initialised (heads, shape mismatches, absent).

    Raises:
        AutosegError: an unreadable checkpoint, or one of which nothing fits.
    """
    # heavy (torch): imported here so that `autoseg plan --plans-from` starts without it
    from autoseg.data.checkpoint import load_checkpoint

    path = pretrained_checkpoint(source, configuration)
    theirs = load_checkpoint(path).model_state  # weights only
    ours = network.state_dict()
    heads = _head_keys(network)
    loaded, skipped = [], []
    update = {}
    for key, tensor in ours.items():
        if key in heads:
            skipped.append((key, "segmentation head"))
        elif key not in theirs:
            skipped.append((key, "not in the pretrained model"))
        elif tuple(theirs[key].shape) != tuple(tensor.shape):
            skipped.append(
                (key, f"shape {tuple(theirs[key].shape)} there, {tuple(tensor.shape)} here")
            )
        else:
            update[key] = theirs[key].to(dtype=tensor.dtype)
            loaded.append(key)
    if not loaded:
        raise AutosegError(
            f"{path}: no weight of the pretrained model fits this network; plan the new dataset "
            "with --plans-from the pretrained one"
        )
    network.load_state_dict({**ours, **update})
    return TransferReport(path, tuple(loaded), tuple(skipped))
