"""The one place that brings an image to a model's orientation and back.

A model is trained on arrays in one orientation, named by axis codes (nibabel's convention, RAS
world coordinates): ``"LPI"`` means array axis 0 runs towards the patient's Left, axis 1 towards
Posterior, axis 2 towards Inferior. ``model.json`` records it as ``preprocess.orientation``.
delineo's canonical orientation for new 3D models is :data:`CANONICAL` (``LPI``): the order of a
head-first-supine axial DICOM series as a CT scanner writes it (columns to the patient's left,
rows to posterior, slices head to feet), and the order of the OpenKBP arrays.

Only axis permutations and flips are applied (nibabel's ``io_orientation`` /
``apply_orientation``): no voxel is interpolated, so masks brought back land exactly on the
input's own voxels. Images whose axes are oblique to the patient axes by more than
:data:`OBLIQUE_TOLERANCE_DEG` are refused (:func:`check_axis_aligned`): they would be contoured
as if aligned.

Patient sides in world coordinates: NIfTI/RAS +x is the patient's Right (so the patient's left
is -x), +y Anterior, +z Superior; DICOM/LPS flips x and y (+x Left, +y Posterior).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel.orientations import aff2axcodes, apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from delineo.data.io import Image
from delineo.errors import InputError

CANONICAL = "LPI"
#: largest angle (degrees) between an array axis and the nearest patient axis that is still treated
#: as aligned; a few tenths of a degree is table sag or rounding in a planning system's export
OBLIQUE_TOLERANCE_DEG = 2.0


def axis_codes(affine: np.ndarray) -> str:
    """Axis codes of a 3D affine, e.g. ``"LPI"`` for OpenKBP's ``diag(-3.9, -3.9, -2.5)``."""
    return "".join(aff2axcodes(np.asarray(affine, dtype=np.float64)))


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between an array axis and its nearest world axis."""
    rot = np.asarray(affine, dtype=np.float64)[:3, :3]
    cols = rot / np.linalg.norm(rot, axis=0, keepdims=True)
    cosines = np.clip(np.abs(cols).max(axis=0), -1.0, 1.0)
    return float(np.degrees(np.arccos(cosines.min())))


def check_axis_aligned(affine: np.ndarray, where: str | Path | None = None) -> None:
    """Refuse an image whose axes are oblique to the patient axes (InputError naming ``where``)."""
    angle = obliquity_deg(affine)
    if angle > OBLIQUE_TOLERANCE_DEG:
        raise InputError(
            where,
            f"the image is oblique: an array axis is {angle:.1f} degrees off the nearest patient axis "
            f"(delineo accepts up to {OBLIQUE_TOLERANCE_DEG:g}); resample it to an axis-aligned grid "
            "(e.g. 3D Slicer 'Resample Scalar Volume' or SimpleITK) and contour that",
        )


def normalise_codes(codes: str) -> str:
    """``"lpi"`` -> ``"LPI"``; ValueError unless three codes, one from each of L/R, A/P, S/I."""
    codes = str(codes).upper()
    axis = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    if len(codes) != 3 or any(c not in axis for c in codes) or sorted(axis[c] for c in codes) != [0, 1, 2]:
        raise ValueError(f"orientation {codes!r} is not three axis codes, one of L/R, A/P and S/I each (e.g. 'LPI')")
    return codes


@dataclass
class Reorientation:
    """The permutation and flips taking an array from its input order to a target orientation.

    ``forward``/``backward`` take arrays whose last three axes are spatial (``(*lead, X, Y, Z)``)
    """

    ornt: np.ndarray  # nibabel orientation: input axes -> target axes
    input_shape: tuple[int, int, int]
    source: str  # axis codes of the input
    target: str

    @property
    def identity(self) -> bool:
        return bool(np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]]))

    def forward(self, array: np.ndarray) -> np.ndarray:
        """Input order -> target order."""
        return self._apply(array, self.ornt)

    def backward(self, array: np.ndarray) -> np.ndarray:
        """Target order -> the input's own order (exactly inverse to :meth:`forward`)."""
        inverse = ornt_transform(axcodes2ornt(tuple(self.target)), axcodes2ornt(tuple(self.source)))
        return self._apply(array, inverse)

    def _apply(self, array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
        if self.identity:
            return array
        a = np.asarray(array)
        lead = a.ndim - 3
        moved = np.moveaxis(a, list(range(lead)), list(range(3, 3 + lead))) if lead else a
        out = apply_orientation(moved, ornt)
        out = np.moveaxis(out, list(range(3, 3 + lead)), list(range(lead))) if lead else out
        return np.ascontiguousarray(out)


def reorientation(affine: np.ndarray, shape: tuple[int, ...], target: str, where: str | Path | None = None) -> Reorientation:
    """The :class:`Reorientation` from an image with ``affine`` (spatial ``shape``) to ``target`` codes."""
    check_axis_aligned(affine, where)
    target = normalise_codes(target)
    src = io_orientation(np.asarray(affine, dtype=np.float64))
    ornt = ornt_transform(src, axcodes2ornt(tuple(target)))
    return Reorientation(ornt, tuple(int(s) for s in shape[-3:]), axis_codes(affine), target)


def to_orientation(image: Image, target: str, where: str | Path | None = None) -> tuple[Image, Reorientation]:
    """``image`` (3D) with its array in ``target`` order and the affine adjusted so that every
    voxel keeps its place in the patient; and the :class:`Reorientation` that undoes it."""
    if image.array.ndim != 3:
        raise InputError(where, f"orientation applies to 3D images, got shape {image.shape}")
    reo = reorientation(image.affine, image.shape, target, where)
    if reo.identity:
        return image, reo
    affine = image.affine @ inv_ornt_aff(reo.ornt, image.shape)
    return Image(reo.forward(image.array), affine), reo
