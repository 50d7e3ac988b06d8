"""The cascade's previous-stage perturbation (nnU-Net's binary morphology and component removal),
on the CPU path (autoseg.training.augment.cascade) and the device path
(autoseg.training.augment.cascade_device)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

import autoseg.training.augment.cascade as cascade_augment
from autoseg.training.augment.cascade import (
    NNUNET,
    OPERATORS,
    Morphology,
    Perturbation,
    PerturbationSettings,
    Removal,
    apply_perturbation,
    draw_perturbation,
    morphology,
    perturb_previous_stage,
    remove_component,
)
from autoseg.training.augment.cascade_device import DevicePreviousStage, morphology_torch
from autoseg.training.loader import BatchLoader
from autoseg.training.step import TrainingStep
from tests.training.test_loader import blob_dataset, make_config

CPU = torch.device("cpu")


def _ball(radius: float, ndim: int) -> np.ndarray:
    """The integer offsets within ``radius``, written out (the oracle's structuring element)."""
    reach = int(np.floor(radius))
    axes = np.meshgrid(*[np.arange(-reach, reach + 1)] * ndim, indexing="ij")
    return sum(a**2 for a in axes) <= radius * radius


def _oracle(mask: np.ndarray, operator: str, radius: float) -> np.ndarray:
    """scipy's binary operators with the ball; outside the array neither adds nor erodes."""
    ball = _ball(radius, mask.ndim)

    def dilate(m):
        return ndimage.binary_dilation(m, ball)

    def erode(m):
        return ndimage.binary_erosion(m, ball, border_value=1)

    steps = {"dilation": [dilate], "erosion": [erode], "opening": [erode, dilate]}
    steps["closing"] = [dilate, erode]
    for step in steps[operator]:
        mask = step(mask)
    return mask


def _random_mask(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    kind = rng.integers(3)
    noise = rng.random(shape)
    if kind == 0:
        return noise < 0.15  # scattered voxels
    if kind == 1:
        return ndimage.binary_opening(noise < 0.5)  # blobs, touching the border
    mask = np.zeros(shape, bool)  # one small object away from the border
    mask[tuple(slice(s // 2 - 1, s // 2 + 2) for s in shape)] = True
    return mask


RADII = (1.0, 1.5, 2.0, 2.9999, 3.0001, 4.5, 7.99)


@pytest.mark.parametrize("ndim", [2, 3])
def test_morphology_equals_scipy_with_the_ball_on_both_paths(ndim: int) -> None:
    rng = np.random.default_rng(ndim)
    for i in range(40):
        shape = tuple(int(s) for s in rng.integers(4, 22 if ndim == 3 else 40, size=ndim))
        mask = _random_mask(rng, shape)
        radius = RADII[i % len(RADII)]
        for operator in OPERATORS:
            expected = _oracle(mask, operator, radius)
            cpu = morphology(mask, operator, radius)
            device = morphology_torch(torch.from_numpy(mask), operator, radius).numpy()
            assert np.array_equal(cpu, expected), (shape, operator, radius)
            assert np.array_equal(device, expected), (shape, operator, radius)
    with pytest.raises(ValueError, match="unknown binary operator"):
        morphology(mask, "thinning", 2.0)


def test_dilation_never_shrinks_and_erosion_never_grows() -> None:
    rng = np.random.default_rng(5)
    for _ in range(30):
        mask = _random_mask(rng, (12, 14, 10))
        radius = float(rng.uniform(1, 8))
        for apply in (morphology, lambda m, o, r: morphology_torch(torch.from_numpy(m), o, r)):
            grown = np.asarray(apply(mask, "dilation", radius))
            shrunk = np.asarray(apply(mask, "erosion", radius))
            opened = np.asarray(apply(mask, "opening", radius))
            closed = np.asarray(apply(mask, "closing", radius))
            assert (grown >= mask).all() and (shrunk <= mask).all()
            assert (opened <= mask).all() and (closed >= mask).all()
            if mask.any() and not mask.all():  # radius >= 1: the six face neighbours at least
                assert grown.sum() > mask.sum()


def test_draws_follow_the_probabilities_and_ranges() -> None:
    rng = np.random.default_rng(0)
    n, channels = 20_000, 2
    draws = [draw_perturbation(rng, channels) for _ in range(n)]
    morph = [m for d in draws for m in d.morphology]
    removals = [r for d in draws for r in d.removals]
    assert abs(np.mean([bool(d.morphology) for d in draws]) - 0.4 * 0.75) < 0.015
    assert abs(len(morph) / (n * channels) - 0.4 * 0.5) < 0.01
    assert abs(np.mean([bool(d.removals) for d in draws]) - 0.2 * 0.75) < 0.015
    assert abs(len(removals) / (n * channels) - 0.2 * 0.5) < 0.01
    operators = [m.operator for m in morph]
    for operator in OPERATORS:
        assert abs(operators.count(operator) / len(morph) - 0.25) < 0.03
    radii = np.array([m.radius for m in morph])
    assert radii.min() >= 1.0 and radii.max() < 8.0 and abs(radii.mean() - 4.5) < 0.1
    both = [d.morphology for d in draws if len(d.morphology) == 2]
    assert 0.4 < np.mean([m[0].channel == 1 for m in both]) < 0.6  # channels in random order
    picks = np.array([r.pick for r in removals])
    assert picks.min() >= 0 and picks.max() < 1 and abs(picks.mean() - 0.5) < 0.03


def _two_cubes() -> np.ndarray:
    """(2, 40, 20, 20): a 10-voxel cube with a hole at its centre per channel, far apart, so
    every operator changes its channel for every radius in [1, 8)."""
    onehot = np.zeros((2, 40, 20, 20), np.float32)
    for channel, z in enumerate((4, 26)):
        onehot[channel, z : z + 10, 5:15, 5:15] = 1
        onehot[channel, z + 5, 10, 10] = 0
    return onehot


def _small_components() -> np.ndarray:
    """(2, 20, 20, 20): three 2x2x2 components per channel."""
    onehot = np.zeros((2, 20, 20, 20), np.float32)
    for channel in range(2):
        for k in range(3):
            onehot[channel, 2 + 6 * k : 4 + 6 * k, 3 + 10 * channel : 5 + 10 * channel, 4:6] = 1
    return onehot


def _changed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(N, L): which channel of which sample the perturbation touched."""
    return (after != before).reshape(*after.shape[:2], -1).any(-1)


def _both_paths(sample: np.ndarray, n: int, settings: PerturbationSettings, seed: int):
    batch = np.repeat(sample[None], n, axis=0)  # (N, L, *S)
    cpu = perturb_previous_stage(batch, np.random.default_rng(seed), settings)
    labels = np.zeros((n, 1, *sample.shape[1:]), np.int16)  # the one-hot as a label map
    for channel in range(len(sample)):
        labels[:, 0][batch[:, channel] > 0] = channel + 1
    image = torch.zeros((n, 1, *sample.shape[1:]))
    stage = DevicePreviousStage((1, 2), seed=seed + 1, settings=settings)
    device = stage(image, torch.from_numpy(labels))[:, 1:].numpy()
    return batch, cpu, device


@pytest.mark.parametrize(
    ("sample", "settings", "p"),
    [
        (_two_cubes(), dataclasses.replace(NNUNET, p_removal=0.0), 0.4 * 0.5),
        (_small_components(), dataclasses.replace(NNUNET, p_morphology=0.0), 0.2 * 0.5),
    ],
    ids=["morphology", "removal"],
)
def test_applied_fraction_matches_the_probability_on_both_paths(sample, settings, p) -> None:
    n = 1500
    batch, cpu, device = _both_paths(sample, n, settings, seed=3)
    tolerance = 4 * np.sqrt(p * (1 - p) / (2 * n))
    for out in (cpu, device):  # other seeds on each path: the same statistics
        assert abs(_changed(batch, out).mean() - p) < tolerance
        assert set(np.unique(out)) <= {0.0, 1.0} and (out.sum(1) <= 1).all()  # still one-hot
    assert abs(cpu.sum() - device.sum()) / batch.sum() < 0.05


def test_both_paths_give_the_same_result_for_the_same_seed() -> None:
    sample = _two_cubes()  # and small components in the corners, to be removed
    sample[0, :2, :2, :2] = sample[0, :2, 18:, :2] = sample[1, 38:, :2, 18:] = 1
    sample[1, 38:, 18:, :2] = 1
    n = 200
    batch = np.repeat(sample[None], n, axis=0)
    cpu = perturb_previous_stage(batch, np.random.default_rng(7))
    labels = torch.from_numpy((batch[:, :1] + 2 * batch[:, 1:]).astype(np.int16))
    device = DevicePreviousStage((1, 2), seed=7)(torch.zeros(n, 1, *sample.shape[1:]), labels)
    assert np.array_equal(cpu, device[:, 1:].numpy())
    assert _changed(batch, cpu).mean() > 0.2  # perturbed, not merely passed through


def test_gains_are_taken_from_the_other_channels_and_losses_become_background() -> None:
    onehot = np.zeros((2, 9, 9, 9), bool)
    onehot[0, :, :, :4] = True  # channel 0 fills x < 4, channel 1 x >= 4 on half the rows
    onehot[1, :4, :, 4:] = True
    grown = apply_perturbation(onehot, Perturbation((Morphology(0, "dilation", 1.0),)), NNUNET)
    gained = grown[0] & ~onehot[0]
    assert gained.any() and (gained[:, :, 4]).all() and not gained[:, :, 5:].any()
    assert np.array_equal(grown[1], onehot[1] & ~gained)  # taken from channel 1
    shrunk = apply_perturbation(onehot, Perturbation((Morphology(1, "erosion", 1.0),)), NNUNET)
    assert np.array_equal(shrunk[0], onehot[0])  # the lost voxels go to background
    assert (shrunk[1] <= onehot[1]).all() and shrunk[1].sum() < onehot[1].sum()


def test_removed_components_are_whole_and_below_the_size_limit() -> None:
    mask = np.zeros((20, 20, 20), bool)  # 8000 voxels; the limit is 15%: 1200
    mask[:10, :12, :10] = True  # exactly 1200: never removed
    mask[15, 15, 15] = mask[16, 16, 16] = True  # one component (diagonal neighbours)
    mask[12:14, 18:20, 18:20] = True
    mask[18:20, 2:4, 15:18] = True
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    assert count == 4
    removed = []
    for pick in np.linspace(0, 1, 300, endpoint=False):
        out = remove_component(mask, pick, 0.15)
        gone = mask & ~out
        assert not (out & ~mask).any()
        ids = np.unique(labels[gone])
        assert len(ids) == 1 and np.array_equal(gone, labels == ids[0])  # one whole component
        removed.append(int(ids[0]))
    big = labels[0, 0, 0]
    assert big not in removed
    shares = np.bincount(removed, minlength=count + 1)[1:]
    assert sorted(shares) == [0, 100, 100, 100]  # the three small ones, uniformly
    assert np.array_equal(remove_component(mask & (labels == big), 0.5, 0.15), labels == big)


def _cascade_data(tmp_path: Path) -> tuple[list[str], Path]:
    """Blob cases and a 'previous stage' of their labels with 1 and 2 swapped (so that
    where the previous stage went can be seen in the labels: channel 1 = label 2)."""
    ids = blob_dataset(tmp_path / "data", [(20, 24, 16)] * 2)
    previous = tmp_path / "previous"
    previous.mkdir()
    for case in ids:
        seg = np.load(tmp_path / "data" / f"{case}.seg.npy")
        swapped = np.choose(seg, [0, 2, 1]).astype(np.uint8)
        np.save(previous / f"{case}.npy", swapped)
    return ids, previous


def _unperturbed(monkeypatch) -> None:
    original = cascade_augment.previous_stage_channels
    monkeypatch.setattr(
        "autoseg.training.sampler.previous_stage_channels",
        lambda previous, labels, rng: original(previous, labels, None),
    )


def test_cpu_path_perturbs_only_the_previous_stage_channels(tmp_path: Path, monkeypatch) -> None:
    ids, previous = _cascade_data(tmp_path)
    config = make_config((12, 12, 12), batch=4)
    kwargs = dict(seed=2, augment=True, previous_stage=(previous, (1, 2)))

    def batches() -> list[dict]:
        with BatchLoader(tmp_path / "data", ids, config, **kwargs) as loader:
            return [next(loader) for _ in range(25)]

    perturbed, again = batches(), batches()
    _unperturbed(monkeypatch)
    plain = batches()
    changed = 0
    for a, b, c in zip(perturbed, again, plain, strict=True):
        assert np.array_equal(a["image"], b["image"])  # deterministic given the seed
        assert np.array_equal(a["image"][:, :1], c["image"][:, :1])  # image untouched
        assert np.array_equal(a["target"], c["target"])  # labels untouched
        onehot = np.concatenate([c["target"] == 2, c["target"] == 1], 1)
        assert np.array_equal(c["image"][:, 1:], onehot)  # unperturbed: moved with the labels
        assert (a["image"][:, 1:].sum(1) <= 1).all()
        changed += int((a["image"][:, 1:] != onehot).reshape(4, -1).any(1).sum())
    assert 0 < changed < 100  # some of the 100 samples, not all


def test_device_path_moves_the_previous_stage_with_the_labels_then_perturbs_it(
    tmp_path: Path,
) -> None:
    ids, previous = _cascade_data(tmp_path)
    config = dataclasses.replace(
        make_config((8, 12, 8), batch=4),
        strides=((1, 1, 1), (2, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        features_per_stage=(4, 8),
    )
    loader = BatchLoader(
        tmp_path / "data",
        ids,
        config,
        seed=0,
        augmentation="device",
        previous_stage=(previous, (1, 2)),
    )
    with loader:
        batches = [next(loader) for _ in range(25)]
    assert batches[0]["image"].shape[1] == 1 and batches[0]["previous"].dtype == np.uint8
    assert batches[0]["previous"].shape == batches[0]["target"].shape
    step = TrainingStep(config, 3, 3, CPU, augmentation="device", previous_labels=(1, 2))
    plain = TrainingStep(config, 3, 3, CPU, augmentation="device", previous_labels=(1, 2))
    plain.previous_stage.settings = dataclasses.replace(NNUNET, p_morphology=0, p_removal=0)
    changed = 0
    for batch in batches:
        image, target = step.device_batch(batch)
        image_plain, target_plain = plain.device_batch(batch)
        assert image.shape == (4, 3, 8, 12, 8) and target.shape == (4, 1, 8, 12, 8)
        assert torch.equal(image[:, :1], image_plain[:, :1]) and torch.equal(target, target_plain)
        onehot = torch.cat([target == 2, target == 1], 1).float()
        assert torch.equal(image_plain[:, 1:], onehot)  # moved exactly with the labels
        assert (image[:, 1:].sum(1) <= 1).all()
        changed += int((image[:, 1:] != onehot).flatten(1).any(1).sum())
    assert 0 < changed < 100
    with pytest.raises(ValueError, match="previous_labels"):
        TrainingStep(config, 3, 3, CPU, augmentation="device").device_batch(batches[0])


def test_removal_draws_need_no_component_and_skip_empty_channels() -> None:
    onehot = np.zeros((2, 6, 6, 6), bool)
    onehot[1, 2:4, 2:4, 2:4] = True
    perturbation = Perturbation(
        (Morphology(0, "dilation", 3.0),), (Removal(0, 0.3), Removal(1, 0.9))
    )
    out = apply_perturbation(onehot, perturbation, NNUNET)
    assert not out.any()  # channel 0 empty: nothing grown from it; channel 1's one cube removed
