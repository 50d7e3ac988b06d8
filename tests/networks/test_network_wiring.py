"""Every kernel and stride of a planned configuration reaches the network it builds, encoder and
decoder, on anisotropic plans (1x3x3 kernels, in-plane-only pooling) as well as isotropic ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from autoseg.data.plans import Configuration, Normalization
from autoseg.networks.unet import build_network
from autoseg.planners import Budget, get_planner
from autoseg.planners.default import SETTINGS as PLAIN
from autoseg.planners.resenc import SETTINGS as RESENC
from autoseg.planners.rules import Topology, parameter_count
from tests.planning.test_planners import make_fingerprint

# thick slices: the first two stages convolve and pool in-plane only
ANISO = Configuration(
    name="3d_fullres",
    spacing=(3.0, 0.8, 0.8),
    patch_size=(8, 32, 32),
    batch_size=2,
    strides=((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)),
    kernel_sizes=((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3)),
    features_per_stage=(4, 8, 16, 32),
    normalization=(Normalization("zscore"),),
)
# 2D with a different kernel per stage, so a stage mix-up shows
ANISO_2D = Configuration(
    name="2d",
    spacing=(1.0, 1.0),
    patch_size=(32, 16),
    batch_size=2,
    strides=((1, 1), (2, 1), (2, 2)),
    kernel_sizes=((3, 1), (3, 3), (1, 3)),
    features_per_stage=(4, 8, 16),
    normalization=(Normalization("zscore"),),
)
CONVS = (nn.Conv2d, nn.Conv3d)
UPS = (nn.ConvTranspose2d, nn.ConvTranspose3d)


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, CONVS) and max(m.kernel_size) > 1]


@pytest.mark.parametrize("config", [ANISO, ANISO_2D], ids=["3d", "2d"])
@pytest.mark.parametrize("network", ["unet", "resenc"])
def test_encoder_stages_use_their_own_kernels_and_strides(config, network) -> None:
    config = Configuration(**{**config.__dict__, "network": network})
    net = build_network(config, 1, 3)
    for s, stage in enumerate(net.encoder.stages):
        convs = _convs(stage)
        assert convs, f"stage {s} has no convolution"
        assert {tuple(c.kernel_size) for c in convs} == {tuple(config.kernel_sizes[s])}, s
        strides = [tuple(c.stride) for c in convs]
        assert strides[0] == tuple(config.strides[s]), s  # the first block carries the stride
        assert all(st == (1,) * config.ndim for st in strides[1:]), s
    if network == "resenc":
        assert tuple(net.encoder.stem[0].kernel_size) == tuple(config.kernel_sizes[0])


@pytest.mark.parametrize("config", [ANISO, ANISO_2D], ids=["3d", "2d"])
@pytest.mark.parametrize("network", ["unet", "resenc", "attention"])
def test_decoder_levels_use_the_kernels_and_strides_of_their_stage(config, network) -> None:
    """Level i upsamples with the stride of stage n-1-i and convolves with the kernels of the
    stage it arrives at (n-2-i): the full-resolution level runs stage 0's kernels."""
    config = Configuration(**{**config.__dict__, "network": network})
    net = build_network(config, 1, 3)
    n = config.num_stages
    decoder = net.decoder
    assert len(decoder.ups) == len(decoder.stages) == n - 1
    for i, (up, stage) in enumerate(zip(decoder.ups, decoder.stages, strict=True)):
        s = n - 1 - i
        assert isinstance(up, UPS)
        assert tuple(up.stride) == tuple(up.kernel_size) == tuple(config.strides[s]), i
        kernels = {tuple(c.kernel_size) for c in _convs(stage)}
        assert kernels == {tuple(config.kernel_sizes[s - 1])}, i


@pytest.mark.parametrize("config", [ANISO, ANISO_2D], ids=["3d", "2d"])
@pytest.mark.parametrize("network", ["unet", "resenc", "attention"])
def test_outputs_have_the_shapes_of_the_cumulative_strides(config, network) -> None:
    config = Configuration(**{**config.__dict__, "network": network})
    net = build_network(config, 2, 3).eval()
    with torch.no_grad():
        outputs = net(torch.zeros(1, 2, *config.patch_size))
    shape = list(config.patch_size)
    expected = []
    for stride in config.strides[:-1]:
        shape = [a // b for a, b in zip(shape, stride, strict=True)]
        expected.append((1, 3, *shape))
    assert [tuple(o.shape) for o in outputs] == expected


@pytest.mark.parametrize("planner", ["default", "resenc"])
def test_parameter_count_describes_an_anisotropic_network(planner: str) -> None:
    """The planner's memory model on a thick-slice dataset (1x3x3 kernels planned) counts the
    weights of the network built from the plan: exactly for the plain U-Net."""
    settings = {"default": PLAIN, "resenc": RESENC}[planner]
    plans = get_planner(planner)(
        make_fingerprint([(3.0, 0.8, 0.8)] * 4, [(40, 160, 160)] * 4), Budget()
    )
    config = plans.configurations["3d_fullres"]
    assert any(k[0] == 1 for k in config.kernel_sizes), "the plan should be anisotropic"
    net = build_network(config, len(plans.channels), len(plans.labels))
    convs = (*CONVS, *UPS)
    real = sum(m.weight.numel() for m in net.modules() if isinstance(m, convs))
    topology = Topology(config.patch_size, config.strides, config.kernel_sizes)
    modelled = parameter_count(topology, settings, len(plans.channels), len(plans.labels))
    assert abs(real - modelled) <= (0 if planner == "default" else 0.01) * real
