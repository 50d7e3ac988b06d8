"""The post-processing decision's acceptance rule (issue 16, behaviour 7), three labels.

Step 1 (largest component of all foreground) must raise the mean Dice *and* leave no label
worse; step 2 (per label) must raise that label's Dice.
"""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.postprocess import apply_postprocessing, decide_postprocessing


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
