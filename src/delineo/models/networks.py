"""The U-Net family of the seed, 2D and 3D from one definition, built from MONAI's DynUNet blocks.

Baseline: 5 resolution levels, 16/32/64/96/128 channels, 3x3(x3) kernels, strided-conv
down-sampling, transposed-conv up-sampling, instance norm + leaky ReLU. Options of the
same family: residual blocks (Res-UNet), channel squeeze-and-excitation after every block,
deep supervision heads on the decoder. Output: one logit channel per structure
(multi-label, sigmoid), because radiotherapy structures overlap.

Why not ``monai.networks.nets.DynUNet`` directly: it has residual blocks and deep supervision
but no squeeze-and-excitation, and the seed's ablation needs all three switchable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetOutBlock, UnetResBlock, get_conv_layer
from monai.networks.blocks.squeeze_and_excitation import ChannelSELayer
from torch import nn


@dataclass
class NetworkSpec:
    """Architecture of a segmentation network, stored in ``model.json``."""

    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 1
    channels: list[int] = field(default_factory=lambda: [16, 32, 64, 96, 128])
    residual: bool = False
    squeeze_excitation: bool = False
    deep_supervision: bool = False
    norm: str = "instance"
    dropout: float = 0.0
    head_bias: float = 0.0  # initial bias of the output logits; e.g. -4 = prior probability 0.018

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkSpec":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown network settings: {', '.join(sorted(unknown))}")
        return cls(**known)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def divisor(self) -> int:
        """Spatial sizes must be multiples of this (2 ** number of down-samplings)."""
        return 2 ** (len(self.channels) - 1)


class _Stage(nn.Module):
    """Conv block (plain or residual), optionally followed by channel SE."""

    def __init__(self, spec: NetworkSpec, cin: int, cout: int, stride: int):
        super().__init__()
        block = UnetResBlock if spec.residual else UnetBasicBlock
        self.block = block(
            spec.spatial_dims, cin, cout, kernel_size=3, stride=stride, norm_name=spec.norm,
            dropout=spec.dropout or None,
        )
        self.se = ChannelSELayer(spec.spatial_dims, cout, r=4) if spec.squeeze_excitation else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.block(x))


class SegUNet(nn.Module):
    """U-Net / Res-UNet / SE-Res-UNet. Input ``(B, in_channels, *spatial)``; spatial sizes divisible
    by ``spec.divisor``. Output logits ``(B, out_channels, *spatial)``; in training mode with deep
    supervision, a list ``[full, 1/2, 1/4, ...]`` of logits at decreasing resolution."""

    def __init__(self, spec: NetworkSpec):
        super().__init__()
        if len(spec.channels) < 2:
            raise ValueError("a U-Net needs at least 2 resolution levels")
        self.spec = spec
        ch = spec.channels
        self.encoder = nn.ModuleList(
            [_Stage(spec, spec.in_channels if i == 0 else ch[i - 1], ch[i], 1 if i == 0 else 2) for i in range(len(ch))]
        )
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in reversed(range(len(ch) - 1)):
            self.upsample.append(
                get_conv_layer(spec.spatial_dims, ch[i + 1], ch[i], kernel_size=2, stride=2, conv_only=True, is_transposed=True)
            )
            self.decoder.append(_Stage(spec, 2 * ch[i], ch[i], 1))
        self.head = UnetOutBlock(spec.spatial_dims, ch[0], spec.out_channels)
        n_aux = min(3, len(ch) - 2) if spec.deep_supervision else 0
        # auxiliary heads on the decoder outputs at 1/2, 1/4, 1/8 resolution
        self.aux_heads = nn.ModuleList([UnetOutBlock(spec.spatial_dims, ch[k], spec.out_channels) for k in range(1, 1 + n_aux)])
        if spec.head_bias:
            # structures are a small part of a 3D volume: starting the sigmoid near the prior saves the
            # hundreds of steps that instance-normed layers need to move the output bias (RetinaNet's trick)
            for head in [self.head, *self.aux_heads]:
                nn.init.constant_(head.conv.conv.bias, spec.head_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        decoded: list[torch.Tensor] = []
        for up, stage in zip(self.upsample, self.decoder):
            x = stage(torch.cat([up(x), skips.pop()], dim=1))
            decoded.append(x)
        out = self.head(x)
        if self.training and len(self.aux_heads):
            # decoded[-1] is full resolution; decoded[-2] is 1/2, ...
            aux = [head(decoded[-2 - k]) for k, head in enumerate(self.aux_heads)]
            return [out, *aux]
        return out


def build_network(spec: NetworkSpec | dict[str, Any]) -> SegUNet:
    """Build a network from a spec or its dict form (``model.json["network"]``)."""
    if isinstance(spec, dict):
        spec = NetworkSpec.from_dict(spec)
    return SegUNet(spec)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
