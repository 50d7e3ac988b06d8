"""One training iteration: the network, its optimiser and loss, and the step on a batch.

``TrainingStep`` is what the trainer (``autoseg.train``) and the benchmark
(``autoseg.benchmark``) share, so that what is timed is exactly what trains: the planned network
(optionally wrapped in DistributedDataParallel), SGD with nesterov momentum, Dice +
cross-entropy with deep supervision, bf16 autocast on CUDA, gradient clipping, the host to
device copy of a batch (pinned memory, non-blocking on CUDA) and, with the device augmentation
path (``--augmentation device``), the augmentation of the copied batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from autoseg.plans import Configuration

if TYPE_CHECKING:
    from autoseg.train import TrainSettings


class TrainingStep:
    """The network, optimiser and loss of one configuration, and one step on a batch.

    Args:
        config: the planned configuration.
        in_channels: image channels.
        num_classes: classes, background included.
        device: where the network lives.
        settings: ``seed`` (initial weights), ``initial_lr``, ``momentum``, ``weight_decay``,
            ``grad_clip`` and ``augmentation`` are read.
        distributed: wrap the network in DistributedDataParallel (the process group must
            already be initialised).

    Attributes:
        network: the bare network (its ``state_dict`` is what checkpoints hold).
        model: what is called: ``network`` itself, or its DDP wrapper.
        optimizer: SGD over ``network``'s parameters.
        loss: deep-supervision Dice + CE.
        augmentation: ``cpu`` (the loader augments) or ``device`` (``settings.augmentation``
            resolved for the device).
        augmenter: the ``DeviceAugmentation`` applied by ``device_batch``, or None.
    """

    def __init__(
        self,
        config: Configuration,
        in_channels: int,
        num_classes: int,
        device: torch.device,
        settings: TrainSettings,
        *,
        distributed: bool = False,
    ) -> None:
        from autoseg.augment_device import DeviceAugmentation, resolve_augmentation
        from autoseg.loss import DeepSupervisionLoss, DiceCELoss, deep_supervision_weights
        from autoseg.network import build_network

        self.config, self.device, self.num_classes = config, device, num_classes
        self.grad_clip = settings.grad_clip
        torch.manual_seed(settings.seed)
        self.network = build_network(config, in_channels, num_classes, True).to(device)
        self.model: torch.nn.Module = self.network
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=ids)
        self.optimizer = torch.optim.SGD(
            self.network.parameters(),
            lr=settings.initial_lr,
            momentum=settings.momentum,
            nesterov=True,
            weight_decay=settings.weight_decay,
        )
        weights = deep_supervision_weights(config.num_stages - 1)
        self.loss = DeepSupervisionLoss(DiceCELoss(batch_dice=config.batch_dice), weights)
        self.augmentation = resolve_augmentation(settings.augmentation, device)
        self.augmenter = None
        if self.augmentation == "device":
            self.augmenter = DeviceAugmentation(config.patch_size, device, settings.seed)

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
        image, target = self.augmenter(self._upload(batch["image"]), self._upload(batch["target"]))
        return image, target.long()

    def autocast(self) -> torch.autocast:
        """bf16 autocast on CUDA; a no-op elsewhere."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _targets(self, target: torch.Tensor) -> list[torch.Tensor]:
        from autoseg.loss import downsample_target

        return downsample_target(target, self.config.num_stages - 1, self.config.strides)

    def train_step(self, image: torch.Tensor, target: torch.Tensor) -> float:
        """One SGD step on device tensors; returns the loss (this waits for the device).

        Args:
            image: (B, C, *patch) float32 on the device.
            target: (B, 1, *patch) int64 on the device.
        """
        targets = self._targets(target)
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            outputs = self.model(image)
        loss = self.loss([o.float() for o in outputs], targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def train_batch(self, batch: dict[str, np.ndarray]) -> float:
        """``train_step`` on a loader's batch (copied to the device, augmented there with the
        device path)."""
        return self.train_step(*self.device_batch(batch))

    @torch.no_grad()
    def val_step(self, image: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Loss and Dice counts of device tensors, without training.

        Returns:
            ``(loss, counts)``: counts float64 ``(3, K - 1)`` = TP, FP, FN per foreground class,
            on the CPU.
        """
        from autoseg.loss import dice_counts

        targets = self._targets(target)
        with self.autocast():
            outputs = self.model(image)
        outputs = [o.float() for o in outputs]
        loss = self.loss(outputs, targets)
        tp, fp, fn = dice_counts(outputs[0], target, self.num_classes)
        return float(loss), torch.stack([tp, fp, fn]).double().cpu()

    def val_batch(self, batch: dict[str, np.ndarray]) -> tuple[float, torch.Tensor]:
        """``val_step`` on a loader's batch (copied to the device first)."""
        return self.val_step(*self.to_device(batch))
