"""Shared helpers of the reliability tests: tiny datasets, model folders, CLI runs, snapshots."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from tests.synthetic import write_dataset

SHAPE_IJK = (16, 20, 16)
LABELS = {0: "background", 1: "anterior", 2: "posterior"}
_runner = CliRunner()


def tiny_dataset(root: Path, layout: str = "msd", n_cases: int = 3, **kwargs) -> Path:
    """A small dataset (16x20x16 voxels per case) written to ``root``."""
    kwargs.setdefault("shape_ijk", SHAPE_IJK)
    return write_dataset(root, layout=layout, n_cases=n_cases, **kwargs)


def save_nifti(
    data: np.ndarray,
    path: Path,
    spacing: tuple[float, ...] = (1.0, 1.0, 1.0),
    origin: tuple[float, ...] = (0.0, 0.0, 0.0),
) -> Path:
    """Write ``data`` (file order i, j, k[, c]) with a diagonal affine."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(spacing) + ((1.0,) if data.ndim == 4 else ()))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def load_nifti(path: Path) -> np.ndarray:
    return np.asanyarray(nib.load(str(path)).dataobj)


def make_model(folder: Path, channels: int = 1, folds: tuple[str, ...] = ("0",)) -> Path:
    """A model folder (random weights) with a tiny 3D U-Net, as ``autoseg train`` leaves it."""
    import torch

    from autoseg.data.checkpoint import CheckpointMeta, save_checkpoint
    from autoseg.data.plans import Configuration, Normalization, Plans
    from autoseg.networks.unet import build_network
    from autoseg.serial import to_dict

    config = Configuration(
        name="3d_fullres",
        spacing=(1.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        features_per_stage=(4, 8),
        normalization=(Normalization("zscore"),) * channels,
    )
    names = ("MRI",) + tuple(f"MRI{c}" for c in range(1, channels))
    plans = Plans("Task97_Tiny", "default", 8.0, 4, names, LABELS, {config.name: config})
    folder.mkdir(parents=True, exist_ok=True)
    plans.to_json(folder / "plans.json")
    for i, fold in enumerate(folds):
        torch.manual_seed(i)
        net = build_network(config, channels, len(LABELS), deep_supervision=True)
        meta = CheckpointMeta(config.name, str(fold), 0, len(LABELS), channels, to_dict(plans))
        save_checkpoint(
            folder / f"fold_{fold}" / "checkpoint_final.pt", net.state_dict(), None, meta
        )
    return folder


def cli(*args: object) -> Result:
    """Run ``autoseg ARGS`` in this process (typer's CliRunner)."""
    return _runner.invoke(_app(), [str(a) for a in args])


def _app():
    from autoseg.cli.commands import app

    return app


def assert_clean_failure(result: Result, *fragments: str) -> None:
    """Exit code 2, no traceback, and every fragment (file name, problem) in the message."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, f"{fragment!r} not in:\n{result.output}"


# The child runs on one CPU: autoseg sizes its torch threads by the affinity mask, and two
# threads on a loaded 2-core machine can be 40x slower than one.
_CHILD = (
    "import os, runpy, sys\n"
    "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
    "sys.argv[0] = 'autoseg'\n"
    "runpy.run_module('autoseg.cli.commands', run_name='__main__', alter_sys=True)\n"
)


def autoseg_command(*args: object) -> list[str]:
    """The command line running ``autoseg ARGS`` (``python -m autoseg.cli.commands``) on one CPU."""
    return [sys.executable, "-c", _CHILD, *map(str, args)]


def run_autoseg(*args: object, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """Run ``autoseg ARGS`` in a child process; text output captured."""
    return subprocess.run(
        autoseg_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        **kwargs,
    )


def child_env() -> dict[str, str]:
    """The environment for child processes: this checkout importable, no colours, narrow CPU."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("AUTOSEG_HOME", None)
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return env


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (hidden ones too); dirs as 'dir'."""
    if not folder.exists():
        return {}
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            found[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        else:
            found[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def files_in(folder: Path) -> list[str]:
    """Relative paths of the files under ``folder`` (empty when it does not exist)."""
    return [k for k, v in snapshot(folder).items() if v != "dir"]


def mixed_spacing_dataset(
    root: Path, n_cases: int, shape_ijk: tuple[int, int, int], seed: int = 0
) -> Path:
    """An MSD dataset whose cases alternate between two spacings, so every case is resampled."""
    from tests.synthetic import make_case

    rng = np.random.default_rng(seed)
    training = []
    for i in range(n_cases):
        spacing = (1.0, 1.0, 1.0) if i % 2 == 0 else (1.5, 1.5, 1.5)
        image, label = make_case(rng, shape_ijk)
        save_nifti(image, root / "imagesTr" / f"case_{i:03d}.nii.gz", spacing)
        save_nifti(label, root / "labelsTr" / f"case_{i:03d}.nii.gz", spacing)
        training.append(
            {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        )
    meta = {
        "name": root.name,
        "modality": {"0": "MRI"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": n_cases,
        "training": training,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=1))
    return root


@pytest.fixture
def one_torch_thread(monkeypatch: pytest.MonkeyPatch):
    """In-process predictions use one thread, as the children do: the same arithmetic, and
    no slowdown from two threads fighting over a loaded 2-core machine."""
    import torch

    import autoseg.device

    threads = torch.get_num_threads()
    # the predictor sets cpu_count() threads while it predicts (autoseg.device)
    monkeypatch.setattr(autoseg.device, "cpu_count", lambda: 1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def shrink_network(plans_path: Path) -> dict:
    """Edit plans.json (as a user may) to tiny networks (4, 8, 16, ... features per stage) so
    that a training step takes a fraction of a second; returns the edited plans as a dict."""
    raw = json.loads(plans_path.read_text())
    for config in raw["configurations"].values():
        config["features_per_stage"] = [4 * 2**i for i in range(len(config["strides"]))]
    plans_path.write_text(json.dumps(raw))
    return raw


def pairing_arrays(npz: Path) -> dict[str, np.ndarray]:
    """The arrays by which a ``CASE.npz`` names the label map ``CASE.nii.gz`` beside it (as
    ``predict --save-probabilities`` writes them): its voxels' digest and its affine."""
    from autoseg.data.io import read_array
    from autoseg.inference.probability_files import label_map_digest

    array, geometry = read_array(npz.with_name(npz.name[: -len(".npz")] + ".nii.gz"))
    return {
        "label_map_sha256": np.array(label_map_digest(array)),
        "affine": np.asarray(geometry.affine, dtype=np.float64),
    }


def save_npz_beside(npz: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` of ``arrays`` plus the arrays that name the label map beside it."""
    np.savez(npz, **arrays, **pairing_arrays(npz))
