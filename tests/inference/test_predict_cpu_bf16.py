"""Predictor(cpu_bf16=True): bf16 autocast on a bf16 CPU, close to fp32; off by default."""

from __future__ import annotations

import numpy as np
import pytest

from autoseg.device import cpu_has_bf16
from tests.inference.test_predictor import predictor


@pytest.mark.skipif(not cpu_has_bf16(), reason="needs a CPU with native bf16")
def test_cpu_bf16_is_used_only_when_asked() -> None:
    x = np.random.default_rng(0).normal(size=(1, 8, 8, 8)).astype(np.float32)
    fp32 = predictor(tta=False).predict_preprocessed(x)
    again = predictor(tta=False).predict_preprocessed(x)
    bf16 = predictor(tta=False, cpu_bf16=True).predict_preprocessed(x)
    assert np.array_equal(fp32, again)  # default: fp32, deterministic
    assert not np.array_equal(fp32, bf16)  # bf16 rounding shows
    assert np.allclose(fp32, bf16, atol=0.05)
