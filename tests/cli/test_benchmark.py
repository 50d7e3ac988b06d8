"""``autoseg benchmark`` on a tiny planned synthetic dataset, on the CPU, with tiny budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoseg.cli.commands import app
from autoseg.planning.runner import plan_dataset
from tests.synthetic import write_dataset

runner = CliRunner()

NUMBERS = (
    "train_s_per_it",
    "train_it_per_s",
    "epoch_s",
    "no_loading_s_per_it",
    "no_loading_it_per_s",
    "no_loading_epoch_s",
    "no_loading_val_s_per_it",
    "no_loading_epoch_with_val_s",
    "data_loading_overhead",
    "peak_rss_gb",
    "predict_s_per_case",
    "predict_whole_s_per_case",
)


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, str]:
    """A planned and preprocessed 5-case synthetic dataset: (home, dataset name)."""
    root = tmp_path_factory.mktemp("bench")
    dataset = write_dataset(root / "Task95_Bench", n_cases=5, shape_ijk=(20, 24, 16))
    home = root / "home"
    plan_dataset(str(dataset), home=home, planner="default", gpu_memory_gb=8.0, workers=1)
    return home, "Task95_Bench"


def _bench(home: Path, name: str, *extra: str):
    args = ["benchmark", name, "3d_fullres", "--home", str(home), "--device", "cpu", *extra]
    return runner.invoke(app, args, catch_exceptions=False)


def test_benchmark_prints_the_table_and_writes_json(planned, tmp_path: Path) -> None:
    home, name = planned
    out = tmp_path / "bench.json"
    result = _bench(
        home, name, "--iterations", "2", "--warmup", "1", "--predict-cases", "1", "-o", str(out)
    )
    assert result.exit_code == 0, result.output
    for text in ("epoch time", "GPU-only", "data-loading overhead", "extrapolated", "n/a"):
        assert text in result.output
    data = json.loads(out.read_text())
    for key in NUMBERS:
        assert isinstance(data[key], float) and data[key] > 0, key
    assert data["device"] == "cpu" and data["configuration"] == "3d_fullres"
    assert data["peak_gpu_memory_train_gb"] is None  # CPU: no GPU figure
    assert data["peak_gpu_memory_predict_gb"] is None
    assert data["workers"] == 0 and data["peak_child_rss_gb"] is None  # train's CPU default
    assert data["iterations"] == 2 and data["epoch_iterations"] == 250 and data["tta"] is True
    assert data["epoch_s"] == pytest.approx(250 * data["train_s_per_it"])
    assert data["no_loading_epoch_s"] == pytest.approx(250 * data["no_loading_s_per_it"])
    assert data["data_loading_overhead"] == pytest.approx(
        data["train_s_per_it"] / data["no_loading_s_per_it"]
    )
    assert data["train_it_per_s"] == pytest.approx(1 / data["train_s_per_it"])


def test_benchmark_with_a_worker_and_no_prediction(planned, tmp_path: Path) -> None:
    home, name = planned
    out = tmp_path / "bench.json"
    result = _bench(
        home,
        name,
        "--iterations",
        "1",
        "--warmup",
        "0",
        "--workers",
        "1",
        "--predict-cases",
        "0",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "1 workers" in result.output
    data = json.loads(out.read_text())
    assert data["workers"] == 1 and data["peak_child_rss_gb"] > 0
    assert data["predict_s_per_case"] is None and data["predict_whole_s_per_case"] is None


def test_benchmark_of_an_unplanned_dataset_is_a_clear_error(tmp_path: Path) -> None:
    result = _bench(tmp_path / "empty", "Nope")
    assert result.exit_code == 2
    assert "Nope" in result.output


def test_benchmark_of_an_unknown_configuration_is_a_clear_error(planned) -> None:
    home, name = planned
    result = runner.invoke(app, ["benchmark", name, "4d", "--home", str(home), "--device", "cpu"])
    assert result.exit_code == 2
    assert "4d" in result.output
