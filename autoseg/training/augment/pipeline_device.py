"""Training augmentation on the training device: nnU-Net's transforms as batched torch code.

The same transforms, ranges and probabilities as the batchgenerators pipeline of
``autoseg.training.augment.pipeline`` (the CPU reference), applied to a whole batch of tensors on
the device the
network trains on (CUDA or CPU). The loader crops the enlarged region of
``autoseg.training.augment.pipeline.sample_size`` on the CPU; ``DeviceAugmentation`` does the rest:

1. spatial: per sample, rotation (p 0.2; +-30 deg about each axis in 3D, +-180 deg in 2D) and
   scaling (p 0.2; 0.7-1.4, half the draws below 1) as ONE affine ``grid_sample`` of the region
   into the patch, about the region's centre, zeros outside: image cubic B-spline, labels
   nearest (never interpolated). Samples drawn with neither are centre-cropped, untouched;
2. gaussian noise (p 0.1, std uniform in [0, 0.1], one std per sample);
3. gaussian blur (p 0.2 per sample, 0.5 per channel, sigma 0.5-1 per channel, the same on every
   axis, kernel truncated at 4 sigma, edges mirrored as scipy's ``reflect``);
4. brightness (p 0.15, a multiplier 0.75-1.25 per channel);
5. contrast (p 0.15, a factor 0.75-1.25 per channel about the channel's mean, half the draws
   below 1, clipped to the channel's former range);
6. low-resolution simulation (p 0.25 per sample, 0.5 per channel, zoom 0.5-1 per channel on
   every axis: nearest down, cubic up);
7. gamma on the inverted image (p 0.1), then gamma (p 0.3): gamma 0.7-1.5 per channel (half the
   draws below 1) on the channel rescaled to [0, 1], mean and std restored;
8. mirroring, each axis with p 0.5 independently, image and labels together.

Where the device path differs from batchgenerators: the random streams, so only the
distributions agree (tested, and measured on real batches by benchmarks/augment_stats.py). The
image is interpolated with cubic B-splines as batchgenerators does
(``autoseg.training.augment.spline_device``);
linear interpolation (``cubic=False``, cheaper) left the images measurably smoother.

Randomness: parameters come from a CPU ``torch.Generator``, noise fields from one on the device,
both seeded by ``reseed(seed)``; the same seed, batch and device give the same output.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

import torch
import torch.nn.functional as F

from autoseg.errors import AutosegError
from autoseg.training.augment.pipeline import (
    P_ROTATION,
    P_SCALE,
    ROTATION_2D,
    ROTATION_3D,
    SCALE_RANGE,
)
from autoseg.training.augment.spline_device import cubic_grid_sample, cubic_resize

P_NOISE, NOISE_STD = 0.1, (0.0, 0.1)
P_BLUR, P_BLUR_CHANNEL, BLUR_SIGMA = 0.2, 0.5, (0.5, 1.0)
P_BRIGHTNESS, BRIGHTNESS = 0.15, (0.75, 1.25)
P_CONTRAST, CONTRAST = 0.15, (0.75, 1.25)
P_LOWRES, P_LOWRES_CHANNEL, LOWRES_ZOOM = 0.25, 0.5, (0.5, 1.0)
P_GAMMA_INVERTED, P_GAMMA, GAMMA = 0.1, 0.3, (0.7, 1.5)
P_MIRROR = 0.5

AUGMENTATION_CHOICES = ("cpu", "device", "auto")
# What ``auto`` picks on the CPU: batchgenerators, the path with a measured Dice record. On
# the CPU both paths cost about the same per batch (0.19 and 0.16 core-s, ~5% of a step), so
# Dice per second is Dice per iteration (docs/benchmarks.md, "Accuracy of the training paths").
AUTO_ON_CPU = "cpu"


def resolve_augmentation(name: str, device: torch.device) -> str:
    """``cpu`` or ``device`` for an ``--augmentation`` value on a training device.

    ``auto`` is the device path on CUDA (batchgenerators cannot keep a GPU busy), and on the
    CPU ``AUTO_ON_CPU`` (batchgenerators).

    Raises:
        AutosegError: a value other than cpu, device or auto.
    """
    if name not in AUGMENTATION_CHOICES:
        raise AutosegError(f"--augmentation {name}: expected one of cpu, device, auto")
    if name != "auto":
        return name
    return "device" if device.type == "cuda" else AUTO_ON_CPU


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * (hi - lo) + lo


def _split_uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """batchgenerators' draw for ranges around 1: half uniform in [lo, 1], half in [1, hi]."""
    below = torch.rand(n, generator=g, dtype=torch.float64) < 0.5
    return torch.where(below, _uniform(g, n, lo, 1.0), _uniform(g, n, 1.0, hi))


def _chance(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) < p


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(B, n, n)`` from angles ``(B, 3)`` (3D: x, then y, then z) or
    ``(B, 1)`` (2D), composed in batchgenerators' order."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    if angles.shape[1] == 1:
        return torch.stack([c[:, 0], -s[:, 0], s[:, 0], c[:, 0]], -1).view(-1, 2, 2)
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], -1)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], -1)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], -1)
    return rx.view(-1, 3, 3) @ ry.view(-1, 3, 3) @ rz.view(-1, 3, 3)


def spatial_matrices(
    g: torch.Generator, batch: int, ndim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample, the matrix taking patch coordinates to region coordinates, and whether
    rotation or scaling was drawn at all.

    Returns:
        ``(matrices (B, ndim, ndim) float64, modified (B,) bool)``; unmodified samples get the
        identity.
    """
    limit = ROTATION_3D if ndim == 3 else ROTATION_2D
    n_angles = 3 if ndim == 3 else 1
    rotate = _chance(g, batch, P_ROTATION)
    angles = _uniform(g, batch * n_angles, -limit, limit).view(batch, n_angles)
    angles = angles * rotate[:, None]
    scale = _chance(g, batch, P_SCALE)
    factor = torch.where(scale, _split_uniform(g, batch, *SCALE_RANGE), torch.ones(batch).double())
    return affine_matrices(angles, factor), rotate | scale


def affine_matrices(angles: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(B, n, n)`` matrices of ``apply_spatial`` from angles ``(B, 3)`` (3D, radians about x,
    y, z) or ``(B, 1)`` (2D) and scale factors ``(B,)``: batchgenerators maps a patch offset
    ``p`` to ``R^T p`` and multiplies that by the scale."""
    return _rotation(angles).transpose(1, 2) * scale[:, None, None]


@lru_cache(maxsize=8)
def _base_grid(patch: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(P, ndim + 1)``: the patch's normalised (x, y[, z], 1) coordinates, as affine_grid
    builds them with ``align_corners=True`` (cached: building it costs more than using it)."""
    axes = [torch.linspace(-1, 1, p, device=device) for p in patch]
    mesh = torch.meshgrid(*axes, indexing="ij")[::-1]
    return torch.stack([*mesh, torch.ones_like(mesh[0])], -1).view(-1, len(patch) + 1)


def apply_spatial(
    image: torch.Tensor,
    target: torch.Tensor,
    matrices: torch.Tensor,
    modified: torch.Tensor,
    patch: tuple[int, ...],
    image_mode: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample each sample's region into the patch with its matrix (one ``grid_sample``).

    Args:
        image: ``(B, C, *region)`` float.
        target: ``(B, 1, *region)`` integer labels.
        matrices: ``(B, ndim, ndim)``, patch offsets (voxels, from the patch centre) to region
            offsets (from the region centre).
        modified: ``(B,)`` bool; the others are centre-cropped without resampling.
        patch: output size.
        image_mode: ``cubic`` (B-spline, as batchgenerators' order 3) or a ``grid_sample``
            mode of the image (``bilinear`` = linear in 2D and 3D); labels always use
            ``nearest``.

    Returns:
        ``(image (B, C, *patch), target (B, 1, *patch))``, target in its input dtype.
    """
    region = image.shape[2:]
    ndim = len(patch)
    crop = tuple(slice((r - p) // 2, (r - p) // 2 + p) for r, p in zip(region, patch, strict=True))
    out_image = image[(slice(None), slice(None), *crop)].clone()
    out_target = target[(slice(None), slice(None), *crop)].clone()
    idx = torch.nonzero(modified.to(image.device)).flatten()
    if len(idx) == 0:
        return out_image, out_target
    # matrices act on voxel offsets in (z, y, x) order; affine_grid wants normalised (x, y, z)
    to_out = torch.tensor([(p - 1) / 2 for p in patch], dtype=torch.float64)
    to_in = torch.tensor([2 / (r - 1) for r in region], dtype=torch.float64)
    theta = to_in[:, None] * matrices[modified.cpu()] * to_out[None, :]  # (n, ndim, ndim)
    theta = theta.flip(1, 2)
    theta = torch.cat([theta, torch.zeros(len(idx), ndim, 1, dtype=theta.dtype)], 2)
    base = _base_grid(patch, image.device)
    grid = (base @ theta.to(image.device, base.dtype).transpose(1, 2)).view(len(idx), *patch, ndim)
    if image_mode == "cubic":
        out_image[idx] = cubic_grid_sample(image[idx], grid)
    else:
        out_image[idx] = F.grid_sample(
            image[idx], grid, mode=image_mode, padding_mode="zeros", align_corners=True
        )
    labels = F.grid_sample(
        target[idx].to(image.dtype), grid, mode="nearest", padding_mode="zeros", align_corners=True
    )
    out_target[idx] = labels.round().to(target.dtype)
    return out_image, out_target


def _symmetric_index(n: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices of a length-``n`` axis padded by ``radius`` as scipy's ``reflect`` (d c b a | a b
    c d), for any ``n``."""
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each of ``n`` single-channel images with its own isotropic sigma.

    Args:
        x: ``(n, *spatial)`` float.
        sigma: ``(n,)`` in voxels.

    Returns:
        ``(n, *spatial)``: separable gaussian, truncated at 4 sigma, edges mirrored.
    """
    ndim = x.dim() - 1
    radius = int(4 * float(sigma.max()) + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.double().cpu()[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).to(x.device, x.dtype)  # (n, k)
    conv = F.conv3d if ndim == 3 else F.conv2d
    out = x[None]  # (1, n, *spatial): one group per image
    for axis in range(ndim):
        dim = axis + 2
        out = out.index_select(dim, _symmetric_index(out.shape[dim], radius, x.device))
        shape = [len(x), 1] + [1] * ndim
        shape[dim] = 2 * radius + 1
        out = conv(out, kernel.view(shape), groups=len(x))
    return out[0]


def _gamma(x: torch.Tensor, gamma: torch.Tensor, invert: bool) -> torch.Tensor:
    """batchgenerators' gamma with retained mean and std on rows of ``x (n, voxels)``."""
    x = -x if invert else x
    mean, std = x.mean(1, keepdim=True), x.std(1, keepdim=True, unbiased=False)
    low = x.amin(1, keepdim=True)
    span = x.amax(1, keepdim=True) - low + 1e-7
    y = ((x - low) / span).clamp_min(0) ** gamma[:, None] * span + low
    y = y - y.mean(1, keepdim=True)
    y = y / (y.std(1, keepdim=True, unbiased=False) + 1e-8) * std + mean
    return -y if invert else y


class DeviceAugmentation:
    """nnU-Net's training augmentation on a batch of device tensors (see the module docstring).

    Args:
        patch_size: the network's patch (2 or 3 values); inputs are regions of
            ``autoseg.training.augment.pipeline.sample_size(patch_size, True)``.
        device: where the batches live.
        seed: see ``reseed``.
        cpu_threads: on the CPU, torch threads while augmenting (None: leave torch's setting).
            One by default: these are many small operations, and on a busy machine the idle
            threads' spinning cost several times the work (docs/benchmarks.md).
        cubic: interpolate the image with cubic B-splines as batchgenerators does; False:
            linearly (cheaper, smoother images: docs/benchmarks.md).

    The transform methods (``noise`` ... ``mirror``) change the tensors they are given in place
    and return them; ``__call__`` gives them the fresh patch tensors of the spatial step, so
    its own inputs are never changed.
    """

    def __init__(
        self,
        patch_size: tuple[int, ...],
        device: torch.device,
        seed: int = 0,
        cpu_threads: int | None = 1,
        cubic: bool = True,
    ) -> None:
        self.patch = tuple(int(p) for p in patch_size)
        self.cubic = cubic
        self.device = torch.device(device)
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        self.reseed(seed)

    @contextmanager
    def _threads(self) -> Iterator[None]:
        if self.cpu_threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.cpu_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def reseed(self, seed: int) -> None:
        """Restart both random streams from ``seed``."""
        self.params = torch.Generator().manual_seed(seed)
        self.fields = torch.Generator(device=self.device).manual_seed(seed + 1)

    def __call__(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch.

        Args:
            image: ``(B, C, *region)`` float32 on the device.
            target: ``(B, 1, *region)`` integer labels on the device.

        Returns:
            ``(image (B, C, *patch) float32, target (B, 1, *patch))``, target's dtype kept.
        """
        if image.dim() != len(self.patch) + 2 or target.shape[2:] != image.shape[2:]:
            raise ValueError(f"expected (B, C, *region) batches for patch {self.patch}")
        with self._threads():
            return self._augment(image, target)

    def _augment(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.spatial(image.float(), target)
        image = self.noise(image)
        image = self.blur(image)
        image = self.brightness(image)
        image = self.contrast(image)
        image = self.low_resolution(image)
        image = self.gamma(image, invert=True)
        image = self.gamma(image, invert=False)
        return self.mirror(image, target)

    def spatial(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotate and scale regions into patches (new tensors; see ``apply_spatial``)."""
        matrices, modified = spatial_matrices(self.params, len(image), len(self.patch))
        mode = "cubic" if self.cubic else "bilinear"
        return apply_spatial(image, target, matrices, modified, self.patch, mode)

    def _channels(self, p_sample: float, p_channel: float, shape: torch.Size) -> torch.Tensor:
        """``(B, C)`` bool: the sample is drawn with ``p_sample``, then each channel with
        ``p_channel``."""
        batch, channels = shape[:2]
        sample = _chance(self.params, batch, p_sample)[:, None]
        channel = _chance(self.params, batch * channels, p_channel).view(batch, channels)
        return (sample & channel).to(self.device)

    def noise(self, image: torch.Tensor) -> torch.Tensor:
        """Additive gaussian noise, one std per sample."""
        chosen = _chance(self.params, len(image), P_NOISE)
        std = _uniform(self.params, len(image), *NOISE_STD)
        idx = torch.nonzero(chosen).flatten().to(self.device)
        if len(idx):
            field = torch.randn(
                (len(idx), *image.shape[1:]), generator=self.fields, device=self.device
            )
            scale = std[chosen].to(self.device, image.dtype).view(-1, *[1] * (image.dim() - 1))
            image.index_add_(0, idx, field * scale)
        return image

    def blur(self, image: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of chosen channels, one sigma per channel."""
        chosen = self._channels(P_BLUR, P_BLUR_CHANNEL, image.shape)
        sigma = _uniform(self.params, chosen.numel(), *BLUR_SIGMA).view(chosen.shape)
        if chosen.any():
            image[chosen] = gaussian_blur(image[chosen], sigma[chosen.cpu()])
        return image

    def brightness(self, image: torch.Tensor) -> torch.Tensor:
        """Multiply chosen samples by a factor per channel."""
        batch, channels = image.shape[:2]
        chosen = _chance(self.params, batch, P_BRIGHTNESS)[:, None]
        factor = _uniform(self.params, batch * channels, *BRIGHTNESS).view(batch, channels)
        factor = torch.where(chosen, factor, torch.ones_like(factor))
        factor = factor.to(self.device, image.dtype)
        return image * factor.view(batch, channels, *[1] * (image.dim() - 2))

    def contrast(self, image: torch.Tensor) -> torch.Tensor:
        """Scale chosen samples about each channel's mean, clipped to its former range."""
        batch, channels = image.shape[:2]
        chosen = _chance(self.params, batch, P_CONTRAST)
        factor = _split_uniform(self.params, batch * channels, *CONTRAST).view(batch, channels)
        idx = torch.nonzero(chosen).flatten()
        if len(idx) == 0:
            return image
        sub = image[idx.to(self.device)].flatten(2)  # (n, C, voxels)
        low, high = sub.amin(2, keepdim=True), sub.amax(2, keepdim=True)
        mean = sub.mean(2, keepdim=True)
        f = factor[idx].to(self.device, image.dtype)[..., None]
        sub = torch.maximum(torch.minimum((sub - mean) * f + mean, high), low)
        image[idx.to(self.device)] = sub.view(len(idx), *image.shape[1:])
        return image

    def low_resolution(self, image: torch.Tensor) -> torch.Tensor:
        """Down- (nearest) and up-sample (cubic; linear without ``cubic``) chosen channels by a
        zoom per channel."""
        chosen = self._channels(P_LOWRES, P_LOWRES_CHANNEL, image.shape)
        zoom = _uniform(self.params, chosen.numel(), *LOWRES_ZOOM).view(chosen.shape)
        if not chosen.any():
            return image
        spatial = image.shape[2:]
        mode = "trilinear" if len(spatial) == 3 else "bilinear"
        for b, c in torch.nonzero(chosen).tolist():
            z = float(zoom[b, c])
            small = [max(1, int(round(s * z))) for s in spatial]  # numpy's round: half to even
            x = image[b, c][None, None]
            x = F.interpolate(x, size=small, mode="nearest-exact")
            if self.cubic:
                image[b, c] = cubic_resize(x[0, 0], spatial)
            else:
                up = F.interpolate(x, size=list(spatial), mode=mode, align_corners=False)
                image[b, c] = up[0, 0]
        return image

    def gamma(self, image: torch.Tensor, invert: bool) -> torch.Tensor:
        """Gamma per channel of chosen samples: on the negated image (p 0.1) if ``invert``,
        else on the image (p 0.3)."""
        p = P_GAMMA_INVERTED if invert else P_GAMMA
        batch, channels = image.shape[:2]
        chosen = _chance(self.params, batch, p)[:, None].expand(batch, channels)
        gamma = _split_uniform(self.params, batch * channels, *GAMMA).view(batch, channels)
        if not chosen.any():
            return image
        mask = chosen.to(self.device)
        rows = image[mask].flatten(1)  # (n, voxels)
        g = gamma[chosen].to(self.device, image.dtype)
        image[mask] = _gamma(rows, g, invert).view(-1, *image.shape[2:])
        return image

    def mirror(
        self, image: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flip each spatial axis of each sample with p 0.5, image and labels together."""
        batch, ndim = len(image), image.dim() - 2
        flips = _chance(self.params, batch * ndim, P_MIRROR).view(batch, ndim)
        for b, row in enumerate(flips.tolist()):
            axes = [axis + 1 for axis in range(ndim) if row[axis]]  # of the sample (C, *spatial)
            if axes:
                image[b] = image[b].flip(axes)
                target[b] = target[b].flip(axes)
        return image, target
