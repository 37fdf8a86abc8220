"""Segmentation losses that ignore unknown structures.

``per_sample_loss`` returns one value per sample ``(B,)``: the loss of each structure
``(B, C)`` (MONAI ``DiceLoss`` with ``reduction="none"``, optionally + BCE), averaged over the
structures that are *present* (contoured) for that sample. Unknown structures contribute
nothing, so a case without a PTV63 contour does not teach the network that PTV63 is empty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from delineo.errors import ConfigError
from delineo.training.robust_losses import generalized_cross_entropy, noise_robust_dice

LOSSES = ("dice", "dice_bce", "bce", "nr_dice", "gce", "dice_gce")


class SegmentationLoss(torch.nn.Module):
    """kind: ``dice`` (soft Dice on sigmoid outputs), ``dice_bce`` (Dice + binary cross-entropy) or
    ``bce`` (binary cross-entropy alone: the ablation's starting point);
    noise-robust (:mod:`delineo.training.robust_losses`): ``nr_dice`` (noise-robust Dice, gamma 1.5),
    ``gce`` (generalised cross-entropy, q 0.7) or ``dice_gce`` (Dice + GCE).

    batch_dice: Dice of each structure over the whole batch (nnU-Net's batch Dice) instead of per
    sample: small structures that a patch misses no longer push the network towards predicting
    nothing. The batch then has one loss, returned for every sample (so only uniform weighting fits).
    """

    def __init__(self, kind: str = "dice_bce", batch_dice: bool = False):
        super().__init__()
        if kind not in LOSSES:
            raise ConfigError(f"unknown loss {kind!r} (expected one of {', '.join(LOSSES)})")
        if batch_dice and kind not in ("dice", "dice_bce"):
            raise ConfigError(f"batch_dice works with the dice and dice_bce losses, not {kind!r}")
        self.kind = kind
        self.batch_dice = batch_dice
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)
        self.dice_batch = DiceLoss(sigmoid=False, batch=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)

    def per_structure(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits, target: ``(B, C, *spatial)`` -> loss ``(B, C)``."""
        target = target.float()
        if self.kind in ("nr_dice", "gce"):
            return noise_robust_dice(torch.sigmoid(logits), target) if self.kind == "nr_dice" else generalized_cross_entropy(logits, target)
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(2)
        loss = self.dice(logits, target).reshape(logits.shape[:2])
        if self.kind == "dice_gce":
            loss = loss + generalized_cross_entropy(logits, target)
        if self.kind == "dice_bce":
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            loss = loss + bce.flatten(2).mean(2)
        return loss

    def batch_loss(self, logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Batch Dice (+ BCE) over present structures -> scalar. Unknown (sample, structure) pairs are
        zeroed in both prediction and target, so they add nothing to either sum."""
        mask = present.to(logits.dtype).reshape(*present.shape, *([1] * (logits.ndim - 2)))
        target = target.float()
        dice = self.dice_batch(torch.sigmoid(logits) * mask, target * mask).reshape(-1)  # (C,)
        known = present.any(0)
        loss = (dice * known).sum() / known.sum().clamp_min(1)
        if self.kind == "dice_bce":
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(2).mean(2)  # (B, C)
            loss = loss + (bce * present).sum() / present.sum().clamp_min(1)
        return loss

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Masked mean over present structures -> ``(B,)``; 0 for a sample with none present.
        With ``batch_dice`` every sample carries the batch's loss."""
        if self.batch_dice:
            return self.batch_loss(logits, target, present).expand(logits.shape[0])
        loss = self.per_structure(logits, target)
        present = present.to(loss.dtype)
        return (loss * present).sum(1) / present.sum(1).clamp_min(1.0)


def deep_supervision_loss(
    loss: SegmentationLoss, outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor, present: torch.Tensor
) -> torch.Tensor:
    """Per-sample loss ``(B,)`` over a network's outputs; for deep supervision a list of logits at
    decreasing resolution, weighted 1, 1/2, 1/4, ... (normalised) against nearest-downsampled targets."""
    if not isinstance(outputs, (list, tuple)):
        return loss.per_sample(outputs, target, present)
    weights = torch.tensor([0.5**k for k in range(len(outputs))], device=target.device)
    weights = weights / weights.sum()
    total = 0.0
    for w, out in zip(weights, outputs):
        t = target if out.shape[2:] == target.shape[2:] else F.interpolate(target.float(), size=out.shape[2:], mode="nearest")
        total = total + w * loss.per_sample(out, t, present)
    return total
