"""Networks: output shapes (2D, 3D, anisotropic), deep supervision, registry, gradients."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from autoseg.data.plans import Configuration, Normalization
from autoseg.errors import AutosegError
from autoseg.networks.unet import NETWORKS, build_network, count_parameters
from autoseg.training.losses.dice_ce import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    downsample_target,
)


def make_config(
    patch: tuple[int, ...],
    strides: list[tuple[int, ...]],
    kernels: list[tuple[int, ...]] | None = None,
    features: tuple[int, ...] | None = None,
    network: str = "unet",
    blocks: tuple[int, ...] = (),
) -> Configuration:
    n = len(strides)
    return Configuration(
        name=f"{len(patch)}d_test",
        spacing=(1.0, 1.0, 1.0),
        patch_size=patch,
        batch_size=2,
        strides=tuple(strides),
        kernel_sizes=tuple(kernels or [(3,) * len(patch)] * n),
        features_per_stage=features or tuple(4 * 2**s for s in range(n)),
        normalization=(Normalization("zscore"),),
        network=network,
        blocks_per_stage=blocks,
    )


CONFIG_2D = make_config((16, 24), [(1, 1), (2, 2), (2, 2)])
CONFIG_3D = make_config((8, 16, 16), [(1, 1, 1), (2, 2, 2), (2, 2, 2)])
CONFIG_ANISO = make_config(
    (8, 32, 32), [(1, 1, 1), (1, 2, 2), (2, 2, 2)], kernels=[(1, 3, 3), (3, 3, 3), (3, 3, 3)]
)
CONFIGS = {"2d": CONFIG_2D, "3d": CONFIG_3D, "aniso": CONFIG_ANISO}


def expected_shapes(config: Configuration, batch: int, classes: int) -> list[tuple[int, ...]]:
    shapes, size = [], list(config.patch_size)
    for stride in config.strides[:-1]:
        size = [p // s for p, s in zip(size, stride, strict=True)]
        shapes.append((batch, classes, *size))
    return shapes


@pytest.mark.parametrize("network", sorted(NETWORKS))
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_deep_supervision_shapes_match_downsampled_targets(network: str, name: str) -> None:
    config = dataclasses.replace(CONFIGS[name], network=network)
    net = build_network(config, in_channels=2, num_classes=3)
    x = torch.randn(2, 2, *config.patch_size)
    with torch.no_grad():
        outputs = net(x)
    assert isinstance(outputs, list)
    assert len(outputs) == config.num_stages - 1
    assert [tuple(o.shape) for o in outputs] == expected_shapes(config, 2, 3)
    target = torch.randint(0, 3, (2, 1, *config.patch_size))
    targets = downsample_target(target, len(outputs), config.strides)
    assert [o.shape[2:] for o in outputs] == [t.shape[2:] for t in targets]


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_without_deep_supervision_returns_full_resolution_tensor(network: str) -> None:
    config = dataclasses.replace(CONFIG_ANISO, network=network)
    net = build_network(config, 1, 2, deep_supervision=False).eval()
    x = torch.randn(1, 1, *config.patch_size)
    with torch.no_grad():
        single = net(x)
        assert isinstance(single, torch.Tensor)
        assert single.shape == (1, 2, *config.patch_size)
        net.deep_supervision = True  # settable after construction
        full = net(x)[0]
    torch.testing.assert_close(single, full)


def test_low_resolution_heads_not_computed_without_deep_supervision() -> None:
    net = build_network(CONFIG_3D, 1, 2, deep_supervision=False)
    called = []
    for head in net.decoder.heads:
        head.register_forward_hook(lambda m, i, o: called.append(o.shape))
    net(torch.randn(1, 1, *CONFIG_3D.patch_size))
    assert called == [torch.Size((1, 2, *CONFIG_3D.patch_size))]


def test_resenc_is_bigger_than_unet() -> None:
    unet = build_network(CONFIG_3D, 1, 3)
    resenc = build_network(dataclasses.replace(CONFIG_3D, network="resenc"), 1, 3)
    assert count_parameters(resenc) > count_parameters(unet)
    # blocks_per_stage drives the encoder depth
    deeper = dataclasses.replace(CONFIG_3D, network="resenc", blocks_per_stage=(2, 3, 4))
    assert count_parameters(build_network(deeper, 1, 3)) > count_parameters(resenc)


def test_unet_structure_and_init() -> None:
    net = build_network(CONFIG_ANISO, 1, 2)
    first_conv = net.encoder.stages[1][0][0]
    assert first_conv.stride == (1, 2, 2)
    assert net.encoder.stages[0][0][0].kernel_size == (1, 3, 3)
    assert net.encoder.stages[0][0][0].padding == (0, 1, 1)
    assert isinstance(net.encoder.stages[0][0][1], torch.nn.InstanceNorm3d)
    assert net.decoder.ups[0].stride == (2, 2, 2)  # bottom-up: last stage first
    assert net.decoder.ups[-1].kernel_size == (1, 2, 2)
    biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.Conv3d)]
    assert all(torch.all(b == 0) for b in biases)
    weight = net.decoder.stages[0][0][0].weight  # fan_in 2*8*27 = 432
    expected_std = (2 / (1 + 1e-4) / weight[0].numel()) ** 0.5
    assert abs(weight.std().item() - expected_std) < 0.1 * expected_std


@pytest.mark.parametrize("network", sorted(NETWORKS))
def test_backward_reaches_every_parameter(network: str) -> None:
    config = dataclasses.replace(CONFIG_2D, network=network)
    net = build_network(config, 1, 3)
    outputs = net(torch.randn(2, 1, *config.patch_size))
    sum(o.square().mean() for o in outputs).backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


def test_errors() -> None:
    with pytest.raises(AutosegError, match="unknown network 'nope'"):
        build_network(dataclasses.replace(CONFIG_3D, network="nope"), 1, 2)
    with pytest.raises(AutosegError, match="one entry per stage"):
        build_network(dataclasses.replace(CONFIG_3D, features_per_stage=(4, 8)), 1, 2)
    with pytest.raises(AutosegError, match="3 values"):
        build_network(dataclasses.replace(CONFIG_3D, kernel_sizes=((3, 3),) * 3), 1, 2)


def test_tiny_unet_learns_a_blob() -> None:
    torch.manual_seed(0)
    config = make_config((16, 16, 16), [(1, 1, 1), (2, 2, 2), (2, 2, 2)], features=(4, 8, 16))
    net = build_network(config, 1, 2)
    grid = torch.stack(torch.meshgrid(*[torch.arange(16.0)] * 3, indexing="ij"))
    blob = ((grid - 8).square().sum(0) < 16).long()  # (16, 16, 16)
    target = torch.stack([blob, blob.flip(0)]).unsqueeze(1)  # (2, 1, 16, 16, 16)
    image = target.float() + 0.3 * torch.randn(target.shape)
    weights = deep_supervision_weights(config.num_stages - 1)
    loss_fn = DeepSupervisionLoss(DiceCELoss(), weights)
    targets = downsample_target(target, len(weights), config.strides)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = loss_fn(net(image), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
