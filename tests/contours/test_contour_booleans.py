"""Booleans, rings and island removal on boxes with hand-counted voxels."""

from __future__ import annotations

import numpy as np
import pytest

from delineo.contours.booleans import intersection, remove_islands, ring, subtract, union
from delineo.contours.margins import expand
from delineo.metrics.segmentation import volume_cc

SHAPE = (12, 12, 6)
SPACING = (1.0, 1.0, 2.5)


def box(lo, hi, shape=SHAPE) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


A = box((0, 0, 0), (6, 6, 4))  # 6*6*4 = 144 voxels
B = box((4, 4, 2), (10, 10, 6))  # 6*6*4 = 144; overlap with A: 2*2*2 = 8


def test_union_intersection_subtraction_counts():
    assert union(A, B).sum() == 144 + 144 - 8
    assert intersection(A, B).sum() == 8
    assert subtract(A, B).sum() == 144 - 8
    assert subtract(B, A).sum() == 144 - 8
    C = box((0, 0, 0), (1, 12, 6))  # 72 voxels, 6*4 = 24 of them in A
    assert union(A, B, C).sum() == 280 + 72 - 24
    assert intersection(A, B, C).sum() == 0
    assert subtract(A, B, C).sum() == 144 - 8 - 24
    assert volume_cc(intersection(A, B), SPACING) == pytest.approx(8 * 2.5 / 1000)


def test_different_grids_are_an_error():
    with pytest.raises(ValueError, match="same grid"):
        union(A, np.zeros((12, 12, 5), bool))


def test_ring_is_expansion_minus_structure():
    ptv = box((4, 4, 2), (8, 8, 4))
    r = ring(ptv, SPACING, 3.0)
    big = expand(ptv, SPACING, 3.0)
    assert not (r & ptv).any()
    assert r.sum() == big.sum() - ptv.sum()
    assert volume_cc(r, SPACING) == pytest.approx(volume_cc(big, SPACING) - volume_cc(ptv, SPACING))
    # a ring starting 1 mm out excludes the first layer
    r2 = ring(ptv, SPACING, 3.0, 1.0)
    assert r2.sum() == big.sum() - expand(ptv, SPACING, 1.0).sum()
    with pytest.raises(ValueError, match="smaller than inner"):
        ring(ptv, SPACING, 1.0, 3.0)


def test_remove_islands_keeps_main_component():
    m = box((1, 1, 1), (6, 6, 4))  # 75 voxels = 0.1875 cc
    m[10, 10, 5] = True  # a 1-voxel island: 0.0025 cc
    out = remove_islands(m, SPACING, min_cc=0.01)
    assert out.sum() == 75 and not out[10, 10, 5]
    # the threshold is inclusive, and a huge threshold removes everything
    assert remove_islands(m, SPACING, min_cc=0.0025).sum() == 76
    assert not remove_islands(m, SPACING, min_cc=1.0).any()


def test_remove_islands_connectivity():
    m = np.zeros((5, 5, 5), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # corner neighbours: one component at 26-connectivity, two at 6
    voxel = volume_cc(np.ones(1, bool), (1.0, 1.0, 1.0))
    assert remove_islands(m, (1.0, 1.0, 1.0), 1.5 * voxel).sum() == 2
    assert remove_islands(m, (1.0, 1.0, 1.0), 1.5 * voxel, connectivity=6).sum() == 0
    with pytest.raises(ValueError, match="connectivity"):
        remove_islands(m, (1.0, 1.0, 1.0), 0.1, connectivity=8)
