"""The training paths (issue 27): device vs batchgenerators augmentation, bf16 vs fp32.

What ``benchmarks/augment_stats.py`` found on the real batches, pinned on small synthetic ones:
the device path's images must be as detailed as batchgenerators' (it interpolated linearly and
came out smoother), its labels as aligned, centred and mirrored; and a bf16 step must give a
loss within a tolerance of the fp32 step's on the same batch.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from skimage.transform import resize

from autoseg.device import cpu_has_bf16
from autoseg.training.augment.pipeline import sample_size
from autoseg.training.augment.pipeline_device import (
    DeviceAugmentation,
    affine_matrices,
    apply_spatial,
)
from autoseg.training.augment.spline_device import (
    cubic_grid_sample,
    cubic_resize,
    spline_coefficients,
)
from autoseg.training.loader import BatchLoader
from autoseg.training.step import TrainingStep
from tests.training.test_augment_device import _reference_coordinates
from tests.training.test_loader import make_config, write_case

CPU = torch.device("cpu")


def test_cubic_spatial_equals_batchgenerators_order_3() -> None:
    patch, region = (10, 14, 12), (24, 30, 26)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 1, *region)).astype(np.float32)
    angles, scale = (0.3, -0.2, 0.45), 0.8
    matrices = affine_matrices(torch.tensor([angles], dtype=torch.float64), torch.tensor([scale]))
    target = torch.zeros(1, 1, *region, dtype=torch.int64)
    out, _ = apply_spatial(
        torch.from_numpy(image), target, matrices, torch.tensor([True]), patch, "cubic"
    )
    coords = _reference_coordinates(patch, region, angles, scale)
    expected = map_coordinates(image[0, 0].astype(float), coords, order=3, mode="constant")
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=2e-4)


def test_spline_coefficients_interpolate_their_image() -> None:
    x = torch.randn(2, 1, 9, 11)
    grid_axes = [torch.linspace(-1, 1, n) for n in (9, 11)]
    yy, xx = torch.meshgrid(*grid_axes, indexing="ij")
    grid = torch.stack([xx, yy], -1)[None].expand(2, -1, -1, -1)
    torch.testing.assert_close(cubic_grid_sample(x, grid), x, atol=2e-4, rtol=0)
    assert not torch.allclose(spline_coefficients(x), x)  # sharpened, not the image itself


def test_cubic_resize_equals_skimage() -> None:
    x = np.random.default_rng(1).normal(size=(6, 9, 5))
    expected = resize(x, (11, 15, 9), order=3, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(cubic_resize(torch.from_numpy(x), (11, 15, 9)).numpy(), expected)


def _roughness(image: np.ndarray) -> np.ndarray:
    """Per sample: mean absolute step between neighbours, over the sample's std."""
    n, ndim = len(image), image.ndim - 2
    steps = [np.abs(np.diff(image[:, 0], axis=a + 1)).reshape(n, -1).mean(1) for a in range(ndim)]
    return np.mean(steps, 0) / image[:, 0].reshape(n, -1).std(1)


def _close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    se = np.sqrt(a.var() / len(a) + b.var() / len(b))
    assert abs(a.mean() - b.mean()) < 4.5 * se, (what, a.mean(), b.mean(), se)


def _detail_kept(transform_cpu, transform_device, data: np.ndarray) -> tuple:
    """Roughness of the samples each path changed, from white-noise inputs."""
    out = []
    for fn in (transform_cpu, transform_device):
        result = fn(data)
        crop = tuple(
            slice((r - p) // 2, (r - p) // 2 + p)
            for r, p in zip(data.shape[2:], result.shape[2:], strict=True)
        )
        before = data[(slice(None), slice(None), *crop)]
        changed = np.abs(result - before).reshape(len(data), -1).max(1) > 1e-6
        out.append(_roughness(result[changed]))
    return tuple(out)


def test_spatial_transform_keeps_the_detail_batchgenerators_keeps() -> None:
    """Linear interpolation (the device path before issue 27) blurred the rotated and scaled
    samples: their detail must match batchgenerators' cubic splines."""
    from autoseg.training.augment.pipeline import training_transforms

    patch = (10, 10, 10)
    region = sample_size(patch, True)
    data = np.random.default_rng(0).normal(size=(600, 1, *region)).astype(np.float32)
    seg = np.zeros_like(data)
    reference = training_transforms(patch).transforms[0]  # SpatialTransform

    def cpu(x: np.ndarray) -> np.ndarray:
        np.random.seed(0)
        return reference(data=x.copy(), seg=seg.copy())["data"]

    def device(x: np.ndarray) -> np.ndarray:
        aug = DeviceAugmentation(patch, CPU, seed=0)
        return aug.spatial(torch.from_numpy(x), torch.from_numpy(seg))[0].numpy()

    ref, dev = _detail_kept(cpu, device, data)
    _close(ref, dev, "roughness after rotation/scaling")
    assert abs(dev.mean() / ref.mean() - 1) < 0.03


def test_low_resolution_upsamples_as_batchgenerators() -> None:
    """Each changed channel is batchgenerators' nearest-down, cubic-up resize of the input for
    one of the zooms it can draw (linear upsampling matches none)."""
    patch = (12, 12, 12)
    data = np.random.default_rng(1).normal(size=(300, 1, *patch)).astype(np.float32)
    out = DeviceAugmentation(patch, CPU, seed=0).low_resolution(torch.from_numpy(data.copy()))
    out = out.numpy()
    changed = np.abs(out - data).reshape(len(data), -1).max(1) > 1e-6
    assert changed.sum() > 10
    matched = 0
    for x, y in zip(data[changed, 0], out[changed, 0], strict=True):
        for small in range(6, 13):  # round(12 * zoom), zoom in [0.5, 1]
            down = resize(x.astype(float), (small,) * 3, order=0, mode="edge", anti_aliasing=False)
            up = resize(down, patch, order=3, mode="edge", anti_aliasing=False)
            if np.abs(up - y).max() < 1e-4:
                matched += 1
                break
    assert matched / changed.sum() > 0.95


# ------------------------------------------------------------------ whole batches, both paths
def _textured_case(folder, shape=(36, 40, 36)) -> list[str]:
    """One case whose image is white noise plus its labels: interpolation shows as lost detail,
    misaligned labels as lost contrast."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    centre = np.array(shape)[:, None, None, None] / 2
    d = (((grid - centre) / (np.array(shape)[:, None, None, None] / 3)) ** 2).sum(0)
    seg = np.where(d < 1, 1, 0)
    seg[(d < 1) & (grid[1] > centre[1])] = 2  # two halves: mirroring swaps their sides
    image = 2.0 * seg + rng.normal(0, 1, shape)
    write_case(folder, "case0", image[None], seg)
    return ["case0"]


def _path_stats(folder, ids, config, augmentation: str, batches: int, cubic: bool = True):
    aug = DeviceAugmentation(config.patch_size, CPU, seed=7, cubic=cubic)
    rough, contrast, fg, side = [], [], [], []
    with BatchLoader(folder, ids, config, seed=3, augmentation=augmentation) as loader:
        for _ in range(batches):
            batch = next(loader)
            image, target = batch["image"], batch["target"]
            if augmentation == "device":
                out = aug(torch.from_numpy(image), torch.from_numpy(target))
                image, target = out[0].numpy(), out[1].numpy()
            rough.append(_roughness(image))
            seg, img = target[:, 0], image[:, 0]
            both = [(i, s) for i, s in zip(img, seg, strict=True) if 0 < (s > 0).mean() < 1]
            contrast.append(np.array([i[s > 0].mean() - i[s == 0].mean() for i, s in both]))
            fg.append((seg > 0).reshape(len(seg), -1).mean(1))
            y = np.arange(seg.shape[2])[None, None, :, None]
            n2 = (seg == 2).sum((1, 2, 3))
            side.append((((seg == 2) * y).sum((1, 2, 3)) / np.maximum(n2, 1))[n2 > 0])
    names = ("rough", "contrast", "fg", "side")
    return {k: np.concatenate(v) for k, v in zip(names, (rough, contrast, fg, side), strict=True)}


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    folder = tmp_path_factory.mktemp("textured")
    ids = _textured_case(folder)
    config = make_config((12, 16, 12), batch=8)
    cpu = _path_stats(folder, ids, config, "cpu", 60)
    return folder, ids, config, cpu


def test_device_batches_match_batchgenerators_batches(textured) -> None:
    folder, ids, config, cpu = textured
    device = _path_stats(folder, ids, config, "device", 60)
    for key in ("rough", "contrast", "fg", "side"):
        _close(cpu[key], device[key], key)


# ------------------------------------------------------------------ bf16
@pytest.mark.skipif(not cpu_has_bf16(), reason="no native bf16 on this CPU")
def test_bf16_loss_of_one_batch_within_tolerance_of_fp32(tmp_path) -> None:
    ids = _textured_case(tmp_path)
    config = dataclasses.replace(
        make_config((12, 16, 12), batch=4),
        strides=((1, 1, 1), (2, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        features_per_stage=(8, 16),
    )
    with BatchLoader(tmp_path, ids, config, seed=0, augmentation="cpu") as loader:
        batch = next(loader)
    losses = {}
    for bf16 in (False, True):
        step = TrainingStep(config, 1, 3, CPU, seed=0, augmentation="cpu", cpu_bf16=bf16)
        assert step.bf16 == bf16
        before, _ = step.val_batch(batch)
        trained = [step.train_batch(batch) for _ in range(3)]
        after, _ = step.val_batch(batch)
        losses[bf16] = (before, *trained, after)
    fp32, bf16 = np.array(losses[False]), np.array(losses[True])
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    np.testing.assert_allclose(bf16, fp32, rtol=0.02)
