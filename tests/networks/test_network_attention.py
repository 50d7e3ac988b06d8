"""The Attention U-Net: shapes in 2D and 3D, the additive gate, its planners."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoseg.networks.attention import AttentionGate
from autoseg.networks.unet import _ops, build_network, count_parameters
from autoseg.planners import Budget, get_planner
from tests.networks.test_network import CONFIG_2D, CONFIG_3D, expected_shapes
from tests.planning.test_planners import make_fingerprint


@pytest.mark.parametrize("config", [CONFIG_2D, CONFIG_3D], ids=["2d", "3d"])
def test_attention_unet_outputs_like_the_unet(config) -> None:
    config = dataclasses.replace(config, network="attention")
    net = build_network(config, 2, 3)
    x = torch.randn(2, 2, *config.patch_size)
    assert [tuple(o.shape) for o in net(x)] == expected_shapes(config, 2, 3)
    net.deep_supervision = False
    assert tuple(net(x).shape) == (2, 3, *config.patch_size)
    assert len(net.decoder.gates) == config.num_stages - 1


def test_gates_cost_a_few_percent_of_the_weights() -> None:
    plain = count_parameters(build_network(CONFIG_3D, 1, 3))
    gated = count_parameters(
        build_network(dataclasses.replace(CONFIG_3D, network="attention"), 1, 3)
    )
    assert plain < gated < 1.1 * plain


def test_gate_scales_the_skip_by_its_coefficients() -> None:
    gate = AttentionGate(_ops(2), 4)
    x, g = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    alpha = gate.coefficients(x, g)
    assert alpha.shape == (1, 1, 6, 6) and alpha.min() > 0 and alpha.max() < 1
    assert alpha.std() > 0  # depends on the voxel, not a constant
    torch.testing.assert_close(gate(x, g), x * alpha)
    with torch.no_grad():
        gate.psi.weight.zero_()
        gate.psi.bias.fill_(-50.0)
    assert gate(x, g).abs().max() < 1e-12  # a closed gate drops the skip


def test_gate_depends_on_the_gating_signal() -> None:
    gate = AttentionGate(_ops(3), 4)
    x = torch.randn(1, 4, 3, 4, 4)
    a = gate.coefficients(x, torch.zeros_like(x))
    b = gate.coefficients(x, torch.randn_like(x))
    assert not torch.allclose(a, b)


def test_attention_planner_plans_the_default_topology_with_gates() -> None:
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 3, [(1, 96, 112)] * 3)
    plain = get_planner("default")(fingerprint, Budget())
    gated = get_planner("attention")(fingerprint, Budget())
    assert set(gated.configurations) == {"2d"}  # a 2D dataset
    config = gated.configuration("2d")
    assert config.network == "attention"
    assert dataclasses.replace(config, network="unet") == plain.configuration("2d")
    net = build_network(config, 1, 2)
    net.deep_supervision = False
    with torch.no_grad():
        out = net(torch.randn(1, 1, *config.patch_size))
    assert tuple(out.shape) == (1, 2, *config.patch_size)


def test_microscopy_planner_turns_elastic_deformation_on() -> None:
    fingerprint = make_fingerprint([(1.0, 1.0, 1.0)] * 3, [(1, 96, 112)] * 3)
    assert get_planner("default")(fingerprint, Budget()).configuration("2d").augmentations == ()
    config = get_planner("microscopy")(fingerprint, Budget()).configuration("2d")
    assert config.augmentations == ("elastic",) and config.network == "unet"
