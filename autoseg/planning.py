"""The runner behind ``autoseg plan``: check, fingerprint, plan, preprocess.

Planning itself is pure (``planners``); this module does the reading and writing around it.
Nothing is written before the whole dataset has been checked: a dataset with problems leaves the
home folder untouched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table

from autoseg.dataset import load_dataset
from autoseg.fingerprint import compute_fingerprint
from autoseg.paths import record_source, resolve_dataset, resolve_home
from autoseg.planners import Budget, get_planner
from autoseg.plans import Plans
from autoseg.preprocess import run_preprocessing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlanSummary:
    """What ``autoseg plan`` did, for printing."""

    dataset: str
    work: Path
    num_cases: int
    plans: Plans
    seconds: float

    def print(self, console) -> None:
        table = Table(
            title=f"{self.dataset}: {self.num_cases} cases, planner "
            f"'{self.plans.planner}', {self.plans.gpu_memory_gb:g} GB GPU budget"
        )
        for column in (
            "configuration",
            "spacing",
            "patch",
            "batch",
            "stages",
            "features",
            "est. GB",
        ):
            table.add_column(column)
        for name, c in self.plans.configurations.items():
            table.add_row(
                name,
                "x".join(f"{s:g}" for s in c.spacing),
                "x".join(str(p) for p in c.patch_size),
                str(c.batch_size),
                str(c.num_stages),
                f"{c.features_per_stage[0]}..{c.features_per_stage[-1]}",
                f"{c.estimated_memory_gb:.1f}",
            )
        console.print(table)
        console.print(f"written to {self.work} in {self.seconds:.1f} s")


def plan_dataset(
    dataset: str,
    *,
    home: Path | None,
    planner: str,
    gpu_memory_gb: float,
    workers: int,
    preprocess: bool = True,
) -> PlanSummary:
    """Check and fingerprint DATASET, plan it with ``planner`` and preprocess its cases.

    Raises:
        AutosegError / DatasetError: the dataset has problems (all reported at once) or the
            planner is unknown; nothing is written then.
    """
    t0 = time.perf_counter()
    dirs = resolve_dataset(dataset, resolve_home(home))
    planner_fn = get_planner(planner)
    spec = load_dataset(dirs.require_raw())
    fingerprint = compute_fingerprint(spec, workers=workers)
    plans = planner_fn(fingerprint, Budget(gpu_memory_gb=gpu_memory_gb))
    dirs.work.mkdir(parents=True, exist_ok=True)
    record_source(dirs)
    fingerprint.to_json(dirs.fingerprint)
    plans.to_json(dirs.plans(planner))
    if preprocess:
        run_preprocessing(spec, plans, list(plans.configurations), dirs.work, workers)
    return PlanSummary(
        dataset=dirs.name,
        work=dirs.work,
        num_cases=len(spec.cases),
        plans=plans,
        seconds=time.perf_counter() - t0,
    )
