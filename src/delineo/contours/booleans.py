"""Boolean operations on structures, rings, and removal of small islands.

Masks are boolean arrays on one voxel grid (``(X, Y, Z)``, or ``(H, W)`` for 2D); arrays of
different shapes raise ``ValueError`` (checking the affines of files is the caller's job, see
:mod:`delineo.cli.contours`). Volumes are in cc (cm³) as :func:`delineo.metrics.segmentation.volume_cc`
computes them (cm² for 2D masks).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from delineo.contours.margins import Margin, margin, margin_per_axis
from delineo.metrics.segmentation import volume_cc


def _same_grid(masks: Sequence[np.ndarray]) -> list[np.ndarray]:
    if len(masks) == 0:
        raise ValueError("no structures given")
    arrays = [np.asarray(m).astype(bool) for m in masks]
    for i, a in enumerate(arrays[1:], start=1):
        if a.shape != arrays[0].shape:
            raise ValueError(f"structure {i} has shape {a.shape}, structure 0 has {arrays[0].shape}: not the same grid")
    return arrays


def union(*masks: np.ndarray) -> np.ndarray:
    """Voxels in any of the structures. masks: boolean arrays of one shape -> boolean array."""
    arrays = _same_grid(masks)
    out = arrays[0].copy()
    for a in arrays[1:]:
        out |= a
    return out


def intersection(*masks: np.ndarray) -> np.ndarray:
    """Voxels in every one of the structures. masks: boolean arrays of one shape -> boolean array."""
    arrays = _same_grid(masks)
    out = arrays[0].copy()
    for a in arrays[1:]:
        out &= a
    return out


def subtract(mask: np.ndarray, *others: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` in none of ``others`` (``A - B - C ...``). Boolean arrays of one shape."""
    arrays = _same_grid([mask, *others])
    out = arrays[0].copy()
    for a in arrays[1:]:
        out &= ~a
    return out


def ring(mask: np.ndarray, spacing_mm: Sequence[float], outer_mm: Margin, inner_mm: Margin = 0.0) -> np.ndarray:
    """A shell around a structure: ``margin(outer_mm) - margin(inner_mm)`` (mm, signed, per axis or one value).

    ``ring(ptv, spacing, 10)`` is PTV+10 mm minus the PTV; ``ring(ptv, spacing, 15, 5)`` starts 5 mm
    out; a negative ``inner_mm`` makes the ring reach inside the structure. Needs outer >= inner on
    every axis. mask: boolean ``(X, Y, Z)``; returns a boolean array of the same shape.
    """
    nd = np.ndim(mask)
    outer, inner = np.asarray(margin_per_axis(outer_mm, nd)), np.asarray(margin_per_axis(inner_mm, nd))
    if np.any(outer < inner):
        raise ValueError(f"ring: outer margin {tuple(outer.tolist())} mm is smaller than inner {tuple(inner.tolist())} mm")
    return subtract(margin(mask, spacing_mm, tuple(outer)), margin(mask, spacing_mm, tuple(inner)))


def _structure(ndim: int, connectivity: Optional[int]) -> np.ndarray:
    """Neighbourhood for :func:`scipy.ndimage.label` from a neighbour count (3D: 6/18/26, 2D: 4/8)."""
    full = {1: 2, 2: 8, 3: 26}.get(ndim)
    if connectivity is None:
        return ndimage.generate_binary_structure(ndim, ndim)
    ranks = {2: {4: 1, 8: 2}, 3: {6: 1, 18: 2, 26: 3}}.get(ndim, {full: ndim})
    if connectivity not in ranks:
        raise ValueError(f"connectivity {connectivity} for a {ndim}D mask: expected one of {sorted(ranks)}")
    return ndimage.generate_binary_structure(ndim, ranks[connectivity])


def remove_islands(
    mask: np.ndarray, spacing_mm: Sequence[float], min_cc: float, connectivity: Optional[int] = None
) -> np.ndarray:
    """Remove connected components smaller than ``min_cc`` cc (cm² for 2D masks); keep the rest.

    mask: boolean ``(X, Y, Z)`` or ``(H, W)``; spacing_mm: voxel size per axis in mm.
    connectivity: neighbours that connect voxels, 26 (3D) / 8 (2D) by default (faces, edges and
    corners); 6 or 18 in 3D, 4 in 2D for stricter connection. A component whose volume equals
    ``min_cc`` is kept. Returns a boolean array of the same shape.
    """
    mask = np.asarray(mask).astype(bool)
    if len(spacing_mm) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing_mm)} mm does not match a {mask.ndim}D mask {mask.shape}")
    labels, n = ndimage.label(mask, structure=_structure(mask.ndim, connectivity))
    if n == 0:
        return mask.copy()
    voxel_cc = volume_cc(np.ones(1, dtype=bool), spacing_mm)
    sizes_cc = np.bincount(labels.ravel(), minlength=n + 1) * voxel_cc
    keep = sizes_cc >= float(min_cc) - 1e-9
    keep[0] = False
    return keep[labels]
