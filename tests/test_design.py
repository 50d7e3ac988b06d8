"""The module map of docs/architecture.md against the code; the registry; the device helpers."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import autoseg.network as network_module
import autoseg.registry
from autoseg import device
from autoseg.errors import AutosegError
from autoseg.network import NETWORKS, build_network, register_network
from autoseg.planners import Budget, get_planner
from autoseg.planners.default import SETTINGS as PLAIN
from autoseg.planners.resenc import SETTINGS as RESENC
from autoseg.planners.rules import Topology, parameter_count
from autoseg.plans import Configuration, Normalization
from tests.test_planners import make_fingerprint

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------- import graph


def documented_layers() -> dict[str, int]:
    """``module -> layer`` from the "Module map" block of docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("## Module map", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    layers: dict[str, int] = {}
    for line in block.strip().splitlines():
        match = re.fullmatch(r"(\d+)\s+[\w ]+:\s*(.+)", line.strip())
        assert match, f"unreadable module-map line: {line!r}"
        for name in match.group(2).split(","):
            full = "autoseg" if name.strip() == "autoseg" else f"autoseg.{name.strip()}"
            assert full not in layers, f"{full} is listed twice"
            layers[full] = int(match.group(1))
    return layers


def module_files() -> dict[str, Path]:
    """Every module of the package as installed: autoseg/*.py and planners/*.py."""
    files = {"autoseg": ROOT / "autoseg" / "__init__.py"}
    for path in sorted((ROOT / "autoseg").glob("*.py")):
        if path.stem != "__init__":
            files[f"autoseg.{path.stem}"] = path
    for path in sorted((ROOT / "planners").glob("*.py")):
        name = "autoseg.planners" if path.stem == "__init__" else f"autoseg.planners.{path.stem}"
        files[name] = path
    return files


def autoseg_imports(path: Path, known: set[str]) -> set[str]:
    """The autoseg modules a file imports anywhere (top level, in functions, type checking)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found |= {n for n in names if n in known}
    return found


def layering_problems(layers: dict[str, int], graph: dict[str, set[str]]) -> list[str]:
    """Upward imports (to a later layer) and import cycles of ``graph``."""
    problems = [
        f"{mod} (layer {layers[mod]}) imports {dep} (layer {layers[dep]})"
        for mod, deps in sorted(graph.items())
        for dep in sorted(deps)
        if dep != mod and layers[dep] > layers[mod]
    ]
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph.get(mod, ())):
            if dep == mod or dep == "autoseg":  # the package itself holds only __version__
                continue
            if state.get(dep) == 1:
                problems.append("cycle: " + " -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    return problems


def test_every_module_has_a_documented_layer() -> None:
    layers, files = documented_layers(), module_files()
    assert sorted(set(files) - set(layers)) == [], "modules missing from the module map"
    assert sorted(set(layers) - set(files)) == [], "the module map names modules that are gone"


# the package's lazy facade: ``autoseg.load_model`` imports the API on first use (only there)
FACADE = {"autoseg": {"autoseg.api"}}


def test_no_module_imports_a_later_layer_or_forms_a_cycle() -> None:
    layers, files = documented_layers(), module_files()
    graph = {mod: autoseg_imports(path, set(files)) for mod, path in files.items()}
    assert graph["autoseg"] - {"autoseg"} == FACADE["autoseg"]  # the facade holds nothing else
    graph = {mod: deps - FACADE.get(mod, set()) for mod, deps in graph.items()}
    assert sum(len(d) for d in graph.values()) > 50  # the scan sees the real imports
    assert layering_problems(layers, graph) == []


def test_layering_check_catches_upward_imports_and_cycles() -> None:
    layers = {"autoseg.io": 1, "autoseg.train": 8, "autoseg.a": 2, "autoseg.b": 2}
    upward = {"autoseg.io": {"autoseg.train"}, "autoseg.train": {"autoseg.io"}}
    assert any("imports autoseg.train" in p for p in layering_problems(layers, upward))
    cycle = {"autoseg.a": {"autoseg.b"}, "autoseg.b": {"autoseg.a"}}
    assert any(p.startswith("cycle:") for p in layering_problems(layers, cycle))
    assert layering_problems(layers, {"autoseg.train": {"autoseg.io"}}) == []


def test_torch_free_modules_stay_torch_free() -> None:
    files = module_files()
    for mod in ("autoseg.cli", "autoseg.device", "autoseg.planners", "autoseg.planners.rules"):
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
