"""Issue 36, 4: a volume that is not a plausible CT is refused before contouring, by every path.

The check itself (:mod:`delineo.inference.plausibility`) on hostile volumes and on the CTs that must
pass (the tests' synthetic ones, the real development CTs); then ``delineo contour`` and
:func:`delineo.api.contour` refusing them with one line naming the file and the problem. The web
service's job and the DICOM node are in tests/service/test_implausible_input.py and
tests/dicom/test_node_hostile.py.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from delineo import api
from delineo.cli import main
from delineo.data.io import Image, read_image
from delineo.errors import InputError
from delineo.inference.plausibility import check_ct
from delineo.models.networks import NetworkSpec, build_network
from delineo.models.registry import load_model, save_model

from conftest import write_case_dataset

AFFINE = np.diag([2.0, 2.0, 3.0, 1.0])


def head(shape=(32, 32, 16)) -> np.ndarray:
    """A small CT-like volume: air, an elliptic water body with a fat rim, a bone block."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    r = np.sqrt((x / 0.8) ** 2 + (y / 0.7) ** 2)
    a = np.full(shape, -1000.0, np.float32)
    a[r < 1.0] = -100.0
    a[r < 0.85] = 40.0
    a[shape[0] // 2 - 3: shape[0] // 2 + 3, shape[1] // 2 - 2: shape[1] // 2 + 2, :] = 900.0
    return a + np.random.default_rng(0).normal(0, 5, shape).astype(np.float32)


def hostile() -> dict[str, tuple[np.ndarray, str]]:
    """name -> (volume, words the refusal must contain)."""
    a = head()
    rng = np.random.default_rng(1)
    nan = a.copy()
    nan[rng.random(a.shape) < 0.1] = np.nan
    return {
        "mr-like": (np.where(a < -500, 0.0, a + 1024.0).astype(np.float32), "nothing dark"),  # labelled CT, nothing below 0
        "noise": (rng.uniform(-1000, 1000, a.shape).astype(np.float32), "no image structure"),
        "hu-x1000": (a * 1000.0, "far above the CT range"),
        "nan": (nan, "not numbers"),
        "one-slice": (a[:, :, :1].copy(), "too small for the model"),
        "two-slices": (a[:, :, :2].copy(), "too small for the model"),
        "uniform": (np.full(a.shape, 40.0, np.float32), "one value"),
    }


@pytest.fixture(scope="module")
def tiny_3d(tmp_path_factory):
    """An untrained [4, 8, 16] 3D U-Net (divisor 4) on the image's own grid."""
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=3, out_channels=1, channels=[4, 8, 16]))
    meta = {"name": "tiny-ct", "structures": ["Body"], "preprocess": {"intensity": {"kind": "window", "low": -200, "high": 400}},
            "inference": {"patch_size": None}}
    return save_model(tmp_path_factory.mktemp("plaus") / "tiny-ct", net, meta)


@pytest.mark.parametrize("name", list(hostile()))
def test_hostile_volumes_are_refused_with_what_was_wrong(name, tiny_3d):
    volume, words = hostile()[name]
    with pytest.raises(InputError, match=words) as exc:
        check_ct(Image(volume, AFFINE), load_model(tiny_3d), f"{name}.nii.gz")
    assert str(exc.value).startswith(f"{name}.nii.gz: not a plausible CT")


def test_the_synthetic_test_cts_pass(tmp_path, tiny_3d):
    from dicom.conftest import phantom
    from delineo.service.synthetic import synthetic_volume

    bundle = load_model(tiny_3d)
    check_ct(Image(head(), AFFINE), bundle)
    ds = write_case_dataset(tmp_path / "cases")
    for case in ds.cases:
        check_ct(read_image(ds.ct_path(case)), bundle, case)
    check_ct(phantom()[0], bundle)
    for size in (16, 24, 32):
        ct, _, affine = synthetic_volume(size)
        check_ct(Image(ct, affine), bundle)
        check_ct(Image(ct[:, :, ::2], affine), bundle)  # the web tests' 8-slice DICOM series


def test_extent_is_judged_on_the_model_grid():
    """hn-ct resamples to 4 x 4 x 2.5 mm and its network needs sizes divisible by 16: a 12-slice
    volume of 2.5 mm slices (30 mm) is 12 voxels there, too few; 40 mm (16 slices) is enough."""
    bundle = load_model("hn-ct")
    a = head((64, 64, 16))
    affine = np.diag([-1.0, -1.0, -2.5, 1.0])  # LPI, 1 mm in plane: 64 mm = 16 voxels on the model grid
    check_ct(Image(a, affine), bundle)
    with pytest.raises(InputError, match=r"axis 2 has 12 voxels \(12 on the model's grid\).*at least 16"):
        check_ct(Image(a[:, :, :12].copy(), affine), bundle)


def test_2d_images_and_2d_models_are_not_checked():
    noise = np.random.default_rng(0).uniform(0, 255, (32, 32)).astype(np.float32)
    assert check_ct(Image(noise, np.eye(4))) == {}


@pytest.mark.parametrize("name", ["mr-like", "noise", "hu-x1000", "nan", "two-slices"])
def test_delineo_contour_refuses_them_in_one_line_and_writes_nothing(name, tmp_path, tiny_3d, capsys):
    volume, words = hostile()[name]
    src = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(volume, AFFINE), str(src))
    rc = main(["contour", str(src), "-o", str(tmp_path / "out"), "--model", str(tiny_3d), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{name}.nii.gz" in err and "not a plausible CT" in err and words in err and "Traceback" not in err
    assert not list((tmp_path / "out").rglob("*.nii.gz"))  # nothing contoured


def test_api_contour_refuses_and_still_contours_a_ct_and_a_png(tmp_path, tiny_3d):
    src = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(hostile()["mr-like"][0], AFFINE), str(src))
    with pytest.raises(InputError, match="nothing dark") as exc:
        api.contour(src, tmp_path / "o", model=str(tiny_3d), device="cpu", overview=False)
    assert exc.value.path == src
    good = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(head(), AFFINE), str(good))
    assert "Body" in api.contour(good, tmp_path / "ok", model=str(tiny_3d), device="cpu", overview=False)["structures"]
    # a 2D model's PNG is never judged as a CT (values 0..255, nothing dark in HU terms)
    net = build_network(NetworkSpec(spatial_dims=2, out_channels=1, channels=[4, 8]))
    model_2d = save_model(tmp_path / "tiny-2d", net, {"name": "tiny-2d", "structures": ["lung"], "pixel_spacing_mm": 1.0,
                                                      "preprocess": {"intensity": {"kind": "window", "low": 0, "high": 255}}})
    png = tmp_path / "x.png"
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)).save(png)
    assert "lung" in api.contour(png, tmp_path / "png", model=str(model_2d), device="cpu", overview=False)["structures"]


@pytest.mark.data
def test_the_development_data_passes(real_data, tmp_path):
    """Every OpenKBP CT passes with the bundled hn-ct (measured: body 0.4-13 %, neighbour correlation
    0.88-0.97, 1st percentile -1024 HU); a JSRT chest X-ray PNG is contoured by cxr-jsrt."""
    root = real_data("openkbp")
    bundle = load_model("hn-ct")
    cases = sorted(root.glob("validation/*/ct.nii.gz"))
    assert cases
    for ct in cases:
        check_ct(read_image(ct), bundle, ct)
    png = sorted((real_data("jsrt") / "images").glob("*.png"))[0]
    summary = api.contour(png, tmp_path / "cxr", model="cxr-jsrt", device="cpu", overview=False)
    assert summary["model"] == "cxr-jsrt"
