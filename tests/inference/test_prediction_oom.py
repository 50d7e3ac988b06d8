"""Out of device memory while predicting: the sums move to host memory and the case finishes.

The error is injected on the CPU: a network that raises ``torch.OutOfMemoryError`` on chosen
calls, as CUDA does when a forward pass or an accumulator does not fit.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from autoseg.inference import tile_accumulation
from autoseg.inference.sliding_window import sliding_window_logits
from tests.inference.test_predictor import predictor
from tests.inference.test_sliding_window import skewed_net


class RunsOutOfMemory(torch.nn.Module):
    """``net``, except that the calls numbered in ``failing`` (1-based) raise OOM."""

    def __init__(self, net: torch.nn.Module, failing: set[int]) -> None:
        super().__init__()
        self.net, self.failing, self.calls, self.batches = net, failing, 0, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls in self.failing:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.batches.append(x.shape[0])
        return self.net(x)


@pytest.fixture(autouse=True)
def _fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tile_accumulation, "_oom_logged", [False])


def test_an_oom_mid_case_finishes_the_case_with_the_same_logits(caplog) -> None:
    net, image = skewed_net(3), torch.randn(1, 14, 10, 12)
    reference = sliding_window_logits(net, image, (6, 6, 6), 2, mirror_axes=(2,), tile_batch=4)
    failing = RunsOutOfMemory(net, failing={3})  # after two passes were already added
    with caplog.at_level(logging.WARNING, logger="autoseg"):
        logits = sliding_window_logits(failing, image, (6, 6, 6), 2, mirror_axes=(2,), tile_batch=4)
        again = sliding_window_logits(
            RunsOutOfMemory(net, {1}), image, (6, 6, 6), 2, mirror_axes=(2,), tile_batch=4
        )
    torch.testing.assert_close(logits, reference, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(again, reference, rtol=1e-6, atol=1e-6)
    assert logits.device.type == "cpu"
    messages = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(messages) == 1, messages  # once per process, not once per case
    assert "host memory" in messages[0] and "2x14x10x12" in messages[0]


def test_a_second_oom_halves_the_tile_batch_and_a_third_at_one_tile_propagates() -> None:
    net, image = skewed_net(3), torch.randn(1, 14, 10, 12)
    reference = sliding_window_logits(net, image, (6, 6, 6), 2, tile_batch=4)
    twice = RunsOutOfMemory(net, {1, 2})
    torch.testing.assert_close(
        sliding_window_logits(twice, image, (6, 6, 6), 2, tile_batch=4), reference
    )
    assert twice.batches[0] == 2  # halved after the second error
    with pytest.raises(torch.OutOfMemoryError):
        sliding_window_logits(RunsOutOfMemory(net, set(range(1, 99))), image, (6, 6, 6), 2)


def test_the_predictor_finishes_a_case_when_one_fold_runs_out_of_memory() -> None:
    p = predictor(folds=2, tta=True)
    array = np.random.default_rng(0).normal(size=(1, 12, 11, 10)).astype(np.float32)
    reference = p.predict_preprocessed(array)
    p.networks = [p.networks[0], RunsOutOfMemory(p.networks[1], {2})]
    np.testing.assert_allclose(p.predict_preprocessed(array), reference, rtol=1e-5, atol=1e-6)
