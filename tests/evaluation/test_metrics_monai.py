"""Our Dice, HD95 and NSD agree with MONAI's on random and hand-made masks, anisotropic spacing.

MONAI (a test-only dependency, ``pip install -e ".[test]"``) is the library most users compare
against: ``compute_dice``, ``compute_hausdorff_distance(percentile=95)`` and
``compute_surface_dice`` (voxel counting, ``use_subvoxels=False``).

Tolerance: relative 1e-5 (absolute 1e-6), i.e. float32 rounding; the definitions are the same,
so any real difference (26- vs 6-connected surfaces, pooled vs max-of-directed percentile) is
far larger (0.150 vs 0.117 NSD on the poor masks of the issue).
"""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.evaluation.metrics import case_metrics

monai_metrics = pytest.importorskip("monai.metrics")
torch = pytest.importorskip("torch")

SPACING = (3.0, 0.7, 1.2)  # (Z, Y, X) mm: thick slices, as in most CT/MRI
TOL = 1.5  # NSD tolerance in mm
REL, ABS = 1e-5, 1e-6


def _onehot(mask: np.ndarray) -> torch.Tensor:
    """(B=1, C=2, Z, Y, X): background and the mask."""
    m = torch.from_numpy(mask.astype(np.float32))
    return torch.stack([1 - m, m])[None]


def _monai(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    p, r = _onehot(pred), _onehot(ref)
    dice = monai_metrics.compute_dice(p, r, include_background=False)
    hd95 = monai_metrics.compute_hausdorff_distance(
        p, r, include_background=False, percentile=95, spacing=list(SPACING)
    )
    nsd = monai_metrics.compute_surface_dice(
        p, r, class_thresholds=[TOL], include_background=False, spacing=list(SPACING)
    )
    return float(dice[0, 0]), float(hd95[0, 0]), float(nsd[0, 0])


def _ours(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    m = case_metrics(pred.astype(np.uint8), ref.astype(np.uint8), [1], SPACING, TOL)[1]
    return m.dice, m.hd95, m.nsd


def _ball(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape).transpose(1, 2, 3, 0) * np.asarray(SPACING)
    return (((grid - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0


def _random_pairs():
    rng = np.random.default_rng(15)
    shape = (10, 24, 20)
    extent = np.asarray(shape) * np.asarray(SPACING)
    for _ in range(6):
        centre = rng.uniform(0.3, 0.7, 3) * extent
        ref = _ball(shape, centre, rng.uniform(3, 8, 3))
        pred = _ball(shape, centre + rng.normal(0, 2.0, 3), rng.uniform(3, 8, 3))
        pred ^= rng.random(shape) < 0.03  # poor masks: holes and scattered false positives
        yield pred, ref


HAND_MADE = ("shift_x", "shift_z", "border", "plate", "balls", "dots")


def _hand_made_pairs():
    shape = (8, 20, 16)
    cube = np.zeros(shape, bool)
    cube[2:6, 5:15, 4:12] = True
    shifted = np.roll(cube, 2, axis=2)
    yield cube, shifted  # a shift along X
    yield cube, np.roll(cube, 1, axis=0)  # one thick slice along Z
    edge = np.zeros(shape, bool)
    edge[:, :6, :5] = True  # touches three image borders
    yield edge, cube
    plate = np.zeros(shape, bool)
    plate[4, 3:17, 2:14] = True  # one voxel thick: all surface
    yield plate, cube
    yield _ball(shape, (12, 7, 9), (9, 5, 6)), _ball(shape, (12, 8, 10), (7, 6, 5))
    dots = np.zeros(shape, bool)
    dots[1, 1, 1] = dots[6, 18, 14] = True  # two lone voxels far apart
    yield dots, cube


@pytest.mark.parametrize(
    ("pred", "ref"),
    [*_random_pairs(), *_hand_made_pairs()],
    ids=[f"random{i}" for i in range(6)] + list(HAND_MADE),
)
def test_dice_hd95_nsd_match_monai(pred: np.ndarray, ref: np.ndarray) -> None:
    assert pred.any() and ref.any()
    ours, theirs = _ours(pred, ref), _monai(pred, ref)
    for name, a, b in zip(("dice", "hd95", "nsd"), ours, theirs, strict=True):
        assert a == pytest.approx(b, rel=REL, abs=ABS), (name, ours, theirs)


def test_the_surface_definition_matters_here() -> None:
    """The comparison can fail: a 26-connected surface would give another NSD on these masks."""
    from scipy import ndimage

    pred, ref = next(iter(_random_pairs()))
    full = ndimage.generate_binary_structure(3, 3)
    s_pred = pred & ~ndimage.binary_erosion(pred, structure=full)
    s_ref = ref & ~ndimage.binary_erosion(ref, structure=full)
    d_pr = ndimage.distance_transform_edt(~s_ref, sampling=SPACING)[s_pred]
    d_rp = ndimage.distance_transform_edt(~s_pred, sampling=SPACING)[s_ref]
    nsd_26 = ((d_pr <= TOL).sum() + (d_rp <= TOL).sum()) / (d_pr.size + d_rp.size)
    assert abs(nsd_26 - _monai(pred, ref)[2]) > 100 * ABS
    assert _ours(pred, ref)[2] == pytest.approx(_monai(pred, ref)[2], rel=REL, abs=ABS)
