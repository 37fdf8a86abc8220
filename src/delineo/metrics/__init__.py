"""Overlap and surface metrics (mm-aware); evaluating a model on a dataset is :mod:`delineo.inference.evaluate`."""

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
