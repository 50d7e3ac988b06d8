"""Bad work folders and arguments for ``autoseg train``: every case names the file and the
problem, exits with code 2, shows no traceback and writes nothing (split from
test_reliability_inputs.py; see docs/reliability.md)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.reliability_helpers import (
    assert_clean_failure,
    cli,
    files_in,
    one_torch_thread,  # noqa: F401 - a fixture
    snapshot,
    tiny_dataset,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset folder, home) of a planned 5-case dataset; tests copy the home."""
    base = tmp_path_factory.mktemp("planned")
    root = tiny_dataset(base / "Task97_Tiny", n_cases=5)
    result = cli("plan", root, "--home", base / "home", "--workers", 1, "--gpu-memory", 8)
    assert result.exit_code == 0, result.output
    return root, base / "home"


def _home_copy(planned: tuple[Path, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(planned[1], tmp_path / "home"))


def _train(home: Path, *args: object):
    return cli(
        "train", "Task97_Tiny", *args, "--home", home, "--epochs", 1, "--iterations", 1,
        "--val-iterations", 1, "--device", "cpu", "--no-validate",
    )  # fmt: skip


def _preprocessed(home: Path) -> Path:
    return next((home / "Task97_Tiny" / "preprocessed").iterdir())


def _break_plans(home: Path) -> str:
    (home / "Task97_Tiny" / "plans.json").write_text('{"dataset_name": "Task97_Tiny",')
    return "plans.json"


def _plans_missing_key(home: Path) -> str:
    path = home / "Task97_Tiny" / "plans.json"
    plans = json.loads(path.read_text())
    del plans["configurations"]["3d_fullres"]["patch_size"]
    path.write_text(json.dumps(plans))
    return "plans.json"


def _no_plans(home: Path) -> str:
    (home / "Task97_Tiny" / "plans.json").unlink()
    return "plans.json"


def _break_splits(home: Path) -> str:
    (home / "Task97_Tiny" / "splits.json").write_text("[{]")
    return "splits.json"


def _truncated_case(home: Path) -> str:
    path = _preprocessed(home) / "case_000.img.npy"
    path.write_bytes(path.read_bytes()[:100])
    return "case_000"


def _missing_case_file(home: Path) -> str:
    (_preprocessed(home) / "case_000.fg.npz").unlink()
    return "case_000"


TRAIN_CORPUS = [
    ("invalid-plans-json", _break_plans),
    ("plans-missing-key", _plans_missing_key),
    ("no-plans", _no_plans),
    ("invalid-splits-json", _break_splits),
    ("truncated-preprocessed-case", _truncated_case),
    ("missing-preprocessed-file", _missing_case_file),
]


@pytest.mark.parametrize("damage", [c[1] for c in TRAIN_CORPUS], ids=[c[0] for c in TRAIN_CORPUS])
def test_train_refuses_damaged_work_folder(
    planned: tuple[Path, Path], tmp_path: Path, damage: Callable[[Path], str]
) -> None:
    home = _home_copy(planned, tmp_path)
    (home / "Task97_Tiny" / "splits.json").write_text(
        json.dumps([{"train": [f"case_00{i}" for i in range(1, 5)], "val": ["case_000"]}] * 5)
    )
    fragment = damage(home)
    result = _train(home, "3d_fullres", "fold0")
    assert_clean_failure(result, fragment)
    written = files_in(home / "Task97_Tiny" / "models")
    assert not [f for f in written if f.endswith((".pt", ".part"))], written  # no checkpoint


def test_plan_again_repairs_a_damaged_preprocessed_case(
    planned: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = planned
    home = _home_copy(planned, tmp_path)
    folder = _preprocessed(home)
    good = snapshot(folder)
    _truncated_case(home)
    (folder / "case_001.fg.npz").write_bytes(b"PK\x03\x04")
    result = cli("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert result.exit_code == 0, result.output
    assert snapshot(folder) == good


@pytest.mark.parametrize(
    "args,fragments",
    [
        (("Task97_Nothing", "3d_fullres", "0"), ["Task97_Nothing", "no such dataset"]),
        (("Task97_Tiny", "3d_cascade", "0"), ["3d_cascade", "not planned"]),
        (("Task97_Tiny", "3d_fullres", "fold9"), ["fold 9"]),
        (("Task97_Tiny", "3d_fullres", "seven"), ["seven"]),
    ],
    ids=["unknown-dataset", "unknown-configuration", "missing-fold", "bad-fold"],
)
def test_train_refuses_bad_arguments(
    planned: tuple[Path, Path], tmp_path: Path, args: tuple[str, ...], fragments: list[str]
) -> None:
    home = _home_copy(planned, tmp_path)
    result = cli(
        "train", *args, "--home", home, "--epochs", 1, "--iterations", 1, "--device", "cpu"
    )
    assert_clean_failure(result, *fragments)
    assert files_in(home / "Task97_Tiny" / "models") == []


def test_train_on_a_raw_dataset_folder_never_planned(tmp_path: Path) -> None:
    root = tiny_dataset(tmp_path / "Task97_Fresh")
    home = tmp_path / "home"
    result = cli("train", root, "3d_fullres", "0", "--home", home, "--device", "cpu")
    assert_clean_failure(result, "plans.json", "autoseg plan")
    assert files_in(home) == []
