"""What a refused or killed run leaves is cleaned up by the next run (issue 20, item 10).

Every command that stages files is covered: ``import`` (a refusal leaves no empty model
folders; a killed import's staging folder is removed, and a model it had moved aside is put
back), ``export`` (the staging folder now lies beside the archive under the archive's temp
name, so the next export removes it with the temp archive; ``--onnx`` too), and ``ensemble``,
``instances``, ``evaluate -o``, ``overlay`` and ``train`` (temp files of their outputs).
``predict`` and ``plan`` had this already (``test_reliability_crash.py``). The kills are real
(``SIGKILL`` from inside the child, at a chosen step); the other leftovers are planted with
the names ``atomic_output`` gives temp files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.inference.test_exchange import _members, _rehash, _write, make_model
from tests.reliability_helpers import (
    child_env,
    cli,
    files_in,
    save_nifti,
    save_npz_beside,
    snapshot,
    tiny_dataset,
)

STALE = "deadbeef"  # the random part of a planted temp name


def _planted(path: Path, folder: bool = False, token: str = STALE) -> Path:
    """A temp file (or staging folder) of ``path`` as a killed run leaves it."""
    stale = path.parent / f".{path.name}.{token}.part"
    if folder:
        stale.mkdir(parents=True)
        (stale / "fold_0.pt").write_bytes(b"half")
    else:
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"half")
    return stale


def _killed_at(step: str, code: str, tmp: Path) -> subprocess.CompletedProcess:
    """Run ``code`` in a child that SIGKILLs itself when ``step`` (module.attr) is called."""
    module, attr = step.rsplit(".", 1)
    script = (
        "import os, signal, importlib\n"
        f"m = importlib.import_module({module!r})\n"
        f"real = getattr(m, {attr!r})\n"
        "def die(*a, **k):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"setattr(m, {attr!r}, die)\n" + code
    )
    env = child_env()
    env["TMPDIR"] = str(tmp)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -9, (done.returncode, done.stderr[-2000:])
    return done


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, folder = make_model(tmp_path_factory.mktemp("leftovers"), name="Task94_Leftovers")
    return folder


@pytest.fixture(scope="module")
def archive(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("archive") / "model.zip"
    assert cli("export", model, path).exit_code == 0
    return path


# ---------------------------------------------------------------- export


@pytest.mark.parametrize(
    "step", ["autoseg.inference.exchange.save_checkpoint", "shutil.copyfileobj"]
)
def test_a_killed_export_is_cleaned_up_by_the_next(model: Path, tmp_path: Path, step: str) -> None:
    out, tmp = tmp_path / "out", tmp_path / "tmp"
    tmp.mkdir()
    archive = out / "model.zip"
    code = (
        "from autoseg.inference.exchange import export_model\n"
        f"export_model({str(model)!r}, {str(archive)!r})\n"
    )
    _killed_at(step, code, tmp)
    assert files_in(tmp) == []  # staged beside the archive, not in the temp folder
    assert not archive.exists() and snapshot(out)  # a leftover is there
    result = cli("export", model, archive)
    assert result.exit_code == 0, result.output
    assert files_in(out) == ["model.zip"] and sorted(p.name for p in out.iterdir()) == ["model.zip"]


def test_export_removes_planted_leftovers_and_leaves_no_folders_when_refused(
    model: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "out" / "model.zip"
    stale_file, stale_dir = _planted(archive), _planted(archive, folder=True, token="abcdefgh")
    assert cli("export", model, archive).exit_code == 0
    assert sorted(p.name for p in archive.parent.iterdir()) == ["model.zip"]
    assert not stale_file.exists() and not stale_dir.exists()
    refused = tmp_path / "new" / "deeper" / "m.zip"
    result = cli("export", model, refused, "-f", "3")  # no fold 3
    assert result.exit_code == 2
    assert not (tmp_path / "new").exists()


def test_onnx_export_removes_a_killed_runs_temp_file(model: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    output = tmp_path / "m.onnx"
    stale = _planted(output)
    result = cli("export", model, "--onnx", output)
    assert result.exit_code == 0, result.output
    assert not stale.exists() and output.is_file()


# ---------------------------------------------------------------- import


def _model_folders(home: Path) -> list[str]:
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []


def test_a_refused_import_leaves_no_folders(archive: Path, tmp_path: Path) -> None:
    members = _members(archive)
    members["fold_all/checkpoint_final.pt"] = b"not a checkpoint"  # passes the manifest check
    crafted = _write(tmp_path / "crafted.zip", list(_rehash(members).items()))
    home = tmp_path / "home"
    result = cli("import", crafted, "--home", home)
    assert result.exit_code == 2, result.output
    assert _model_folders(home) == []  # was: Task94_Leftovers/models/default left empty
    (home / "keep").mkdir(parents=True)
    assert cli("import", crafted, "--home", home).exit_code == 2
    assert _model_folders(home) == ["keep"]


def test_a_killed_import_is_cleaned_up_by_the_next(archive: Path, tmp_path: Path) -> None:
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    tmp.mkdir()
    code = (
        "from pathlib import Path\nfrom autoseg.inference.exchange_import import import_model\n"
        f"import_model(Path({str(archive)!r}), Path({str(home)!r}))\n"
    )
    _killed_at("autoseg.data.checkpoint.load_checkpoint", code, tmp)
    parent = home / "Task94_Leftovers" / "models" / "default"
    assert [p.name for p in parent.iterdir() if p.name.startswith(".3d_fullres.import-")]
    result = cli("import", archive, "--home", home)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in parent.iterdir()) == ["3d_fullres"]


@pytest.mark.parametrize("target_there", [False, True])
def test_a_model_moved_aside_by_a_killed_import_comes_back(
    archive: Path, tmp_path: Path, target_there: bool
) -> None:
    home = tmp_path / "home"
    assert cli("import", archive, "--home", home).exit_code == 0
    parent = home / "Task94_Leftovers" / "models" / "default"
    before = snapshot(parent / "3d_fullres")
    aside = parent / f".3d_fullres.replaced-{STALE}"
    if target_there:  # killed after the new model was in place: the old one is garbage
        import shutil

        shutil.copytree(parent / "3d_fullres", aside)
    else:  # killed between the two renames: the user's model is only aside
        (parent / "3d_fullres").rename(aside)
    result = cli("import", archive, "--home", home)
    assert result.exit_code == 2 and "already there" in result.output  # as before the kill
    assert sorted(p.name for p in parent.iterdir()) == ["3d_fullres"]
    assert snapshot(parent / "3d_fullres") == before


# ---------------------------------------------------------------- outputs of other commands


def _label(path: Path, value: int = 1) -> Path:
    data = np.zeros((6, 6, 6), dtype=np.uint8)
    data[2:4, 2:4, 2:4] = value
    return save_nifti(data, path)


def test_ensemble_removes_a_killed_runs_temp_files(tmp_path: Path) -> None:
    fg = np.zeros((6, 6, 6), dtype=np.float16)
    for folder in ("A", "B"):
        _label(tmp_path / folder / "c.nii.gz")
        save_npz_beside(
            tmp_path / folder / "c.npz",
            probabilities=np.stack([1 - fg, fg]),
            labels=np.array([0, 1]),
        )
    stale = _planted(tmp_path / "E" / "c.nii.gz")
    result = cli("ensemble", "-i", tmp_path / "A", "-i", tmp_path / "B", "-o", tmp_path / "E")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and files_in(tmp_path / "E") == ["c.nii.gz"]


def test_instances_removes_a_killed_runs_temp_files(tmp_path: Path) -> None:
    _label(tmp_path / "pred" / "c.nii.gz")
    stale = _planted(tmp_path / "out" / "c.nii.gz")
    result = cli("instances", tmp_path / "pred", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not stale.exists() and files_in(tmp_path / "out") == ["c.nii.gz"]


def test_evaluate_removes_a_killed_runs_temp_files(tmp_path: Path) -> None:
    for folder in ("ref", "pred"):
        _label(tmp_path / folder / "c.nii.gz")
    report = tmp_path / "report"
    stale = [_planted(report / n) for n in ("evaluation.json", "evaluation_cases.csv")]
    result = cli("evaluate", "-r", tmp_path / "ref", "-p", tmp_path / "pred", "-o", report)
    assert result.exit_code == 0, result.output
    assert not any(s.exists() for s in stale)
    assert not [f for f in files_in(report) if f.endswith(".part")]


def test_overlay_removes_a_killed_runs_temp_files(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    save_nifti(
        np.random.default_rng(0).random((6, 6, 6)).astype(np.float32), tmp_path / "img" / "c.nii.gz"
    )
    _label(tmp_path / "pred" / "c.nii.gz")
    old_style = tmp_path / "png" / ".c.png.part"  # the name overlay used before
    old_style.parent.mkdir()
    old_style.write_bytes(b"half")
    stale = _planted(tmp_path / "png" / "c.png")
    result = cli("overlay", tmp_path / "img", tmp_path / "pred", "-o", tmp_path / "png")
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert "c.png" in files_in(tmp_path / "png")


@pytest.mark.slow
def test_plan_train_and_benchmark_remove_a_killed_runs_temp_files(tmp_path: Path) -> None:
    from tests.reliability_helpers import shrink_network

    root = tiny_dataset(tmp_path / "Task89_Train", n_cases=5)
    home = tmp_path / "home"
    plan = ("plan", root, "--home", home, "--workers", 1, "--gpu-memory", 8)
    assert cli(*plan).exit_code == 0
    work = home / root.name
    names = ("plans.json", "fingerprint.json", "dataset_source.txt")
    stale = [_planted(work / n) for n in names]
    assert cli(*plan).exit_code == 0  # plan again
    assert not any(s.exists() for s in stale)

    shrink_network(work / "plans.json")
    model = work / "models" / "default" / "3d_fullres"
    fold = model / "fold_0"
    stale = [_planted(fold / n) for n in ("progress.json", "summary.json", "checkpoint_final.pt")]
    stale += [_planted(model / "plans.json"), _planted(work / "splits.json")]
    quick = ("--iterations", 1, "--device", "cpu", "--workers", 0)
    result = cli(
        "train", root.name, "3d_fullres", "0", "--home", home, "--epochs", 1,
        "--val-iterations", 1, "--no-validate", *quick,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not any(s.exists() for s in stale)
    assert not [p for p in files_in(work) if Path(p).name.endswith(".part")]

    out = tmp_path / "bench.json"
    stale = [_planted(out)]
    result = cli(
        "benchmark", root.name, "3d_fullres", "--home", home, "--warmup", 0,
        "--predict-cases", 0, "-o", out, *quick,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not stale[0].exists() and out.is_file()
