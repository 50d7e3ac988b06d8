"""torch.compile with a safe fallback: a failing compile gives eager results and one log line."""

from __future__ import annotations

import dataclasses
import logging
import shutil

import numpy as np
import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.paths import resolve_dataset
from autoseg.data.plans import Plans
from autoseg.networks import compiled
from autoseg.networks.compiled import CompiledModule, compile_with_fallback, use_compile
from autoseg.training.fold_setup import TrainSettings
from autoseg.training.train import train_fold
from tests.inference.test_predict_speed import _image, _predictor
from tests.training.test_train import planned  # noqa: F401 F811 - the fixture

FAILED = "torch.compile failed"


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU())


def _broken_compiler(module: torch.nn.Module):
    def call(*args, **kwargs):
        raise RuntimeError("backend compiler failed\nlong traceback text")

    return call


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if FAILED in r.getMessage()]


def test_use_compile_defaults_to_cuda_only() -> None:
    assert use_compile(None, torch.device("cuda")) and not use_compile(None, torch.device("cpu"))
    assert use_compile(True, torch.device("cpu")) and not use_compile(False, torch.device("cuda"))


def test_failed_first_step_falls_back_to_eager(caplog: pytest.LogCaptureFixture) -> None:
    net, x = _net(), torch.randn(2, 1, 6, 6, 6)
    with caplog.at_level(logging.INFO, logger="autoseg"):
        got = compile_with_fallback(net, x, backward=True, compiler=_broken_compiler)
    assert got is net  # the eager module itself
    assert _failures(caplog) == [
        "torch.compile failed (RuntimeError: backend compiler failed); running eager"
    ]
    assert all(p.grad is None for p in net.parameters())  # the trial left no gradients


def test_failure_at_a_later_call_switches_to_eager_once(caplog: pytest.LogCaptureFixture) -> None:
    net = _net()

    def fails_on_new_shapes(module: torch.nn.Module):
        def call(x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] != 6:
                raise RuntimeError("recompilation failed")
            return module(x) + 1.0  # marks outputs that went through this "compiled" path

        return call

    x = torch.randn(1, 1, 6, 6, 6)
    with caplog.at_level(logging.INFO, logger="autoseg"):
        wrapped = compile_with_fallback(net, x, compiler=fails_on_new_shapes)
        assert isinstance(wrapped, CompiledModule) and wrapped.compiled
        with torch.no_grad():
            torch.testing.assert_close(wrapped(x), net(x) + 1.0)
            y = torch.randn(1, 1, 6, 6, 8)
            torch.testing.assert_close(wrapped(y), net(y))  # eager result after the failure
            torch.testing.assert_close(wrapped(x), net(x))  # and eager from then on
    assert not wrapped.compiled and "recompilation failed" in (wrapped.failure or "")
    assert len(_failures(caplog)) == 1
    # checkpoints keep their keys: the state lives in the wrapped module only
    assert set(wrapped.state_dict()) == {f"module.{k}" for k in net.state_dict()}


def test_predictor_with_a_failing_compile_predicts_as_eager(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(compiled.torch, "compile", _broken_compiler)
    with caplog.at_level(logging.INFO, logger="autoseg"):
        forced = _predictor(compile=True)
    assert len(_failures(caplog)) == 2  # one line per fold network, no traceback
    eager = _predictor(compile=False)
    image = _image((9, 10, 9), seed=0)
    np.testing.assert_array_equal(
        forced.predict_preprocessed(image), eager.predict_preprocessed(image)
    )


def test_training_with_a_failing_compile_trains_as_eager(
    planned,  # noqa: F811 - the fixture imported above
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    home, name = planned
    dirs = resolve_dataset(name, home)
    plans = Plans.from_json(dirs.plans())
    settings = TrainSettings(
        epochs=1, iterations=2, val_iterations=1, device="cpu", seed=1, validate=False
    )
    eager = train_fold(dirs, plans, "3d_fullres", "4", settings)
    expected = load_checkpoint(eager / "checkpoint_final.pt").model_state
    shutil.rmtree(eager)
    monkeypatch.setattr(compiled.torch, "compile", _broken_compiler)
    with caplog.at_level(logging.INFO, logger="autoseg"):
        forced = train_fold(
            dirs, plans, "3d_fullres", "4", dataclasses.replace(settings, compile=True)
        )
    assert len(_failures(caplog)) == 1
    got = load_checkpoint(forced / "checkpoint_final.pt").model_state
    assert got.keys() == expected.keys()  # no wrapper prefix in the checkpoint
    for key, value in got.items():
        assert torch.equal(value, expected[key]), key
