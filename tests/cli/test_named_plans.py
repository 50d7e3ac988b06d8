"""``autoseg plan --name`` / ``autoseg plans`` / ``--plans`` on train, predict and find-best."""

from __future__ import annotations

import json
from pathlib import Path

from tests.reliability_helpers import assert_clean_failure, cli, tiny_dataset


def test_a_named_plan_is_written_shown_trained_and_predicted_apart(tmp_path: Path) -> None:
    dataset = tiny_dataset(tmp_path / "Task96_Named")
    home = tmp_path / "home"
    work = home / "Task96_Named"
    result = cli("plan", dataset, "--home", home, "-c", "2d", "--patch-size", "16", "16",
                 "--batch-size", "3", "--name", "p16")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2d.patch_size: " in result.output and "-> 16x16" in result.output  # the diff
    assert "2d.batch_size: 2 -> 3" in result.output
    named = json.loads((work / "plans_p16.json").read_text())
    assert named["name"] == "p16" and list(named["configurations"]) == ["2d"]
    automatic = json.loads((work / "plans.json").read_text())
    assert automatic["name"] == "" and automatic["configurations"]["2d"]["batch_size"] == 2

    table = cli("plans", "Task96_Named", "--home", home)
    assert table.exit_code == 0, table.output
    rows = [line for line in table.output.splitlines() if "│" in line]
    assert any("p16" in r and "16x16" in r and "│ 3 " in r for r in rows), table.output
    assert sum(r.startswith("│ default ") for r in rows) == len(automatic["configurations"])

    train = cli("train", "Task96_Named", "2d", "all", "--home", home, "--plans", "p16",
                "--epochs", "1", "--iterations", "1", "--val-iterations", "1",
                "--device", "cpu", "--no-validate")  # fmt: skip
    assert train.exit_code == 0, train.output
    fold = work / "models" / "p16" / "2d" / "fold_all"
    assert (fold / "checkpoint_final.pt").is_file()
    assert not (work / "models" / "default").exists()  # nothing mixes with the automatic plans
    assert json.loads((fold.parent / "plans.json").read_text())["name"] == "p16"

    out = tmp_path / "out"
    predict = cli("predict", "-i", dataset / "imagesTr", "-o", out, "-d", "Task96_Named",
                  "-c", "2d", "--plans", "p16", "--home", home, "--no-tta")  # fmt: skip
    assert predict.exit_code == 0, predict.output
    assert len(list(out.glob("*.nii.gz"))) == 3

    assert_clean_failure(cli("find-best", "Task96_Named", "--home", home, "--plans", "p99"), "p99")
    assert_clean_failure(
        cli("train", "Task96_Named", "2d", "all", "--home", home, "--plans", "p99"), "p99"
    )


def test_overrides_without_a_name_or_with_bad_values_write_nothing(tmp_path: Path) -> None:
    dataset = tiny_dataset(tmp_path / "Task95_Bad")
    home = tmp_path / "home"
    assert_clean_failure(cli("plan", dataset, "--home", home, "--batch-size", "3"), "--name")
    for bad, fragment in (
        (("--patch-size", "17", "16", "16"), "not divisible"),
        (("--spacing", "1", "inf", "1"), "finite"),
        (("--patch-size", "16,x,16"), "--patch-size 16,x,16: expected whole numbers"),
        (("--patch-size", "256", "256", "256", "--batch-size", "64"), "GB of GPU memory"),
    ):
        result = cli("plan", dataset, "--home", home, "--name", "p", *bad)
        assert_clean_failure(result, fragment)
    assert not (home / "Task95_Bad").exists()  # checked before anything is written
