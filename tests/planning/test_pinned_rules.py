"""Pinned planning and sampling rules at their exact boundaries (issue 16, behaviours 1 and 3).

Expected values are derived by hand from the rules in REFERENCE.md, never from the code:

* pooling: an axis pools while its feature map stays >= min_feature_map and its current spacing
  is *strictly* below 2x the finest current spacing among the axes that may still pool; a conv
  kernel is 3 on axes *strictly* within 2x of the finest current spacing (once 3, always 3).
* forced foreground: round(B / 3) samples (halves up), at least 1, for B >= 2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.data.plans import Configuration, Normalization
from autoseg.planners.default import SETTINGS
from autoseg.planners.rules import (
    GIB,
    PlannerSettings,
    Topology,
    activation_values,
    anisotropic_axis,
    derive_topology,
    estimate_memory,
    initial_topology,
    next_lowres_spacing,
    parameter_count,
    plan_network,
    round_spacing,
    shrink_step,
    target_spacing,
)
from autoseg.training.loader import BatchLoader
from autoseg.training.sampler import forced_foreground_count

ONE = (1, 1, 1)
ALL = (2, 2, 2)
K3 = (3, 3, 3)

# (spacing, patch, min_feature_map, max_stages) -> (strides, kernels, rounded patch)
POOLING_CASES = [
    pytest.param(
        (2.0, 1.0, 1.0),
        (32, 64, 64),
        4,
        7,
        # ratio exactly 2: Z (2 mm) is not < 2 x 1 mm, so only Y, X pool first and Z gets
        # kernel 1; then every axis is at 2 mm and all pool until Z reaches 4 voxels
        (ONE, (1, 2, 2), ALL, ALL, ALL),
        ((1, 3, 3), K3, K3, K3, K3),
        (32, 64, 64),
        id="ratio-2-exactly",
    ),
    pytest.param(
        (1.0, 0.5, 0.5),
        (32, 64, 64),
        4,
        7,
        (ONE, (1, 2, 2), ALL, ALL, ALL),  # the same rule at another scale
        ((1, 3, 3), K3, K3, K3, K3),
        (32, 64, 64),
        id="ratio-2-scaled",
    ),
    pytest.param(
        (1.99, 1.0, 1.0),
        (32, 64, 64),
        4,
        7,
        # just below 2: Z pools from the start and has kernel 3 from the start
        (ONE, ALL, ALL, ALL, (1, 2, 2)),
        (K3, K3, K3, K3, K3),
        (32, 64, 64),
        id="ratio-just-below-2",
    ),
    pytest.param(
        (4.0, 1.0, 1.0),
        (16, 64, 64),
        4,
        7,
        # ratio 4: two in-plane poolings (4 mm is not < 2 x 2 mm either), Z kernel 1 for both
        (ONE, (1, 2, 2), (1, 2, 2), ALL, ALL),
        ((1, 3, 3), (1, 3, 3), K3, K3, K3),
        (16, 64, 64),
        id="ratio-4",
    ),
    pytest.param(
        (2.0, 1.0),
        (32, 64),
        4,
        8,
        # 2D (Y, X): X alone pools first
        ((1, 1), (1, 2), (2, 2), (2, 2), (2, 2)),
        ((1, 3), (3, 3), (3, 3), (3, 3), (3, 3)),
        (32, 64),
        id="2d-ratio-2",
    ),
    pytest.param(
        (2.0, 1.0, 1.0),
        (20, 40, 40),
        4,
        7,
        # sizes: Y, X 40 -> 20 -> 10 -> 5 (stop below 8); Z 20 -> 10 -> 5; total stride
        # (4, 8, 8): patch rounded up to (20, 40, 40) -> Z 20 is a multiple of 4, Y/X 40 of 8
        (ONE, (1, 2, 2), ALL, ALL),
        ((1, 3, 3), K3, K3, K3),
        (20, 40, 40),
        id="ratio-2-stops-by-size",
    ),
    pytest.param(
        (2.0, 1.0, 1.0),
        (30, 60, 60),
        4,
        7,
        # Y/X 60 -> 30 -> 15 -> 8 -> 4; Z 30 -> 15 -> 8 -> 4: total stride (8, 16, 16), so the
        # patch is rounded *up* to (32, 64, 64)
        (ONE, (1, 2, 2), ALL, ALL, ALL),
        ((1, 3, 3), K3, K3, K3, K3),
        (32, 64, 64),
        id="ratio-2-rounded-up",
    ),
    pytest.param(
        (2.0, 1.0, 1.0),
        (32, 64, 64),
        4,
        3,
        (ONE, (1, 2, 2), ALL),  # stage cap: 3 stages
        ((1, 3, 3), K3, K3),
        (16 * 2, 64, 64),
        id="ratio-2-stage-cap",
    ),
]


@pytest.mark.parametrize("spacing,patch,min_fm,max_stages,strides,kernels,rounded", POOLING_CASES)
def test_pooling_rule_table(spacing, patch, min_fm, max_stages, strides, kernels, rounded) -> None:
    topo = derive_topology(spacing, patch, min_fm, max_stages)
    assert topo.strides == strides
    assert topo.kernel_sizes == kernels
    assert topo.patch_size == rounded


# batch size -> round(B / 3), halves up (nnU-Net's oversample_foreground_percent = 0.33)
FORCED = {2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 3, 9: 3, 10: 3, 11: 4, 12: 4}


@pytest.mark.parametrize("batch", sorted(FORCED))
def test_forced_foreground_count_per_batch_size(batch: int) -> None:
    rng = np.random.default_rng(0)
    assert forced_foreground_count(batch, 1 / 3, rng) == FORCED[batch]
    assert forced_foreground_count(batch, 0.0, rng) == 0
    assert forced_foreground_count(batch, 1.0, rng) == batch


def _one_voxel_case(folder: Path, shape=(40, 40, 40)) -> str:
    """A case whose only foreground is one voxel in a corner: random patches miss it."""
    folder.mkdir(parents=True, exist_ok=True)
    seg = np.zeros(shape, dtype=np.int8)
    seg[1, 2, 3] = 1
    image = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
    np.save(folder / "c.img.npy", image)
    np.save(folder / "c.seg.npy", seg[None])
    np.savez(folder / "c.fg.npz", **{"1": np.array([[1, 2, 3]], dtype=np.int32)})
    from autoseg.preprocessing.case_store import CaseProperties
    from autoseg.serial import dump_json

    props = CaseProperties("c", shape, ONE, tuple((0, s) for s in shape), shape, ONE, shape, "k")
    dump_json(props, folder / "c.json")
    return "c"


def test_loader_forces_foreground_into_the_last_third_of_every_batch(tmp_path: Path) -> None:
    case = _one_voxel_case(tmp_path)
    for batch in sorted(FORCED):
        config = Configuration(
            name="3d_fullres",
            spacing=(1.0, 1.0, 1.0),
            patch_size=(8, 8, 8),
            batch_size=batch,
            strides=(ONE,),
            kernel_sizes=(K3,),
            features_per_stage=(4,),
            normalization=(Normalization("zscore"),),
        )
        with BatchLoader(tmp_path, [case], config, seed=batch, augment=False) as loader:
            for _ in range(2):
                target = next(loader)["target"]
                has_fg = [bool((t > 0).any()) for t in target]
                n = FORCED[batch]
                assert has_fg == [False] * (batch - n) + [True] * n, batch


# ---------------------------------------------------------------------------- mutation survivors


def test_initial_patch_is_256_cubed_shaped_like_the_inverse_spacing() -> None:
    # inverse spacing (0.5, 1, 1), scaled to 256^3 voxels: 256 * 2^(1/3) = 322.54 per fine
    # axis, half of it on Z: (161, 323, 323) before rounding up to the total stride
    topo = initial_topology((2.0, 1.0, 1.0), (1000, 1000, 1000), 4, 7)
    assert topo.patch_size == derive_topology((2.0, 1.0, 1.0), (161, 323, 323), 4, 7).patch_size
    # clipped to the median shape (a one-voxel axis stays one voxel)
    flat = initial_topology((1.0, 1.0, 1.0), (1, 50, 50), 4, 7)
    assert flat.patch_size[0] == 1
    # tiny images: the finest axes grow to 2 x min_feature_map so that one pooling fits
    tiny = initial_topology((1.0, 1.0, 1.0), (4, 6, 6), 4, 7)
    assert tiny.patch_size == (8, 8, 8) and tiny.num_stages == 2


def test_stage_and_feature_caps_per_dimension() -> None:
    settings = PlannerSettings(name="x", network="unet")
    assert settings.max_stages(3) == 7 and settings.max_stages(2) == 8
    assert settings.features_per_stage(8, 3)[-1] == 320
    assert settings.features_per_stage(8, 2) == (32, 64, 128, 256, 512, 512, 512, 512)


def test_anisotropy_threshold_is_strictly_above_3() -> None:
    assert anisotropic_axis((3.0, 1.0, 1.0)) is None
    assert anisotropic_axis((1.0, 3.01, 1.0)) == 1
    shapes = np.array([[10, 100, 100]] * 10)
    # exactly 3x: the median is kept
    assert target_spacing(np.array([[3.0, 1.0, 1.0]] * 10), shapes) == (3.0, 1.0, 1.0)
    # above 3x with few slices: the 10th percentile of the thick spacings (here 3.5)
    thick = np.array([[3.5 + 0.5 * i, 1.0, 1.0] for i in range(10)])
    assert target_spacing(thick, shapes) == (
        round(float(np.percentile(thick[:, 0], 10)), 6),
        1.0,
        1.0,
    )
    # but not when Z x 3 is not below the other median sizes (exactly equal here)
    many = np.array([[34, 102, 102]] * 10)
    assert target_spacing(thick, many)[0] == float(np.median(thick[:, 0]))


def test_thick_axis_found_anywhere_and_compared_as_a_ratio() -> None:
    # thick X (axis 2) at sub-millimetre in-plane spacing: 1.6 > 3 x 0.5
    assert anisotropic_axis((0.5, 0.5, 1.6)) == 2
    assert anisotropic_axis((0.5, 0.5, 1.5)) is None
    spacings = np.array([[0.5, 0.5, 1.6 + 0.2 * i] for i in range(10)])  # median X 2.5
    shapes = np.array([[100, 100, 10]] * 10)
    # X median 2.5 > 1.5 and 10 x 3 < 100: X takes its 10th percentile, 1.6 + 0.9 x 0.2
    assert target_spacing(spacings, shapes) == (0.5, 0.5, 1.78)
    # median exactly 3x the finest: the median is kept even when the 10th percentile is lower
    exact = np.array([[1.5, 1.0, 1.0]] + [[3.0, 1.0, 1.0]] * 8 + [[4.0, 1.0, 1.0]])
    assert target_spacing(exact, np.array([[10, 100, 100]] * 10)) == (3.0, 1.0, 1.0)


def test_tiny_image_grows_only_its_fine_axes_and_only_without_a_pooling() -> None:
    # Z (1 mm) is not < 2 x 0.5 mm: only Y and X grow to 2 x 4, and only they pool
    tiny = initial_topology((1.0, 0.5, 0.5), (4, 6, 6), 4, 7)
    assert tiny.patch_size == (4, 8, 8) and tiny.strides == (ONE, (1, 2, 2))
    # one pooling already fits (X: 8 voxels): the clipped patch is kept, nothing grows
    two = initial_topology((1.0, 1.0, 1.0), (4, 6, 8), 4, 7)
    assert two.patch_size == (4, 6, 8) and two.strides == (ONE, (1, 1, 2))


def test_shrinking_at_feature_map_1_skips_no_valid_size() -> None:
    # 8^3 pools to 1 voxel (stride 8); 7, 6 and 5 round back up to 8, 4 is the next size
    topo = derive_topology((1.0, 1.0, 1.0), (8, 8, 8), 1, 7)
    smaller = shrink_step((1.0, 1.0, 1.0), topo, (8, 8, 8), 1, 7)
    assert smaller is not None and smaller.patch_size == (4, 8, 8)


def test_next_lowres_spacing_grows_the_fine_axes_first() -> None:
    # Y, X are more than 2x finer than Z: only they grow
    assert next_lowres_spacing((2.5, 1.0, 1.0), 1.03) == (2.5, 1.03, 1.03)
    assert next_lowres_spacing((1.0, 0.4, 1.0), 1.5) == (1.0, 0.6, 1.0)
    # exactly 2x is not "more than 2x finer": every axis grows
    assert next_lowres_spacing((2.0, 1.0, 1.0), 1.03) == (2.06, 1.03, 1.03)


# A 3-stage 3D network with every setting away from its default, for the memory model by hand.
# features (4, 8, 12) (cap 12 in 3D), blocks (1, 2, 2), 2 convs per block, 3 decoder convs.
def _memory_case() -> tuple[PlannerSettings, Topology]:
    settings = PlannerSettings(
        name="t",
        network="unet",
        encoder_blocks=(1, 2),
        convs_per_block=2,
        extra_tensors_per_block=1,
        decoder_convs=3,
        base_features=4,
        max_features_3d=12,
    )
    topo = Topology(
        patch_size=(8, 16, 16),
        strides=(ONE, (1, 2, 2), (2, 2, 1)),
        kernel_sizes=((1, 3, 3), K3, K3),
    )
    return settings, topo


def test_parameter_count_by_hand() -> None:
    settings, topo = _memory_case()
    # encoder, per stage k * c_in * f + (convs - 1) * k * f^2 with k = kernel voxels
    encoder = (9 * 2 * 4 + 1 * 9 * 4 * 4) + (27 * 4 * 8 + 3 * 27 * 8 * 8)
    encoder += 27 * 8 * 12 + 3 * 27 * 12 * 12
    # decoder stages 0 and 1: transposed conv (stride voxels * f_{s+1} * f_s), first conv on
    # the concatenation (2 f -> f), 2 more convs (f -> f), 1x1 head (f -> K = 3)
    decoder = 4 * 8 * 4 + (9 * 2 * 4 * 4 + 2 * 9 * 4 * 4 + 4 * 3)
    decoder += 4 * 12 * 8 + (27 * 2 * 8 * 8 + 2 * 27 * 8 * 8 + 8 * 3)
    assert parameter_count(topo, settings, 2, 3) == encoder + decoder == 28556


def test_activation_values_by_hand() -> None:
    settings, topo = _memory_case()
    assert topo.stage_shapes() == [(8, 16, 16), (8, 8, 8), (4, 4, 8)]
    per_block = 2 * 2 + 1  # two convolutions (output + normalised) and the residual sum
    values = 2 * 2048  # the input, 2 channels
    values += 2048 * 4 * 1 * per_block + 2048 * (4 * (2 * 3 + 3) + 2 * 3)  # stage 0 + decoder
    values += 512 * 8 * 2 * per_block + 512 * (8 * (2 * 3 + 3) + 2 * 3)  # stage 1 + decoder
    values += 128 * 12 * 2 * per_block  # the bottleneck has no decoder stage
    assert activation_values(topo, settings, 2, 3) == values == 227328
    assert estimate_memory(topo, settings, 2, 3, 4) == 0.5 * 2**30 + 16 * 28556 + 4 * 3.5 * values


def test_batch_fills_the_budget_exactly_and_a_fitting_patch_is_kept() -> None:
    spacing, median = (1.0, 1.0, 1.0), (64, 64, 64)
    topo = initial_topology(spacing, median, 8, 7)

    def plan(budget_bytes: float):
        return plan_network(spacing, median, 1e12, SETTINGS, budget_bytes / GIB, 8, 1, 2)

    # memory(batch 5) exactly: batch 5, the patch untouched
    exact = plan(estimate_memory(topo, SETTINGS, 1, 2, 5))
    assert exact.topology == topo and exact.batch_size == 5
    assert plan(estimate_memory(topo, SETTINGS, 1, 2, 5) - 1).batch_size == 4
    # memory(batch 2) exactly: still fits, no shrinking
    at_two = plan(estimate_memory(topo, SETTINGS, 1, 2, 2))
    assert at_two.topology == topo and at_two.batch_size == 2


def test_3d_networks_stop_at_7_stages() -> None:
    # 256^3 at feature map 2 could pool 7 times (8 stages); 3D allows 7 stages
    planned = plan_network((1.0,) * 3, (256,) * 3, 1e12, SETTINGS, 1e6, 2, 1, 2)
    assert planned.topology.num_stages == 7 and len(planned.features) == 7


def test_spacings_are_rounded_to_6_decimals() -> None:
    assert round_spacing(np.array([0.12345678, 2.0000004, 3.0])) == (0.123457, 2.0, 3.0)
    assert all(type(s) is float for s in round_spacing(np.array([1.5, 2.5])))
