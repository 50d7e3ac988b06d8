"""The post-processing decision's acceptance rule (issue 16, behaviour 7), three labels.

Step 1 (largest component of all foreground) must raise the mean Dice *and* leave no label
worse; step 2 (per label) must raise that label's Dice.
"""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.inference.postprocess import apply_postprocessing, decide_postprocessing


def _case() -> tuple[np.ndarray, np.ndarray]:
    """One slice (1, 10, 40): label 3 | label 1 | label 2 touch (one 200-voxel component).

    The prediction adds a spurious 40-voxel component of label 1; label 2 also has a small
    correct 6-voxel component on its own.
    """
    ref = np.zeros((1, 10, 40), dtype=np.uint8)
    ref[0, :, 0:10] = 3  # 100
    ref[0, :, 10:15] = 1  # 50
    ref[0, :, 15:20] = 2  # 50
    ref[0, 0:2, 37:40] = 2  # 6, far from the rest
    pred = ref.copy()
    pred[0, :, 30:34] = 1  # 40 spurious
    return pred, ref


def test_step_that_improves_the_mean_but_hurts_one_label_is_rejected() -> None:
    pred, ref = _case()
    decision = decide_postprocessing([(pred, ref, (1.0, 1.0, 1.0))], [1, 2, 3])
    # by hand, before: label 1 2*50/(90+50), label 2 1, label 3 1
    assert decision.dice_before == pytest.approx({1: 100 / 140, 2: 1.0, 3: 1.0})
    # step 1 keeps the 200-voxel component: label 1 -> 1, label 2 -> 2*50/(50+56), label 3 1
    assert decision.dice_foreground_lcc == pytest.approx({1: 1.0, 2: 100 / 106, 3: 1.0})
    before, after = decision.dice_before, decision.dice_foreground_lcc
    assert np.mean(list(after.values())) > np.mean(list(before.values()))  # mean improves...
    assert decision.largest_component_foreground is False  # ...but label 2 gets worse
    # step 2 on the raw prediction: label 1's largest component is its true 50 voxels (> 40)
    assert decision.largest_component_labels == (1,)
    # label 2's own largest component drops its 6 true voxels: 2*50/(50+56); step 2 is scored
    # on the raw prediction since step 1 was rejected
    assert decision.dice_label_lcc == pytest.approx({1: 1.0, 2: 100 / 106, 3: 1.0})
    assert decision.dice_after == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})
    out = apply_postprocessing(pred, decision)
    np.testing.assert_array_equal(out, ref)


def test_step_that_hurts_no_label_is_accepted() -> None:
    """Control: without label 2's separate component, step 1 is accepted."""
    pred, ref = _case()
    pred[0, 0:2, 37:40] = 0
    ref[0, 0:2, 37:40] = 0
    decision = decide_postprocessing([(pred, ref, (1.0, 1.0, 1.0))], [1, 2, 3])
    assert decision.largest_component_foreground is True
    assert decision.largest_component_labels == ()  # nothing left to gain on top of step 1
    np.testing.assert_array_equal(apply_postprocessing(pred, decision), ref)


def test_label_step_is_scored_on_top_of_an_accepted_step_1() -> None:
    """A spurious label-1 component larger than the true one (60 > 50 voxels), but outside the
    largest foreground component: on the raw prediction label 1's largest component would be
    the wrong one (Dice 0); on top of step 1 it is the true one (Dice 1)."""
    pred, ref = _case()
    pred[0, 0:2, 37:40] = 0
    ref[0, 0:2, 37:40] = 0
    pred[0, :, 30:36] = 1  # 60 spurious voxels
    decision = decide_postprocessing([(pred, ref, (1.0, 1.0, 1.0))], [1, 2, 3])
    assert decision.largest_component_foreground is True
    assert decision.dice_before == pytest.approx({1: 100 / 160, 2: 1.0, 3: 1.0})
    assert decision.dice_label_lcc == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})
    assert decision.largest_component_labels == ()


def test_label_step_on_raw_predictions_keeps_that_labels_largest_component() -> None:
    """Step 1 rejected (label 2 lies outside the largest component); step 2 then works on the
    raw prediction, on label 2's own components: its true 20 voxels stay, 5 spurious go."""
    ref = np.zeros((1, 10, 40), dtype=np.uint8)
    ref[0, :, 0:10] = 1  # 100 voxels: the largest foreground component
    ref[0, 0:4, 20:25] = 2  # 20 voxels, on their own
    pred = ref.copy()
    pred[0, 8:9, 32:37] = 2  # 5 spurious voxels, elsewhere
    decision = decide_postprocessing([(pred, ref, (1.0, 1.0, 1.0))], [1, 2])
    assert decision.largest_component_foreground is False
    assert decision.dice_foreground_lcc == pytest.approx({1: 1.0, 2: 0.0})
    assert decision.largest_component_labels == (2,)
    assert decision.dice_label_lcc == pytest.approx({1: 1.0, 2: 1.0})
    assert decision.dice_before == pytest.approx({1: 1.0, 2: 40 / 45})
    np.testing.assert_array_equal(apply_postprocessing(pred, decision), ref)


def test_absent_label_scores_one_and_is_left_alone() -> None:
    pred, ref = _case()
    decision = decide_postprocessing([(pred, ref, (1.0, 1.0, 1.0))], [1, 2, 3, 4])
    assert decision.dice_before[4] == 1.0  # absent from both: Dice 1 (the evaluate rule)
    assert 4 not in decision.largest_component_labels


def test_per_label_step_skips_absent_labels_and_goes_on() -> None:
    from autoseg.inference.postprocess import keep_largest_component

    labels = np.zeros((1, 3, 12), dtype=np.uint8)
    labels[0, :, 0:4] = 2
    labels[0, 0, 8] = 2  # a second, smaller component of label 2
    out = keep_largest_component(labels, [1, 2])  # label 1 absent: label 2 still processed
    expected = labels.copy()
    expected[0, 0, 8] = 0
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(keep_largest_component(labels, []), labels)


def test_decision_errors_name_the_problem() -> None:
    pred, ref = _case()
    with pytest.raises(ValueError, match="^no labels to decide post-processing for$"):
        decide_postprocessing([(pred, ref, (1.0, 1.0, 1.0))], [])
    with pytest.raises(ValueError, match="^no cases to decide post-processing on$"):
        decide_postprocessing([], [1])
    with pytest.raises(ValueError, match="shape"):
        decide_postprocessing([(pred[:, :5], ref, (1.0, 1.0, 1.0))], [1])
    from autoseg.inference.postprocess import keep_largest_component

    with pytest.raises(ValueError, match="positive"):
        keep_largest_component(pred, [0])
