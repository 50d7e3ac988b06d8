"""Numbers from the user: option ranges and integers written with Unicode digits (issue 20,
items 8 and 9).

Every integer and float option of every command is found from the CLI itself and given values
out of any sensible range (-1; for floats also 0, NaN and infinities): each must be refused by
the option's own check (exit 2, the option's name in the message, no traceback), before the
command runs. A fold or a dataset.json key written with digits that ``str.isdigit`` accepts and
``int`` does not ('²'), or with other scripts' digits ('٣'), is a clean error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer

from autoseg.cli.commands import app
from tests.reliability_helpers import (
    assert_clean_failure,
    cli,
    make_model,
    save_nifti,
    snapshot,
    tiny_dataset,
)


def _numeric_options() -> list[tuple[str, str, str, list[str]]]:
    """(command, option name, 'int'/'float', the command's required arguments) for every
    numeric option of every command."""
    group = typer.main.get_command(app)
    found = []
    for name, command in sorted(group.commands.items()):
        required: list[str] = []
        for param in command.params:
            if param.required and param.param_type_name == "argument":
                required.append("x")
            elif param.required:
                required += [param.opts[0], "x"]
        for param in command.params:
            if param.param_type_name != "option":
                continue
            annotation = param.type_descriptor.annotation  # int | None reads as int
            kind = {int: "int", float: "float"}.get(annotation)
            if kind is not None:
                found.append((name, max(param.opts, key=len), kind, required))
    return found


OPTIONS = _numeric_options()
BAD = {"int": ["-1"], "float": ["-1", "0", "nan", "inf", "-inf"]}


def test_every_numeric_option_is_found() -> None:
    names = {(c, o) for c, o, _, _ in OPTIONS}
    for expected in [
        ("evaluate", "--nsd-tolerance"),
        ("train", "--seed"),
        ("train", "--workers"),
        ("plan", "--gpu-memory"),
        ("predict", "--step-size"),
        ("predict", "--parts"),
        ("instances", "--border-label"),
    ]:
        assert expected in names, sorted(names)


@pytest.mark.parametrize(
    ("command", "option", "value", "required"),
    [(c, o, v, r) for c, o, k, r in OPTIONS for v in BAD[k]],
    ids=[f"{c} {o} {v}" for c, o, k, _ in OPTIONS for v in BAD[k]],
)
def test_every_numeric_option_refuses_values_out_of_range(
    command: str, option: str, value: str, required: list[str], tmp_path: Path
) -> None:
    result = cli(command, *required, f"{option}={value}")
    assert_clean_failure(result, option)
    assert "Invalid value" in result.output  # the option's own check, not a later error
    assert not list(tmp_path.iterdir())


def test_values_above_the_ranges_are_refused() -> None:
    result = cli("train", "x", "3d_fullres", "0", "--seed", 2**32)
    assert_clean_failure(result, "--seed")
    result = cli("plan", "x", "--gpu-memory", "1e300")  # was a NaN traceback in the planner
    assert_clean_failure(result, "--gpu-memory", "4096")
    result = cli("predict", "-i", "x", "-o", "y", "--step-size", "1.5")
    assert_clean_failure(result, "--step-size")
    result = cli("predict", "-i", "x", "-o", "y", "--tile-scale", "2.5")
    assert_clean_failure(result, "--tile-scale")


def test_the_library_refuses_a_bad_nsd_tolerance_too(tmp_path: Path) -> None:
    from autoseg.errors import AutosegError
    from autoseg.evaluation.evaluate import evaluate_folders

    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[2:4, 2:4, 2:4] = 1
    for folder in ("ref", "pred"):
        save_nifti(label, tmp_path / folder / "a.nii.gz")
    for bad in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(AutosegError, match="NSD tolerance"):
            evaluate_folders(tmp_path / "pred", tmp_path / "ref", nsd_tolerance_mm=bad)
    result = cli(
        "evaluate", "-r", tmp_path / "ref", "-p", tmp_path / "pred", "--nsd-tolerance", 0.5
    )
    assert result.exit_code == 0, result.output  # a perfect label at NSD 1, not 0
    assert "1.0000" in result.output


# ---------------------------------------------------------------- Unicode digits


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        (" 12 ", 12),
        ("-3", -3),
        ("²", None),
        ("1²", None),
        ("٣", None),
        ("", None),
        ("1.0", None),
        ("0x1", None),
        ("１", None),
    ],
)
def test_ascii_int(text: str, value: int | None) -> None:
    from autoseg.serial import ascii_int

    assert ascii_int(text) == value


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("planned")
    root = tiny_dataset(tmp / "Task91_Digits", n_cases=2)
    home = tmp / "home"
    result = cli("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert result.exit_code == 0, result.output
    return root, home


@pytest.mark.parametrize("fold", ["²", "1²", "fold²", "٣", "fold_٣", "１", "+1"])
def test_train_refuses_a_fold_in_other_digits(planned: tuple[Path, Path], fold: str) -> None:
    root, home = planned
    before = snapshot(home)
    result = cli("train", root.name, "3d_fullres", fold, "--home", home, "--device", "cpu")
    assert_clean_failure(result, fold, "expected fold0..fold4")
    assert snapshot(home) == before


@pytest.mark.parametrize("fold", ["²", "٣", "0,²"])
@pytest.mark.parametrize("command", ["predict", "export"])
def test_predict_and_export_refuse_a_fold_in_other_digits(
    tmp_path: Path, fold: str, command: str
) -> None:
    model = make_model(tmp_path / "models" / "default" / "3d_fullres")
    save_nifti(np.zeros((8, 8, 8), np.float32), tmp_path / "in" / "a.nii.gz")
    if command == "predict":
        result = cli(
            "predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model, "-f", fold
        )
    else:
        result = cli("export", model, tmp_path / "m.zip", "-f", fold)
    assert_clean_failure(result, "expected fold0..fold4")
    assert not (tmp_path / "out").exists() and not (tmp_path / "m.zip").exists()


def _with_meta(root: Path, edit) -> Path:
    meta = json.loads((root / "dataset.json").read_text())
    edit(meta)
    (root / "dataset.json").write_text(json.dumps(meta, ensure_ascii=False))
    return root


DATASET_KEYS = {
    "label ²": lambda m: m["labels"].update({"²": "extra"}),
    "label ٣": lambda m: m["labels"].update({"٣": "extra"}),
    "label -1": lambda m: m["labels"].update({"-1": "extra"}),
    "modality ²": lambda m: m.update(modality={"²": "MRI"}),
    "modality ٠": lambda m: m.update(modality={"٠": "MRI"}),
}


@pytest.mark.parametrize("kind", sorted(DATASET_KEYS))
def test_plan_refuses_dataset_json_keys_in_other_digits(tmp_path: Path, kind: str) -> None:
    root = _with_meta(tiny_dataset(tmp_path / "Task92_Keys", n_cases=2), DATASET_KEYS[kind])
    home = tmp_path / "home"
    result = cli("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert_clean_failure(result, "dataset.json", "must map")
    assert not home.exists()


@pytest.mark.parametrize("key", ["²", "٣"])
def test_evaluate_refuses_label_keys_in_other_digits(tmp_path: Path, key: str) -> None:
    root = _with_meta(
        tiny_dataset(tmp_path / "Task93_Keys", n_cases=2),
        lambda m: m["labels"].update({key: "extra"}),
    )
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    for folder in ("ref", "pred"):
        save_nifti(label, tmp_path / folder / "a.nii.gz")
    result = cli(
        "evaluate", "-r", tmp_path / "ref", "-p", tmp_path / "pred", "--dataset-json", root
    )
    assert_clean_failure(result, "dataset.json", "must map")


def test_a_model_whose_plans_name_a_label_in_other_digits_is_refused(tmp_path: Path) -> None:
    model = make_model(tmp_path / "models" / "default" / "3d_fullres")
    plans = json.loads((model / "plans.json").read_text())
    plans["labels"]["²"] = "extra"
    (model / "plans.json").write_text(json.dumps(plans, ensure_ascii=False))
    save_nifti(np.zeros((8, 8, 8), np.float32), tmp_path / "in" / "a.nii.gz")
    result = cli("predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", model)
    assert_clean_failure(result, "plans.json")
    assert not (tmp_path / "out").exists()
