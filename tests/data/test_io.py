"""Image I/O: NIfTI and PNG round trips, spacing from the affine, errors that name the file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from delineo.data.io import Image, as_binary_mask, grid_affine, read_image, write_image, write_mask
from delineo.errors import DelineoError, InputError


def test_nifti_round_trip_keeps_array_and_affine(tmp_path):
    aff = np.diag([2.0, 2.0, 3.0, 1.0])
    aff[:3, 3] = [-10, 5, 7]
    arr = (np.arange(4 * 5 * 6).reshape(4, 5, 6) - 60).astype(np.int16)
    path = write_image(tmp_path / "sub" / "ct.nii.gz", Image(arr, aff))
    img = read_image(path)
    assert img.shape == (4, 5, 6)
    assert img.array.dtype == np.int16
    np.testing.assert_array_equal(img.array, arr)
    np.testing.assert_allclose(img.affine, aff)
    assert img.spacing_mm == (2.0, 2.0, 3.0)


def test_spacing_from_rotated_and_flipped_affine():
    aff = np.zeros((4, 4))
    aff[0, 1], aff[1, 0], aff[2, 2], aff[3, 3] = -1.5, 2.5, 4.0, 1.0
    assert Image(np.zeros((3, 3, 3)), aff).spacing_mm == pytest.approx((2.5, 1.5, 4.0))


def test_single_volume_4d_nifti_is_squeezed(tmp_path):
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.int16), np.eye(4)), str(p))
    assert read_image(p).shape == (3, 4, 5)


def test_true_4d_nifti_rejected(tmp_path):
    p = tmp_path / "v.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 2), np.int16), np.eye(4)), str(p))
    with pytest.raises(InputError, match="2D or 3D") as exc:
        read_image(p)
    assert exc.value.path == p


def test_png_round_trip_and_pixel_spacing(tmp_path):
    arr = (np.arange(6 * 7).reshape(6, 7) * 5).astype(np.uint8)
    p = write_image(tmp_path / "x.png", Image(arr, grid_affine((1.0, 1.0))))
    img = read_image(p, pixel_spacing_mm=1.4)
    np.testing.assert_array_equal(img.array, arr)
    assert img.shape == (6, 7)
    assert img.spacing_mm == (1.4, 1.4)


def test_rgb_png_is_read_as_grey(tmp_path):
    p = tmp_path / "rgb.png"
    PILImage.fromarray(np.full((5, 5, 3), 100, np.uint8)).save(p)
    img = read_image(p)
    assert img.shape == (5, 5)
    assert int(img.array[0, 0]) == 100


def test_write_mask_values(tmp_path):
    like = Image(np.zeros((4, 4, 4), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    m = np.zeros((4, 4, 4), bool)
    m[1:3, 1:3, 1:3] = True
    nii = read_image(write_mask(tmp_path / "m.nii.gz", m, like))
    assert set(np.unique(nii.array).tolist()) == {0, 1}
    np.testing.assert_allclose(nii.affine, like.affine)
    like2 = Image(np.zeros((4, 4), np.uint8), grid_affine((1.0, 1.0)))
    png = read_image(write_mask(tmp_path / "m.png", m[1], like2))
    assert set(np.unique(png.array).tolist()) == {0, 255}
    with pytest.raises(ValueError, match="does not match"):
        write_mask(tmp_path / "bad.nii.gz", m[:3], like)


def test_missing_file(tmp_path):
    p = tmp_path / "nope.nii.gz"
    with pytest.raises(InputError, match="does not exist") as exc:
        read_image(p)
    assert exc.value.path == p
    assert str(p) in str(exc.value)


@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "x.png"])
def test_corrupt_file_names_the_file(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"this is not an image \x00\x01\x02" * 20)
    with pytest.raises(InputError, match="not a readable") as exc:
        read_image(p)
    assert exc.value.path == p
    assert str(p) in str(exc.value)
    assert isinstance(exc.value, DelineoError)


def test_truncated_nifti(tmp_path):
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 16), np.int16), np.eye(4)), str(p))
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(InputError) as exc:
        read_image(p)
    assert exc.value.path == p


def test_unsupported_suffix(tmp_path):
    p = tmp_path / "scan.dcm"
    p.write_bytes(b"x")
    with pytest.raises(InputError, match="unsupported"):
        read_image(p)
    with pytest.raises(InputError, match="unsupported"):
        write_image(tmp_path / "out.jpg", Image(np.zeros((2, 2)), np.eye(4)))


def test_as_binary_mask(tmp_path):
    for values in ([0, 1], [0, 255], [0], [1]):
        arr = np.array(values * 4, np.uint8).reshape(2, -1)
        out = as_binary_mask(Image(arr, np.eye(4)), "m")
        np.testing.assert_array_equal(out, arr > 0)
    with pytest.raises(InputError, match="not binary") as exc:
        as_binary_mask(Image(np.array([0, 1, 2], np.uint8), np.eye(4)), tmp_path / "m.nii.gz")
    assert "0, 1, 2" in str(exc.value)
    with pytest.raises(InputError, match="not binary"):
        as_binary_mask(Image(np.array([0, 7], np.uint8), np.eye(4)), "m")
