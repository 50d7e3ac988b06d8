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

from autoseg.loader import BatchLoader, forced_foreground_count
from autoseg.planners.rules import derive_topology
from autoseg.plans import Configuration, Normalization

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
    from autoseg.preprocess import CaseProperties
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
    from autoseg.planners.rules import initial_topology

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
    from autoseg.planners.rules import PlannerSettings

    settings = PlannerSettings(name="x", network="unet")
    assert settings.max_stages(3) == 7 and settings.max_stages(2) == 8
    assert settings.features_per_stage(8, 3)[-1] == 320
    assert settings.features_per_stage(8, 2) == (32, 64, 128, 256, 512, 512, 512, 512)


def test_anisotropy_threshold_is_strictly_above_3() -> None:
    from autoseg.planners.rules import anisotropic_axis, target_spacing

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
