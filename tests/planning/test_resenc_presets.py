"""ResEnc M/L/XL presets through the one planner registry (issue 11 item 5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from autoseg.data.plans import Plans
from autoseg.planners import Budget, available_planners, get_planner
from tests.planning.test_planners import check_configuration, hippocampus, huge_ct
from tests.reliability_helpers import cli, tiny_dataset

PRESETS = {"resenc-m": 8.0, "resenc-l": 24.0, "resenc-xl": 40.0}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_plans_for_its_fixed_budget(name: str, tmp_path: Path) -> None:
    assert name in available_planners()
    for given in (4.0, 80.0):  # whatever the machine's GPU
        plans = get_planner(name)(huge_ct(), Budget(given))
        assert plans.planner == name and plans.gpu_memory_gb == PRESETS[name]
        for config in plans.configurations.values():
            check_configuration(config, plans)
            assert config.network == "resenc"
            assert config.estimated_memory_gb <= PRESETS[name]
    plans.to_json(tmp_path / "plans.json")
    assert Plans.from_json(tmp_path / "plans.json") == plans


def test_presets_grow_with_their_budget() -> None:
    def work(name: str) -> float:
        config = get_planner(name)(huge_ct(), Budget()).configuration("3d_fullres")
        return math.prod(config.patch_size) * config.batch_size

    m, l_, xl = (work(n) for n in ("resenc-m", "resenc-l", "resenc-xl"))
    assert m < l_ < xl


def test_resenc_m_is_resenc_at_8_gib_without_the_batch_cap() -> None:
    """The same network rules; only the planner name and the 5% batch cap differ."""
    preset = get_planner("resenc-m")(huge_ct(), Budget(24.0)).configuration("3d_fullres")
    plain = get_planner("resenc")(huge_ct(), Budget(8.0)).configuration("3d_fullres")
    assert preset.patch_size == plain.patch_size and preset.strides == plain.strides
    assert preset.blocks_per_stage == plain.blocks_per_stage
    # a small dataset: the 5% cap bounds resenc's batch, not the preset's
    small_plain = get_planner("resenc")(hippocampus(), Budget(8.0)).configuration("3d_fullres")
    small_preset = get_planner("resenc-m")(hippocampus(), Budget()).configuration("3d_fullres")
    assert small_preset.patch_size == small_plain.patch_size
    assert small_preset.batch_size > small_plain.batch_size


def test_plan_command_takes_a_preset(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task91_Preset")
    home = tmp_path / "home"
    args = ("plan", root, "--home", home, "--workers", 1, "--no-preprocess")
    result = cli(*args, "--planner", "resenc-l", "--gpu-memory", 4)
    assert result.exit_code == 0, result.output
    written = json.loads((home / root.name / "plans_resenc-l.json").read_text())
    assert written["planner"] == "resenc-l" and written["gpu_memory_gb"] == 24.0
