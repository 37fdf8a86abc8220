"""Overlap and surface metrics (mm-aware), and model evaluation on a dataset."""

from delineo.metrics.segmentation import (
    average_surface_distance,
    dice,
    dice_per_structure,
    hd95,
    structure_metrics,
    surface_dice,
    volume_cc,
)

__all__ = [
    "average_surface_distance",
    "dice",
    "dice_per_structure",
    "hd95",
    "structure_metrics",
    "surface_dice",
    "volume_cc",
]
