"""The fast CPU prediction path: widened tiles, batched mirrorings, and what must not change."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autoseg.data.plans import Plans
from autoseg.inference.predictor import Predictor
from autoseg.inference.tiles import DEFAULT_TILE_SCALE, sliding_window_positions
from autoseg.networks.unet import build_network
from tests.inference.test_predict import LABELS, tiny_config


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
    wide, patch = _predictor(), _predictor(max_tile_scale=1.0)  # the default widens
    assert wide.max_tile_scale == DEFAULT_TILE_SCALE == 1.25
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


def test_tile_scale_2_widens_up_to_twice_the_patch_and_no_further() -> None:
    wide = _predictor(max_tile_scale=2.0)
    assert wide.tile_size((16, 17, 9)) == (16, 8, 10)  # 16, 10 <= 2x8 widened; 18 > 16: tiled
