"""The sliding-window core: tile positions, Gaussian weights, padding, mirroring TTA, batching.

Hand computations of the weighted average itself are in test_pinned_prediction.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from autoseg.inference.sliding_window import sliding_window_logits, sliding_window_logits_slices
from autoseg.inference.tiles import (
    CPU_VOXELS_PER_FORWARD,
    default_tile_batch,
    gaussian_importance_map,
    inference_tile_size,
    mirror_combinations,
    sliding_window_positions,
)


def identity_net(channels: int, ndim: int) -> torch.nn.Module:
    """A 1x1 convolution returning its input: num_classes == channels."""
    conv = (torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d)(channels, channels, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(channels).view(channels, channels, *([1] * ndim)))
    return conv


def skewed_net(ndim: int, seed: int = 0) -> torch.nn.Module:
    """A network that is not flip-equivariant: position-dependent, asymmetric kernel."""
    torch.manual_seed(seed)
    conv_type = torch.nn.Conv2d if ndim == 2 else torch.nn.Conv3d
    conv = conv_type(1, 2, 3, padding=1)

    class Skewed(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            ramp = torch.linspace(0, 1, x.shape[-1])  # breaks mirror symmetry along X
            return conv(x) + ramp

    return Skewed()


def test_gaussian_map_centre_symmetry_positivity() -> None:
    for patch in [(9, 9, 9), (8, 12), (5, 16, 7), (1, 6)]:
        g = gaussian_importance_map(patch)
        assert g.shape == patch and g.dtype == np.float32
        assert g.max() == pytest.approx(1.0)
        assert (g > 0).all()
        for axis in range(len(patch)):
            np.testing.assert_array_equal(g, np.flip(g, axis))
        centre = tuple((s - 1) // 2 for s in patch)
        assert g[centre] == g.max()
    g = gaussian_importance_map((9,), sigma_scale=1 / 9)  # sigma exactly 1 voxel
    assert g[4] == 1.0 and g[5] == pytest.approx(np.exp(-0.5), rel=1e-6)
    tiny = gaussian_importance_map((64, 64, 64), sigma_scale=1 / 256)  # would underflow to 0
    assert tiny.min() > 0 and tiny.min() == tiny[tiny < 1].min()


@pytest.mark.parametrize(
    "size,patch,step", [(10, 4, 0.5), (37, 8, 0.5), (8, 8, 0.5), (5, 8, 0.5), (100, 32, 0.25)]
)
def test_positions_cover_every_voxel(size: int, patch: int, step: float) -> None:
    starts = sorted({p[0] for p in sliding_window_positions((size, 3), (patch, 3), step)})
    assert starts[0] == 0
    if size >= patch:
        assert starts[-1] == size - patch
        assert len(starts) == int(np.ceil((size - patch) / (patch * step))) + 1
        assert max(np.diff(starts), default=0) <= np.ceil(patch * step)
    covered = np.zeros(max(size, patch), dtype=bool)
    for s in starts:
        covered[s : s + patch] = True
    assert covered[:size].all()


def test_positions_are_a_grid() -> None:
    corners = sliding_window_positions((20, 33, 8), (8, 10, 8))
    assert len(corners) == 4 * 6 * 1 and len(set(corners)) == len(corners)


@pytest.mark.parametrize(
    "shape,patch",
    [
        ((16, 16, 16), (8, 8, 8)),
        ((19, 23, 10), (8, 10, 6)),  # not divisible by the step
        ((5, 6, 7), (8, 10, 6)),  # smaller than the patch on some axes
        ((3, 4, 2), (8, 8, 8)),  # smaller on every axis
        ((30, 17), (12, 8)),  # 2D
        ((5, 40), (12, 8)),
    ],
)
def test_identity_network_reproduces_input(shape: tuple, patch: tuple) -> None:
    image = torch.randn(2, *shape)
    net = identity_net(2, len(patch))
    for mirror in [(), tuple(range(len(patch)))]:
        out = sliding_window_logits(net, image, patch, 2, mirror_axes=mirror, tile_batch=3)
        assert out.shape == image.shape and out.dtype == torch.float32
        torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-5)


def test_tta_is_the_average_of_flipped_runs() -> None:
    net = skewed_net(2)
    image = torch.randn(1, 20, 20)  # symmetric tile grid: 0, 4, 8, 12 on both axes
    tta = sliding_window_logits(net, image, (8, 8), 2, mirror_axes=(0, 1))
    by_hand = torch.zeros_like(tta)
    for flip in mirror_combinations((0, 1)):
        dims = [a + 1 for a in flip]
        run = sliding_window_logits(net, image.flip(dims) if dims else image, (8, 8), 2)
        by_hand += run.flip(dims) if dims else run
    torch.testing.assert_close(tta, by_hand / 4, rtol=1e-5, atol=1e-5)
    plain = sliding_window_logits(net, image, (8, 8), 2)
    assert not torch.allclose(tta, plain, atol=1e-3)  # TTA did something


def test_tta_per_tile_and_symmetry_3d() -> None:
    net = skewed_net(3, seed=1)
    flips = mirror_combinations((0, 1, 2))
    assert len(flips) == 8

    def averaged(x: torch.Tensor) -> torch.Tensor:  # TTA of one tile, by hand
        outs = [net(x.flip([a + 2 for a in f])).flip([a + 2 for a in f]) for f in flips]
        return torch.stack(outs).mean(0)

    image = torch.randn(1, 11, 13, 9)
    tta = sliding_window_logits(net, image, (6, 8, 6), 2, mirror_axes=(0, 1, 2), tile_batch=5)
    ref = sliding_window_logits(averaged, image, (6, 8, 6), 2, tile_batch=1)
    torch.testing.assert_close(tta, ref, rtol=1e-5, atol=1e-5)
    # a flip-symmetric input gives a flip-symmetric result, though the network is not symmetric
    sym = torch.randn(1, 12, 12, 12)
    sym = sym + sym.flip([3])
    out = sliding_window_logits(net, sym, (8, 8, 8), 2, mirror_axes=(0, 1, 2))
    torch.testing.assert_close(out, out.flip([3]), rtol=1e-4, atol=1e-4)


def test_tile_batch_does_not_change_the_result() -> None:
    net = skewed_net(3)
    image = torch.randn(1, 14, 10, 12)
    a = sliding_window_logits(net, image, (6, 6, 6), 2, mirror_axes=(2,), tile_batch=1)
    b = sliding_window_logits(net, image, (6, 6, 6), 2, mirror_axes=(2,), tile_batch=7)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_slices_match_per_slice_2d() -> None:
    net = skewed_net(2)
    volume = torch.randn(1, 5, 13, 7)  # Y larger than the patch, X smaller
    out = sliding_window_logits_slices(net, volume, (8, 8), 2, mirror_axes=(0, 1), tile_batch=6)
    for z in range(volume.shape[1]):
        ref = sliding_window_logits(net, volume[:, z], (8, 8), 2, mirror_axes=(0, 1))
        torch.testing.assert_close(out[:, z], ref, rtol=1e-5, atol=1e-5)


def test_wrong_network_output_is_reported() -> None:
    with pytest.raises(ValueError, match="network returned"):
        sliding_window_logits(identity_net(2, 2), torch.randn(2, 8, 8), (4, 4), num_classes=3)


def test_mirror_combinations() -> None:
    combos = mirror_combinations((2, 0, 1))
    assert combos[0] == () and len(combos) == 8 and len(set(combos)) == 8
    assert set(itertools.chain(*combos)) == {0, 1, 2}


def test_inference_tile_size_widens_only_axes_one_tile_can_cover() -> None:
    patch, div = (36, 52, 36), (4, 4, 4)
    assert inference_tile_size((32, 50, 35), patch, div) == patch  # fits: the patch
    assert inference_tile_size((32, 54, 34), patch, div) == (36, 56, 36)  # Y just over
    assert inference_tile_size((37, 45, 40), patch, div) == (40, 52, 40)
    assert inference_tile_size((36, 52, 36), patch, div) == patch  # exactly the patch
    assert inference_tile_size((46, 53, 80), patch, div) == (36, 56, 36)  # Z, X: slide
    assert inference_tile_size((37, 55, 41), patch, div, max_scale=1.0) == patch
    assert inference_tile_size((33, 53), (32, 48), (8, 4)) == (40, 56)  # 2D, per-axis stride
    assert inference_tile_size((33, 53), (32, 48), (8, 16)) == (40, 48)  # 64 > 1.25 x 48
    for shape in [(37, 53, 37), (44, 64, 45), (41, 60, 39)]:
        tile = inference_tile_size(shape, patch, div)
        assert all(t % d == 0 and t >= p for t, d, p in zip(tile, div, patch, strict=True))
        assert all(t <= 1.25 * p for t, p in zip(tile, patch, strict=True))
    with pytest.raises(ValueError, match="differ in length"):
        inference_tile_size((10, 10), patch, div)


def test_default_tile_batch_bounds_the_forward_pass() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_tile_batch((36, 52, 36), cpu) == 8  # every mirroring of a tile at once
    assert default_tile_batch((128, 128, 128), cpu) == 1
    assert default_tile_batch((64, 64, 64), cpu) == CPU_VOXELS_PER_FORWARD // 64**3
    assert default_tile_batch((128, 128, 128), cuda) == 8


# ---------------------------------------------------------------------------- exact values


def test_tile_starts_round_an_even_spread_to_the_nearest_voxel() -> None:
    # 37 = 8 + 29: ceil(29 / 4) + 1 = 9 tiles, 29 / 8 = 3.625 voxels apart, rounded (half to even)
    starts = [c[0] for c in sliding_window_positions((37, 8), (8, 8), 0.5)]
    assert starts == [0, 4, 7, 11, 14, 18, 22, 25, 29]
    # step 1: tiles touch; step 0.25 of 8 = 2 voxels apart; C order, last axis fastest
    assert sliding_window_positions((16, 4), (8, 4), 1.0) == [(0, 0), (8, 0)]
    assert [c[0] for c in sliding_window_positions((12, 4), (8, 4), 0.25)] == [0, 2, 4]
    assert sliding_window_positions((10, 9), (8, 6)) == [
        (0, 0), (0, 3), (2, 0), (2, 3)
    ]  # fmt: skip
    assert sliding_window_positions((8, 5), (8, 6)) == [(0, 0)]  # fits: one tile at 0
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="step must be in"):
            sliding_window_positions((10, 10), (8, 8), bad)
    with pytest.raises(ValueError, match="differ"):
        sliding_window_positions((10, 10, 10), (8, 8))


def test_gaussian_weights_by_hand() -> None:
    """sigma = edge / 8, centred at (n - 1) / 2, separable, divided by the maximum."""
    g = gaussian_importance_map((4, 8))
    z = np.exp(-0.5 * ((np.arange(4) - 1.5) / 0.5) ** 2)
    y = np.exp(-0.5 * ((np.arange(8) - 3.5) / 1.0) ** 2)
    expected = np.multiply.outer(z, y) / (z.max() * y.max())
    np.testing.assert_allclose(g, expected, rtol=1e-6)
    assert g[1, 3] == g[2, 4] == 1.0  # the four central voxels of an even patch
    wide = gaussian_importance_map((6,), sigma_scale=0.5)  # sigma 3
    np.testing.assert_allclose(wide, np.exp(-0.5 * ((np.arange(6) - 2.5) / 3) ** 2) / np.exp(
        -0.5 * (0.5 / 3) ** 2
    ), rtol=1e-6)  # fmt: skip


def test_mirror_combinations_in_order_without_repeats() -> None:
    assert mirror_combinations((2, 0, 1)) == [
        (), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)
    ]  # fmt: skip
    assert mirror_combinations((1, 1)) == [(), (1,)]
    assert mirror_combinations(()) == [()]


class Recorder(torch.nn.Module):
    """Returns ``num_classes`` copies of its first channel; keeps every input it was given."""

    def __init__(self, num_classes: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return x[:, :1].expand(-1, self.num_classes, *x.shape[2:]) + 0.0


@pytest.mark.parametrize(
    "shape,patch,before",
    [
        ((5, 8), (8, 8), (1, 0)),  # 3 missing on axis 0: 1 before, 2 after
        ((7, 8), (8, 8), (0, 0)),  # 1 missing: nothing before, 1 after
        ((8, 3), (8, 8), (0, 2)),  # axis 1: 2 before, 3 after
        ((2, 6, 8), (5, 8, 8), (1, 1, 0)),
    ],
)
def test_small_images_are_zero_padded_centred_and_cropped_back(
    shape: tuple[int, ...], patch: tuple[int, ...], before: tuple[int, ...]
) -> None:
    image = torch.rand(1, *shape) + 1  # every voxel >= 1: the padding (0) shows
    net = Recorder()
    out = sliding_window_logits(net, image, patch, 1)
    torch.testing.assert_close(out, image)
    (seen,) = net.inputs
    assert tuple(seen.shape) == (1, 1, *patch)
    inside = tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))
    torch.testing.assert_close(seen[(0, 0, *inside)], image[0])
    padding = torch.ones(patch, dtype=torch.bool)
    padding[inside] = False
    assert (seen[0, 0][padding] == 0).all()


def test_tiles_are_cut_at_their_corners_and_flipped_on_the_right_axis() -> None:
    image = torch.arange(12 * 6, dtype=torch.float32).view(1, 12, 6)
    net = Recorder()
    sliding_window_logits(net, image, (8, 6), 1, mirror_axes=(1,), tile_batch=8)
    (seen,) = net.inputs  # 2 tiles x 2 flips in one pass, tile-major
    assert seen.shape == (4, 1, 8, 6)
    torch.testing.assert_close(seen[0, 0], image[0, 0:8])
    torch.testing.assert_close(seen[1, 0], image[0, 0:8].flip(1))
    torch.testing.assert_close(seen[2, 0], image[0, 4:12])
    torch.testing.assert_close(seen[3, 0], image[0, 4:12].flip(1))


@pytest.mark.parametrize("tile_batch", [0, 1, 2, 3, 5])
def test_every_job_runs_once_whatever_the_tile_batch(tile_batch: int) -> None:
    image = torch.randn(1, 12, 10)
    net = Recorder()
    out = sliding_window_logits(net, image, (8, 6), 1, mirror_axes=(0,), tile_batch=tile_batch)
    sizes = [len(x) for x in net.inputs]
    per_pass = max(1, tile_batch)
    assert sum(sizes) == 2 * 3 * 2  # 6 tiles, 2 flips each
    assert sizes == [per_pass] * (12 // per_pass) + ([12 % per_pass] if 12 % per_pass else [])
    torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-5)


class DeepSupervised(torch.nn.Module):
    """A network left in deep-supervision mode: the full-resolution output first."""

    def __init__(self, net: torch.nn.Module, as_tuple: bool = False) -> None:
        super().__init__()
        self.net, self.as_tuple = net, as_tuple

    def forward(self, x: torch.Tensor):
        out = self.net(x)
        low = out[(slice(None), slice(None), *[slice(None, None, 2)] * (x.ndim - 2))]
        return (out, low) if self.as_tuple else [out, low]


@pytest.mark.parametrize("as_tuple", [False, True])
def test_deep_supervision_outputs_use_the_full_resolution_one(as_tuple: bool) -> None:
    net = skewed_net(2)
    wrapped = DeepSupervised(net, as_tuple)
    image = torch.randn(1, 12, 10)
    torch.testing.assert_close(
        sliding_window_logits(wrapped, image, (8, 8), 2),
        sliding_window_logits(net, image, (8, 8), 2),
    )
    volume = torch.randn(1, 3, 12, 10)
    torch.testing.assert_close(
        sliding_window_logits_slices(wrapped, volume, (8, 8), 2, mirror_axes=(1,)),
        sliding_window_logits_slices(net, volume, (8, 8), 2, mirror_axes=(1,)),
    )


def test_half_precision_outputs_are_accumulated_in_float32() -> None:
    image = torch.randn(1, 12, 10)

    def half(x: torch.Tensor) -> torch.Tensor:
        return x.half()

    out = sliding_window_logits(half, image, (8, 6), 1, tile_batch=2)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, image.half().float())


def test_equal_weights_average_overlapping_tiles() -> None:
    """use_gaussian=False: each voxel is the plain mean of the tiles covering it."""
    image = torch.zeros(1, 12, 6)

    def tile_index(x: torch.Tensor) -> torch.Tensor:  # tile k of the pass returns k + 1
        return torch.arange(1.0, len(x) + 1).view(-1, 1, 1, 1).expand(-1, 1, *x.shape[2:])

    out = sliding_window_logits(tile_index, image, (8, 6), 1, use_gaussian=False, tile_batch=2)
    expected = torch.tensor([1.0] * 4 + [1.5] * 4 + [2.0] * 4).view(1, 12, 1).expand(1, 12, 6)
    torch.testing.assert_close(out, expected)


def test_mirror_axes_and_shapes_are_checked() -> None:
    net = identity_net(1, 2)
    image = torch.randn(1, 8, 8)
    sliding_window_logits(net, image, (8, 8), 1, mirror_axes=(0, 1))  # both allowed
    for bad in [(2,), (-1,), (0, 2)]:
        with pytest.raises(ValueError, match=r"mirror axes .* outside 0\.\.1$"):
            sliding_window_logits(net, image, (8, 8), 1, mirror_axes=bad)
    with pytest.raises(ValueError, match="is not"):
        sliding_window_logits(net, image[None], (8, 8), 1)
    with pytest.raises(ValueError, match="is not"):
        sliding_window_logits(net, image[0], (8, 8), 1)
    volume = torch.randn(1, 2, 8, 8)
    sliding_window_logits_slices(net, volume, (8, 8), 1, mirror_axes=(0, 1))
    for bad in [(2,), (-1,)]:
        with pytest.raises(ValueError, match="mirror axes"):
            sliding_window_logits_slices(net, volume, (8, 8), 1, mirror_axes=bad)
    with pytest.raises(ValueError, match="2D patch"):
        sliding_window_logits_slices(net, volume, (2, 8, 8), 1)
    with pytest.raises(ValueError, match="2D patch"):
        sliding_window_logits_slices(net, volume[0], (8, 8), 1)


def test_slices_pad_in_plane_only_and_tile_every_slice() -> None:
    volume = torch.rand(1, 3, 5, 12) + 1
    net = Recorder()
    out = sliding_window_logits_slices(net, volume, (8, 6), 1, tile_batch=100)
    torch.testing.assert_close(out, volume)
    (seen,) = net.inputs  # 3 slices x 3 tiles along X, Y padded 1 before and 2 after
    assert seen.shape == (9, 1, 8, 6)
    torch.testing.assert_close(seen[4, 0, 1:6], volume[0, 1, :, 3:9])
    assert (seen[:, :, 0] == 0).all() and (seen[:, :, 6:] == 0).all()


def test_importance_map_is_cached_per_patch_and_flag() -> None:
    from autoseg.inference.tiles import tile_importance

    a = tile_importance((8, 6), True, torch.device("cpu"))
    b = tile_importance([8, 6], True, "cpu")
    assert a is b  # made once
    np.testing.assert_array_equal(a.numpy(), gaussian_importance_map((8, 6)))
    flat = tile_importance((8, 6), False, torch.device("cpu"))
    assert flat.dtype == torch.float32 and (flat == 1).all() and flat.shape == (8, 6)


def test_step_reaches_the_tiling() -> None:
    for step, tiles in ((1.0, 2), (0.5, 3), (0.25, 5)):
        net = Recorder()
        sliding_window_logits(net, torch.randn(1, 16, 8), (8, 8), 1, step=step, tile_batch=1)
        assert len(net.inputs) == tiles
        net = Recorder()
        volume = torch.randn(1, 2, 16, 8)
        sliding_window_logits_slices(net, volume, (8, 8), 1, step=step, tile_batch=1)
        assert len(net.inputs) == 2 * tiles


def test_the_default_tile_batch_is_a_whole_number() -> None:
    batch = default_tile_batch((100, 100, 100), torch.device("cpu"))  # 2**20 / 1e6 = 1.05
    assert batch == 1 and isinstance(batch, int)
    batch = default_tile_batch((40, 60, 100), torch.device("cpu"))  # 2**20 / 240000 = 4.37
    assert batch == 4 and isinstance(batch, int)


def test_logits_are_float32_whatever_the_default_dtype() -> None:
    image = torch.randn(1, 12, 10)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = sliding_window_logits(identity_net(1, 2).double(), image.double(), (8, 6), 1)
    finally:
        torch.set_default_dtype(previous)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, image, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_accumulators_and_weights_stay_on_the_image_device() -> None:
    net = skewed_net(3)
    image = torch.randn(1, 12, 10, 9)
    cpu = sliding_window_logits(net, image, (8, 8, 8), 2, mirror_axes=(0, 2))
    gpu = sliding_window_logits(net.cuda(), image.cuda(), (8, 8, 8), 2, mirror_axes=(0, 2))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-4)
