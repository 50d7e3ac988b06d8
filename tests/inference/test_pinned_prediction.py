"""Pinned prediction behaviours (issue 16, behaviours 5 and 6), against hand computations.

5. Overlapping tiles are combined as sum_t g(p - c_t) f_t(p) / sum_t g(p - c_t), with g the
   Gaussian importance map (sigma = patch / 8 per axis, centre (n - 1) / 2, maximum 1) and f_t
   the output of a network that depends on the tile and on the position inside it.
6. Mirroring TTA in the predictor averages the logits over every flip of every spatial axis:
   8 in 3D (Z included), 4 in 2D (Y, X in-plane).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
from autoseg.data.plans import Plans
from autoseg.inference.predictor import Predictor
from autoseg.inference.sliding_window import sliding_window_logits
from autoseg.networks.unet import build_network
from autoseg.serial import to_dict
from tests.inference.test_predictor import config as tiny_config

LABELS = {0: "background", 1: "a", 2: "b"}


class TileAware(torch.nn.Module):
    """Logits = a ramp over the position inside the tile + the tile's mean intensity (per class).

    Overlapping tiles disagree about a voxel (different means, different ramp positions), so the
    result depends on how the tiles are weighted.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, *S) -> (B, K, *S)
        spatial = x.shape[2:]
        ramp = torch.zeros(spatial)
        for axis, n in enumerate(spatial):
            shape = [1] * len(spatial)
            shape[axis] = n
            ramp = ramp + (axis + 1) * torch.arange(n, dtype=torch.float32).view(shape)
        mean = x.mean(dim=tuple(range(1, x.ndim)), keepdim=True)  # (B, 1, 1, ...)
        scale = torch.arange(1, self.num_classes + 1, dtype=torch.float32)
        scale = scale.view(1, -1, *([1] * len(spatial)))
        return scale * (ramp + 10 * mean)


def gaussian_by_hand(size: int) -> np.ndarray:
    centre, sigma = (size - 1) / 2, size / 8
    return np.exp(-0.5 * ((np.arange(size) - centre) / sigma) ** 2)


def test_overlapping_tiles_are_a_gaussian_weighted_average() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 12, 10)).astype(np.float32)
    patch, k = (8, 6), 2
    net = TileAware(k)
    # tiles by hand: axis 0 starts 0, 4 (12 = 8 + 4: two tiles); axis 1 starts 0, 2, 4
    # (ceil((10 - 6) / 3) + 1 = 3 tiles spread evenly over 4 voxels)
    g = np.multiply.outer(gaussian_by_hand(8), gaussian_by_hand(6))
    g = g / g.max()
    total = np.zeros((k, 12, 10))
    weight = np.zeros((12, 10))
    ramp = 1 * np.arange(8)[:, None] + 2 * np.arange(6)[None, :]
    for z, y in itertools.product((0, 4), (0, 2, 4)):
        tile = image[0, z : z + 8, y : y + 6]
        for c in range(k):
            total[c, z : z + 8, y : y + 6] += g * (c + 1) * (ramp + 10 * tile.mean())
        weight[z : z + 8, y : y + 6] += g
    expected = total / weight
    out = sliding_window_logits(net, torch.from_numpy(image), patch, k, step=0.5, tile_batch=2)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)
    # equal weights give another answer: the weighting is what is pinned here
    flat = sliding_window_logits(net, torch.from_numpy(image), patch, k, use_gaussian=False)
    assert not np.allclose(flat.numpy(), expected, atol=1e-2)


def test_3d_overlap_weights_with_mirroring() -> None:
    """3D, two tiles per axis and TTA over Z only: each flip shares its tile's weight."""
    rng = np.random.default_rng(1)
    image = rng.normal(size=(1, 10, 6, 6)).astype(np.float32)
    net = TileAware(2)
    g6 = gaussian_by_hand(6)
    g = np.multiply.outer(np.multiply.outer(g6, g6), g6)
    g = g / g.max()
    ramp = 1 * np.arange(6)[:, None, None] + 2 * np.arange(6)[None, :, None] + 3 * np.arange(6)
    total, weight = np.zeros((2, 10, 6, 6)), np.zeros((10, 6, 6))
    for z in (0, 2, 4):  # ceil((10 - 6) / 3) + 1 = 3 tiles, spread evenly
        tile = image[0, z : z + 6]
        # the unflipped pass sees the ramp as is; the Z-flipped one, flipped back, reversed on Z
        both = (ramp + ramp[::-1]) / 2 + 10 * tile.mean()
        for c in range(2):
            total[c, z : z + 6] += g * (c + 1) * both
        weight[z : z + 6] += g
    out = sliding_window_logits(net, torch.from_numpy(image), (6, 6, 6), 2, mirror_axes=(0,))
    np.testing.assert_allclose(out.numpy(), total / weight, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------- TTA in the predictor


def _model_folder(root: Path, name: str) -> Path:
    config = tiny_config(name)
    plans = Plans("Task99_X", "default", 8.0, 4, ("MRI",), LABELS, {name: config})
    folder = root / "models" / "default" / name
    folder.mkdir(parents=True)
    plans.to_json(folder / "plans.json")
    net = build_network(config, 1, len(LABELS), deep_supervision=True)
    meta = CheckpointMeta(configuration=name, fold="0", plans=to_dict(plans))
    save_checkpoint(folder / "fold_0" / "checkpoint_final.pt", net.state_dict(), None, meta)
    return folder


class Asymmetric(torch.nn.Module):
    """Not equivariant under a flip of any axis: a random 3-tap kernel plus ramps on every axis."""

    def __init__(self, ndim: int, num_classes: int) -> None:
        super().__init__()
        torch.manual_seed(7)
        conv = torch.nn.Conv3d if ndim == 3 else torch.nn.Conv2d
        self.conv = conv(1, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        for axis in range(2, x.ndim):
            shape = [1] * x.ndim
            shape[axis] = x.shape[axis]
            out = out + axis * torch.linspace(0, 1, x.shape[axis]).view(shape)
        return out


def _softmax(x: torch.Tensor) -> np.ndarray:
    return torch.softmax(x, dim=0).numpy()


@pytest.mark.parametrize("name", ["3d_fullres", "2d"])
def test_predictor_tta_flips_every_spatial_axis(tmp_path: Path, name: str) -> None:
    folder = _model_folder(tmp_path, name)
    ndim = 2 if name == "2d" else 3
    net = Asymmetric(ndim, 3).eval()
    # fp32: the sums below are compared to 1e-4 (bf16, the CPU default, is pinned elsewhere)
    predictor = Predictor.from_folder(folder, device="cpu", tta=True, cpu_bf16=False)
    predictor.networks = [net]
    array = np.random.default_rng(2).normal(size=(1, 3 if ndim == 2 else 8, 8, 8))
    array = array.astype(np.float32)
    probs = predictor.predict_preprocessed(array)
    x = torch.from_numpy(array)
    axes = range(ndim)
    flips = [f for r in range(ndim + 1) for f in itertools.combinations(axes, r)]
    assert len(flips) == 2**ndim
    with torch.no_grad():
        if ndim == 3:  # one tile = the whole image
            dims = [[a + 2 for a in f] for f in flips]
            runs = [net(x[None].flip(d)).flip(d)[0] for d in dims]
            expected = _softmax(torch.stack(runs).mean(0))
        else:  # each Z slice on its own, flipped in-plane
            slices = []
            for z in range(x.shape[1]):
                s = x[None, :, z]  # (1, C, Y, X)
                runs = [net(s.flip([a + 2 for a in f])).flip([a + 2 for a in f])[0] for f in flips]
                slices.append(torch.stack(runs).mean(0))
            expected = _softmax(torch.stack(slices, dim=1))
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-5)
    no_tta = Predictor.from_folder(folder, device="cpu", tta=False, cpu_bf16=False)
    no_tta.networks = [net]
    assert not np.allclose(no_tta.predict_preprocessed(array), expected, atol=1e-3)
