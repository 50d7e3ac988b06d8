"""Named plans (``autoseg plan --name``): the planner's rules check them, purely."""

from __future__ import annotations

import math

import pytest

from autoseg.errors import AutosegError
from autoseg.planners import Budget, get_planner, planner_settings
from autoseg.planners.overrides import Overrides, check_name, override_plans, plans_diff
from autoseg.planners.rules import GIB
from tests.planning.test_planners import hippocampus

FINGERPRINT = hippocampus()


def _plans(planner: str = "default", gb: float = 8.0):
    return get_planner(planner)(FINGERPRINT, Budget(gpu_memory_gb=gb))


def _override(planner: str = "default", gb: float = 8.0, **values):
    automatic = _plans(planner, gb)
    named = override_plans(
        FINGERPRINT, automatic, planner_settings(planner), Overrides("mine", **values)
    )
    return automatic, named


def test_a_patch_batch_and_spacing_of_ones_own_with_a_network_planned_for_them() -> None:
    automatic, named = _override(patch_size=(64, 64, 64), batch_size=2, spacing=(1.5, 1, 1))
    assert named.name == "mine" and named.plans_name == "mine" and named.planner == "default"
    assert list(named.configurations) == ["3d_fullres"]
    config = named.configurations["3d_fullres"]
    assert config.patch_size == (64, 64, 64) and config.batch_size == 2
    assert config.spacing == (1.5, 1.0, 1.0)
    assert all(p % s == 0 for p, s in zip(config.patch_size, config.total_stride(), strict=True))
    assert config.num_stages == 4  # pooled while the maps stay >= 8: 64 -> 8
    assert config.data_identifier == "3d_1.500x1.000x1.000"  # its own preprocessed data
    assert config.data_identifier != automatic.configurations["3d_fullres"].data_identifier
    assert config.median_shape[0] < automatic.configurations["3d_fullres"].median_shape[0]
    assert 0 < config.estimated_memory_gb < 8
    lines = plans_diff(automatic, named)
    assert any(
        line.startswith("3d_fullres.patch_size: ") and "-> 64x64x64" in line for line in lines
    )
    assert any(line.startswith("3d_fullres.spacing: 1x1x1 -> 1.5x1x1") for line in lines)


def test_a_batch_alone_keeps_the_network_and_a_2d_patch_picks_2d() -> None:
    automatic, named = _override(batch_size=3)
    before, after = automatic.configurations["3d_fullres"], named.configurations["3d_fullres"]
    assert (after.patch_size, after.strides, after.batch_size) == (
        before.patch_size,
        before.strides,
        3,
    )
    assert plans_diff(automatic, named)[0].startswith("3d_fullres.batch_size: ")
    _, flat = _override(patch_size=(64, 48))
    assert list(flat.configurations) == ["2d"] and flat.configurations["2d"].batch_size >= 2


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"patch_size": (66, 64, 64)}, "not divisible by the network's strides"),
        ({"patch_size": (64, 64), "configuration": "3d_fullres"}, "3d_fullres takes 3"),
        ({"patch_size": (256, 256, 256), "batch_size": 4}, r"GB of GPU memory by the planner"),
        ({"spacing": (1.0, math.nan, 1.0)}, "3 positive, finite"),
        ({"spacing": (1.0, -1.0, 1.0)}, "3 positive, finite"),
        ({"spacing": (1.0, 1.0)}, "3 positive, finite"),
        ({"batch_size": 0}, "at least 1"),
        ({"configuration": "3d_lowres"}, "not planned"),
    ],
)
def test_invalid_values_are_refused_naming_the_option(values: dict, message: str) -> None:
    with pytest.raises(AutosegError, match=message):
        _override(**values)


def test_the_memory_check_is_the_planners_own_estimate() -> None:
    """The largest batch the check lets through is the one the planner's estimate allows."""
    from autoseg.planners.rules import Topology, estimate_memory

    _, named = _override(patch_size=(128, 128, 128), batch_size=1, gb=24.0)
    c = named.configurations["3d_fullres"]
    topo = Topology(c.patch_size, c.strides, c.kernel_sizes)
    settings = planner_settings("default")
    fits = [b for b in range(1, 40) if estimate_memory(topo, settings, 1, 3, b) <= 24 * GIB]
    _override(patch_size=(128, 128, 128), batch_size=max(fits), gb=24.0)
    with pytest.raises(AutosegError, match="more than the 24 GB budget"):
        _override(patch_size=(128, 128, 128), batch_size=max(fits) + 1, gb=24.0)


def test_resenc_overrides_use_resenc_rules() -> None:
    _, named = _override("resenc", patch_size=(64, 64, 64))
    config = named.configurations["3d_fullres"]
    assert config.network == "resenc" and config.blocks_per_stage[:3] == (1, 3, 4)


def test_names_that_a_planner_owns_or_that_are_unsafe_are_refused() -> None:
    assert check_name("p128", ["default", "resenc"]) == "p128"
    for bad in ("resenc", "../x", "a b", ""):
        with pytest.raises(AutosegError, match="--name"):
            check_name(bad, ["default", "resenc"])
