"""What the import contract cannot see (planners/, top-level torch); the registry; devices."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import autoseg.networks.unet as network_module
import autoseg.registry
from autoseg import device
from autoseg.data.plans import Configuration, Normalization
from autoseg.errors import AutosegError
from autoseg.networks.unet import NETWORKS, build_network, register_network
from autoseg.planners import Budget, get_planner
from autoseg.planners.default import SETTINGS as PLAIN
from autoseg.planners.resenc import SETTINGS as RESENC
from autoseg.planners.rules import Topology, parameter_count
from tests.planning.test_planners import make_fingerprint

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- layering
# The layering itself is a contract in pyproject.toml ([tool.importlinter]), checked by
# `lint-imports` in .ci/run. import-linter sees the files under autoseg/ only: planners/ is
# installed as autoseg.planners by package-dir, so what the planners may import is checked here.

MODULE_FILES = {
    "autoseg.cli.commands": ROOT / "autoseg" / "cli" / "commands.py",
    "autoseg.device": ROOT / "autoseg" / "device.py",
    "autoseg.planners": ROOT / "planners" / "__init__.py",
    "autoseg.planners.rules": ROOT / "planners" / "rules.py",
}


def test_planners_import_nothing_above_planning() -> None:
    """Importing every planner loads no torch and no stage above planning (a fresh process)."""
    code = (
        "import sys, autoseg.planners as p; p.get_planner('default');"
        "import autoseg.planners.resenc, autoseg.planners.attention, autoseg.planners.microscopy;"
        "import autoseg.planners.overrides;"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith(("
        "'autoseg.training', 'autoseg.inference', 'autoseg.evaluation', 'autoseg.cli',"
        "'autoseg.networks', 'autoseg.api'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torch_free_modules_stay_torch_free() -> None:
    files = MODULE_FILES
    for mod in (
        "autoseg.cli.commands",
        "autoseg.device",
        "autoseg.planners",
        "autoseg.planners.rules",
    ):
        tree = ast.parse(files[mod].read_text(encoding="utf-8"))
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "torch"], mod


# ---------------------------------------------------------------------------- registry


def _config(network: str) -> Configuration:
    return Configuration(
        name="3d_fullres",
        spacing=(1.0, 1.0, 1.0),
        patch_size=(16, 16, 16),
        batch_size=2,
        strides=((1, 1, 1), (2, 2, 2)),
        kernel_sizes=((3, 3, 3), (3, 3, 3)),
        features_per_stage=(4, 8),
        normalization=(Normalization("zscore"),),
        network=network,
    )


def test_build_network_loads_network_plugins_from_entry_points(monkeypatch, caplog) -> None:
    """A plug-in planner may name a plug-in network: build_network must find it."""
    monkeypatch.setattr(NETWORKS, "_entries", dict(NETWORKS._entries))
    monkeypatch.setattr(NETWORKS, "_loaded", False)
    built = []

    def load_plugin() -> None:
        @register_network("plugnet")
        def build(config, in_channels, num_classes):
            built.append(config.name)
            return network_module._build_unet(config, in_channels, num_classes)

    def broken() -> None:
        raise ImportError("missing dependency")

    fake = [
        SimpleNamespace(name="plugnet", value="plug_mod", load=load_plugin),
        SimpleNamespace(name="broken", value="broken_mod", load=broken),
    ]
    monkeypatch.setattr(autoseg.registry, "entry_points", lambda group: fake)
    net = build_network(_config("plugnet"), 1, 3, deep_supervision=False)
    assert built == ["3d_fullres"] and net.deep_supervision is False
    assert "could not load network entry point broken" in caplog.text
    with pytest.raises(AutosegError, match="unknown network 'nope'.*plugnet"):
        build_network(_config("nope"), 1, 3)


def test_registry_refuses_a_second_function_under_a_taken_name() -> None:
    registry = autoseg.registry.Registry("thing", "autoseg.things.none")

    @registry.register("x")
    def first():
        return 1

    registry.register("x")(first)  # the same function again (a re-import) is fine
    with pytest.raises(ValueError, match="already registered"):
        registry.register("x")(lambda: 2)
    assert registry.get("x") is first and registry.names() == ["x"]
    with pytest.raises(AutosegError, match="unknown thing 'y'; available things: x"):
        registry.get("y")


# ---------------------------------------------------------------------------- devices, CPUs


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 3.0),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_is_read(tmp_path: Path, files: dict[str, str], expected) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert device._cgroup_cpu_limit(tmp_path) == expected


def test_cpu_count_respects_the_cgroup_quota_and_the_affinity(monkeypatch) -> None:
    monkeypatch.setattr(device, "_cgroup_cpu_limit", lambda: 1.5)
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert device.cpu_count() == 2  # ceil(1.5), not the 4 CPUs of the mask
    monkeypatch.setattr(device, "_cgroup_cpu_limit", lambda: None)
    assert device.cpu_count() == 4


@pytest.mark.parametrize("name", ["gpu", "tpu:0", "cuda:x"])
def test_unknown_devices_are_user_errors(name: str) -> None:
    with pytest.raises(AutosegError, match="--device"):
        device.resolve_device(name)


def test_auto_and_cpu_devices() -> None:
    assert device.resolve_device("cpu").type == "cpu"
    assert device.resolve_device("auto").type in ("cpu", "cuda")


# ---------------------------------------------------------------------------- planner vs network


@pytest.mark.parametrize("planner", ["default", "resenc"])
def test_the_planners_parameter_count_describes_the_network_it_plans(planner: str) -> None:
    """The memory model counts the weights of the network it plans; it must not drift from
    the real architecture (a second description of it): within 1% (resenc's shortcut
    projections are not modelled exactly), exact for the plain U-Net."""
    settings = {"default": PLAIN, "resenc": RESENC}[planner]
    plans = get_planner(planner)(
        make_fingerprint([(1.0, 1.0, 1.0)] * 4, [(64, 80, 72)] * 4), Budget()
    )
    convs = (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)
    for config in plans.configurations.values():
        net = build_network(config, len(plans.channels), len(plans.labels))
        real = sum(m.weight.numel() for m in net.modules() if isinstance(m, convs))
        topology = Topology(config.patch_size, config.strides, config.kernel_sizes)
        modelled = parameter_count(topology, settings, len(plans.channels), len(plans.labels))
        assert abs(real - modelled) <= (0 if planner == "default" else 0.01) * real, config.name
