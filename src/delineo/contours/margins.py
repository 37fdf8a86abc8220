"""Margin expansion and contraction of a structure in millimetres, exact in physical space.

A mask is a boolean array on a voxel grid (``(X, Y, Z)``, or ``(H, W)`` for 2D) with voxel size
``spacing_mm`` along each *array* axis. Distances are measured between voxel centres with an exact
Euclidean distance transform (:func:`scipy.ndimage.distance_transform_edt`) that takes the spacing
into account, so a 5 mm margin is 5 mm whatever the slice thickness (no repeated voxel dilation).

Margins are isotropic (``5``) or per array axis (``(5, 5, 3)``: an ellipsoidal structuring element
with those semi-axes in mm). A voxel at offset ``d`` (mm, per axis) from the structure lies within
the margin when ``sqrt(sum((d_i / m_i) ** 2)) <= 1``; this is computed as one EDT with
``sampling = spacing_mm / margin_mm`` and threshold 1.

* **Zero margin on an axis** (e.g. ``(5, 5, 0)``): no growth / shrinkage along that axis at all.
  Each slice across that axis is treated on its own (a voxel one slice away is never within margin).
* **Expansion**: voxels whose distance to the structure is ``<= margin``.
* **Contraction**: voxels of the structure whose distance to the outside is ``> margin``
  (contraction is the exact dual: ``contract(m) == ~expand(~m)``). Everything beyond the edge of the
  grid counts as *outside*, so a structure touching the edge shrinks from that edge too.
* Expansion is clipped at the edge of the grid.

Per-axis margins follow the array axes, not patient directions: for a NIfTI mask in the usual
orientation these are (left-right, posterior-anterior, inferior-superior).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
from scipy import ndimage

Margin = Union[float, Sequence[float]]

# sampling of a zero-margin axis in the scaled metric: any value > 1 puts a voxel one slice away
# outside the unit ellipsoid, i.e. no growth along that axis.
_ZERO_AXIS_SAMPLING = 4.0
# tolerance on the threshold 1 so that a voxel exactly at the margin (e.g. 5 mm at 1 mm spacing)
# is not lost to rounding of spacing / margin.
_EPS = 1e-9


def margin_per_axis(margin_mm: Margin, ndim: int) -> tuple[float, ...]:
    """A margin as one value per array axis (mm); a single number applies to every axis."""
    values = np.atleast_1d(np.asarray(margin_mm, dtype=np.float64)).ravel()
    if values.size == 1:
        values = np.repeat(values, ndim)
    if values.size != ndim:
        raise ValueError(f"margin {tuple(values.tolist())} mm: expected 1 or {ndim} values (one per array axis)")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"margin {tuple(values.tolist())} mm: values must be finite")
    return tuple(float(v) for v in values)


def _check(mask: np.ndarray, spacing_mm: Sequence[float], margin_mm: Margin) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = np.asarray(mask).astype(bool)
    spacing = np.asarray(spacing_mm, dtype=np.float64).ravel()
    if spacing.size != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing.tolist())} mm does not match a {mask.ndim}D mask {mask.shape}")
    if np.any(spacing <= 0):
        raise ValueError(f"spacing {tuple(spacing.tolist())} mm must be positive")
    m = np.asarray(margin_per_axis(margin_mm, mask.ndim))
    if np.any(m < 0):
        raise ValueError(f"margin {tuple(m.tolist())} mm must not be negative here (use margin() or contract())")
    return mask, spacing, m


def _scaled_sampling(spacing: np.ndarray, m: np.ndarray) -> np.ndarray:
    """EDT sampling in which the margin ellipsoid is the unit sphere."""
    out = np.full_like(spacing, _ZERO_AXIS_SAMPLING)
    pos = m > 0
    out[pos] = spacing[pos] / m[pos]
    return out


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive-exclusive bounding box ``(lo, hi)`` of the non-zero voxels of a non-empty mask."""
    idx = [np.flatnonzero(np.any(mask, axis=tuple(j for j in range(mask.ndim) if j != i))) for i in range(mask.ndim)]
    return np.array([a[0] for a in idx]), np.array([a[-1] + 1 for a in idx])


def expand(mask: np.ndarray, spacing_mm: Sequence[float], margin_mm: Margin) -> np.ndarray:
    """Grow a structure by a margin in mm.

    mask: boolean ``(X, Y, Z)`` (or any nD); spacing_mm: voxel size per array axis in mm;
    margin_mm: ``>= 0``, one number or one per axis (0 on an axis: no growth along it).
    Returns a boolean array of the same shape: every voxel within the margin of the structure.
    """
    mask, spacing, m = _check(mask, spacing_mm, margin_mm)
    if not mask.any() or not np.any(m > 0):
        return mask.copy()
    # crop to the bounding box padded by the margin: no voxel outside it can be within the margin
    pad = np.where(m > 0, np.ceil(m / spacing + _EPS), 0).astype(int)
    lo, hi = _bbox(mask)
    lo = np.maximum(lo - pad, 0)
    hi = np.minimum(hi + pad, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = mask[box]
    # distance (scaled: margin ellipsoid = unit sphere) from each voxel to the nearest structure voxel
    dist = ndimage.distance_transform_edt(~crop, sampling=_scaled_sampling(spacing, m))
    out = np.zeros_like(mask)
    out[box] = dist <= 1.0 + _EPS
    return out


def contract(mask: np.ndarray, spacing_mm: Sequence[float], margin_mm: Margin) -> np.ndarray:
    """Shrink a structure by a margin in mm (the exact dual of :func:`expand`).

    mask: boolean ``(X, Y, Z)`` (or any nD); spacing_mm: voxel size per array axis in mm;
    margin_mm: ``>= 0``, one number or one per axis (0 on an axis: no shrinkage along it).
    Returns the voxels of the structure farther than the margin from the outside (outside the grid
    counts as outside); empty when the margin exceeds the structure's half-thickness.
    """
    mask, spacing, m = _check(mask, spacing_mm, margin_mm)
    if not mask.any() or not np.any(m > 0):
        return mask.copy()
    # crop to the bounding box plus one voxel of outside on every side (padding beyond the grid):
    # the nearest outside voxel of any structure voxel lies within that box
    lo, hi = _bbox(mask)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    crop = np.pad(mask[box], 1, mode="constant", constant_values=False)
    dist = ndimage.distance_transform_edt(crop, sampling=_scaled_sampling(spacing, m))
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    out = np.zeros_like(mask)
    out[box] = dist[inner] > 1.0 + _EPS
    return out


def margin(mask: np.ndarray, spacing_mm: Sequence[float], margin_mm: Margin) -> np.ndarray:
    """Signed margin: positive values expand, negative values contract (mm, per axis or one value).

    Per-axis values must not mix signs (``(5, 5, -3)`` is ambiguous: do it in two steps).
    """
    m = np.asarray(margin_per_axis(margin_mm, np.ndim(mask)))
    if np.all(m >= 0):
        return expand(mask, spacing_mm, tuple(m))
    if np.all(m <= 0):
        return contract(mask, spacing_mm, tuple(-m))
    raise ValueError(f"margin {tuple(m.tolist())} mm mixes expansion and contraction: apply them one after the other")
