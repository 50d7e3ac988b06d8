"""``--tracking mlflow``: one MLflow run per fold (``pip install 'autoseg[mlflow]'``).

Where runs go: ``--tracking-uri URI``, else the ``MLFLOW_TRACKING_URI`` environment variable
(read when training starts), else a local file store ``file:<home>/mlruns``: nothing leaves the
site unless a URI says so. ``mlflow-skinny`` is enough for a file store (MLflow 3 keeps that
store in maintenance mode and refuses it unless ``MLFLOW_ALLOW_FILE_STORE`` is set; autoseg
sets it to ``true`` for a ``file:`` URI when the variable is unset). ``mlflow ui
--backend-store-uri file:<home>/mlruns`` (full ``mlflow`` package) shows the runs.

A run is named ``<dataset>/<plans>/<configuration>/fold_<k>`` in the experiment
``autoseg/<dataset>``, and logs:

- parameters: plans name, planner, configuration, fold, seed, autoseg version, epochs,
  iterations, loss, patch, batch and spacing (``TrackedRun.params``);
- metrics per epoch (step = epoch, 1-based): ``autoseg.training.tracking.epoch_scalars``, with
  ``/`` in tags kept (MLflow accepts it);
- artifacts when the fold ends: ``progress.png``, ``progress.json``, ``plans.json`` and the
  validation ``summary.json``.

A resumed fold continues the run recorded in ``fold_<k>/mlflow_run.json`` (same store), so one
fold is one run; metrics of the epochs after the checkpoint are logged again (MLflow keeps
both values of such a step).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from autoseg.errors import AutosegError
from autoseg.serial import atomic_write_text
from autoseg.training.progress import History
from autoseg.training.tracking import TrackedRun, epoch_scalars

log = logging.getLogger(__name__)

RUN_FILE = "mlflow_run.json"


def require_mlflow() -> Any:
    """The ``mlflow`` module.

    Raises:
        AutosegError: not installed (names the extra to install).
    """
    try:  # heavy and optional: only when chosen
        import mlflow
    except ImportError as exc:
        raise AutosegError(
            "--tracking mlflow needs MLflow: pip install 'autoseg[mlflow]' (mlflow-skinny)"
        ) from exc
    return mlflow


def tracking_uri(run: TrackedRun) -> str:
    """The option's URI, else ``$MLFLOW_TRACKING_URI``, else ``file:<home>/mlruns``."""
    if run.uri:
        return run.uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    home = run.home if run.home is not None else Path(run.fold_dir).parents[4]
    return (Path(home) / "mlruns").resolve().as_uri()


class MlflowTracker:
    """Logs one fold to one MLflow run through ``MlflowClient`` (no global MLflow state)."""

    def __init__(self, run: TrackedRun) -> None:
        mlflow = require_mlflow()
        self.label_names = list(run.label_names)
        self.uri = tracking_uri(run)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = mlflow.tracking.MlflowClient(tracking_uri=self.uri)
        self.run_id = self._resume(run) or self._start(run)
        atomic_write_text(
            Path(run.fold_dir) / RUN_FILE,
            json.dumps({"run_id": self.run_id, "tracking_uri": self.uri}, indent=2) + "\n",
        )
        log.info("MLflow run %s in %s", self.run_id, self.uri)

    def _resume(self, run: TrackedRun) -> str | None:
        path = Path(run.fold_dir) / RUN_FILE
        if not run.start_epoch or not path.is_file():
            return None
        try:
            recorded = json.loads(path.read_text(encoding="utf-8"))
            if recorded.get("tracking_uri") != self.uri:
                return None
            run_id = str(recorded["run_id"])
            self.client.get_run(run_id)  # still there
        except Exception:  # noqa: BLE001 - any unusable record starts a new run
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run_id

    def _start(self, run: TrackedRun) -> str:
        experiment = self.client.get_experiment_by_name(run.experiment)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self.client.create_experiment(run.experiment)
        )
        created = self.client.create_run(experiment_id, run_name=run.name or None)
        run_id = created.info.run_id
        for key, value in run.params.items():
            self.client.log_param(run_id, key, value)
        return run_id

    def write(self, history: History) -> None:
        """Log the last epoch of ``history`` (step = epoch, 1-based)."""
        step = len(history.train_loss)
        for tag, value in epoch_scalars(history, self.label_names).items():
            self.client.log_metric(self.run_id, tag, value, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        """Upload the files among ``paths`` that exist."""
        for path in paths:
            if Path(path).is_file():
                self.client.log_artifact(self.run_id, str(path))

    def close(self) -> None:
        """End the run (FINISHED)."""
        self.client.set_terminated(self.run_id)
