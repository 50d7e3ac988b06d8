"""Segmentation networks built from a planned configuration.

One code path serves 2D and 3D: the convolution, transposed convolution, normalisation and
pooling classes are picked from ``len(config.patch_size)``. Architectures are registered by
decorator and chosen by ``config.network``:

- ``"unet"``: the generic U-Net of nnU-Net: per stage conv-norm-act blocks (the first carries the
  stage's stride), a transposed-convolution decoder with skip concatenation and a 1x1
  segmentation head per decoder level (deep supervision).
- ``"resenc"``: the same decoder on a residual encoder (stem conv, then basic residual blocks).
- ``"attention"`` (``autoseg.networks.attention``): the U-Net with an attention gate per skip.

Every network exposes ``deep_supervision`` (bool, settable): True returns a list of logits
``[full, 1/2, 1/4, ...]`` (``num_stages - 1`` entries), False only the full-resolution logits
(the low-resolution heads are then not computed).

``forward`` has no data-dependent control flow and no host synchronisation, so the networks
work with ``torch.compile``, bf16 autocast and channels-last memory formats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from autoseg.data.plans import Configuration
from autoseg.errors import AutosegError
from autoseg.registry import Registry

__all__ = [
    "NETWORKS",
    "build_network",
    "count_parameters",
    "register_network",
]

NetworkBuilder = Callable[[Configuration, int, int], nn.Module]
# built-ins register below and in autoseg.networks.attention; plug-ins come from entry points
# of group "autoseg.networks"
NETWORKS: Registry[NetworkBuilder] = Registry(
    "network", "autoseg.networks", ("autoseg.networks.attention",)
)

# Residual blocks per stage of the residual encoder when the plans do not say (nnU-Net ResEnc).
DEFAULT_RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6)


def register_network(name: str) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Register ``builder(config, in_channels, num_classes) -> nn.Module`` under ``name``."""
    return NETWORKS.register(name)


def build_network(
    config: Configuration, in_channels: int, num_classes: int, deep_supervision: bool = True
) -> nn.Module:
    """Build the network named by ``config.network``, initialised.

    Args:
        config: the planned configuration (patch size, strides, kernels, features, blocks).
        in_channels: input channels (modalities).
        num_classes: output classes, background included.
        deep_supervision: initial value of the network's ``deep_supervision`` attribute.

    Returns:
        The network; its ``deep_supervision`` attribute chooses list vs single output.

    Raises:
        AutosegError: unknown architecture or an inconsistent configuration.
    """
    if config.network not in NETWORKS:  # loads the plug-ins first
        raise AutosegError(
            f"unknown network '{config.network}' in configuration '{config.name}'; "
            f"available: {', '.join(NETWORKS.names())}"
        )
    _check_config(config)
    net = NETWORKS.get(config.network)(config, in_channels, num_classes)
    net.deep_supervision = deep_supervision
    init_weights(net)
    return net


def count_parameters(net: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def init_weights(net: nn.Module) -> None:
    """Kaiming-normal (a=1e-2, LeakyReLU slope) convolution weights, zero biases."""
    conv_types = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for module in net.modules():
        if isinstance(module, conv_types):
            nn.init.kaiming_normal_(module.weight, a=1e-2)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _check_config(config: Configuration) -> None:
    """Raise AutosegError when the topology fields of a configuration disagree."""
    n, ndim = config.num_stages, config.ndim
    problems = []
    if ndim not in (2, 3):
        problems.append(f"patch_size {config.patch_size} must have 2 or 3 axes")
    if n < 2:
        problems.append(f"needs at least 2 stages, got {n}")
    if len(config.kernel_sizes) != n or len(config.features_per_stage) != n:
        problems.append(
            f"strides ({n}), kernel_sizes ({len(config.kernel_sizes)}) and features_per_stage "
            f"({len(config.features_per_stage)}) must have one entry per stage"
        )
    if config.blocks_per_stage and len(config.blocks_per_stage) != n:
        problems.append(f"blocks_per_stage has {len(config.blocks_per_stage)} entries, not {n}")
    per_axis = [*config.strides, *config.kernel_sizes]
    if any(len(entry) != ndim for entry in per_axis):
        problems.append(f"every stride and kernel must have {ndim} values (one per patch axis)")
    if config.strides and any(s != 1 for s in config.strides[0]):
        problems.append(f"the first stage's stride must be all ones, got {config.strides[0]}")
    if problems:
        raise AutosegError(f"configuration '{config.name}': " + "; ".join(problems))


# --------------------------------------------------------------------------- building blocks


@dataclass(frozen=True)
class _Ops:
    """The layer classes for one spatial dimensionality."""

    conv: type[nn.Module]
    transposed: type[nn.Module]
    norm: type[nn.Module]
    pool: type[nn.Module]


def _ops(ndim: int) -> _Ops:
    if ndim == 2:
        return _Ops(nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.AvgPool2d)
    return _Ops(nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.AvgPool3d)


def _norm(ops: _Ops, channels: int) -> nn.Module:
    return ops.norm(channels, eps=1e-5, affine=True)


def _conv(
    ops: _Ops, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int] | int = 1
) -> nn.Module:
    """Convolution with 'same' padding (k // 2), bias on."""
    padding = tuple(k // 2 for k in kernel)
    return ops.conv(c_in, c_out, tuple(kernel), stride=stride, padding=padding, bias=True)


class ConvNormAct(nn.Sequential):
    """Convolution, instance norm, LeakyReLU(0.01)."""

    def __init__(
        self, ops: _Ops, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int] = ()
    ) -> None:
        stride = tuple(stride) or 1
        super().__init__(
            _conv(ops, c_in, c_out, kernel, stride),
            _norm(ops, c_out),
            nn.LeakyReLU(0.01, inplace=True),
        )


class BasicResidualBlock(nn.Module):
    """conv-norm-act-conv-norm plus a shortcut, activation after the sum.

    The shortcut is the identity, or (average pooling when strided) + 1x1 conv + norm when the
    stride or the channel count changes.
    """

    def __init__(
        self, ops: _Ops, c_in: int, c_out: int, kernel: Sequence[int], stride: Sequence[int]
    ) -> None:
        super().__init__()
        stride = tuple(stride)
        self.conv1 = ConvNormAct(ops, c_in, c_out, kernel, stride)
        self.conv2 = nn.Sequential(_conv(ops, c_out, c_out, kernel), _norm(ops, c_out))
        strided = any(s != 1 for s in stride)
        shortcut: list[nn.Module] = []
        if strided:
            shortcut.append(ops.pool(stride, stride, ceil_mode=True, count_include_pad=False))
        if strided or c_in != c_out:
            shortcut += [ops.conv(c_in, c_out, 1, bias=True), _norm(ops, c_out)]
        self.shortcut = nn.Sequential(*shortcut)  # empty Sequential = identity
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, C_in, *S) -> (B, C_out, *S / stride)
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


# --------------------------------------------------------------------------- encoders


class PlainEncoder(nn.Module):
    """U-Net encoder: per stage ``blocks`` conv-norm-act blocks, the first one strided."""

    def __init__(self, ops: _Ops, config: Configuration, in_channels: int) -> None:
        super().__init__()
        blocks = config.blocks_per_stage or (2,) * config.num_stages
        stages = []
        c_in = in_channels
        for s, c_out in enumerate(config.features_per_stage):
            kernel = config.kernel_sizes[s]
            layers = [ConvNormAct(ops, c_in, c_out, kernel, config.strides[s])]
            layers += [ConvNormAct(ops, c_out, c_out, kernel) for _ in range(blocks[s] - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: (B, C_in, *S) -> per stage s: (B, F_s, *S / cumulative_stride_s)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class ResidualEncoder(nn.Module):
    """Stem conv-norm-act, then per stage ``blocks`` residual blocks, the first one strided."""

    def __init__(self, ops: _Ops, config: Configuration, in_channels: int) -> None:
        super().__init__()
        n = config.num_stages
        blocks = config.blocks_per_stage or (DEFAULT_RESENC_BLOCKS + (6,) * n)[:n]
        features = config.features_per_stage
        self.stem = ConvNormAct(ops, in_channels, features[0], config.kernel_sizes[0])
        stages = []
        c_in = features[0]
        for s, c_out in enumerate(features):
            kernel = config.kernel_sizes[s]
            layers = [BasicResidualBlock(ops, c_in, c_out, kernel, config.strides[s])]
            ones = (1,) * config.ndim
            layers += [
                BasicResidualBlock(ops, c_out, c_out, kernel, ones) for _ in range(blocks[s] - 1)
            ]
            stages.append(nn.Sequential(*layers))
            c_in = c_out
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # x: (B, C_in, *S) -> per stage s: (B, F_s, *S / cumulative_stride_s)
        x = self.stem(x)  # (B, F_0, *S)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


# --------------------------------------------------------------------------- decoder


class UNetDecoder(nn.Module):
    """Transposed-conv upsampling, skip concatenation, two conv blocks, a 1x1 head per level.

    Level ``i`` (``i = 0`` next to the bottleneck) upsamples from stage ``s = num_stages - 1 - i``
    to stage ``s - 1``.
    """

    def __init__(self, ops: _Ops, config: Configuration, num_classes: int) -> None:
        super().__init__()
        features = config.features_per_stage
        ups, stages, heads = [], [], []
        for s in range(config.num_stages - 1, 0, -1):
            stride = tuple(config.strides[s])
            kernel = config.kernel_sizes[s - 1]
            c = features[s - 1]
            ups.append(ops.transposed(features[s], c, stride, stride=stride, bias=True))
            stages.append(
                nn.Sequential(ConvNormAct(ops, 2 * c, c, kernel), ConvNormAct(ops, c, c, kernel))
            )
            heads.append(ops.conv(c, num_classes, 1, bias=True))
        self.ups = nn.ModuleList(ups)
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)

    def forward(self, skips: list[torch.Tensor], deep_supervision: bool) -> list[torch.Tensor]:
        """Decode the encoder's per-stage features.

        Args:
            skips: encoder outputs, highest resolution first.
            deep_supervision: compute every head, not only the full-resolution one.

        Returns:
            Logits, highest resolution first: ``num_stages - 1`` tensors, or one.
        """
        x = skips[-1]  # (B, F_last, *S_last)
        last = len(self.stages) - 1
        outputs = []
        for i, (up, stage, head) in enumerate(zip(self.ups, self.stages, self.heads, strict=True)):
            skip = skips[-(i + 2)]  # (B, F_s, *S_s)
            x = stage(torch.cat((up(x), skip), dim=1))  # (B, F_s, *S_s)
            if deep_supervision or i == last:
                outputs.append(head(x))  # (B, K, *S_s)
        return outputs[::-1]


class EncoderDecoder(nn.Module):
    """An encoder returning per-stage features and the shared U-Net decoder.

    Attributes:
        deep_supervision: True -> forward returns a list of logits ``[full, 1/2, ...]``;
            False -> forward returns the full-resolution logits ``(B, K, *patch)``.
    """

    def __init__(self, encoder: nn.Module, decoder: UNetDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.deep_supervision = True

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        # x: (B, C_in, *patch)
        outputs = self.decoder(self.encoder(x), self.deep_supervision)
        return outputs if self.deep_supervision else outputs[0]  # (B, K, *patch) first


@register_network("unet")
def _build_unet(config: Configuration, in_channels: int, num_classes: int) -> nn.Module:
    ops = _ops(config.ndim)
    return EncoderDecoder(
        PlainEncoder(ops, config, in_channels), UNetDecoder(ops, config, num_classes)
    )


@register_network("resenc")
def _build_resenc(config: Configuration, in_channels: int, num_classes: int) -> nn.Module:
    ops = _ops(config.ndim)
    return EncoderDecoder(
        ResidualEncoder(ops, config, in_channels), UNetDecoder(ops, config, num_classes)
    )


def forward_flops(
    config: Configuration, in_channels: int, num_classes: int, tile: Sequence[int] | None = None
) -> int:
    """Floating-point operations of one forward pass of one tile (multiply-adds count 2).

    Counted by ``torch.utils.flop_counter`` on a network built on the meta device: no weights
    are allocated and nothing is computed, so a full-size CT tile costs milliseconds.

    Args:
        config: the configuration whose network to count.
        in_channels: input channels (cascade inputs included).
        num_classes: output classes.
        tile: the input's spatial shape; default the configuration's patch.
    """
    from torch.utils.flop_counter import FlopCounterMode

    shape = tuple(int(s) for s in (tile or config.patch_size))
    with torch.device("meta"):
        net = build_network(config, in_channels, num_classes, deep_supervision=False).eval()
        x = torch.empty((1, in_channels, *shape))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x)
    return int(counter.get_total_flops())
