"""--tracking mlflow: one run per fold in a local file store, read back with MLflow's client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autoseg import __version__
from autoseg.cli.commands import app
from autoseg.planning.runner import plan_dataset
from tests.synthetic import write_dataset

mlflow = pytest.importorskip("mlflow")
runner = CliRunner()
NAME = "Task92_Mlflow"
TRAIN = ["2d", "0", "--epochs", "2", "--iterations", "1", "--val-iterations", "1"]
FAST = [*TRAIN, "--device", "cpu", "--workers", "0", "--seed", "4", "--tracking", "mlflow"]


@pytest.fixture
def planned(tmp_path: Path) -> Path:
    dataset = write_dataset(tmp_path / NAME, n_cases=5, shape_ijk=(16, 20, 12))
    plan_dataset(str(dataset), home=tmp_path / "home", planner="default", gpu_memory_gb=8.0,
                 workers=1)  # fmt: skip
    return tmp_path / "home"


def _client(uri: str, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return mlflow.tracking.MlflowClient(tracking_uri=uri)


def test_a_fold_is_one_run_with_params_metrics_and_artifacts(
    planned: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = (tmp_path / "store").as_uri()
    result = runner.invoke(app, ["train", NAME, *FAST, "--home", planned, "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    fold = planned / NAME / "models" / "default" / "2d" / "fold_0"
    record = json.loads((fold / "mlflow_run.json").read_text())
    client = _client(uri, monkeypatch)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"{NAME}/default/2d/fold_0"
    params = run.data.params
    assert params["plans"] == "default" and params["fold"] == "0" and params["seed"] == "4"
    assert params["autoseg_version"] == __version__ and params["configuration"] == "2d"
    progress = json.loads((fold / "progress.json").read_text())
    history = client.get_metric_history(run.info.run_id, "loss/train")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(progress["train_loss"])
    assert {m.key for m in client.get_metric_history(run.info.run_id, "dice/ema")} == {"dice/ema"}
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"progress.png", "progress.json", "plans.json", "summary.json"} <= artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.name == f"autoseg/{NAME}"


def test_the_default_store_is_a_local_file_store_in_the_home(planned: Path, monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["train", NAME, *FAST, "--home", planned, "--no-validate"])
    assert result.exit_code == 0, result.output
    fold = planned / NAME / "models" / "default" / "2d" / "fold_0"
    record = json.loads((fold / "mlflow_run.json").read_text())
    assert record["tracking_uri"] == (planned / "mlruns").resolve().as_uri()
    run = _client(record["tracking_uri"], monkeypatch).get_run(record["run_id"])
    assert run.data.metrics["loss/train"] > 0
