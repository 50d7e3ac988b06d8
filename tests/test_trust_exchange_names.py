"""One name rule for export and import (issue 20, item 7).

``export`` used to write archives that ``import`` refused (a dataset name with a space or a
non-ASCII letter). Now both apply ``exchange.name_problem``: names users give datasets
(spaces, letters of any script) travel; names that are not one portable folder name are
refused by ``export`` before anything is written, and by ``import`` when an archive is crafted.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from autoseg.data.checkpoint import load_checkpoint, save_checkpoint
from autoseg.data.plans import Plans
from autoseg.data.recipe import recipe_digest
from autoseg.serial import from_dict
from tests.inference.test_exchange import _members, _rehash, _with_manifest, _write, make_model
from tests.reliability_helpers import assert_clean_failure, cli, files_in

GOOD = ["Task01 Liver", "Tâche_Foie", "数据集 01", "Task02_Heart-v1.2", "x" * 200]
BAD = {
    "parent": "../evil",
    "slash": "a/b",
    "backslash": "a\\b",
    "hidden": ".hidden",
    "dot": ".",
    "colon": "c:d",
    "star": "a*b",
    "nul": "x\x00y",
    "tab": "tab\tname",
    "newline": "two\nlines",
    "rtl override": "abc\u202eexe",
    "trailing space": "name ",
    "trailing dot": "name.",
    "empty": "",
    "too long": "é" * 101,  # 202 bytes
}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, folder = make_model(tmp_path_factory.mktemp("names"), name="Task95_Names")
    return folder


def _renamed(model: Path, tmp_path: Path, key: str, name: str) -> Path:
    """A copy of ``model`` trained under another name: its plans.json, and the plans each
    checkpoint records (one recipe per model folder), name ``key`` (dataset_name, planner)
    ``name``."""
    copy = tmp_path / "copy" / "3d_fullres"
    shutil.copytree(model, copy)
    plans = json.loads((copy / "plans.json").read_text())
    plans[key] = name
    (copy / "plans.json").write_text(json.dumps(plans, ensure_ascii=False))
    for path in copy.glob("fold_*/checkpoint_*.pt"):
        ckpt = load_checkpoint(path)
        recorded = {**ckpt.meta.plans, key: name}
        recipe = recipe_digest(from_dict(Plans, recorded), ckpt.meta.configuration)
        meta = dataclasses.replace(ckpt.meta, plans=recorded, recipe=recipe)
        save_checkpoint(path, ckpt.model_state, ckpt.optimizer_state, meta)
    return copy


@pytest.mark.parametrize("name", GOOD)
@pytest.mark.parametrize("key", ["dataset_name", "planner"])
def test_names_users_give_travel_through_export_and_import(
    model: Path, tmp_path: Path, name: str, key: str
) -> None:
    archive = tmp_path / "out" / "model.zip"
    result = cli("export", _renamed(model, tmp_path, key, name), archive)
    assert result.exit_code == 0, result.output
    home = tmp_path / "home"
    result = cli("import", archive, "--home", home)
    assert result.exit_code == 0, result.output
    place = (
        home / name / "models/default/3d_fullres"
        if key == "dataset_name"
        else (home / "Task95_Names" / "models" / name / "3d_fullres")
    )
    assert (place / "fold_all" / "checkpoint_final.pt").is_file()


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("key", ["dataset_name", "planner"])
def test_export_refuses_a_name_import_would_refuse(
    model: Path, tmp_path: Path, kind: str, key: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = cli("export", _renamed(model, tmp_path, key, BAD[kind]), out / "model.zip")
    what = "dataset" if key == "dataset_name" else "planner"
    assert_clean_failure(result, f"{what} name", "cannot be exported")
    assert files_in(out) == []  # no archive, no temp file


def test_export_refuses_a_configuration_folder_name_import_would_refuse(
    model: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy" / "3d:fullres"
    shutil.copytree(model, copy)
    out = tmp_path / "out"
    out.mkdir()
    assert_clean_failure(cli("export", copy, out / "m.zip"), "configuration name", "':'")
    assert files_in(out) == []


@pytest.fixture(scope="module")
def archive(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "model.zip"
    result = cli("export", model, path)
    assert result.exit_code == 0, result.output
    return path


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("what", ["dataset", "planner", "configuration"])
def test_import_refuses_the_same_names(archive: Path, tmp_path: Path, kind: str, what: str) -> None:
    members = _rehash(_with_manifest(_members(archive), **{what: BAD[kind]}))
    crafted = _write(tmp_path / "crafted.zip", list(members.items()))
    home = tmp_path / "home"
    assert_clean_failure(cli("import", crafted, "--home", home), f"{what} name", "refused")
    assert files_in(home) == []


@pytest.mark.parametrize("name", GOOD + list(BAD.values()))
def test_one_rule_for_both(name: str) -> None:
    from autoseg.inference.exchange import name_problem

    assert (name_problem(name) is None) == (name in GOOD)
