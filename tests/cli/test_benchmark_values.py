"""``autoseg benchmark`` measures what it claims: a fake clock that only the timed steps move.

Each training step with loading advances the clock by 1.25 s (1 s loading + 0.25 s step), a
step on a kept batch by 0.25 s, a validation step by 0.5 s; nothing else moves it. The figures
must come out exactly, so warm-up steps inside a timed region, a miscounted iteration or a
measurement of the wrong call would show (the real clock is never asserted on).
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

import autoseg.cli.benchmark as benchmark
from autoseg.cli.commands import app
from autoseg.planning.runner import plan_dataset
from autoseg.training.step import TrainingStep
from tests.synthetic import write_dataset


def test_benchmark_figures_come_from_the_timed_steps(tmp_path: Path, monkeypatch) -> None:
    dataset = write_dataset(tmp_path / "Task93_Clock", n_cases=3, shape_ijk=(20, 24, 16))
    home = tmp_path / "home"
    plan_dataset(str(dataset), home=home, planner="default", gpu_memory_gb=8.0, workers=1)
    clock = [0.0]
    monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = {"batch": 0, "step": 0, "val": 0}

    def spy(name: str, seconds: float):
        real = getattr(TrainingStep, name)

        def wrapped(self, *args, **kwargs):
            clock[0] += seconds
            calls[name.split("_")[1]] += 1
            return real(self, *args, **kwargs)

        monkeypatch.setattr(TrainingStep, name, wrapped)

    spy("train_batch", 1.0)  # it calls train_step, which adds its own 0.25 s
    spy("train_step", 0.25)
    spy("val_step", 0.5)
    out = tmp_path / "bench.json"
    args = ["benchmark", "Task93_Clock", "3d_fullres", "--home", str(home), "--device", "cpu"]
    args += ["--iterations", "5", "--warmup", "2", "--predict-cases", "0", "-o", str(out)]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["train_s_per_it"] == pytest.approx(1.25)
    assert data["no_loading_s_per_it"] == pytest.approx(0.25)
    assert data["no_loading_val_s_per_it"] == pytest.approx(0.5)
    assert data["epoch_s"] == pytest.approx(250 * 1.25)
    assert data["data_loading_overhead"] == pytest.approx(5.0)
    assert calls["batch"] == 2 + 5  # warm-up + timed steps with loading
    assert calls["step"] >= 7 + 2 + 5  # those, then warm-up + timed on the kept batch
