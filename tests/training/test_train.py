"""Training: splits, learning-rate schedule, a tiny CPU training, resume, DDP with gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.paths import resolve_dataset
from autoseg.data.plans import Plans
from autoseg.data.splits import load_or_create_splits, make_splits, parse_fold
from autoseg.device import autocast
from autoseg.errors import AutosegError
from autoseg.planning.runner import plan_dataset
from autoseg.training.augment.pipeline_device import resolve_augmentation
from autoseg.training.fold_setup import TrainSettings, poly_lr
from autoseg.training.train import train_fold
from tests.synthetic import write_dataset


@pytest.fixture(scope="module")
def planned(tmp_path_factory) -> tuple[Path, str]:
    """A planned and preprocessed 6-case synthetic dataset: (home, dataset name)."""
    root = tmp_path_factory.mktemp("data")
    dataset = write_dataset(root / "Task98_Tiny", n_cases=6, shape_ijk=(20, 24, 16))
    home = root / "home"
    plan_dataset(str(dataset), home=home, planner="default", gpu_memory_gb=8.0, workers=1)
    return home, "Task98_Tiny"


def _fast(**kw) -> TrainSettings:
    base = dict(epochs=3, iterations=3, val_iterations=1, device="cpu", seed=1, validate=False)
    base.update(kw)
    return TrainSettings(**base)


def _load(home: Path, name: str) -> tuple:
    dirs = resolve_dataset(name, home)
    return dirs, Plans.from_json(dirs.plans())


def test_poly_lr_decays_to_zero() -> None:
    assert poly_lr(1e-2, 0, 100) == pytest.approx(1e-2)
    assert poly_lr(1e-2, 50, 100) == pytest.approx(1e-2 * 0.5**0.9)
    assert poly_lr(1e-2, 99, 100) < 1e-3


def test_splits_are_deterministic_and_partition_the_cases() -> None:
    ids = [f"case_{i:03d}" for i in range(23)]
    a, b = make_splits(ids), make_splits(list(reversed(ids)))
    assert a == b
    vals = [c for s in a for c in s.val]
    assert sorted(vals) == ids
    for s in a:
        assert not set(s.train) & set(s.val)
        assert len(s.train) + len(s.val) == 23


def test_splits_equal_sklearn_kfold() -> None:
    from sklearn import model_selection as sklearn  # a declared test dependency

    ids = [f"c{i:03d}" for i in range(37)]
    ours = make_splits(ids)
    for k, (_, val) in enumerate(sklearn.KFold(5, shuffle=True, random_state=12345).split(ids)):
        assert ours[k].val == tuple(ids[i] for i in val)


def test_user_edited_splits_are_respected(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    ids = [f"c{i}" for i in range(6)]
    path.write_text(json.dumps([{"train": ids[:5], "val": ids[5:]}]))
    splits = load_or_create_splits(path, ids)
    assert splits[0].val == ("c5",) and len(splits) == 1
    path.write_text(json.dumps([{"train": ["nope"], "val": []}]))
    with pytest.raises(AutosegError, match="nope"):
        load_or_create_splits(path, ids)


@pytest.mark.parametrize(
    ("text", "fold"), [("fold0", "0"), ("3", "3"), ("all", "all"), ("fold_2", "2")]
)
def test_parse_fold(text: str, fold: str) -> None:
    assert parse_fold(text) == fold


def test_parse_fold_rejects_nonsense() -> None:
    with pytest.raises(AutosegError, match="fold"):
        parse_fold("first")


def test_tiny_training_lowers_loss_writes_checkpoints_and_scores_validation(planned) -> None:
    home, name = planned
    dirs, plans = _load(home, name)
    folder = train_fold(
        dirs, plans, "3d_fullres", "0", _fast(epochs=4, iterations=4, validate=True)
    )
    ckpt = load_checkpoint(folder / "checkpoint_final.pt")
    assert ckpt.meta.epoch == 3 and ckpt.meta.fold == "0"
    assert ckpt.meta.augmentation == resolve_augmentation("auto", torch.device("cpu"))
    history = ckpt.meta.history
    assert len(history["train_loss"]) == 4
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert not (folder / "checkpoint_latest.pt").exists()  # replaced by the final one
    assert (folder / "checkpoint_best.pt").is_file()
    assert (folder / "progress.png").stat().st_size > 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["cases"], "validation cases were scored"
    assert (folder.parent / "plans.json").is_file()
    # the checkpoint holds plain tensors: loadable by torch itself with weights_only
    raw = torch.load(folder / "checkpoint_final.pt", weights_only=True)
    assert set(raw) >= {"model", "meta", "optimizer"}


def test_trained_fold_is_not_silently_retrained(planned) -> None:
    home, name = planned
    dirs, plans = _load(home, name)
    train_fold(dirs, plans, "2d", "1", _fast(epochs=1, iterations=1))
    with pytest.raises(AutosegError, match="--resume"):
        train_fold(dirs, plans, "2d", "1", _fast(epochs=1, iterations=1))


def test_resume_after_interruption_equals_uninterrupted_run(planned, monkeypatch) -> None:
    home, name = planned
    dirs, plans = _load(home, name)
    settings = _fast(epochs=3, iterations=2, checkpoint_every=1)
    import autoseg.training.train as train_module

    real_poly = train_module.poly_lr

    def crash_at_epoch_2(initial, epoch, epochs, exponent=0.9):
        if epoch == 2:
            raise KeyboardInterrupt("simulated kill")
        return real_poly(initial, epoch, epochs, exponent)

    monkeypatch.setattr(train_module, "poly_lr", crash_at_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_fold(dirs, plans, "3d_fullres", "3", settings)
    latest = dirs.model_folder("default", "3d_fullres") / "fold_3" / "checkpoint_latest.pt"
    assert load_checkpoint(latest).meta.epoch == 1
    monkeypatch.setattr(train_module, "poly_lr", real_poly)

    resumed = train_fold(
        dirs,
        plans,
        "3d_fullres",
        "3",
        _fast(epochs=3, iterations=2, checkpoint_every=1, resume=True),
    )
    final = load_checkpoint(resumed / "checkpoint_final.pt")
    assert final.meta.epoch == 2 and len(final.meta.history["train_loss"]) == 3
    import shutil

    shutil.rmtree(resumed)
    again = load_checkpoint(
        train_fold(dirs, plans, "3d_fullres", "3", settings) / "checkpoint_final.pt"
    )
    assert again.meta.epoch == final.meta.epoch
    for key, value in again.model_state.items():
        assert torch.equal(value, final.model_state[key]), key


@pytest.mark.skipif(sys.platform != "linux", reason="gloo test uses local TCP rendezvous")
def test_ddp_two_cpu_processes_with_gloo(planned, tmp_path: Path) -> None:
    home, name = planned
    env = dict(os.environ, OMP_NUM_THREADS="1", AUTOSEG_DDP_OUT=str(tmp_path))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(Path(__file__).parents[1] / "ddp_rank_weights.py"),
        "train",
        name,
        "3d_fullres",
        "4",
        "--home",
        str(home),
        "--epochs",
        "2",
        "--iterations",
        "2",
        "--val-iterations",
        "1",
        "--device",
        "cpu",
        "--no-validate",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    dirs, _ = _load(home, name)
    ckpt = load_checkpoint(
        dirs.model_folder("default", "3d_fullres") / "fold_4" / "checkpoint_final.pt"
    )
    assert ckpt.meta.epoch == 1
    # the ranks trained on different batches, yet end with the same weights (DDP's all-reduce),
    # equal to what rank 0 saved
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys() == ckpt.model_state.keys()
    for key, value in rank0.items():
        assert torch.equal(value, rank1[key]), key
        assert torch.equal(value, ckpt.model_state[key].cpu()), key


@pytest.mark.parametrize("cpu_bf16", [True, False])
def test_cpu_bf16_autocast_follows_the_setting_and_keeps_weights_fp32(planned, cpu_bf16) -> None:
    from autoseg.device import cpu_has_bf16
    from autoseg.training.step import TrainingStep

    home, name = planned
    _, plans = _load(home, name)
    config = plans.configuration("3d_fullres")
    steps = [
        TrainingStep(config, 1, len(plans.labels), torch.device("cpu"), seed=1, cpu_bf16=flag)
        for flag in (cpu_bf16, False)
    ]
    step, reference = steps
    assert step.bf16 == (cpu_bf16 and cpu_has_bf16())
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, *config.patch_size, generator=g)
    target = torch.randint(0, len(plans.labels), (2, 1, *config.patch_size), generator=g)
    with autocast(step.device, cpu_bf16=step.bf16):
        logits = step.model(image)[0]
    assert logits.dtype == (torch.bfloat16 if step.bf16 else torch.float32)
    losses = [s.train_step(image, target) for s in steps]
    # same initial weights (same seed): bf16 rounding moves the loss by far less than 1 %
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
    assert losses[0] == losses[1] or step.bf16  # fp32 is bit-for-bit the reference
    assert all(p.dtype == torch.float32 for p in step.network.parameters())
    for p, q in zip(step.network.parameters(), reference.network.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-3), "one step moved the weights differently"
