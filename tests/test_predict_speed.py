"""The fast CPU prediction path: widened tiles, batched mirrorings, and what must not change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autoseg.network import build_network
from autoseg.plans import Plans
from autoseg.predictor import Predictor
from autoseg.sliding_window import (
    CPU_VOXELS_PER_FORWARD,
    default_tile_batch,
    inference_tile_size,
    sliding_window_positions,
)
from tests.test_predict import LABELS, tiny_config


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


def _predictor(name: str = "3d_fullres", **kwargs: object) -> Predictor:
    """A fixed (seeded) two-fold model of the tiny synthetic configuration, patch 8."""
    config = dataclasses.replace(tiny_config(name), patch_size=(8,) * (2 if name == "2d" else 3))
    plans = Plans("Task99_Synthetic", "default", 8.0, 4, ("MRI",), LABELS, {name: config})
    weights = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights.append(build_network(config, 1, len(LABELS), deep_supervision=True).state_dict())
    return Predictor(weights, plans, name, device="cpu", **kwargs)


def _image(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, *shape)).astype(np.float32)


# shapes smaller than the 8^3 patch, equal, just over it (widened tile) and far over (tiled)
SHAPES_3D = [(5, 6, 4), (8, 8, 8), (9, 10, 9), (13, 9, 11), (9, 3, 14)]


@pytest.mark.parametrize("max_tile_scale", [1.0, 1.25])
def test_fast_path_equals_the_plain_path_3d(max_tile_scale: float) -> None:
    """Batched mirrorings and the cached Gaussian change no label: the plain reference path is
    one network input per forward pass; shapes alternate so a stale cache would show."""
    fast = _predictor(max_tile_scale=max_tile_scale)  # default tile batch: 8 on the CPU
    plain = _predictor(max_tile_scale=max_tile_scale, tile_batch=1)
    for i, shape in enumerate([*SHAPES_3D, SHAPES_3D[2]]):
        image = _image(shape, seed=i % len(SHAPES_3D))
        got, ref = fast.predict_preprocessed(image), plain.predict_preprocessed(image)
        assert got.shape == (3, *shape)
        np.testing.assert_array_equal(got.argmax(0), ref.argmax(0))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_fast_path_equals_the_plain_path_2d() -> None:
    fast, plain = _predictor("2d"), _predictor("2d", tile_batch=1)
    for i, shape in enumerate([(3, 5, 6), (2, 9, 10), (2, 19, 7)]):
        image = _image(shape, seed=i)
        got, ref = fast.predict_preprocessed(image), plain.predict_preprocessed(image)
        np.testing.assert_array_equal(got.argmax(0), ref.argmax(0))
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def _count_forwards(predictor: Predictor) -> list[int]:
    """Wrap every fold's forward; the list collects the batch size of each call."""
    calls: list[int] = []
    for net in predictor.networks:
        forward = net.forward

        def counted(x: torch.Tensor, forward=forward) -> torch.Tensor:
            calls.append(x.shape[0])
            return forward(x)

        net.forward = counted
    return calls


def test_a_widened_tile_takes_one_window_with_all_mirrorings_in_one_pass() -> None:
    shape = (9, 10, 9)  # just over the 8^3 patch on every axis
    wide, patch = _predictor(max_tile_scale=1.25), _predictor()  # the default: the patch
    assert wide.tile_size(shape) == (10, 10, 10) and patch.tile_size(shape) == (8, 8, 8)
    wide_calls, patch_calls = _count_forwards(wide), _count_forwards(patch)
    image = _image(shape, seed=3)
    probs = wide.predict_preprocessed(image)
    assert wide_calls == [8, 8]  # per fold: one window, its 8 mirrorings in one forward pass
    patch.predict_preprocessed(image)
    windows = len(sliding_window_positions(shape, (8, 8, 8)))
    assert windows == 8 and sum(patch_calls) == 2 * 8 * windows
    # the widened tile is a different (larger-context) prediction, but a close one
    assert np.isfinite(probs).all() and np.allclose(probs.sum(0), 1, atol=1e-5)
