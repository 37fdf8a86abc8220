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

LOSSES = ("dice", "dice_bce", "nr_dice", "gce", "dice_gce")


class SegmentationLoss(torch.nn.Module):
    """kind: ``dice`` (soft Dice on sigmoid outputs) or ``dice_bce`` (Dice + binary cross-entropy);
    noise-robust (:mod:`delineo.training.robust_losses`): ``nr_dice`` (noise-robust Dice, gamma 1.5),
    ``gce`` (generalised cross-entropy, q 0.7) or ``dice_gce`` (Dice + GCE)."""

    def __init__(self, kind: str = "dice_bce"):
        super().__init__()
        if kind not in LOSSES:
            raise ConfigError(f"unknown loss {kind!r} (expected one of {', '.join(LOSSES)})")
        self.kind = kind
        self.dice = DiceLoss(sigmoid=True, reduction="none", smooth_nr=1e-5, smooth_dr=1e-5)

    def per_structure(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits, target: ``(B, C, *spatial)`` -> loss ``(B, C)``."""
        target = target.float()
        if self.kind in ("nr_dice", "gce"):
            from delineo.training.robust_losses import generalized_cross_entropy, noise_robust_dice

            return noise_robust_dice(torch.sigmoid(logits), target) if self.kind == "nr_dice" else generalized_cross_entropy(logits, target)
        loss = self.dice(logits, target).reshape(logits.shape[:2])
        if self.kind == "dice_gce":
            from delineo.training.robust_losses import generalized_cross_entropy

            loss = loss + generalized_cross_entropy(logits, target)
        if self.kind == "dice_bce":
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            loss = loss + bce.flatten(2).mean(2)
        return loss

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """Masked mean over present structures -> ``(B,)``; 0 for a sample with none present."""
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
