"""One training iteration: the network, its optimiser and loss, and the step on a batch.

``TrainingStep`` is what the trainer (``autoseg.training.train``) and the benchmark
(``autoseg.cli.benchmark``) share, so that what is timed is exactly what trains: the planned network
(optionally wrapped in DistributedDataParallel), SGD with nesterov momentum, Dice +
cross-entropy with deep supervision, bf16 autocast (on CUDA, and on a CPU with native bf16 unless
``cpu_bf16`` is False), gradient clipping, the host to device copy of a batch (pinned memory,
non-blocking on CUDA) and, with the device augmentation path (``--augmentation device``), the
augmentation of the copied batch.

On the CPU, bf16 autocast halves the time of a 3d_fullres Hippocampus step (the convolutions,
about 85% of it, run in oneDNN's bf16 kernels) with the loss curve unchanged within seed-to-seed
noise (docs/benchmarks.md); weights, gradients, optimiser state and the loss stay float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from autoseg.data.plans import Configuration
from autoseg.data.regions import Region
from autoseg.device import autocast, cpu_has_bf16
from autoseg.errors import AutosegError
from autoseg.networks.unet import build_network
from autoseg.training.augment.cascade_device import DevicePreviousStage
from autoseg.training.augment.elastic_device import DeviceElastic
from autoseg.training.augment.pipeline_device import DeviceAugmentation, resolve_augmentation
from autoseg.training.losses.dice_ce import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    dice_counts,
    downsample_target,
)
from autoseg.training.losses.region import RegionDiceBCELoss, region_dice_counts


@dataclass(frozen=True)
class OptimizerSettings:
    """SGD with nesterov momentum, as nnU-Net trains.

    Attributes:
        initial_lr: learning rate at epoch 0 (the trainer decays it).
        momentum: nesterov momentum.
        weight_decay: L2 weight decay.
        grad_clip: gradient norm clipping threshold.
    """

    initial_lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0


def default_loss(
    config: Configuration, ignore_label: int | None = None, regions: Sequence[Region] = ()
) -> nn.Module:
    """Dice + cross-entropy over the deep-supervision outputs of ``config``'s network
    (voxels labelled ``ignore_label`` excluded); Dice + BCE per region with ``regions``."""
    weights = deep_supervision_weights(config.num_stages - 1)
    if regions:
        return DeepSupervisionLoss(RegionDiceBCELoss(regions, config.batch_dice), weights)
    base = DiceCELoss(batch_dice=config.batch_dice, ignore_index=ignore_label)
    return DeepSupervisionLoss(base, weights)


class TrainingStep:
    """The network, optimiser and loss of one configuration, and one step on a batch.

    Args:
        config: the planned configuration.
        in_channels: image channels.
        num_classes: classes, background included.
        device: where the network lives.
        optimizer: the SGD settings.
        seed: seeds the network's initial weights and the device augmentation.
        distributed: wrap the network in DistributedDataParallel (the process group must
            already be initialised).
        loss: ``loss(outputs: list, targets: list) -> scalar`` over the deep-supervision
            outputs; None: ``default_loss(config)``.
        augmentation: ``cpu``, ``device`` or ``auto`` (see ``resolve_augmentation``).
        ignore_label: target value of unannotated voxels (``Plans.ignore_label``), excluded
            from the default loss and the pseudo-Dice counts.
        regions: ``Plans.regions``: one sigmoid output per region (``num_classes`` of them).
        cpu_bf16: on a CPU with native bf16, run the network under bf16 autocast.
        elastic: with the device path, also deform the batches elastically
            (``autoseg.training.augment.elastic_device``; the CPU path does it in the loader).
        previous_labels: a cascade stage's foreground labels: with the device path, the
            loader's ``previous`` label maps move with the target, then become these one-hot
            channels, perturbed (``autoseg.training.augment.cascade_device``).

    Attributes:
        network: the bare network (its ``state_dict`` is what checkpoints hold).
        model: what is called: ``network`` itself, or its DDP wrapper.
        optimizer: SGD over ``network``'s parameters.
        loss: the loss (deep-supervision Dice + CE by default).
        augmentation: ``cpu`` (the loader augments) or ``device`` (``augmentation`` resolved
            for the device).
        augmenter: the ``DeviceAugmentation`` applied by ``device_batch``, or None.
        bf16: whether the network runs under bf16 autocast (CUDA, or ``cpu_bf16`` on a CPU
            with native bf16).
        elastic: the ``DeviceElastic`` applied after it, or None.
        previous_stage: the ``DevicePreviousStage`` applied last (a cascade), or None.
    """

    def __init__(
        self,
        config: Configuration,
        in_channels: int,
        num_classes: int,
        device: torch.device,
        optimizer: OptimizerSettings = OptimizerSettings(),  # noqa: B008 - frozen, immutable
        *,
        seed: int = 0,
        distributed: bool = False,
        loss: nn.Module | None = None,
        augmentation: str = "auto",
        ignore_label: int | None = None,
        regions: Sequence[Region] = (),
        cpu_bf16: bool = True,
        elastic: bool = False,
        previous_labels: Sequence[int] = (),
    ) -> None:
        self.config, self.device, self.num_classes = config, device, num_classes
        self.ignore_label, self.regions = ignore_label, tuple(regions)
        self.grad_clip = optimizer.grad_clip
        self.bf16 = device.type == "cuda" or (device.type == "cpu" and cpu_bf16 and cpu_has_bf16())
        torch.manual_seed(seed)
        self.network = build_network(config, in_channels, num_classes, True).to(device)
        self.model: torch.nn.Module = self.network
        if distributed:
            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=ids)
        self.optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=optimizer.initial_lr,
            momentum=optimizer.momentum,
            nesterov=True,
            weight_decay=optimizer.weight_decay,
        )
        self.loss = loss if loss is not None else default_loss(config, ignore_label, regions)
        self.augmentation = resolve_augmentation(augmentation, device)
        self.augmenter = None
        if self.augmentation == "device":
            self.augmenter = DeviceAugmentation(config.patch_size, device, seed)
        self.elastic = None
        if self.augmentation == "device" and elastic:
            self.elastic = DeviceElastic(config.patch_size, device, seed)
        self.previous_stage = None
        if self.augmentation == "device" and previous_labels:
            self.previous_stage = DevicePreviousStage(previous_labels, seed)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of every parameter group."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def to_device(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's batch as tensors on the device.

        Args:
            batch: ``image`` (B, C, *patch) float32 and ``target`` (B, 1, *patch) integers.

        Returns:
            ``(image float32, target int64)``; on CUDA copied from pinned memory without blocking.
        """
        return self._upload(batch["image"]), self._upload(batch["target"]).long()

    def _upload(self, array: np.ndarray) -> torch.Tensor:
        cuda = self.device.type == "cuda"
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if cuda:
            tensor = tensor.pin_memory()
        return tensor.to(self.device, non_blocking=cuda)

    def device_batch(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch on the device, augmented there when ``augmenter`` is set (the
        loader then yields un-augmented enlarged regions)."""
        if self.augmenter is None:
            return self.to_device(batch)
        # labels travel as they come (int16) and widen after the crop to the patch
        image, target = self._upload(batch["image"]), self._upload(batch["target"])
        cascade = "previous" in batch  # a second label channel, moved with the first
        if cascade != (self.previous_stage is not None):
            raise ValueError("a cascade batch needs previous_labels, and only a cascade batch")
        if cascade:
            target = torch.cat([target, self._upload(batch["previous"]).to(target.dtype)], 1)
        image, target = self.augmenter(image, target)
        if self.elastic is not None:
            image, target = self.elastic(image, target)
        if cascade:
            image, target = self.previous_stage(image, target[:, 1:]), target[:, :1]
        return image, target.long()

    def _targets(self, target: torch.Tensor) -> list[torch.Tensor]:
        return downsample_target(target, self.config.num_stages - 1, self.config.strides)

    def _loss(
        self, outputs: list[torch.Tensor], target: torch.Tensor, weight: torch.Tensor | None
    ) -> torch.Tensor:
        targets = self._targets(target)
        if weight is None:
            return self.loss(outputs, targets)
        return self.loss(outputs, targets, self._targets(weight))

    def train_step(
        self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> float:
        """One SGD step on device tensors; returns the loss (this waits for the device).

        Args:
            image: (B, C, *patch) float32 on the device.
            target: (B, 1, *patch) int64 on the device.
            weight: (B, 1, *patch) float32 per-voxel loss weights (``border_ce``) or None.
        """
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, cpu_bf16=self.bf16):
            outputs = self.model(image)
        loss = self._loss([o.float() for o in outputs], target, weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def train_batch(self, batch: dict[str, np.ndarray]) -> float:
        """``train_step`` on a loader's batch (copied to the device, augmented there with the
        device path)."""
        return self.train_step(*self.device_batch(batch), self._weight(batch))

    def _weight(self, batch: dict[str, np.ndarray]) -> torch.Tensor | None:
        """The batch's border weight map on the device (``weight`` key), or None."""
        if "weight" not in batch:
            return None
        if self.augmenter is not None:
            raise AutosegError(
                "border weight maps are augmented on the CPU only: train with --augmentation cpu"
            )
        return self._upload(batch["weight"]).float()

    @torch.no_grad()
    def val_step(
        self, image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[float, torch.Tensor]:
        """Loss and Dice counts of device tensors, without training.

        Returns:
            ``(loss, counts)``: counts float64 ``(3, K - 1)`` = TP, FP, FN per foreground class
            (``(3, R)`` per region),
            on the CPU.
        """
        with autocast(self.device, cpu_bf16=self.bf16):
            outputs = self.model(image)
        outputs = [o.float() for o in outputs]
        loss = self._loss(outputs, target, weight)
        if self.regions:
            tp, fp, fn = region_dice_counts(outputs[0], target, self.regions)
        else:
            tp, fp, fn = dice_counts(outputs[0], target, self.num_classes, self.ignore_label)
        return float(loss), torch.stack([tp, fp, fn]).double().cpu()

    def val_batch(self, batch: dict[str, np.ndarray]) -> tuple[float, torch.Tensor]:
        """``val_step`` on a loader's batch (copied to the device first)."""
        weight = None if "weight" not in batch else self._upload(batch["weight"]).float()
        return self.val_step(*self.to_device(batch), weight)
