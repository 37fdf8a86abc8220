"""Anatomy guard: left/right structures on their named side, brainstem above the spinal cord."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from delineo.contours.checks import anatomy_checks, flagged_structures, side_of

# RAS, LPI array order: index 0 grows towards the patient's left (world -x), index 2 towards the feet (-z)
AFFINE = np.array([[-2.0, 0, 0, 30.0], [0, -2.0, 0, 30.0], [0, 0, -3.0, 30.0], [0, 0, 0, 1]])
SHAPE = (30, 30, 20)


def box(i0, i1, k0, k1) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[i0:i1, 10:20, k0:k1] = True
    return m


def body() -> np.ndarray:
    a = np.full(SHAPE, -1000.0)
    a[2:28, 2:28, :] = 0.0
    return a


@pytest.mark.parametrize("name,expected", [("LeftParotid", ("left", "parotid")), ("Parotid_R", ("right", "parotid")),
                                           ("Lung L", ("left", "lung")), ("Brainstem", None), ("Larynx", None)])
def test_side_from_the_name(name, expected):
    assert side_of(name) == expected


def test_correct_sides_pass_and_a_swap_flags_both():
    left, right = box(18, 24, 5, 8), box(6, 12, 5, 8)  # high index = patient's left
    good = anatomy_checks({"LeftParotid": left, "RightParotid": right}, AFFINE, body())
    assert [c.passed for c in good] == [True, True]
    bad = anatomy_checks({"LeftParotid": right, "RightParotid": left}, AFFINE, body())
    flags = flagged_structures(bad)
    assert set(flags) == {"LeftParotid", "RightParotid"}
    assert "swapped" in flags["LeftParotid"][0] and "midline" in flags["LeftParotid"][0]


def test_a_single_sided_structure_is_checked_against_the_body_midline():
    assert anatomy_checks({"LeftParotid": box(18, 24, 5, 8)}, AFFINE, body())[0].passed
    assert not anatomy_checks({"LeftParotid": box(4, 10, 5, 8)}, AFFINE, body())[0].passed


def test_brainstem_must_lie_above_the_cord():
    stem, cord = box(13, 17, 2, 5), box(13, 17, 8, 18)  # low k = superior in LPI
    assert anatomy_checks({"Brainstem": stem, "SpinalCord": cord}, AFFINE)[0].passed
    upside_down = anatomy_checks({"Brainstem": cord, "SpinalCord": stem}, AFFINE)
    assert not upside_down[0].passed and "below" in upside_down[0].message


def test_empty_masks_are_not_judged():
    assert anatomy_checks({"LeftParotid": np.zeros(SHAPE, bool), "Brainstem": np.zeros(SHAPE, bool)}, AFFINE) == []


def test_a_failed_check_reaches_summary_and_rt_structure_set(tmp_path):
    """A model that puts 'LeftParotid' on the patient's right: flagged in summary.json and in the
    ROI Description of the RT Structure Set."""
    import torch
    from torch import nn

    from delineo.api import contour_image
    from delineo.data.io import Image
    from delineo.dicom.series import read_series
    from delineo.dicom.write_ct import write_ct_series
    from delineo.inference.predictor import Predictor
    from delineo.models.networks import NetworkSpec
    from delineo.models.registry import ModelBundle

    class WrongSide(nn.Module):
        spec = NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8])

        def forward(self, x):
            out = torch.full((x.shape[0], 2, *x.shape[2:]), -20.0)
            out[:, 0, 4:10, 10:20, 5:8] = 20.0  # low index: the patient's right
            out[:, 1, 13:17, 10:20, 5:8] = 20.0
            return out

    meta = {"name": "wrong-side", "structures": ["LeftParotid", "Larynx"],
            "preprocess": {"orientation": "LPI", "intensity": {"kind": "window", "low": -1000, "high": 1000}}}
    predictor = Predictor(ModelBundle(None, meta, WrongSide()), "cpu", amp=False)
    image = Image(body().astype(np.float32), AFFINE)
    write_ct_series(image, tmp_path / "ct")
    series = read_series(tmp_path / "ct")
    summary = contour_image(series.image, tmp_path / "out", predictor=predictor, series=series, overview=False)
    assert summary["checks_passed"] is False
    assert summary["structures"]["LeftParotid"]["flags"] and not summary["structures"]["Larynx"]["flags"]
    rois = {r.ROIName: r for r in pydicom.dcmread(summary["rtstruct"]).StructureSetROISequence}
    assert rois["LeftParotid"].ROIDescription.startswith("CHECK FAILED")
    assert "ROIDescription" not in rois["Larynx"]
