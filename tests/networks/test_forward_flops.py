"""A network reports the cost of one tile: FLOPs from the meta device, linear in voxels."""

from __future__ import annotations

import math

from autoseg.data.plans import Configuration, Normalization
from autoseg.networks.unet import forward_flops


def _config() -> Configuration:
    return Configuration(
        name="3d_fullres",
        spacing=(1.0, 1.0, 1.0),
        patch_size=(8, 8, 8),
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        features_per_stage=(2, 4),
        normalization=(Normalization("zscore"),),
    )


def test_flops_grow_with_the_tile_and_match_the_first_convolution() -> None:
    config = _config()
    small = forward_flops(config, 1, 3)
    assert forward_flops(config, 1, 3, (16, 8, 8)) == 2 * small  # convolutions: per voxel
    assert forward_flops(config, 2, 3) > small  # one more input channel
    # the first convolution alone: 2 flops per multiply-add, 27 taps, 1 -> 2 channels
    assert small > 2 * 27 * 1 * 2 * math.prod(config.patch_size)
