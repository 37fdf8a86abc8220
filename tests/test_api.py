"""The Python API: contour a file with a model folder -> masks on the input grid, summary, overviews."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torch import nn

from delineo import api
from delineo.data.io import Image, read_image
from delineo.errors import InputError
from delineo.inference.predictor import Predictor
from delineo.models.networks import NetworkSpec, build_network
from delineo.models.registry import ModelBundle, save_model


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8, 16]))
    meta = {
        "name": "tiny-ct",
        "structures": ["Ball", "Box"],
        "roi_types": {"Ball": "PTV"},
        "preprocess": {"spacing_mm": [3.0, 3.0, 3.0], "intensity": {"kind": "window", "low": -200, "high": 400}},
        "inference": {"patch_size": None, "threshold": 0.5},
        "postprocess": {},
    }
    return save_model(tmp_path_factory.mktemp("api") / "tiny-ct", net, meta)


@pytest.mark.parametrize("flip", [False, True])
def test_contour_nifti_with_model_path(tmp_path, shared_case_dataset, model_3d, flip):
    src = shared_case_dataset.ct_path("case00")
    if flip:  # a left-right flipped, shifted affine (like OpenKBP's): outputs must still be on the input grid
        img = nib.load(str(src))
        aff = img.affine.copy()
        aff[0, 0] = -aff[0, 0]
        aff[:3, 3] += [30.0, -4.0, 2.0]
        src = tmp_path / "flipped.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj), aff), str(src))
    ct = nib.load(str(src))
    out = tmp_path / "out"
    summary = api.contour(src, out, model=str(model_3d), device="cpu")
    for name in ("Ball", "Box"):
        mask = nib.load(str(out / "segmentations" / f"{name}.nii.gz"))
        assert mask.shape == ct.shape
        np.testing.assert_allclose(mask.affine, ct.affine)
        values = np.asarray(mask.dataobj)
        assert values.dtype == np.uint8 and set(np.unique(values).tolist()) <= {0, 1}
        s = summary["structures"][name]
        assert s["volume_cc"] == pytest.approx(values.sum() * 2 * 2 * 3 / 1000, abs=1e-3)
        assert s["empty"] == (values.sum() == 0)
        assert s["file"] == str(out / "segmentations" / f"{name}.nii.gz")
    assert summary["structures"]["Ball"]["roi_type"] == "PTV"
    assert summary["structures"]["Box"]["roi_type"] == "ORGAN"
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["model"] == "tiny-ct" and on_disk["input"] == str(src)
    assert on_disk["shape"] == [16, 16, 16] and on_disk["spacing_mm"] == [2.0, 2.0, 3.0]
    assert {"read", "preprocess", "model", "postprocess", "write"} <= set(on_disk["seconds"])
    for view in ("overview", "overview_axial", "overview_coronal", "overview_sagittal"):
        p = out / f"{view}.png"
        assert p.is_file() and p.stat().st_size > 1000
        assert str(p) in on_disk["overview"]


def test_contour_volumes_by_hand(tmp_path, shared_case_dataset):
    """With a stand-in network that finds the Ball exactly, the summary volume is the Ball's voxel count x 12 mm³."""

    class BallNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.spec = NetworkSpec(spatial_dims=3, out_channels=1, channels=[4, 8, 16])

        def forward(self, x):
            return (x - 0.5) * 40

    meta = {"name": "ballnet", "structures": ["Ball"], "preprocess": {"intensity": {"kind": "window", "low": 150, "high": 300}}}
    predictor = Predictor(ModelBundle(None, meta, BallNet()), "cpu")
    image = read_image(shared_case_dataset.ct_path("case01"))
    summary = api.contour_image(image, tmp_path, predictor=predictor, overview=False)
    ball = shared_case_dataset.masks["case01"]["Ball"]
    assert summary["structures"]["Ball"]["volume_cc"] == pytest.approx(round(ball.sum() * 12 / 1000, 3))
    np.testing.assert_array_equal(read_image(tmp_path / "segmentations" / "Ball.nii.gz").array, ball.astype(np.uint8))
    assert "overview" not in summary and not (tmp_path / "overview.png").exists()


def test_contour_structure_subset(tmp_path, shared_case_dataset, model_3d):
    summary = api.contour(shared_case_dataset.ct_path("case00"), tmp_path, model=str(model_3d), device="cpu",
                          structures=["Box"], overview=False)
    assert list(summary["structures"]) == ["Box"]
    assert sorted(p.name for p in (tmp_path / "segmentations").iterdir()) == ["Box.nii.gz"]


def test_contour_png_with_trained_model(tmp_path, trained_2d, shared_image_dataset):
    case = shared_image_dataset.cases[0]
    summary = api.contour(shared_image_dataset.image_path(case), tmp_path, model=str(trained_2d), device="cpu")
    for name in ("disc", "square"):
        mask = read_image(tmp_path / "segmentations" / f"{name}.nii.gz")
        assert mask.shape == (32, 32)
        assert summary["structures"][name]["volume_cm2"] == pytest.approx(mask.array.sum() / 100, abs=1e-3)
    assert (tmp_path / "overview.png").is_file()
    assert not (tmp_path / "overview_axial.png").exists()


def test_contour_missing_input_and_model(tmp_path, model_3d, monkeypatch):
    with pytest.raises(InputError, match="does not exist") as exc:
        api.contour(tmp_path / "nope.nii.gz", tmp_path / "o", model=str(model_3d))
    assert exc.value.path == tmp_path / "nope.nii.gz"
    img = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), str(img))
    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path / "no-models"))
    with pytest.raises(InputError, match="no bundled 3D model"):
        api.contour(img, tmp_path / "o")
    with pytest.raises(InputError, match="no bundled model"):
        api.contour(img, tmp_path / "o", model="not-a-model")


def test_contour_wrong_dimensionality(tmp_path, model_3d):
    png = tmp_path / "x.png"
    PILImage.fromarray(np.zeros((16, 16), np.uint8)).save(png)
    with pytest.raises(InputError, match="3D"):
        api.contour(png, tmp_path / "o", model=str(model_3d), device="cpu")


def test_default_model(tmp_path, monkeypatch, model_3d, shared_case_dataset):
    import shutil

    monkeypatch.setenv("DELINEO_MODELS", str(tmp_path))
    with pytest.raises(InputError, match="hn-ct"):
        api.default_model(3)
    shutil.copytree(model_3d, tmp_path / "hn-ct")
    assert api.default_model(3) == "hn-ct"
    img = shared_case_dataset.ct_path("case00")  # a uniform volume would be refused as not a plausible CT
    summary = api.contour(img, tmp_path / "o", device="cpu", overview=False)
    assert summary["model"] == "tiny-ct"
