"""Orientation: axis codes from the affine, exact reorientation and back, oblique images refused."""

from __future__ import annotations

import numpy as np
import pytest

from delineo.data.io import Image
from delineo.data.orientation import axis_codes, check_axis_aligned, normalise_codes, obliquity_deg, to_orientation
from delineo.errors import InputError

LPI = np.array([[-3.9, 0, 0, 240.0], [0, -3.9, 0, 250.0], [0, 0, -2.5, 100.0], [0, 0, 0, 1]])


def world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return (affine[:3, :3] @ ijk.T).T + affine[:3, 3]


def variants(array: np.ndarray, affine: np.ndarray):
    """The same volume stored in other array orders, each affine adjusted so that every voxel keeps
    its world position (written out by hand here, not with the code under test)."""
    out = {"as given": (array, affine)}
    for axis in range(3):
        flipped = np.flip(array, axis)
        a = affine.copy()
        a[:3, axis] *= -1
        a[:3, 3] = affine[:3, 3] + affine[:3, axis] * (array.shape[axis] - 1)
        out[f"flip {axis}"] = (flipped, a)
    out["swap 0,1"] = (array.transpose(1, 0, 2), affine[:, [1, 0, 2, 3]])
    out["swap 0,2"] = (array.transpose(2, 1, 0), affine[:, [2, 1, 0, 3]])
    return out


def test_axis_codes_of_the_openkbp_affine():
    assert axis_codes(LPI) == "LPI"
    assert axis_codes(np.diag([1.0, 1, 1, 1])) == "RAS"


@pytest.mark.parametrize("bad", ["LP", "LPL", "XYZ", "LPIS"])
def test_bad_codes_are_refused(bad):
    with pytest.raises(ValueError, match="axis codes"):
        normalise_codes(bad)


def test_every_variant_comes_back_to_the_same_array_and_affine():
    rng = np.random.default_rng(0)
    array = rng.random((7, 9, 11)).astype(np.float32)
    for name, (arr, aff) in variants(array, LPI).items():
        image, reo = to_orientation(Image(arr, aff), "LPI")
        np.testing.assert_array_equal(image.array, array, err_msg=name)
        np.testing.assert_allclose(image.affine, LPI, err_msg=name)
        np.testing.assert_array_equal(reo.backward(image.array), arr, err_msg=name)
        # leading channel axes are carried along
        stacked = np.stack([arr, 2 * arr])
        np.testing.assert_array_equal(reo.forward(stacked)[1], 2 * array, err_msg=name)


def test_a_voxel_keeps_its_world_position():
    array = np.zeros((7, 9, 11), np.float32)
    array[1, 2, 3] = 1
    expected = world(LPI, np.array([[1, 2, 3]]))
    for name, (arr, aff) in variants(array, LPI).items():
        image, _ = to_orientation(Image(arr, aff), "RAS")
        ijk = np.argwhere(image.array == 1)
        np.testing.assert_allclose(world(image.affine, ijk), expected, err_msg=name)


def test_oblique_images_are_refused_with_the_angle_and_the_file():
    angle = np.radians(10)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([2.0, 2.0, 3.0])
    assert obliquity_deg(affine) == pytest.approx(10, abs=1e-6)
    with pytest.raises(InputError, match=r"ct\.nii\.gz.*oblique.*10\.0 degrees"):
        check_axis_aligned(affine, "ct.nii.gz")
    with pytest.raises(InputError, match="oblique"):
        to_orientation(Image(np.zeros((4, 4, 4)), affine), "LPI", "ct.nii.gz")
    # a tenth of a degree (table sag, rounding) is accepted
    small = np.radians(0.1)
    affine[:3, :3] = np.array([[np.cos(small), -np.sin(small), 0], [np.sin(small), np.cos(small), 0], [0, 0, 1]])
    check_axis_aligned(affine)
