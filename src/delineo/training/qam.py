"""Quality-aware sample weighting: QAM + OCM (Pick-and-Learn).

Zhu, Shi, Shan, Tang, Peng, Zhang, Zhou: "Pick-and-Learn: Automatic Quality Evaluation for
Noisy-Labeled Image Segmentation", MICCAI 2019 (arXiv:1907.11835).

- **QAM** (quality awareness module): a small VGG-style CNN (conv-BN-ReLU blocks with pooling,
  global average pooling, a linear layer) reads the image concatenated with the *given*, possibly
  noisy, label masks (``1 + n_structures`` channels) and returns one raw score ``s_i`` per sample.
- **OCM** (overfitting control module): ``s'_i = lambda * tanh(s_i)``, so after the softmax no
  sample weighs more than ``exp(2 * lambda)`` times another and the QAM cannot put all the weight
  on the easiest samples. ``ocm_lambda: null`` disables it (raw scores).
- **Reweighting**: ``w = softmax(s')`` over the mini-batch; the loop minimises ``sum_i w_i L_i``.

The segmentation network and the QAM are trained jointly by that one loss, as in the paper:
the per-sample losses are *not* detached, so the QAM's gradient ``dL/ds_i`` is proportional to
``w_i (L_i - sum_j w_j L_j)`` and it learns to lower the weight of samples the segmentation
network finds hard to fit (typically those with wrong labels); the network gets each sample's
gradient scaled by ``w_i``. The inputs (image and label) are data and carry no gradient. Only the
segmentation network is used at inference; the QAM's scores can also rank a dataset's labels
(:meth:`QualityAwareWeighting.score`).

Config: ``training.weighting: {kind: qam, ocm_lambda: 2.0, channels: [16, 32, 64, 128]}``
(``qam_ocm`` is the same strategy). Needs ``batch_size >= 2``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from delineo.errors import ConfigError
from delineo.training.weighting import SampleWeighting, register_weighting


class QualityNet(nn.Module):
    """VGG-style scorer: ``(B, in_channels, *sp)`` -> raw scores ``(B,)``.

    One block per entry of ``channels``: ``convs_per_block`` x (3^d conv, batch norm, ReLU), then
    2x max pooling; then global average pooling and a linear layer. ``downsample`` > 1 average-pools
    the input first (cheaper on large images). The linear layer starts at zero, so training starts
    with uniform weights.
    """

    def __init__(
        self, in_channels: int, spatial_dims: int = 2, channels: Sequence[int] = (16, 32, 64, 128),
        convs_per_block: int = 1, downsample: int = 1,
    ):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ConfigError(f"qam: spatial_dims must be 2 or 3, got {spatial_dims}")
        if not channels or any(int(c) < 1 for c in channels) or int(convs_per_block) < 1 or int(downsample) < 1:
            raise ConfigError(f"qam: channels {list(channels)}, convs_per_block {convs_per_block} and downsample {downsample} must be positive")
        conv, bn, pool = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d) if spatial_dims == 2 else (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d)
        avg = nn.AvgPool2d if spatial_dims == 2 else nn.AvgPool3d
        layers: list[nn.Module] = [avg(int(downsample))] if int(downsample) > 1 else []
        c_in = in_channels
        for c in channels:
            for _ in range(int(convs_per_block)):
                layers += [conv(c_in, int(c), 3, padding=1, bias=False), bn(int(c)), nn.ReLU(inplace=True)]
                c_in = int(c)
            layers.append(pool(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).flatten(2).mean(2)  # (B, C_last)
        return self.head(f)[:, 0]


class QualityAwareWeighting(SampleWeighting):
    """QAM + OCM sample weighting (Pick-and-Learn, MICCAI 2019); see the module docstring.

    in_channels = 1 + n_structures (image + given label masks). ``ocm_lambda`` bounds the weight
    ratio within a batch by ``exp(2 * ocm_lambda)``; None disables the OCM.
    """

    min_batch_size = 2

    def __init__(
        self, in_channels: int, n_structures: int, spatial_dims: int, ocm_lambda: float | None = 2.0,
        channels: Sequence[int] = (16, 32, 64, 128), convs_per_block: int = 1, downsample: int = 1,
    ):
        super().__init__()
        if in_channels != 1 + n_structures:
            raise ConfigError(f"qam: in_channels must be 1 + n_structures = {1 + n_structures}, got {in_channels}")
        if ocm_lambda is not None and not (math.isfinite(float(ocm_lambda)) and float(ocm_lambda) > 0):
            raise ConfigError(f"qam: ocm_lambda must be a positive number or null, got {ocm_lambda!r}")
        self.ocm_lambda = None if ocm_lambda is None else float(ocm_lambda)
        self.net = QualityNet(in_channels, spatial_dims, channels, convs_per_block, downsample)

    def score(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Raw quality scores: image ``(B, 1, *sp)``, label ``(B, C, *sp)`` -> ``(B,)`` (higher = trusted)."""
        return self.net(torch.cat([image.float(), label.float()], dim=1))

    def bounded_score(self, image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """OCM-bounded scores ``s' = lambda * tanh(s)`` ``(B,)`` (raw scores when the OCM is off)."""
        s = self.score(image, label).float()
        return s if self.ocm_lambda is None else self.ocm_lambda * torch.tanh(s)

    def forward(self, image, label, present, loss):
        """image ``(B, 1, *sp)``, label ``(B, C, *sp)``, present ``(B, C)``, loss ``(B,)`` -> weights ``(B,)``."""
        return torch.softmax(self.bounded_score(image, label), dim=0).to(loss.dtype)


register_weighting("qam", QualityAwareWeighting)
register_weighting("qam_ocm", QualityAwareWeighting)
