"""Device augmentation (autoseg.training.augment.pipeline_device) against the batchgenerators
reference path.

Each transform is run on many small synthetic patches by both paths; the fraction of samples
(or channels) it touches and the distribution of what it does must agree with the reference,
and with the probabilities nnU-Net uses. Seeds are fixed, so the statistical checks are
deterministic; their tolerances are about 4 standard errors.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch
from batchgenerators.augmentations.utils import rotate_coords_3d
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
from scipy.ndimage import map_coordinates
from scipy.stats import ks_2samp

from autoseg.errors import AutosegError
from autoseg.training.augment.pipeline import sample_size, training_transforms
from autoseg.training.augment.pipeline_device import (
    DeviceAugmentation,
    affine_matrices,
    apply_spatial,
    gaussian_blur,
    resolve_augmentation,
    spatial_matrices,
)

CPU = torch.device("cpu")
PATCH = (8, 8, 8)
N = 2000  # samples per statistical check


def _reference(kind: type, **match) -> object:
    """The transform of ``kind`` in autoseg.training.augment.pipeline's pipeline (the CPU
    reference)."""
    for t in training_transforms(PATCH).transforms:
        if isinstance(t, kind) and all(getattr(t, k) == v for k, v in match.items()):
            return t
    raise LookupError(kind)


def _run_reference(transform, data: np.ndarray, seg: np.ndarray | None = None, seed: int = 0):
    np.random.seed(seed)
    random.seed(seed)
    out = transform(data=data.copy(), seg=None if seg is None else seg.copy())
    return out["data"], out["seg"]


def _batch(channels: int = 1, seed: int = 0, positive: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (
        rng.exponential(1.0, (N, channels, *PATCH))
        if positive
        else rng.normal(0, 1, (N, channels, *PATCH))
    )
    return x.astype(np.float32)


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(N, C) bool: which channels of which samples a transform touched."""
    return np.abs(after - before).reshape(*before.shape[:2], -1).max(-1) > 1e-6


def _fraction_close(value: float, p: float, n: int) -> None:
    tolerance = 4 * np.sqrt(p * (1 - p) / n)
    assert abs(value - p) < tolerance, (value, p, tolerance)


def _same_distribution(a: np.ndarray, b: np.ndarray) -> None:
    assert len(a) > 50 and len(b) > 50
    assert ks_2samp(a, b).pvalue > 1e-3, (
        np.percentile(a, [5, 50, 95]),
        np.percentile(b, [5, 50, 95]),
    )


def _device(x: np.ndarray, method: str, *args, seed: int = 0) -> np.ndarray:
    aug = DeviceAugmentation(PATCH, CPU, seed=seed)
    return getattr(aug, method)(torch.from_numpy(x.copy()), *args).numpy()


# ------------------------------------------------------------------ shapes, dtypes, seeds
@pytest.mark.parametrize("patch", [(16, 20, 12), (20, 24)])
@pytest.mark.parametrize("dtype", [torch.int16, torch.int64])
def test_output_shapes_dtypes_and_untouched_inputs(patch, dtype) -> None:
    region = sample_size(patch, True)
    image = torch.randn(4, 2, *region)
    target = torch.randint(0, 3, (4, 1, *region), dtype=dtype)
    image0, target0 = image.clone(), target.clone()
    out_image, out_target = DeviceAugmentation(patch, CPU, seed=3)(image, target)
    assert out_image.shape == (4, 2, *patch) and out_image.dtype == torch.float32
    assert out_target.shape == (4, 1, *patch) and out_target.dtype == dtype
    assert torch.equal(image, image0) and torch.equal(target, target0)
    assert torch.isfinite(out_image).all()


def test_same_seed_same_batches_other_seed_others() -> None:
    region = sample_size(PATCH, True)
    image, target = torch.randn(16, 1, *region), torch.randint(0, 3, (16, 1, *region))
    a = DeviceAugmentation(PATCH, CPU, seed=5)
    b = DeviceAugmentation(PATCH, CPU, seed=5)
    first = [a(image, target) for _ in range(3)]
    second = [b(image, target) for _ in range(3)]
    for (x, y), (u, v) in zip(first, second, strict=True):
        assert torch.equal(x, u) and torch.equal(y, v)
    assert not torch.equal(first[0][0], first[1][0])  # the stream moves on
    a.reseed(5)
    assert torch.equal(a(image, target)[0], first[0][0])
    other = DeviceAugmentation(PATCH, CPU, seed=6)(image, target)
    assert not torch.equal(other[0], first[0][0])


def test_augmentation_option() -> None:
    assert resolve_augmentation("auto", torch.device("cuda")) == "device"
    assert resolve_augmentation("auto", CPU) in ("cpu", "device")
    assert resolve_augmentation("cpu", torch.device("cuda")) == "cpu"
    with pytest.raises(AutosegError, match="--augmentation gpu"):
        resolve_augmentation("gpu", CPU)


# ------------------------------------------------------------------ spatial
def _reference_coordinates(patch, region, angles, scale) -> np.ndarray:
    """Where batchgenerators samples the region for a patch rotated and scaled so."""
    axes = [np.arange(p) - (p - 1) / 2 for p in patch]
    coords = np.array(np.meshgrid(*axes, indexing="ij"), dtype=float)
    coords = rotate_coords_3d(coords, *angles) * scale
    return coords + (np.asarray(region, float) / 2 - 0.5)[:, None, None, None]


def test_spatial_samples_where_batchgenerators_does() -> None:
    patch, region = (10, 14, 12), (24, 30, 26)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 1, *region)).astype(np.float32)
    angles, scale = (0.3, -0.2, 0.45), 0.8
    matrices = affine_matrices(torch.tensor([angles], dtype=torch.float64), torch.tensor([scale]))
    coords = _reference_coordinates(patch, region, angles, scale)
    target = torch.zeros(1, 1, *region, dtype=torch.int64)
    for mode, order, tol in (("nearest", 0, 0.0), ("bilinear", 1, 1e-4)):
        out, _ = apply_spatial(
            torch.from_numpy(image), target, matrices, torch.tensor([True]), patch, mode
        )
        expected = map_coordinates(image[0, 0], coords, order=order, mode="constant", cval=0)
        if order == 0:  # ties at exactly .5 may round either way
            assert (out[0, 0].numpy() == expected).mean() > 0.999
        else:
            np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=tol)


def test_spatial_keeps_labels_and_image_aligned_and_never_interpolates_labels() -> None:
    patch = (12, 16, 12)
    region = sample_size(patch, True)
    z, y, x = np.meshgrid(*[np.arange(r) for r in region], indexing="ij")
    centre = np.array(region) / 2
    d = ((z - centre[0]) / 5) ** 2 + ((y - centre[1]) / 7) ** 2 + ((x - centre[2]) / 5) ** 2
    labels = np.where(d < 1, 5, 0) + np.where(d < 0.4, -3, 0)  # values 0, 2, 5 only
    target = torch.from_numpy(np.repeat(labels[None, None], 64, 0).astype(np.int16))
    image = target.float()
    matrices, modified = spatial_matrices(torch.Generator().manual_seed(1), 64, 3)
    assert modified.any() and not modified.all()
    same, seg = apply_spatial(image, target, matrices, modified, patch, image_mode="nearest")
    assert torch.equal(same, seg.float())  # one grid for both
    linear, seg = apply_spatial(image, target, matrices, modified, patch)
    assert set(np.unique(seg.numpy())) <= {0, 2, 5}  # never 1, 3, 4: no label interpolation
    inside = (linear - seg.float()).abs() < 0.5
    assert inside.float().mean() > 0.9  # the linearly resampled image still lies on its labels
    kept = ~modified
    crop = tuple(slice((r - p) // 2, (r - p) // 2 + p) for r, p in zip(region, patch, strict=True))
    assert torch.equal(linear[kept], image[kept][(slice(None), slice(None), *crop)])


def test_spatial_applied_fraction_and_scales_match_batchgenerators() -> None:
    region = sample_size(PATCH, True)
    rng = np.random.default_rng(2)
    data = rng.normal(size=(N, 1, *region)).astype(np.float32)
    seg = np.zeros((N, 1, *region), np.float32)
    crop = tuple(slice((r - p) // 2, (r - p) // 2 + p) for r, p in zip(region, PATCH, strict=True))
    centre = data[(slice(None), slice(None), *crop)]
    ref, _ = _run_reference(_reference(SpatialTransform), data, seg)
    matrices, modified = spatial_matrices(torch.Generator().manual_seed(0), N, 3)
    dev, _ = apply_spatial(torch.from_numpy(data), torch.from_numpy(seg), matrices, modified, PATCH)
    p = 1 - 0.8 * 0.8  # rotation or scaling
    _fraction_close(_changed(centre, ref)[:, 0].mean(), p, N)
    _fraction_close(_changed(centre, dev.numpy())[:, 0].mean(), p, N)
    scale = torch.linalg.det(matrices).abs() ** (1 / 3)
    scaled = scale[(scale - 1).abs() > 1e-9].numpy()
    _fraction_close(len(scaled) / N, 0.2, N)
    assert scaled.min() >= 0.7 - 1e-9 and scaled.max() <= 1.4 + 1e-9
    _fraction_close((scaled < 1).mean(), 0.5, len(scaled))  # half zoom in, as batchgenerators
    rotation = matrices / scale[:, None, None]
    eye = torch.eye(3, dtype=rotation.dtype).expand_as(rotation)
    torch.testing.assert_close(rotation @ rotation.transpose(1, 2), eye)


# ------------------------------------------------------------------ intensity transforms
def test_noise_matches_batchgenerators() -> None:
    data = np.ones((N, 1, *PATCH), np.float32)
    ref, _ = _run_reference(_reference(GaussianNoiseTransform), data)
    dev = _device(data, "noise")
    for out in (ref, dev):
        _fraction_close(_changed(data, out)[:, 0].mean(), 0.1, N)
    std = [(o - data).reshape(N, -1).std(1) for o in (ref, dev)]
    std = [s[s > 1e-6] for s in std]
    assert max(s.max() for s in std) < 0.12  # std drawn in [0, 0.1]
    _same_distribution(*std)


def test_blur_matches_batchgenerators_per_sample_and_per_channel() -> None:
    data = _batch(channels=2)
    ref, _ = _run_reference(_reference(GaussianBlurTransform), data)
    dev = _device(data, "blur")
    for out in (ref, dev):
        changed = _changed(data, out)
        _fraction_close(changed[:, 0].mean(), 0.1, N)  # 0.2 per sample x 0.5 per channel
        _fraction_close(changed[:, 1].mean(), 0.1, N)
        _fraction_close(changed.any(1).mean(), 0.2 * 0.75, N)
    ratios = []
    for out in (ref, dev):
        c = _changed(data, out)
        ratios.append(out.reshape(N, 2, -1).std(-1)[c] / data.reshape(N, 2, -1).std(-1)[c])
    _same_distribution(*ratios)


def test_gaussian_blur_equals_scipy() -> None:
    from scipy.ndimage import gaussian_filter

    x = np.random.default_rng(3).normal(size=(2, 9, 7, 11)).astype(np.float32)
    sigma = torch.tensor([0.5, 1.0])
    out = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    for i, s in enumerate(sigma.tolist()):
        np.testing.assert_allclose(out[i], gaussian_filter(x[i], s), atol=2e-4)


def test_brightness_matches_batchgenerators() -> None:
    data = _batch(channels=2, positive=True)
    ref, _ = _run_reference(_reference(BrightnessMultiplicativeTransform), data)
    dev = _device(data, "brightness")
    factors = []
    for out in (ref, dev):
        changed = _changed(data, out)
        _fraction_close(changed.any(1).mean(), 0.15, N)
        f = out.reshape(N, 2, -1).mean(-1) / data.reshape(N, 2, -1).mean(-1)
        f = f[changed.any(1)]
        assert f.min() >= 0.75 - 1e-4 and f.max() <= 1.25 + 1e-4
        assert np.mean(np.abs(f[:, 0] - f[:, 1]) > 1e-4) > 0.9  # a factor per channel
        factors.append(f.ravel())
    _same_distribution(*factors)


def test_contrast_matches_batchgenerators_and_keeps_the_range() -> None:
    data = _batch(channels=1)
    ref, _ = _run_reference(_reference(ContrastAugmentationTransform), data)
    dev = _device(data, "contrast")
    ratios = []
    for out in (ref, dev):
        changed = _changed(data, out)[:, 0]
        _fraction_close(changed.mean(), 0.15, N)
        flat_in, flat_out = data.reshape(N, -1), out.reshape(N, -1)
        assert (flat_out.min(1) >= flat_in.min(1) - 1e-5).all()
        assert (flat_out.max(1) <= flat_in.max(1) + 1e-5).all()
        ratios.append(flat_out.std(1)[changed] / flat_in.std(1)[changed])
    _same_distribution(*ratios)


def test_low_resolution_matches_batchgenerators_per_sample_and_per_channel() -> None:
    data = _batch(channels=2, seed=4)
    ref, _ = _run_reference(_reference(SimulateLowResolutionTransform), data)
    dev = _device(data, "low_resolution")
    for out in (ref, dev):
        changed = _changed(data, out)
        _fraction_close(changed[:, 0].mean(), 0.125, N)  # 0.25 per sample x 0.5 per channel
        _fraction_close(changed.any(1).mean(), 0.25 * 0.75, N)
        smooth = out.reshape(N, 2, -1).std(-1)[changed] / data.reshape(N, 2, -1).std(-1)[changed]
        assert np.median(smooth) < 0.9  # detail is lost


@pytest.mark.parametrize(("invert", "p"), [(True, 0.1), (False, 0.3)])
def test_gamma_matches_batchgenerators_and_retains_stats(invert: bool, p: float) -> None:
    data = _batch(channels=1, positive=True)  # skewed: gamma on -x differs from gamma on x
    ref, _ = _run_reference(_reference(GammaTransform, invert_image=invert), data)
    dev = _device(data, "gamma", invert)
    shifts = []
    for out in (ref, dev):
        changed = _changed(data, out)[:, 0]
        _fraction_close(changed.mean(), p, N)
        flat_in, flat_out = data.reshape(N, -1)[changed], out.reshape(N, -1)[changed]
        np.testing.assert_allclose(flat_out.mean(1), flat_in.mean(1), atol=1e-4)
        np.testing.assert_allclose(flat_out.std(1), flat_in.std(1), rtol=1e-3)
        shifts.append(np.median(flat_out, 1) - np.median(flat_in, 1))
    _same_distribution(*shifts)


# ------------------------------------------------------------------ mirroring
def _flipped_axes(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(N, 3) bool: which axes each sample was mirrored along (unique voxel values)."""
    out = np.zeros((len(before), 3), bool)
    for i in range(len(before)):
        for pattern in np.ndindex(2, 2, 2):
            axes = tuple(a + 1 for a in range(3) if pattern[a])
            candidate = np.flip(before[i], axes) if axes else before[i]
            if np.array_equal(candidate, after[i]):
                out[i] = pattern
                break
        else:
            raise AssertionError(f"sample {i} is not a mirroring of its input")
    return out


def test_mirroring_each_axis_independently_with_labels() -> None:
    n = 1000
    data = np.broadcast_to(
        np.arange(np.prod(PATCH), dtype=np.float32).reshape(PATCH), (n, 1, *PATCH)
    )
    data = np.ascontiguousarray(data)
    seg = data.copy()
    np.random.seed(0)
    ref = MirrorTransform(axes=(0, 1, 2))(data=data.copy(), seg=seg.copy())
    aug = DeviceAugmentation(PATCH, CPU, seed=0)
    image, target = aug.mirror(torch.from_numpy(data.copy()), torch.from_numpy(seg.copy()))
    assert torch.equal(image, target)  # image and labels mirrored together
    for flips in (_flipped_axes(data, ref["data"]), _flipped_axes(data, image.numpy())):
        for axis in range(3):
            _fraction_close(flips[:, axis].mean(), 0.5, n)
        _fraction_close(flips.all(1).mean(), 0.125, n)  # independent axes


# ------------------------------------------------------------------ wiring
def test_loader_yields_regions_and_the_step_augments_them(tmp_path) -> None:
    from autoseg.training.loader import BatchLoader
    from autoseg.training.step import TrainingStep
    from tests.training.test_loader import blob_dataset, make_config

    ids = blob_dataset(tmp_path, [(20, 24, 16)] * 2)
    config = dataclasses.replace(
        make_config((8, 12, 8), batch=2),
        strides=((1, 1, 1), (2, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        features_per_stage=(4, 8),
    )
    region = sample_size(config.patch_size, True)
    with BatchLoader(tmp_path, ids, config, seed=0, augmentation="device") as loader:
        batch = next(loader)
    assert batch["image"].shape == (2, 1, *region) and batch["target"].shape == (2, 1, *region)
    step = TrainingStep(config, 1, 3, CPU, augmentation="device")
    image, target = step.device_batch(batch)
    assert image.shape == (2, 1, 8, 12, 8) and target.dtype == torch.int64
    assert set(target.unique().tolist()) <= {0, 1, 2}
    plain = TrainingStep(config, 1, 3, CPU, augmentation="cpu")
    assert plain.augmenter is None
