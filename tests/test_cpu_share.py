"""Fair CPU sharing: torch threads follow the CPUs other work leaves; OpenMP waits passively."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import autoseg.device as device
from autoseg.device import configure_cpu_threads, cpu_share_threads


@pytest.mark.parametrize(
    ("cpus", "others", "threads"),
    [(2, 0, 2), (2, 0.4, 2), (2, 1, 1), (2, 2, 1), (2, 20, 1), (8, 3, 5), (8, 0, 8), (1, 5, 1)],
)
def test_threads_are_the_cpus_other_work_leaves(monkeypatch, cpus, others, threads) -> None:
    monkeypatch.setattr(device, "cpu_count", lambda: cpus)
    assert cpu_share_threads(others) == threads


def _stat(tmp_path: Path, running: int) -> Path:
    path = tmp_path / "stat"
    path.write_text(f"cpu  1 2 3 4\nctxt 99\nprocs_running {running}\nprocs_blocked 0\n")
    return path


def _tasks(tmp_path: Path, states: str) -> Path:
    """A fake /proc/self/task: one thread per letter of ``states`` (R running, S sleeping)."""
    root = tmp_path / "task"
    for i, state in enumerate(states):
        (root / str(100 + i)).mkdir(parents=True)
        (root / str(100 + i) / "stat").write_text(f"{100 + i} (py (x) 1) {state} 1 2 3 4\n")
    return root


def test_other_running_tasks_are_counted_without_our_own(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(device, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    alone, reading = _tasks(tmp_path / "a", "RSSS"), _tasks(tmp_path / "b", "RRSS")
    others = device._others_running
    assert others(_stat(tmp_path, 3), alone, pause=0) == 2  # 2 others + this reader
    assert others(_stat(tmp_path, 1), alone, pause=0) == 0
    assert others(_stat(tmp_path, 2), reading, pause=0) == 0  # our thread reading a case
    assert others(_stat(tmp_path, 4), reading, pause=0) == 2
    # a process allowed 2 of the machine's 8 CPUs sees a quarter of the machine's load
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert others(_stat(tmp_path, 9), alone, pause=0) == 2
    assert others(tmp_path / "missing", alone, pause=0) == 0


def test_this_process_counts_itself_running(tmp_path) -> None:
    assert device._own_running(Path("/proc/self/task")) >= 1


def test_a_busy_machine_gets_one_thread_and_a_free_one_all(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(device, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(device, "_PROC_STAT", _stat(tmp_path, 3))
    assert cpu_share_threads() == 1
    monkeypatch.setattr(device, "_PROC_STAT", _stat(tmp_path, 1))
    assert cpu_share_threads() == 2


def test_passive_wait_is_set_unless_the_user_chose(monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    configure_cpu_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_cpu_threads()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_the_cli_sets_the_wait_policy_before_torch_loads() -> None:
    code = (
        "import os, sys\n"
        "from typer.testing import CliRunner\n"
        "from autoseg.cli.commands import app\n"
        "CliRunner().invoke(app, ['find-best', '--help'])\n"  # any command: the callback runs
        "assert 'torch' not in sys.modules\n"
        "print(os.environ.get('OMP_WAIT_POLICY'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == "PASSIVE"


@pytest.mark.parametrize(("running", "threads"), [(3, 1), (1, 2)])
def test_prediction_runs_on_the_cpu_share_and_restores_the_threads(
    monkeypatch, tmp_path, running, threads
) -> None:
    import numpy as np
    import torch

    from tests.inference.test_predictor import predictor

    monkeypatch.setattr(device, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(device, "_PROC_STAT", _stat(tmp_path, running))
    p = predictor(tta=False)
    net, seen = p.networks[0], []
    p.networks = [lambda x: (seen.append(torch.get_num_threads()), net(x))[1]]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)  # neither 1 nor 2: the setting is the predictor's
        p.predict_preprocessed(np.zeros((1, 8, 8, 8), dtype=np.float32))
        assert seen and set(seen) == {threads}
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
