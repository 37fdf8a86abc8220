"""Bounding boxes and centroids of masks: work on a structure at a cost proportional to the
structure, not to the image grid (a 512 x 512 x 300 planning CT holds 79 M voxels; an organ's
box a few hundred thousand).

Boxes are tuples of ``slice`` (start inclusive, stop exclusive), one per array axis, in the
array's own voxel order.
"""

from __future__ import annotations

import numpy as np


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every true voxel of a bool array (any dimensionality); None when
    it has none. Reads the array once per axis (``any`` over the others)."""
    mask = np.asarray(mask)
    out = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(d for d in range(mask.ndim) if d != axis)))
        if hit.size == 0:
            return None
        out.append(slice(int(hit[0]), int(hit[-1]) + 1))
        mask = mask[(slice(None),) * axis + (out[-1],)]  # the next axes search inside what is found
    return tuple(out)


def centroid_voxel(mask: np.ndarray) -> np.ndarray | None:
    """The mean voxel index ``(ndim,)`` of a bool array's true voxels (float, voxel units), None when
    empty: the same as ``np.argwhere(mask).mean(0)`` from per-axis counts inside the bounding box,
    without the ``(N, ndim)`` index array (360 MB for a body on a 512 x 512 x 160 CT)."""
    box = bounding_box(mask)
    if box is None:
        return None
    inner = np.asarray(mask)[box]
    total = np.count_nonzero(inner)
    out = np.empty(inner.ndim)
    for axis in range(inner.ndim):
        counts = np.count_nonzero(inner, axis=tuple(d for d in range(inner.ndim) if d != axis))
        out[axis] = box[axis].start + float(np.dot(np.arange(inner.shape[axis], dtype=np.float64), counts)) / total
    return out

