"""benchmarks/tile_runtime.py: the fidelity measure and the realistic CT tile it feeds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_DIR))  # the script imports ct_scale and synthetic_ct beside it
_spec = importlib.util.spec_from_file_location("tile_runtime", _DIR / "tile_runtime.py")
tile_runtime = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("tile_runtime", tile_runtime)
_spec.loader.exec_module(tile_runtime)


def test_fidelity_counts_the_largest_difference_and_changed_argmax() -> None:
    reference = torch.zeros((1, 3, 2, 2, 1))  # (B, K, Z, Y, X): class 0 wins everywhere (ties)
    reference[:, 0] = 1.0
    other = reference.clone().to(torch.bfloat16)
    other[0, 2, 0, 0, 0] = 2.5  # one voxel of four now votes class 2; difference 2.5
    other[0, 1, 1, 1, 0] = 0.5  # a difference that keeps the argmax
    diff, share = tile_runtime.fidelity(reference, other)
    assert diff == pytest.approx(2.5)
    assert share == pytest.approx(0.25)
    assert tile_runtime.fidelity(reference, reference) == (0.0, 0.0)
    with pytest.raises(ValueError):
        tile_runtime.fidelity(reference, other[:, :2])


def test_ct_tile_is_the_normalised_case_centre_padded_with_air() -> None:
    _, config, _ = tile_runtime.ct_scale.configurations("full", 12, 0)
    norm = config.normalization[0]
    low = (norm.clip_low - norm.mean) / norm.std  # air, fat and gas clip to it
    high = (norm.clip_high - norm.mean) / norm.std
    # 200 slices of 2.58 mm: more than the tiny case holds in Z, so air is padded above/below
    x = tile_runtime.ct_tile(config, (200, 32, 32), "tiny", 0)
    assert x.shape == (1, 1, 200, 32, 32) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert float(x.min()) == pytest.approx(low, abs=1e-4)
    assert float(x.max()) <= high + 1e-4
    assert torch.allclose(x[0, 0, 0], torch.full((32, 32), low))  # padded air
    assert float(x[0, 0, 100].max()) > low + 1  # the centre slice holds tissue


def test_parse_tile() -> None:
    assert tile_runtime.parse_tile("20x64X64") == (20, 64, 64)
    with pytest.raises(Exception, match="ZxYxX"):
        tile_runtime.parse_tile("64x64")
