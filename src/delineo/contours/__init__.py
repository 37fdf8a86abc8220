"""Contour tools: margins in mm, booleans, rings, island removal, colours and overview images."""

from delineo.contours.booleans import intersection, remove_islands, ring, subtract, union
from delineo.contours.colors import structure_color
from delineo.contours.margins import contract, expand, margin
from delineo.contours.overview import write_overview

__all__ = [
    "contract",
    "expand",
    "intersection",
    "margin",
    "remove_islands",
    "ring",
    "structure_color",
    "subtract",
    "union",
    "write_overview",
]
