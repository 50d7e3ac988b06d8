"""Planner rules on hand-made fingerprints (pure: no disk except the JSON round trip)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace

import numpy as np
import pytest

import autoseg.planners as planners
import autoseg.registry
from autoseg.data.plans import Configuration, Plans
from autoseg.errors import AutosegError
from autoseg.planners import Budget, available_planners, get_planner, register_planner
from autoseg.planners.rules import derive_topology, estimate_memory, shrink_step
from autoseg.planning.fingerprint import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.serial import dumps

CT_STATS = IntensityStats(
    mean=61.5,
    median=55.0,
    std=120.25,
    min=-1024.0,
    max=3071.0,
    percentile_00_5=-960.0,
    percentile_99_5=310.5,
)
MR_STATS = IntensityStats(400.0, 390.0, 80.0, 0.0, 1200.0, 180.0, 700.0)


def make_fingerprint(
    spacings: Sequence[Sequence[float]],
    shapes: Sequence[Sequence[int]],
    channels: Sequence[str] = ("MRI",),
    num_labels: int = 3,
    relative_size: float = 1.0,
    name: str = "Synthetic",
) -> Fingerprint:
    """A fingerprint with one case per (spacing, shape after crop) pair."""
    cases = tuple(
        CaseFingerprint(
            case_id=f"case_{i:03d}",
            spacing=tuple(float(s) for s in sp),
            shape_before_crop=tuple(int(s) for s in sh),
            shape_after_crop=tuple(int(s) for s in sh),
            relative_size_after_crop=relative_size,
        )
        for i, (sp, sh) in enumerate(zip(spacings, shapes, strict=True))
    )
    stats = tuple(CT_STATS if c.lower() == "ct" else MR_STATS for c in channels)
    labels = {0: "background", **{i: f"label{i}" for i in range(1, num_labels)}}
    return Fingerprint(name, tuple(channels), labels, cases, stats)


def hippocampus() -> Fingerprint:
    """200 single-channel MRI cases at 1 mm, median shape (36, 50, 35), 3 labels."""
    rng = np.random.default_rng(0)
    shapes = np.stack(
        [rng.integers(31, 42, 200), rng.integers(44, 57, 200), rng.integers(30, 41, 200)], axis=1
    )
    return make_fingerprint([(1.0, 1.0, 1.0)] * 200, shapes, name="Hippocampus")


def thick_slices(z_spacings: Sequence[float] = (5.0,) * 20, z_size: int = 30) -> Fingerprint:
    n = len(z_spacings)
    return make_fingerprint([(z, 0.8, 0.8) for z in z_spacings], [(z_size, 256, 256)] * n)


def huge_ct() -> Fingerprint:
    return make_fingerprint(
        [(1.0, 0.8, 0.8)] * 50, [(400, 512, 512)] * 50, channels=("CT",), num_labels=2
    )


def tiny() -> Fingerprint:
    return make_fingerprint([(1.0, 1.0, 1.0)] * 4, [(10, 12, 9)] * 4)


FINGERPRINTS = {
    "hippocampus": hippocampus,
    "thick_slices": thick_slices,
    "huge_ct": huge_ct,
    "tiny": tiny,
    "four_channels": lambda: make_fingerprint(
        [(1.5, 1.0, 1.0)] * 5, [(120, 160, 150)] * 5, channels=("T1", "T1c", "T2", "FLAIR")
    ),
}


def check_configuration(config: Configuration, plans: Plans) -> None:
    """The structural contract every planned configuration must meet."""
    ndim = 2 if config.name == "2d" else 3
    assert len(config.patch_size) == ndim and len(config.spacing) == 3
    assert config.num_stages >= 2
    assert config.strides[0] == (1,) * ndim
    assert len(config.kernel_sizes) == len(config.features_per_stage) == config.num_stages
    assert len(config.blocks_per_stage) == config.num_stages
    assert config.batch_size >= 2
    assert len(config.normalization) == len(plans.channels)
    for p, t in zip(config.patch_size, config.total_stride(), strict=True):
        assert p % t == 0
        if t > 1:
            assert p // t >= plans.min_feature_map
    cap = 320 if ndim == 3 else 512
    assert config.features_per_stage[0] == 32 and max(config.features_per_stage) <= cap
    assert list(config.features_per_stage) == sorted(config.features_per_stage)


@pytest.mark.parametrize("planner", ["default", "resenc"])
@pytest.mark.parametrize("fingerprint", sorted(FINGERPRINTS))
def test_every_planner_makes_valid_plans(planner: str, fingerprint: str, tmp_path) -> None:
    plans = get_planner(planner)(FINGERPRINTS[fingerprint](), Budget())
    assert plans.planner == planner
    assert "2d" in plans.configurations and "3d_fullres" in plans.configurations
    for config in plans.configurations.values():
        check_configuration(config, plans)
        assert config.estimated_memory_gb <= 8.0
    plans.to_json(tmp_path / "plans.json")
    assert Plans.from_json(tmp_path / "plans.json") == plans


def test_hippocampus_plan_is_near_nnunet() -> None:
    plans = get_planner("default")(hippocampus(), Budget(8.0))
    full = plans.configuration("3d_fullres")
    assert full.spacing == (1.0, 1.0, 1.0)
    assert full.median_shape == (36, 50, 35)
    assert all(p >= m for p, m in zip(full.patch_size, full.median_shape, strict=True))
    assert full.patch_size == (36, 52, 36)  # nnU-Net (min feature map 4): 40x56x40
    assert 5 <= full.batch_size <= 12  # nnU-Net: 7, capped by the 5% rule as here
    voxels = sum(math.prod(c.shape_after_crop) for c in hippocampus().cases)
    assert full.batch_size == round(0.05 * voxels / math.prod(full.patch_size))
    assert "3d_lowres" not in plans.configurations
    assert full.anisotropic_axis is None and full.batch_dice is False
    assert full.data_identifier == "3d_1.000x1.000x1.000"
    assert plans.configuration("2d").data_identifier == full.data_identifier


def test_min_feature_map_4_reproduces_nnunet_hippocampus() -> None:
    full = get_planner("default")(hippocampus(), Budget(8.0, 4)).configuration("3d_fullres")
    assert (full.patch_size, full.batch_size, full.num_stages) == ((40, 56, 40), 7, 4)


def test_isotropic_ct_gets_nnunet_patch_at_8gb() -> None:
    """Calibration: a KiTS-like isotropic CT gets 128^3 with batch 2, as nnU-Net plans."""
    fp = make_fingerprint(
        [(1.0, 0.78, 0.78)] * 40, [(140 + i, 178, 178) for i in range(40)], channels=("CT",)
    )
    full = get_planner("default")(fp, Budget(8.0)).configuration("3d_fullres")
    assert full.patch_size == (128, 128, 128) and full.batch_size == 2
    assert 6.0 < full.estimated_memory_gb <= 8.0


def test_thick_slices_use_in_plane_kernels_first() -> None:
    plans = get_planner("default")(thick_slices(), Budget())
    full = plans.configuration("3d_fullres")
    assert full.spacing == (5.0, 0.8, 0.8)
    assert full.anisotropic_axis == 0
    assert full.kernel_sizes[0] == (1, 3, 3) and full.kernel_sizes[1] == (1, 3, 3)
    assert full.strides[1] == (1, 2, 2) and full.strides[2] == (1, 2, 2)
    assert full.total_stride()[0] < full.total_stride()[1]


def test_tenth_percentile_rule_for_thick_axis() -> None:
    z = (2.5, 3.0, 4.0, 5.0, 5.0, 5.0, 5.5, 6.0, 6.0, 6.0)
    full = get_planner("default")(thick_slices(z), Budget()).configuration("3d_fullres")
    assert full.spacing[0] == pytest.approx(float(np.percentile(z, 10)))
    assert full.spacing[0] < float(np.median(z))
    # Not applied when the thick axis has many voxels (30 x 3 < 256 no longer holds).
    many = get_planner("default")(thick_slices(z, z_size=100), Budget())
    assert many.configuration("3d_fullres").spacing[0] == float(np.median(z))


def test_tenth_percentile_never_below_in_plane_spacing() -> None:
    z = (0.5, 0.5) + (5.0,) * 8
    fp = make_fingerprint([(s, 1.0, 1.0) for s in z], [(30, 256, 256)] * len(z))
    full = get_planner("default")(fp, Budget()).configuration("3d_fullres")
    assert full.spacing == (1.0, 1.0, 1.0)


def test_two_d_configuration() -> None:
    plans = get_planner("default")(thick_slices(), Budget())
    two_d, full = plans.configuration("2d"), plans.configuration("3d_fullres")
    assert len(two_d.patch_size) == 2 and all(len(s) == 2 for s in two_d.strides)
    assert two_d.spacing == full.spacing
    assert two_d.patch_size == (256, 256)  # the whole median slice
    assert two_d.batch_size > full.batch_size
    assert two_d.batch_dice is True
    assert max(two_d.features_per_stage) <= 512


def test_tiny_images_still_get_a_two_stage_network() -> None:
    plans = get_planner("default")(tiny(), Budget())
    for config in plans.configurations.values():
        assert config.num_stages == 2
        assert all(p >= 16 for p in config.patch_size)


def test_single_slice_dataset_is_planned_2d_only() -> None:
    fp = make_fingerprint([(1.0, 0.5, 0.5)] * 3, [(1, 300, 280)] * 3)
    plans = get_planner("default")(fp, Budget())
    assert list(plans.configurations) == ["2d"]
    assert plans.configuration("2d").patch_size == (320, 288)


def test_huge_ct_plans_lowres_and_ct_normalization() -> None:
    plans = get_planner("default")(huge_ct(), Budget(8.0))
    full = plans.configuration("3d_fullres")
    assert full.spacing == (1.0, 0.8, 0.8) and full.median_shape == (400, 512, 512)
    assert math.prod(full.patch_size) < 0.25 * math.prod(full.median_shape)
    low = plans.configuration("3d_lowres")
    assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing, strict=True))
    assert math.prod(low.patch_size) >= 0.25 * math.prod(low.median_shape)
    assert math.prod(low.median_shape) * 2 <= math.prod(full.median_shape)
    assert low.data_identifier != full.data_identifier
    assert (full.batch_dice, low.batch_dice) == (True, False)
    (norm,) = full.normalization
    assert norm.scheme == "ct" and not norm.use_nonzero_mask
    assert (norm.clip_low, norm.clip_high) == (-960.0, 310.5)
    assert (norm.mean, norm.std) == (61.5, 120.25)


@pytest.mark.parametrize(
    ("channels", "schemes"),
    [
        (("MRI",), ("zscore",)),
        (("ct",), ("ct",)),
        (("CT", "T1", "T2", "FLAIR"), ("ct", "zscore", "zscore", "zscore")),
    ],
)
def test_one_normalization_per_channel(channels, schemes) -> None:
    fp = make_fingerprint([(1.0, 1.0, 1.0)] * 3, [(40, 40, 40)] * 3, channels=channels)
    plans = get_planner("default")(fp, Budget())
    for config in plans.configurations.values():
        assert tuple(n.scheme for n in config.normalization) == schemes


@pytest.mark.parametrize(("relative_size", "masked"), [(0.5, True), (0.9, False)])
def test_nonzero_mask_when_cropping_removed_much(relative_size: float, masked: bool) -> None:
    fp = make_fingerprint(
        [(1.0, 1.0, 1.0)] * 3, [(40, 40, 40)] * 3, ("T1", "CT"), relative_size=relative_size
    )
    t1, ct = get_planner("default")(fp, Budget()).configuration("3d_fullres").normalization
    assert t1.use_nonzero_mask is masked and ct.use_nonzero_mask is False


@pytest.mark.parametrize("planner", ["default", "resenc"])
@pytest.mark.parametrize("fingerprint", ["hippocampus", "huge_ct", "thick_slices"])
def test_bigger_budget_gives_larger_or_equal_plans(planner: str, fingerprint: str) -> None:
    fp = FINGERPRINTS[fingerprint]()
    small, large = (get_planner(planner)(fp, Budget(gb)) for gb in (8.0, 80.0))
    for name in ("2d", "3d_fullres"):
        a, b = small.configuration(name), large.configuration(name)
        assert all(x <= y for x, y in zip(a.patch_size, b.patch_size, strict=True))
        assert b.batch_size >= a.batch_size
        assert a.estimated_memory_gb <= 8.0 and b.estimated_memory_gb <= 80.0
    if fingerprint == "hippocampus":
        assert large.configuration("3d_fullres") == small.configuration("3d_fullres")


def test_budget_below_the_smallest_network_still_plans(caplog) -> None:
    plans = get_planner("default")(hippocampus(), Budget(0.25))
    full = plans.configuration("3d_fullres")
    assert full.batch_size == 2 and full.estimated_memory_gb > 0.25
    assert math.prod(full.patch_size) == 8 * 8 * 16
    assert "needs about" in caplog.text


def test_same_inputs_give_byte_identical_json() -> None:
    first = dumps(get_planner("default")(huge_ct(), Budget(11.5)))
    derive_topology.cache_clear()
    assert dumps(get_planner("default")(huge_ct(), Budget(11.5))) == first
    assert '"gpu_memory_gb": 11.5' in first


def test_resenc_uses_residual_encoder_with_more_blocks() -> None:
    fp = huge_ct()
    plain = get_planner("default")(fp, Budget()).configuration("3d_fullres")
    res = get_planner("resenc")(fp, Budget()).configuration("3d_fullres")
    assert (plain.network, res.network) == ("unet", "resenc")
    assert plain.blocks_per_stage == (2,) * plain.num_stages
    assert res.blocks_per_stage == (1, 3, 4, 6, 6, 6, 6)[: res.num_stages]
    assert sum(res.blocks_per_stage) > sum(plain.blocks_per_stage)
    assert math.prod(res.patch_size) <= math.prod(plain.patch_size)  # costlier per voxel


def test_memory_estimate_grows_with_batch_patch_and_blocks() -> None:
    from autoseg.planners.default import SETTINGS as PLAIN
    from autoseg.planners.resenc import SETTINGS as RESENC

    small = derive_topology((1.0, 1.0, 1.0), (64, 64, 64), 8, 7)
    big = derive_topology((1.0, 1.0, 1.0), (128, 128, 128), 8, 7)
    assert estimate_memory(small, PLAIN, 1, 3, 2) < estimate_memory(small, PLAIN, 1, 3, 3)
    assert estimate_memory(small, PLAIN, 1, 3, 2) < estimate_memory(big, PLAIN, 1, 3, 2)
    assert estimate_memory(big, PLAIN, 1, 3, 2) < estimate_memory(big, RESENC, 1, 3, 2)


def test_topology_rules() -> None:
    topo = derive_topology((5.0, 0.8, 0.8), (28, 240, 240), 8, 7)
    assert topo.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2))
    assert topo.kernel_sizes[:3] == ((1, 3, 3), (1, 3, 3), (3, 3, 3))
    assert topo.kernel_sizes[-1] == (3, 3, 3)
    # Rounded up to the total stride; stops before a feature map drops below 8.
    topo = derive_topology((1.0, 1.0, 1.0), (33, 100, 15), 8, 7)
    assert topo.total_stride() == (4, 8, 1) and topo.patch_size == (36, 104, 15)
    assert derive_topology((1.0, 1.0), (2048, 2048), 8, 7).num_stages == 7


def test_shrink_step_reduces_the_relatively_largest_axis() -> None:
    topo = derive_topology((1.0, 1.0, 1.0), (128, 128, 128), 8, 7)
    smaller = shrink_step((1.0, 1.0, 1.0), topo, (400, 200, 200), 8, 7)
    assert smaller is not None and smaller.patch_size == (128, 120, 128)
    # Down to the smallest two-stage network: one axis pooled once, the others at 8.
    topo, steps = derive_topology((1.0, 1.0, 1.0), (16, 16, 16), 8, 7), 0
    while (smaller := shrink_step((1.0, 1.0, 1.0), topo, (50, 50, 50), 8, 7)) is not None:
        assert math.prod(smaller.patch_size) < math.prod(topo.patch_size)
        topo, steps = smaller, steps + 1
    assert sorted(topo.patch_size) == [8, 8, 16] and topo.num_stages == 2 and steps > 0


def test_registry_lists_builtins_and_rejects_unknown_names() -> None:
    assert {"default", "resenc"} <= set(available_planners())
    with pytest.raises(AutosegError, match="default.*resenc"):
        get_planner("no_such_planner")


def test_registry_loads_entry_points_lazily(monkeypatch, caplog) -> None:
    monkeypatch.setattr(planners.PLANNERS, "_entries", dict(planners.PLANNERS._entries))
    monkeypatch.setattr(planners.PLANNERS, "_loaded", False)

    def load_plugin() -> None:
        register_planner("plugin")(lambda fingerprint, budget: None)

    def broken() -> None:
        raise ImportError("missing dependency")

    fake = [
        SimpleNamespace(name="plugin", value="plugin_mod", load=load_plugin),
        SimpleNamespace(name="broken", value="broken_mod", load=broken),
    ]
    monkeypatch.setattr(autoseg.registry, "entry_points", lambda group: fake)
    assert get_planner("plugin")(None, Budget()) is None
    assert "broken" not in available_planners()
    assert "could not load planner entry point broken" in caplog.text


def test_registering_a_taken_name_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(planners.PLANNERS, "_entries", dict(planners.PLANNERS._entries))
    available_planners()
    with pytest.raises(ValueError, match="already registered"):
        register_planner("default")(lambda fingerprint, budget: None)


@pytest.mark.parametrize(
    "kwargs", [{"gpu_memory_gb": 0}, {"gpu_memory_gb": float("nan")}, {"min_feature_map": 0}]
)
def test_invalid_budget_is_a_user_error(kwargs) -> None:
    with pytest.raises(AutosegError):
        Budget(**kwargs)


def test_empty_or_inconsistent_fingerprint_is_a_user_error() -> None:
    empty = make_fingerprint([], [])
    with pytest.raises(AutosegError, match="no training cases"):
        get_planner("default")(empty, Budget())
    bad = make_fingerprint([(1.0, 0.0, 1.0)], [(10, 10, 10)])
    with pytest.raises(AutosegError, match="case_000"):
        get_planner("default")(bad, Budget())
