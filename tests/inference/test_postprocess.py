from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from autoseg.inference.postprocess import (
    PostprocessingDecision,
    apply_postprocessing,
    decide_postprocessing,
    keep_largest_component,
)


def _organ(shape=(20, 24, 24)) -> np.ndarray:
    """Label 1: a block; label 2: two similar blocks touching it on either side (one organ
    made of two lobes in the reference)."""
    ref = np.zeros(shape, dtype=np.uint8)
    ref[6:14, 8:16, 8:16] = 1
    ref[6:14, 8:16, 4:8] = 2
    ref[6:14, 8:16, 16:20] = 2
    return ref


def test_foreground_lcc_keeps_the_largest_object_with_all_its_labels():
    ref = _organ()
    pred = ref.copy()
    pred[0:2, 0:2, 0:2] = 2  # spurious blob far away
    pred[18, 22, 22] = 1
    out = keep_largest_component(pred, None)
    np.testing.assert_array_equal(out, ref)


def test_lcc_uses_full_connectivity():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    a[0, 0, 0] = 1
    a[1, 1, 1] = 1  # touches the first only by a corner
    a[3, 0, 3] = 1  # isolated
    out = keep_largest_component(a, [1])
    assert out[0, 0, 0] == 1 and out[1, 1, 1] == 1 and out[3, 0, 3] == 0


def test_per_label_lcc_touches_only_the_given_labels():
    a = np.zeros((10, 10, 10), dtype=np.int16)
    a[0:3, 0:3, 0:3] = 1
    a[6:8, 6:8, 6:8] = 1  # smaller label-1 component
    a[0:2, 6:9, 0:2] = 2
    a[8:10, 0:1, 8:10] = 2  # smaller label-2 component
    out = keep_largest_component(a, [1])
    assert (out == 1).sum() == 27 and out[7, 7, 7] == 0
    np.testing.assert_array_equal(out == 2, a == 2)
    out = keep_largest_component(a, [1, 2])
    assert (out == 2).sum() == 12 and out[9, 0, 9] == 0
    with pytest.raises(ValueError):
        keep_largest_component(a, [0])


def test_single_voxel_components_keep_the_first_and_every_label_is_boxed_right():
    a = np.zeros((3, 3, 12), dtype=np.int16)
    a[0, 0, 6:8] = 1  # label 1 only at high X: two voxels, and one voxel apart
    a[2, 2, 11] = 1
    a[1, 1, 0] = 2  # label 2: two single voxels; ties go to the first component
    a[1, 1, 2] = 2
    out = keep_largest_component(a, [1, 2])
    expected = a.copy()
    expected[2, 2, 11] = 0
    expected[1, 1, 2] = 0
    np.testing.assert_array_equal(out, expected)
    single = np.zeros((3, 3, 3), dtype=np.uint8)
    single[0, 0, 0] = single[2, 2, 2] = 3  # all foreground: two single voxels
    kept = keep_largest_component(single, None)
    assert kept[0, 0, 0] == 3 and kept.sum() == 3


def test_apply_postprocessing_returns_a_new_array_and_leaves_the_input():
    pred = _organ()
    pred[0:2, 0:2, 0:2] = 1
    original = pred.copy()
    decision = PostprocessingDecision(True, (2,))
    out = apply_postprocessing(pred, decision)
    np.testing.assert_array_equal(pred, original)
    assert out[0, 0, 0] == 0
    noop = apply_postprocessing(pred, PostprocessingDecision())
    assert noop is not pred and not np.shares_memory(noop, pred)
    np.testing.assert_array_equal(noop, original)


def _cv_cases() -> list[tuple[np.ndarray, np.ndarray, tuple[float, ...]]]:
    cases = []
    for shift in range(3):
        ref = np.roll(_organ(), shift, axis=0)
        pred = ref.copy()
        pred[0:2, 0:3, 0:3] = 1  # spurious blob far away: removed by step 1
        pred[19, 20:23, 20:23] = 2
        # a wrong label-1 blob glued to a lobe of label 2: survives step 1, removed by step 2
        pred[7 + shift : 10 + shift, 9:12, 2:4] = 1
        cases.append((pred, ref, (1.0, 1.0, 1.0)))
    return cases


def test_decision_accepts_foreground_lcc_and_rejects_lcc_of_a_two_lobe_label(tmp_path: Path):
    cases = _cv_cases()
    originals = [pred.copy() for pred, _, _ in cases]
    decision = decide_postprocessing(cases, [1, 2])
    assert decision.largest_component_foreground is True
    assert decision.largest_component_labels == (1,)  # label 2 has two lobes: rejected
    assert decision.dice_label_lcc[2] < decision.dice_foreground_lcc[2]
    assert decision.dice_foreground_lcc[1] > decision.dice_before[1]
    assert decision.dice_after[1] == pytest.approx(1.0)
    assert decision.dice_after[2] == pytest.approx(1.0)
    for (pred, _, _), original in zip(cases, originals, strict=True):
        np.testing.assert_array_equal(pred, original)

    path = tmp_path / "postprocessing.json"
    decision.to_json(path)
    assert PostprocessingDecision.from_json(path) == decision


def test_foreground_lcc_rejected_when_it_removes_a_real_second_organ():
    cases = []
    for _ in range(2):
        ref = np.zeros((20, 20, 20), dtype=np.uint8)
        ref[2:10, 2:10, 2:10] = 1
        ref[14:18, 14:18, 14:18] = 2  # a separate organ, smaller
        pred = ref.copy()
        pred[0, 19, 0] = 1  # a spurious voxel: removing it alone would help label 1
        cases.append((pred, ref, (1.0, 1.0, 1.0)))
    decision = decide_postprocessing(iter(cases), [1, 2])  # a generator is enough
    assert decision.largest_component_foreground is False
    assert decision.dice_foreground_lcc[2] == 0.0
    assert decision.largest_component_labels == (1,)
    assert decision.dice_after == {1: 1.0, 2: 1.0}


def test_no_change_is_not_an_improvement():
    ref = _organ()
    decision = decide_postprocessing([(ref.copy(), ref, (1.0, 1.0, 1.0))], [1, 2])
    assert decision.largest_component_foreground is False
    assert decision.largest_component_labels == ()
