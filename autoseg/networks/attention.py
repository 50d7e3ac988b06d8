"""Attention U-Net (Oktay et al. 2018): the U-Net with an additive attention gate on each skip.

Registered as network ``"attention"`` (planner ``attention``); 2D and 3D through the same
layer classes as ``autoseg.networks.unet``, with the same encoder, decoder, heads and deep
supervision, so the plans are the plain U-Net's.

The gate of decoder level ``s`` weighs the encoder's skip features ``x`` (``F_s`` channels) by
``alpha = sigmoid(psi(relu(W_x x + W_g g)))``, one coefficient per voxel, before they are
concatenated; the gating signal ``g`` is the decoder's upsampled coarser features at the same
resolution. ``W_x``, ``W_g`` are 1x1 convolutions to ``F_s // 2`` channels, ``psi`` a 1x1
convolution to one. The gates add about ``F_s**2`` weights per level (a few percent of the
network), which the planner's memory model leaves out.
"""

from __future__ import annotations

import torch
from torch import nn

from autoseg.data.plans import Configuration
from autoseg.networks.unet import (
    EncoderDecoder,
    PlainEncoder,
    UNetDecoder,
    _Ops,
    _ops,
    register_network,
)


class AttentionGate(nn.Module):
    """Additive attention gate: ``x * sigmoid(psi(relu(W_x x + W_g g)))``.

    Args:
        ops: the layer classes of the dimensionality.
        channels: channels of the skip ``x`` and of the gating signal ``g``.
    """

    def __init__(self, ops: _Ops, channels: int) -> None:
        super().__init__()
        inter = max(1, channels // 2)
        self.w_x = ops.conv(channels, inter, 1, bias=False)
        self.w_g = ops.conv(channels, inter, 1, bias=True)
        self.psi = ops.conv(inter, 1, 1, bias=True)
        self.act = nn.ReLU(inplace=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """``alpha`` ``(B, 1, *S)`` in (0, 1) for skip ``x`` and gate ``g``, both ``(B, F, *S)``."""
        return torch.sigmoid(self.psi(self.act(self.w_x(x) + self.w_g(g))))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)  # (B, F, *S)


class AttentionDecoder(UNetDecoder):
    """The U-Net decoder with an attention gate on each skip connection."""

    def __init__(self, ops: _Ops, config: Configuration, num_classes: int) -> None:
        super().__init__(ops, config, num_classes)
        features = config.features_per_stage
        self.gates = nn.ModuleList(
            AttentionGate(ops, features[s - 1]) for s in range(config.num_stages - 1, 0, -1)
        )

    def forward(self, skips: list[torch.Tensor], deep_supervision: bool) -> list[torch.Tensor]:
        """As ``UNetDecoder.forward``, each skip gated by the upsampled decoder features."""
        x = skips[-1]  # (B, F_last, *S_last)
        last = len(self.stages) - 1
        outputs = []
        levels = zip(self.ups, self.gates, self.stages, self.heads, strict=True)
        for i, (up, gate, stage, head) in enumerate(levels):
            g = up(x)  # (B, F_s, *S_s)
            skip = gate(skips[-(i + 2)], g)  # (B, F_s, *S_s)
            x = stage(torch.cat((g, skip), dim=1))
            if deep_supervision or i == last:
                outputs.append(head(x))  # (B, K, *S_s)
        return outputs[::-1]


@register_network("attention")
def _build_attention(config: Configuration, in_channels: int, num_classes: int) -> nn.Module:
    ops = _ops(config.ndim)
    return EncoderDecoder(
        PlainEncoder(ops, config, in_channels), AttentionDecoder(ops, config, num_classes)
    )
