"""Tile skipping by a body mask: tiles without body never reach the network, and inside the
body the logits are those of the unskipped prediction."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from autoseg.data.io import Geometry, Image
from autoseg.data.plans import Normalization
from autoseg.inference.sliding_window import sliding_window_logits, sliding_window_logits_slices
from autoseg.inference.tile_accumulation import SKIPPED_LOGIT_GAP
from autoseg.inference.tiles import sliding_window_positions
from tests.inference.test_predictor import make_plans, predictor


class Counting(torch.nn.Module):
    """A small conv net (so a tile's output depends on its neighbourhood) counting inputs."""

    def __init__(self, ndim: int, classes: int = 3) -> None:
        super().__init__()
        conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
        torch.manual_seed(0)
        layers = (conv(1, 4, 3, padding=1), torch.nn.ReLU(), conv(4, classes, 3, padding=1))
        self.net = torch.nn.Sequential(*layers)
        self.inputs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs += x.shape[0]
        return self.net(x)


def _overlaps(corner, tile, box) -> bool:
    """Does the tile at ``corner`` overlap the box ((lo, hi) per axis, hi exclusive)?"""
    return all(c < hi and lo < c + t for c, t, (lo, hi) in zip(corner, tile, box, strict=True))


def test_only_tiles_holding_body_run_and_body_logits_are_unchanged() -> None:
    shape, patch = (16, 20, 16), (8, 8, 8)
    image = torch.randn((1, *shape), generator=torch.Generator().manual_seed(1))
    boxes = (((0, 3), (0, 4), (12, 16)), ((14, 16), (18, 20), (0, 2)))  # opposite corners:
    keep = torch.zeros(shape, dtype=torch.bool)  # their bounding box is the whole image
    for box in boxes:
        keep[tuple(slice(*b) for b in box)] = True
    corners = sliding_window_positions(shape, patch, 0.5)
    runs = [c for c in corners if any(_overlaps(c, patch, box) for box in boxes)]
    assert 0 < len(runs) < len(corners)

    net = Counting(3)
    full = sliding_window_logits(net, image, patch, 3, mirror_axes=(0, 2), tile_batch=3)
    assert net.inputs == 4 * len(corners)
    net.inputs = 0
    skipped = sliding_window_logits(
        net, image, patch, 3, mirror_axes=(0, 2), tile_batch=3, keep=keep
    )
    assert net.inputs == 4 * len(runs)  # 4 mirrorings of each tile that holds body
    assert torch.allclose(skipped[:, keep], full[:, keep], atol=1e-5)
    covered = torch.zeros(shape, dtype=torch.bool)  # by a tile that runs
    touched = torch.zeros(shape, dtype=torch.bool)  # by a tile that is skipped
    for c in corners:
        window = tuple(slice(a, a + t) for a, t in zip(c, patch, strict=True))
        (covered if c in runs else touched)[window] = True
    only_run = covered & ~touched  # wider than the body: every voxel of it equals the full run
    assert (only_run & ~keep).any()
    assert torch.allclose(skipped[:, only_run], full[:, only_run], atol=1e-5)
    outside = skipped[:, ~covered]
    assert outside.shape[1] > 0
    assert torch.equal(outside[0], torch.zeros_like(outside[0]))
    assert torch.equal(outside[1:], torch.full_like(outside[1:], -SKIPPED_LOGIT_GAP))


def test_tiles_are_laid_over_the_bounding_box_of_the_body() -> None:
    shape, patch = (8, 40, 40), (8, 8, 8)
    keep = torch.zeros(shape, dtype=torch.bool)
    keep[2:5, 12:27, 15:20] = True  # y box 15 wide, x box 5 wide (widened to 8: 13..21)
    net = Counting(3)
    out = sliding_window_logits(net, torch.randn(1, *shape), patch, 3, keep=keep)
    # y: 15 voxels -> starts 12, 16, 19 (3 tiles); x: one tile at 13; z: one tile
    assert net.inputs == 3
    inside = torch.zeros(shape, dtype=torch.bool)
    inside[:, 12:27, 13:21] = True
    assert torch.equal(out[0][~inside], torch.zeros(int((~inside).sum())))
    assert not torch.equal(out[0][inside], torch.zeros(int(inside.sum())))


def test_empty_body_runs_nothing_and_custom_background_fills() -> None:
    net = Counting(3, classes=2)
    image = torch.randn(1, 10, 12, 12)  # padded to the patch along Z: keep is padded too
    keep = torch.zeros(10, 12, 12, dtype=torch.bool)
    out = sliding_window_logits(net, image, (12, 8, 8), 2, keep=keep, background=[-5.0, -6.0])
    assert net.inputs == 0
    assert torch.equal(out[0], torch.full((10, 12, 12), -5.0))
    assert torch.equal(out[1], torch.full((10, 12, 12), -6.0))
    with pytest.raises(ValueError, match="keep"):
        sliding_window_logits(net, image, (8, 8, 8), 2, keep=keep[:5])


def test_slices_without_body_are_not_run() -> None:
    volume = torch.randn(1, 6, 16, 16)
    keep = torch.zeros(6, 16, 16, dtype=torch.bool)
    keep[2, 1:3, 1:3] = True  # one slice, one corner of it
    net = Counting(2)
    full = sliding_window_logits_slices(net, volume, (8, 8), 3, tile_batch=5)
    per_slice = len(sliding_window_positions((16, 16), (8, 8), 0.5))
    assert net.inputs == 6 * per_slice
    net.inputs = 0
    out = sliding_window_logits_slices(net, volume, (8, 8), 3, tile_batch=5, keep=keep)
    assert net.inputs == 1  # only the slice-2 tile at (0, 0) holds (1:3, 1:3)
    assert torch.allclose(out[:, 2, :4, :4], full[:, 2, :4, :4], atol=1e-5)  # no other tile
    assert torch.equal(out[0, 0], torch.zeros(16, 16))


def _ct_image(shape=(8, 32, 32)) -> tuple[Image, np.ndarray]:
    """Air at -1000 with a block of body (40 HU, a brighter organ) near one corner; 4 mm
    voxels, so the body's 10 mm margin is a few voxels."""
    array = np.full((1, *shape), -1000.0, dtype=np.float32)
    array[0, 2:6, 3:8, 2:9] = 40.0
    array[0, 3:5, 4:6, 4:6] = 200.0
    affine = tuple(map(tuple, np.diag([4.0, 4.0, 4.0, 1.0])))
    geometry = Geometry(shape=shape, spacing=(4.0, 4.0, 4.0), affine=affine)
    return Image(array, geometry), array[0] > -500


@pytest.mark.parametrize("name", ["3d_fullres", "2d"])
def test_predictor_skips_air_only_for_ct(name: str) -> None:
    ct = Normalization("ct", clip_low=-100.0, clip_high=300.0, mean=50.0, std=60.0)
    plans = make_plans(name)
    config = dataclasses.replace(
        plans.configurations[name], normalization=(ct,), spacing=(4.0, 4.0, 4.0)
    )
    plans = dataclasses.replace(plans, channels=("CT",), configurations={name: config})
    image, body = _ct_image()
    on = predictor(name, plans=plans, tta=False)
    off = predictor(name, plans=plans, tta=False, body_mask=False)
    calls = {}
    for key, p in (("on", on), ("off", off)):
        net = p.networks[0]
        calls[key] = 0

        def hook(_m, args, _out, key=key):  # count network inputs
            calls[key] += args[0].shape[0]

        net.register_forward_hook(hook)
    labels_on, probs_on = on.predict_image(image)
    labels_off, probs_off = off.predict_image(image)
    assert 0 < calls["on"] < calls["off"]
    skipped = (probs_on[0] > 1 - 1e-6) & (probs_on[1:] < 1e-6).all(axis=0)  # no tile ran
    assert skipped.any() and not (skipped & body).any()
    assert np.all(labels_on[skipped] == 0)
    assert not ((probs_off[0] > 1 - 1e-6) & (probs_off[1:] < 1e-6).all(axis=0)).any()
    # a non-CT configuration never gets a body mask
    assert predictor(name).body(image, on.preprocess(image)[1]) is None


def test_corner_arithmetic_is_exhaustive() -> None:
    """Every voxel is covered by some tile (so a skipped voxel is only ever outside the body)."""
    for shape in itertools.product((8, 9, 17), repeat=2):
        covered = np.zeros(shape, dtype=bool)
        for y, x in sliding_window_positions(shape, (8, 8), 0.5):
            covered[y : y + 8, x : x + 8] = True
        assert covered.all()
