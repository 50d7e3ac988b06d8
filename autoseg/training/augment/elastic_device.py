"""Elastic deformation on the training device (the torch twin of
``autoseg.training.augment.elastic``).

Same coarse grid, displacement std and probability as the CPU path. The coarse field is
upsampled bicubically in 2D, trilinearly in 3D (torch has no 3D cubic interpolation); the image
is resampled bicubically in 2D and linearly in 3D, labels (and any other target channel) with
nearest neighbour; at the border the patch is reflected.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autoseg.training.augment.elastic import (
    DISPLACEMENT_STD,
    GRID_POINTS,
    P_ELASTIC,
    displacement_stds,
)


class DeviceElastic:
    """Elastic deformation of a batch of device tensors.

    Args:
        patch_size: the patch (2 or 3 values).
        device: where batches live.
        seed: seeds the parameter stream (a CPU generator: same draws on any device).
        p_per_sample, std, grid_points: as ``autoseg.training.augment.elastic``.
    """

    def __init__(
        self,
        patch_size: tuple[int, ...],
        device: torch.device,
        seed: int = 0,
        p_per_sample: float = P_ELASTIC,
        std: float = DISPLACEMENT_STD,
        grid_points: int = GRID_POINTS,
    ) -> None:
        self.patch = tuple(int(p) for p in patch_size)
        self.device = torch.device(device)
        self.p, self.points = p_per_sample, grid_points
        self.stds = torch.tensor(displacement_stds(self.patch, std), dtype=torch.float32)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the random stream from ``seed``."""
        self.generator = torch.Generator().manual_seed(seed + 7)

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Deform some samples.

        Args:
            image: ``(B, C, *patch)`` float.
            target: ``(B, T, *patch)`` labels (any dtype; resampled nearest).

        Returns:
            New ``(image, target)`` tensors, dtypes kept.
        """
        ndim = len(self.patch)
        chosen = torch.rand(len(image), generator=self.generator) < self.p
        idx = torch.nonzero(chosen).flatten()
        image, target = image.clone(), target.clone()
        if len(idx) == 0:
            return image, target
        coarse = torch.randn(len(idx), ndim, *([self.points] * ndim), generator=self.generator)
        coarse = coarse * self.stds.view(1, ndim, *([1] * ndim))
        mode = "bicubic" if ndim == 2 else "trilinear"
        field = F.interpolate(
            coarse.to(self.device), size=self.patch, mode=mode, align_corners=True
        )
        # voxels (z, y, x) -> normalised offsets in grid_sample's (x, y, z) order
        scale = torch.tensor([2 / max(p - 1, 1) for p in self.patch], device=self.device)
        offsets = (field * scale.view(1, ndim, *([1] * ndim))).flip(1)
        axes = [torch.linspace(-1, 1, p, device=self.device) for p in self.patch]
        base = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], 0)  # (ndim, *patch)
        grid = (base.unsqueeze(0) + offsets).movedim(1, -1)  # (n, *patch, ndim)
        sub = idx.to(self.device)
        image_mode = "bicubic" if ndim == 2 else "bilinear"
        image[sub] = F.grid_sample(
            image[sub].float(), grid, mode=image_mode, padding_mode="reflection", align_corners=True
        ).to(image.dtype)
        moved = F.grid_sample(
            target[sub].float(), grid, mode="nearest", padding_mode="reflection", align_corners=True
        )
        target[sub] = moved.round().to(target.dtype) if not target.is_floating_point() else moved
        return image, target
