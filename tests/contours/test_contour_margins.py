"""Margins in mm are exact in physical space: spheres on an anisotropic grid grow and shrink to spheres."""

from __future__ import annotations

import math

import numpy as np
import pytest

from delineo.contours.margins import contract, expand, margin
from delineo.metrics.segmentation import dice, volume_cc

SPACING = (1.0, 1.0, 2.5)
SHAPE = (60, 60, 24)  # 60 x 60 x 60 mm


def sphere(radius_mm: float, shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """Voxels whose centre lies within ``radius_mm`` of the grid centre (mm)."""
    centre = [(n - 1) / 2 for n in shape]
    grid = np.indices(shape, dtype=float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= radius_mm**2


def ball_cc(r_mm: float) -> float:
    return 4 / 3 * math.pi * r_mm**3 / 1000


# Distances run between voxel centres, so a grown structure starts from its outermost voxel centres,
# on average a fraction of a voxel inside the continuous surface: about -3.5 % volume at R + m = 25 mm
# on this 1 x 1 x 2.5 mm grid (-6 % at 15 mm). Hence spheres of 20+ mm and a 5 % tolerance.
@pytest.mark.parametrize("r, m", [(20.0, 5.0), (18.0, 6.0)])
def test_expand_sphere_is_sphere_of_radius_r_plus_m(r, m):
    out = expand(sphere(r), SPACING, m)
    target = sphere(r + m)
    assert volume_cc(out, SPACING) == pytest.approx(ball_cc(r + m), rel=0.05)
    assert dice(out, target) > 0.97
    assert out[sphere(r)].all()


def test_contract_sphere_is_sphere_of_radius_r_minus_m():
    r, m = 22.0, 5.0
    out = contract(sphere(r), SPACING, m)
    assert volume_cc(out, SPACING) == pytest.approx(ball_cc(r - m), rel=0.05)
    assert dice(out, sphere(r - m)) > 0.97
    assert not out[~sphere(r)].any()


def test_margin_sign_and_duality():
    s = sphere(12.0)
    assert np.array_equal(margin(s, SPACING, 4.0), expand(s, SPACING, 4.0))
    assert np.array_equal(margin(s, SPACING, -4.0), contract(s, SPACING, 4.0))
    # contraction is the complement of expanding the complement (outside the grid counts as outside)
    padded = np.pad(s, 3)
    assert np.array_equal(contract(padded, SPACING, 3.0), ~expand(~padded, SPACING, 3.0) & padded)
    with pytest.raises(ValueError, match="mixes"):
        margin(s, SPACING, (5, 5, -3))


def test_exact_distance_at_voxel_multiples():
    """A single voxel grown by exactly 2 voxels' worth of mm reaches exactly 2 voxels along each axis."""
    m = np.zeros((15, 15, 9), bool)
    m[7, 7, 4] = True
    out = expand(m, (1.0, 1.0, 2.5), 5.0)
    assert out[:, 7, 4].sum() == 11  # 5 voxels each side at 1 mm
    assert out[7, 7, :].sum() == 5  # 2 voxels each side at 2.5 mm
    assert out[7 + 3, 7 + 4, 4] and not out[7 + 4, 7 + 4, 4]  # (3, 4) mm = 5 mm; (4, 4) mm = 5.66 mm


def test_per_axis_zero_margin_does_not_grow_along_z():
    s = sphere(10.0)
    out = expand(s, SPACING, (5, 5, 0))
    zs = np.flatnonzero(s.any(axis=(0, 1)))
    assert np.array_equal(np.flatnonzero(out.any(axis=(0, 1))), zs)
    # each slice grows like a 2D disc by 5 mm
    k = zs[len(zs) // 2]
    assert np.array_equal(out[..., k], expand(s[..., k], SPACING[:2], 5.0))
    assert out.sum() > s.sum()
    assert np.array_equal(contract(s, SPACING, (0, 0, 0)), s)


def test_per_axis_ellipsoid():
    """A point grown by (6, 6, 10) mm is the ellipsoid with those semi-axes."""
    m = np.zeros((21, 21, 11), bool)
    m[10, 10, 5] = True
    sp = (1.0, 1.0, 2.5)
    out = expand(m, sp, (6, 6, 10))
    g = np.indices(m.shape, dtype=float)
    d = [(g[0] - 10) * sp[0] / 6, (g[1] - 10) * sp[1] / 6, (g[2] - 5) * sp[2] / 10]
    assert np.array_equal(out, d[0] ** 2 + d[1] ** 2 + d[2] ** 2 <= 1 + 1e-9)


def test_contract_larger_than_structure_is_empty_and_edges_count_as_outside():
    assert not contract(sphere(6.0), SPACING, 7.0).any()
    full = np.ones((10, 10, 4), bool)
    out = contract(full, SPACING, 1.0)
    # one voxel off every side in x and y (1 mm <= 1 mm); none in z (2.5 mm > 1 mm)
    assert out.sum() == 8 * 8 * 4
    assert contract(full, SPACING, 2.5).sum() == 6 * 6 * 2
    assert not expand(np.zeros((5, 5, 5), bool), SPACING, 3.0).any()


def test_expansion_clipped_at_grid_edge_and_2d():
    m = np.zeros((6, 6), bool)
    m[0, 0] = True
    out = expand(m, (1.0, 1.0), 2.0)
    assert out.sum() == 6  # quarter disc of radius 2: (0..2,0), (0..1,1), (0,2)
