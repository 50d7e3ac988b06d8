"""Resampling gives the same bytes whatever the BLAS thread count (reproducible preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from autoseg.preprocessing.resample import resample


@pytest.mark.parametrize("order", [1, 3])
def test_resampling_does_not_depend_on_blas_threads(order: int) -> None:
    rng = np.random.default_rng(3)
    volume = rng.normal(size=(37, 61, 53)).astype(np.float32)
    new_shape = (29, 83, 71)
    results = []
    for threads in (1, 2, 4):
        with threadpool_limits(limits=threads, user_api="blas"):
            results.append(resample(volume, new_shape, (order,) * 3))
    for other in results[1:]:
        assert other.tobytes() == results[0].tobytes()
