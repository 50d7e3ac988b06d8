"""Training augmentation: nnU-Net's batchgenerators pipeline and the sample size it needs.

The transforms and their probabilities follow nnU-Net's defaults (see docs and
``REFERENCE.md``): rotation, scaling, noise, blur, brightness, contrast, low-resolution
simulation, gamma and mirroring. batchgenerators draws its random numbers from numpy's global
``np.random`` state; ``autoseg.training.sampler`` swaps a per-loader state in around each call so
loaders
stay deterministic and independent of each other.

Arrays are batches: data ``(B, C, *spatial)`` float32 and seg ``(B, 1, *spatial)`` integers.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from batchgenerators.augmentations.utils import rotate_coords_2d, rotate_coords_3d
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.noise_transforms import (
    GaussianBlurTransform,
    GaussianNoiseTransform,
)
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

from autoseg.training.augment.elastic import ElasticTransform

ROTATION_3D = math.radians(30.0)  # about each axis
ROTATION_2D = math.pi  # in-plane
SCALE_RANGE = (0.7, 1.4)
P_ROTATION = 0.2
P_SCALE = 0.2


def _max_rotation(ndim: int) -> float:
    return ROTATION_3D if ndim == 3 else ROTATION_2D


def sample_size(patch_size: tuple[int, ...], augment: bool) -> tuple[int, ...]:
    """Size of the region to read so the spatial augmentation leaves no empty corners.

    The region must hold the patch after any rotation within the configured range (about all
    axes at once in 3D) and after zooming out by the largest scale factor. It is the bounding
    box of the patch's rotated corners (maximised over a grid of angles that includes the
    extremes), times the largest scale, rounded up so that ``region - patch`` is even: the
    centre crop then lands on whole voxels.

    Args:
        patch_size: the network's patch, 2 or 3 values.
        augment: False returns the patch itself.

    Returns:
        The region size per axis, never smaller than the patch.
    """
    patch = np.asarray(patch_size, dtype=float)
    if not augment:
        return tuple(int(p) for p in patch_size)
    ndim = len(patch_size)
    corners = np.array(list(itertools.product(*[(-p / 2, p / 2) for p in patch]))).T  # (ndim, 2^n)
    limit = _max_rotation(ndim)
    extent = patch.copy()
    if ndim == 3:
        angles = np.linspace(-limit, limit, 9)
        for ax, ay, az in itertools.product(angles, repeat=3):
            rotated = rotate_coords_3d(corners.copy(), ax, ay, az)
            extent = np.maximum(extent, rotated.max(1) - rotated.min(1))
    else:
        for angle in np.linspace(-limit, limit, 721):
            rotated = rotate_coords_2d(corners.copy(), angle)
            extent = np.maximum(extent, rotated.max(1) - rotated.min(1))
    needed = np.ceil(extent * SCALE_RANGE[1] - 1e-6).astype(int)
    needed += (needed - patch.astype(int)) % 2
    return tuple(int(max(n, p)) for n, p in zip(needed, patch_size, strict=True))


def training_transforms(patch_size: tuple[int, ...], elastic: bool = False) -> AbstractTransform:
    """nnU-Net's augmentation pipeline for batches sampled at ``sample_size(patch, True)``.

    The spatial transform rotates and scales about the region's centre and crops the patch
    there (``random_crop=False``); data is interpolated with order 3, labels with order 0 so
    no label value is invented; outside the image both are 0.

    Args:
        patch_size: output patch, 2 values (2D) or 3 (3D).
        elastic: add the U-Net paper's elastic deformation (``autoseg.training.augment.elastic``)
        after the
            rotation/scaling step (off by default, as in nnU-Net).

    Returns:
        A batchgenerators transform taking and returning ``dict(data=..., seg=...)``.
    """
    ndim = len(patch_size)
    limit = _max_rotation(ndim)
    angle = (-limit, limit)
    spatial = [
        SpatialTransform(
            list(patch_size),
            patch_center_dist_from_border=None,
            do_elastic_deform=False,
            do_rotation=True,
            angle_x=angle,
            angle_y=angle,
            angle_z=angle,
            p_rot_per_axis=1,
            do_scale=True,
            scale=SCALE_RANGE,
            border_mode_data="constant",
            border_cval_data=0,
            order_data=3,
            border_mode_seg="constant",
            border_cval_seg=0,
            order_seg=0,
            random_crop=False,
            p_el_per_sample=0,
            p_scale_per_sample=P_SCALE,
            p_rot_per_sample=P_ROTATION,
            independent_scale_for_each_axis=False,
        ),
    ]
    if elastic:
        spatial.append(ElasticTransform())
    return Compose(
        [
            *spatial,
            GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
            GaussianBlurTransform(
                blur_sigma=(0.5, 1.0),
                different_sigma_per_channel=True,
                p_per_channel=0.5,
                p_per_sample=0.2,
            ),
            BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
            ContrastAugmentationTransform(p_per_sample=0.15),
            SimulateLowResolutionTransform(
                zoom_range=(0.5, 1),
                per_channel=True,
                p_per_channel=0.5,
                order_downsample=0,
                order_upsample=3,
                p_per_sample=0.25,
                ignore_axes=None,  # true 2D slices and isotropic-enough 3D: zoom every axis
            ),
            GammaTransform(
                gamma_range=(0.7, 1.5),
                invert_image=True,
                per_channel=True,
                retain_stats=True,
                p_per_sample=0.1,
            ),
            GammaTransform(
                gamma_range=(0.7, 1.5),
                invert_image=False,
                per_channel=True,
                retain_stats=True,
                p_per_sample=0.3,
            ),
            MirrorTransform(axes=tuple(range(ndim))),  # each axis with p 0.5
        ]
    )
