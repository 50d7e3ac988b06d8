"""``train --resume`` continues a run, never another one (issue 20 item 3).

Before the fix, ``--resume`` with another ``--loss``, ``--seed``, ``--augment``, ``--iterations``,
``--planner`` or network continued silently and rewrote the checkpoint's metadata. Each refusal
test failed then; the extension test pins the documented learning-rate rule.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from autoseg.data.checkpoint import load_checkpoint
from autoseg.training.fold_setup import poly_lr
from tests.reliability_helpers import assert_clean_failure, cli, shrink_network, snapshot
from tests.reliability_helpers import tiny_dataset as _tiny

PLAN = ("--workers", 1, "--gpu-memory", 8)
RUN = ("--iterations", 1, "--val-iterations", 1, "--no-validate", "--device", "cpu")
NAME = "Task78_Resume"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose fold ``all`` finished 2 epochs (default planner), also planned with resenc."""
    tmp = tmp_path_factory.mktemp("resume")
    root = _tiny(tmp / NAME, n_cases=3)
    home = tmp / "home"
    for planner in ("default", "resenc"):
        assert cli("plan", root, "--home", home, *PLAN, "--planner", planner).exit_code == 0
    shrink_network(home / NAME / "plans.json")
    shrink_network(home / NAME / "plans_resenc.json")
    result = cli("train", NAME, "3d_fullres", "all", "--home", home, "--epochs", 2, *RUN)
    assert result.exit_code == 0, result.output
    return home


@pytest.fixture
def home(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained home (tests change it)."""
    copy = tmp_path / "home"
    shutil.copytree(trained, copy, symlinks=True)
    return copy


def resume(home: Path, *args: object):
    return cli("train", NAME, "3d_fullres", "all", "--home", home, "--resume", *RUN, *args)


def model(home: Path) -> Path:
    return home / NAME / "models" / "default" / "3d_fullres"


@pytest.mark.parametrize(
    "args, named",
    [
        (("--epochs", 2, "--loss", "focal"), ["--loss", '"focal"', '"dice_ce"']),
        (("--epochs", 2, "--seed", 7), ["--seed", "7", "0"]),
        (("--epochs", 2, "--augment", "elastic"), ["--augment", "elastic"]),
        (("--epochs", 2, "--iterations", 3), ["--iterations", "3", "1"]),
        (("--epochs", 1), ["--epochs 1 (now) vs 2 (the run)", "never shortened"]),
        (("--epochs", 3, "--seed", 1, "--loss", "focal"), ["--seed", "--loss"]),
    ],
    ids=["loss", "seed", "augment", "iterations", "fewer epochs", "two at once"],
)
def test_resume_refuses_what_changes_the_run(home: Path, args, named):
    before = snapshot(model(home))
    result = resume(home, *args)
    assert_clean_failure(result, "checkpoint_final.pt", "--resume would change the run", *named)
    assert snapshot(model(home)) == before  # the checkpoint's metadata is not rewritten


def test_resume_refuses_another_network(home: Path):
    plans = home / NAME / "plans.json"
    raw = json.loads(plans.read_text())
    raw["configurations"]["3d_fullres"]["features_per_stage"][0] = 6
    plans.write_text(json.dumps(raw))
    before = snapshot(model(home))
    result = resume(home, "--epochs", 3)
    assert_clean_failure(result, "fold(s) all", "features_per_stage", "--resume")
    assert snapshot(model(home)) == before


def test_resume_refuses_another_planner(home: Path):
    result = resume(home, "--epochs", 3, "--planner", "resenc")
    assert_clean_failure(result, "--resume", "planner 'default'", "--planner default")
    assert not (home / NAME / "models" / "resenc").exists()
    # without --resume it is a new run of the other planner, and allowed
    args = ("--planner", "resenc", "--epochs", 1, *RUN)
    fresh = cli("train", NAME, "3d_fullres", "all", "--home", home, *args)
    assert fresh.exit_code == 0, fresh.output


def test_resume_extends_a_finished_run_with_the_poly_rate_over_the_new_total(home: Path):
    """Allowed: more epochs, and options that say only how the run is carried out."""
    allowed = ("--workers", 0, "--checkpoint-every", 3, "--val-iterations", 2, "--no-cpu-bf16")
    result = resume(home, "--epochs", 5, *allowed)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "extending the run from 2 to 5 epochs" in text and "recomputed over 5 epochs" in text
    meta = load_checkpoint(model(home) / "fold_all" / "checkpoint_final.pt").meta
    assert meta.epoch == 4 and meta.settings["epochs"] == 5
    lr = meta.history["lr"]
    assert lr[:2] == pytest.approx([poly_lr(1e-2, 0, 2), poly_lr(1e-2, 1, 2)])  # the first run
    assert lr[2:] == pytest.approx([poly_lr(1e-2, e, 5) for e in (2, 3, 4)])  # the new total
    assert lr[2] > lr[1]  # the rate rises at the extension, then decays to 0 at epoch 5
