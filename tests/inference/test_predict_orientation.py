"""The network always sees the model's orientation, and masks land on the same patient voxels
whatever order the array arrived in: NIfTI flipped or with axes swapped, DICOM head-first or
feet-first supine.

The stand-in network is *positional*: it marks the half of its input array with the larger index
along axis 0 ("LeftHalf": the patient's left in the model's LPI order), axis 1 ("PosteriorHalf")
and axis 2 ("InferiorHalf"). If the predictor fed it an array in another order, the contour would land on the
wrong side of the patient; the checks below look at patient (world) coordinates computed from each
input's own affine, not at the predictor's own reorientation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from delineo.api import contour_image
from delineo.data.io import Image
from delineo.inference.predictor import Predictor
from delineo.metrics.segmentation import patient_points
from delineo.models.networks import NetworkSpec
from delineo.models.registry import ModelBundle

SHAPE = (20, 24, 16)  # unequal, so a swap of axes cannot go unnoticed
# LPI, as the OpenKBP arrays: axis 0 towards the patient's left, 1 posterior, 2 inferior
LPI = np.array([[-2.0, 0, 0, 20.0], [0, -2.5, 0, 30.0], [0, 0, -3.0, 24.0], [0, 0, 0, 1]])


class PositionalNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.spec = NetworkSpec(spatial_dims=3, out_channels=3, channels=[4, 8])
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        out = torch.full((x.shape[0], 3, *x.shape[2:]), -20.0)
        out[:, 0, x.shape[2] // 2 :] = 20.0
        out[:, 1, :, :, x.shape[4] // 2 :] = 20.0
        out[:, 2, :, x.shape[3] // 2 :] = 20.0
        return out


def bundle() -> ModelBundle:
    meta = {"name": "positional", "structures": ["LeftHalf", "InferiorHalf", "PosteriorHalf"],
            "preprocess": {"orientation": "LPI", "intensity": {"kind": "window", "low": -1000, "high": 1000}}}
    return ModelBundle(None, meta, PositionalNet())


def world_points(mask: np.ndarray, affine: np.ndarray) -> set[tuple[float, ...]]:
    return patient_points(mask, affine, decimals=3)


def stored_as(array: np.ndarray, affine: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """The same volume in another array order, the affine adjusted by hand (every voxel keeps its place)."""
    if kind.startswith("flip"):
        axis = int(kind[-1])
        a = affine.copy()
        a[:3, axis] *= -1
        a[:3, 3] = affine[:3, 3] + affine[:3, axis] * (array.shape[axis] - 1)
        return np.flip(array, axis).copy(), a
    if kind == "swap 0,1":
        return array.transpose(1, 0, 2).copy(), affine[:, [1, 0, 2, 3]]
    if kind == "swap 1,2":
        return array.transpose(0, 2, 1).copy(), affine[:, [0, 2, 1, 3]]
    return array, affine


def ct() -> Image:
    a = np.full(SHAPE, -1000.0, np.float32)
    a[2:18, 3:21, :] = 0.0  # the body
    return Image(a, LPI)


@pytest.mark.parametrize("kind", ["as given", "flip 0", "flip 1", "flip 2", "swap 0,1", "swap 1,2"])
def test_masks_land_on_the_same_patient_voxels_however_the_array_is_stored(kind):
    image = ct()
    predictor = Predictor(bundle(), "cpu", amp=False)
    reference = predictor.predict(image)
    arr, aff = stored_as(image.array, image.affine, kind)
    net = predictor.bundle.network
    net.seen.clear()
    out = predictor.predict(Image(arr, aff))
    assert net.seen and all(s[0] >= SHAPE[0] and s[2] >= SHAPE[2] for s in net.seen), "network saw a reordered array"
    for name in ("LeftHalf", "InferiorHalf", "PosteriorHalf"):
        assert out[name].shape == arr.shape
        assert world_points(out[name], aff) == world_points(reference[name], LPI), (kind, name)
    # and it is the patient's left (RAS: -x) and inferior (-z) half, whatever the storage
    xyz = np.array(sorted(world_points(out["LeftHalf"], aff)))
    centre_x = (LPI[0, 3] + (LPI[0, 3] + LPI[0, 0] * (SHAPE[0] - 1))) / 2
    assert (xyz[:, 0] < centre_x).all()
    zs = np.array(sorted(world_points(out["InferiorHalf"], aff)))[:, 2]
    centre_z = (LPI[2, 3] + (LPI[2, 3] + LPI[2, 2] * (SHAPE[2] - 1))) / 2
    assert (zs < centre_z).all()


@pytest.mark.parametrize("position", ["HFS", "FFS"])
def test_dicom_head_first_and_feet_first_give_the_nifti_contours_in_patient_coordinates(tmp_path, position):
    from delineo.dicom.rtstruct import read_rtstruct
    from delineo.dicom.series import read_series
    from delineo.dicom.write_ct import write_ct_series

    image = ct()
    predictor = Predictor(bundle(), "cpu", amp=False)
    nifti = predictor.predict(image)
    # a feet-first supine scanner writes the columns towards the patient's right: the array flipped
    # along x; both are sorted by the reader along the slice normal (head to feet becomes feet to head)
    arr, aff = stored_as(image.array, image.affine, "flip 0") if position == "FFS" else (image.array, image.affine)
    write_ct_series(Image(arr, aff), tmp_path / "ct", patient_position=position)
    series = read_series(tmp_path / "ct")
    assert series.datasets[0].PatientPosition == position
    summary = contour_image(series.image, tmp_path / "out", predictor=predictor, series=series, overview=False)
    back = read_rtstruct(summary["rtstruct"], series)
    for name in ("LeftHalf", "InferiorHalf", "PosteriorHalf"):
        assert world_points(back[name], series.image.affine) == world_points(nifti[name], LPI), (position, name)
