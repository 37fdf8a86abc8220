"""Contour tools: colours and overview images (margins and booleans join here)."""

from delineo.contours.colors import structure_color
from delineo.contours.overview import write_overview

__all__ = ["structure_color", "write_overview"]
