"""Bounding boxes and centroids against NumPy's own index lists (``np.argwhere``)."""

import numpy as np
import pytest

from delineo.data.boxes import bounding_box, centroid_voxel


@pytest.mark.parametrize("shape", [(7,), (9, 5), (12, 10, 8), (4, 5, 6, 3)])
def test_bounding_box_and_centroid_match_argwhere(shape):
    rng = np.random.default_rng(len(shape))
    for density in (0.002, 0.05, 0.6):
        mask = rng.random(shape) < density
        idx = np.argwhere(mask)
        if idx.size == 0:
            assert bounding_box(mask) is None and centroid_voxel(mask) is None
            continue
        box = bounding_box(mask)
        assert box == tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
        assert mask[box].sum() == mask.sum()  # nothing outside it
        np.testing.assert_allclose(centroid_voxel(mask), idx.mean(0), rtol=0, atol=1e-9)


def test_empty_and_single_voxel():
    mask = np.zeros((6, 7, 8), bool)
    assert bounding_box(mask) is None and centroid_voxel(mask) is None
    mask[5, 0, 3] = True
    assert bounding_box(mask) == (slice(5, 6), slice(0, 1), slice(3, 4))
    np.testing.assert_array_equal(centroid_voxel(mask), [5, 0, 3])
