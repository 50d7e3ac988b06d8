"""Transfer learning: plan --plans-from and train --pretrained (issue 11 item 4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from autoseg.data.checkpoint import load_checkpoint
from autoseg.data.plans import Plans
from autoseg.networks.unet import build_network
from autoseg.planners import Budget, get_planner
from autoseg.planning.transfer import TOPOLOGY_FIELDS, load_pretrained, plans_from
from tests.inference.test_exchange import make_model
from tests.planning.test_planners import hippocampus, huge_ct
from tests.reliability_helpers import assert_clean_failure, cli, tiny_dataset


def test_plans_from_keeps_the_topology_and_the_new_data() -> None:
    source = get_planner("default")(huge_ct(), Budget(8.0))
    own = get_planner("default")(hippocampus(), Budget(8.0))
    moved = plans_from(source, own)
    assert (moved.dataset_name, moved.channels, moved.labels) == (
        own.dataset_name, own.channels, own.labels
    )  # fmt: skip
    for name, config in moved.configurations.items():
        for field in TOPOLOGY_FIELDS:
            assert getattr(config, field) == getattr(source.configurations[name], field), field
        assert config.normalization == own.configurations[name].normalization
        assert config.median_shape == own.configurations[name].median_shape
    assert (
        moved.configurations["3d_fullres"].patch_size != own.configurations["3d_fullres"].patch_size
    )  # the test would not show anything otherwise


@pytest.fixture(scope="module")
def source_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(home, source dataset root, its model folder with a fold 'all')."""
    tmp = tmp_path_factory.mktemp("transfer")
    root, model = make_model(tmp, "Task90_Source", n_cases=2)
    return tmp / "home", root, model


def _plan_target(tmp: Path, home: Path, *extra: object, name: str = "Task89_Target") -> Path:
    target = tiny_dataset(tmp / name, n_cases=3, num_labels=1, shape_ijk=(20, 26, 18))
    result = cli("plan", target, "--home", home, "--workers", 1, *extra)
    assert result.exit_code == 0, result.output
    return target


def test_pretrained_weights_fill_everything_but_the_heads(
    source_model: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    home, source, model = source_model
    target = _plan_target(tmp_path, home, "--plans-from", source.name, "--no-preprocess")
    plans = Plans.from_json(home / target.name / "plans.json")
    source_plans = Plans.from_json(model / "plans.json")
    config = plans.configuration("3d_fullres")
    assert config.patch_size == source_plans.configuration("3d_fullres").patch_size
    assert plans.labels == {0: "background", 1: "anterior"}
    torch.manual_seed(123)
    net = build_network(config, len(plans.channels), plans.num_classes)
    fresh = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_pretrained(net, model, "3d_fullres")
    theirs = load_checkpoint(model / "fold_all/checkpoint_final.pt").model_state
    heads = {k for k, why in report.reinitialised if why == "segmentation head"}
    assert heads and all(k.startswith("decoder.heads.") for k in heads)
    assert len(report.loaded) > 10
    state = net.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], theirs[key]), key
    for key in heads:
        assert torch.equal(state[key], fresh[key]), key


def test_pretrained_refuses_what_does_not_fit(
    source_model: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    home, _, model = source_model
    own = _plan_target(tmp_path, home, "--no-preprocess", name="Task79_Own")  # features 32, ...
    plans = Plans.from_json(home / own.name / "plans.json")
    net = build_network(plans.configuration("3d_fullres"), 1, plans.num_classes)
    with pytest.raises(Exception, match="no weight of the pretrained model fits"):
        load_pretrained(net, model, "3d_fullres")
    with pytest.raises(Exception, match="is a 3d_fullres model; training 2d"):
        load_pretrained(net, model, "2d")
    train = ("train", own.name, "3d_fullres", "all", "--home", home, "--device", "cpu")
    assert_clean_failure(cli(*train, "--pretrained", tmp_path / "nothing"), "nothing")


@pytest.mark.slow
def test_train_pretrained_from_the_cli_logs_what_was_reinitialised(
    source_model: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    home, source, model = source_model
    target = _plan_target(tmp_path, home, "--plans-from", source.name, name="Task78_Target")
    train = ("train", target.name, "3d_fullres", "all", "--epochs", 1, "--iterations", 1)
    train += ("--val-iterations", 1, "--device", "cpu", "--workers", 0, "--no-validate")
    result = cli(*train, "--home", home, "--pretrained", model)
    assert result.exit_code == 0, result.output
    fold = home / target.name / "models/default/3d_fullres/fold_all"
    text = (fold / "training.log").read_text()
    assert "pretrained weights from" in text and "re-initialised decoder.heads.0.weight" in text
    settings = load_checkpoint(fold / "checkpoint_final.pt").meta.settings
    assert settings["pretrained"] == str(model.resolve())
    assert json.loads((home / target.name / "plans.json").read_text())["dataset_name"] == (
        target.name
    )
