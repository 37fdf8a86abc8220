"""CT series reading: geometry, rescale, choice of series, and every refusal naming the file."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, RLELossless

from delineo.dicom.series import list_series, read_series
from delineo.dicom.write_ct import write_ct_series
from delineo.errors import InputError

from .conftest import AFFINE, phantom


def test_round_trip_geometry_and_values(ct_dir):
    s = read_series(ct_dir)
    image, masks = phantom()
    assert s.image.shape == image.shape
    np.testing.assert_allclose(s.image.affine, AFFINE, atol=1e-4)
    np.testing.assert_array_equal(s.image.array, image.array)
    # the bone block's centre in world (RAS) coordinates is where the NIfTI put it
    ijk = np.argwhere(masks["Mandible"]).mean(0)
    world = (AFFINE @ [*ijk, 1])[:3]
    lps = (s.lps_affine @ [*ijk, 1])[:3]
    np.testing.assert_allclose(lps, world * [-1, -1, 1], atol=1e-4)
    assert len(set(s.sop_instance_uids)) == SHAPE_K(s)
    assert s.datasets[0].PatientName == "Doe^Jane"


def SHAPE_K(s):
    return s.image.shape[2]


def test_slices_are_sorted_by_position_not_file_name(ct_dir):
    files = sorted(ct_dir.glob("*.dcm"))
    # rename so that name order is reversed
    for i, f in enumerate(files):
        f.rename(ct_dir / f"z{len(files) - i:03d}.dcm")
    s = read_series(ct_dir)
    np.testing.assert_allclose(s.image.affine, AFFINE, atol=1e-4)


def test_rescale_slope_and_intercept(ct_dir):
    f = sorted(ct_dir.glob("*.dcm"))[0]
    ds = pydicom.dcmread(f)
    raw = ds.pixel_array.astype(np.int32)
    ds.PixelData = (raw + 1024).astype(np.int16).tobytes()
    ds.RescaleIntercept = -1024
    ds.save_as(f)
    s = read_series(ct_dir)
    image, _ = phantom()
    np.testing.assert_array_equal(s.image.array, image.array)


def test_zip_input(ct_dir, tmp_path):
    z = tmp_path / "study.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for f in ct_dir.glob("*.dcm"):
            zf.write(f, f"DICOM/{f.name}")
    assert read_series(z).image.shape == phantom()[0].shape


def test_several_series_need_a_choice(ct_dir, tmp_path):
    image, _ = phantom()
    write_ct_series(image, ct_dir / "second", series_uid="1.2.3.4.5")
    with pytest.raises(InputError, match="2 image series found.*1.2.3.4.5"):
        read_series(ct_dir)
    assert read_series(ct_dir, "1.2.3.4.5").series_instance_uid == "1.2.3.4.5"
    assert set(list_series(ct_dir)) >= {"1.2.3.4.5"}
    with pytest.raises(InputError, match="no series 9.9"):
        read_series(ct_dir, "9.9")


def _edit(folder, index, **attrs):
    f = sorted(folder.glob("*.dcm"))[index]
    ds = pydicom.dcmread(f)
    for k, v in attrs.items():
        setattr(ds, k, v)
    ds.save_as(f)
    return f


def test_missing_slice_is_refused(ct_dir):
    sorted(ct_dir.glob("*.dcm"))[5].unlink()
    with pytest.raises(InputError, match="missing slice"):
        read_series(ct_dir)


def test_non_ct_is_refused(ct_dir):
    for i in range(len(list(ct_dir.glob("*.dcm")))):
        _edit(ct_dir, i, Modality="MR")
    with pytest.raises(InputError, match="is MR, not CT"):
        read_series(ct_dir)


def test_gantry_tilt_is_refused(ct_dir):
    f = _edit(ct_dir, 3, GantryDetectorTilt=12.0)
    with pytest.raises(InputError, match="gantry tilt") as e:
        read_series(ct_dir)
    assert f.name in str(e.value)


def test_mixed_orientation_size_and_spacing(ct_dir):
    f = _edit(ct_dir, 2, ImageOrientationPatient=[0, 1, 0, 1, 0, 0])
    with pytest.raises(InputError, match="orientation") as e:
        read_series(ct_dir)
    assert f.name in str(e.value)


def test_uneven_spacing_and_duplicates(ct_dir):
    files = sorted(ct_dir.glob("*.dcm"))
    ds = pydicom.dcmread(files[4])
    pos = list(ds.ImagePositionPatient)
    _edit(ct_dir, 4, ImagePositionPatient=[pos[0], pos[1], pos[2] + 1.0])
    with pytest.raises(InputError, match="uneven slice spacing|missing"):
        read_series(ct_dir)
    ds3 = pydicom.dcmread(files[3])
    _edit(ct_dir, 4, ImagePositionPatient=list(ds3.ImagePositionPatient))
    with pytest.raises(InputError, match="same position"):
        read_series(ct_dir)


def test_truncated_and_foreign_files(ct_dir):
    (ct_dir / "README.txt").write_text("not DICOM")
    assert read_series(ct_dir).image.shape[2] == 12  # non-DICOM files are ignored
    f = sorted(ct_dir.glob("*.dcm"))[6]
    f.write_bytes(f.read_bytes()[:700])
    with pytest.raises(InputError) as e:
        read_series(ct_dir)
    assert f.name in str(e.value)


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM files"):
        read_series(tmp_path / "empty")
    with pytest.raises(InputError, match="no such file"):
        read_series(tmp_path / "nope")


def test_compressed_transfer_syntaxes_decode(tmp_path):
    """JPEG 2000 (a CT slice from pydicom's bundled test data, decoded by pylibjpeg-openjpeg) and
    RLE Lossless (a series we compress) read through the series reader."""
    path = get_testdata_file("693_J2KI.dcm")
    assert path is not None, "pydicom's bundled test file 693_J2KI.dcm is missing"
    (tmp_path / "j2k").mkdir()
    shutil.copy(path, tmp_path / "j2k" / "slice.dcm")
    s = read_series(tmp_path / "j2k")
    assert "PixelData" not in s.datasets[0]  # released once the volume holds the values
    ds = pydicom.dcmread(path)  # decoded on its own, by pydicom
    assert s.datasets[0].file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID == JPEG2000
    assert s.image.shape == (ds.Columns, ds.Rows, 1)
    expected = ds.pixel_array.T.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(s.image.array[:, :, 0], expected)
    assert -1100 < float(np.median(s.image.array)) < 1000  # Hounsfield units, not raw values
    image, _ = phantom()
    write_ct_series(image, tmp_path / "rle", transfer_syntax=RLELossless)
    s = read_series(tmp_path / "rle")
    assert s.datasets[0].file_meta.TransferSyntaxUID == RLELossless
    np.testing.assert_array_equal(s.image.array, image.array)
