"""Preprocessing shared by training and inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from delineo.data.transforms import (
    normalise_intensity,
    preprocess,
    preprocess_labels,
    resample,
    target_shape,
    training_augmentation,
)
from delineo.errors import ConfigError
from delineo.metrics.segmentation import dice


def ball(shape, centre, r):
    g = np.indices(shape)
    return sum((a - c) ** 2 for a, c in zip(g, centre)) <= r * r


def test_normalise_intensity_window():
    hu = np.array([[[-1024.0, -200.0, 100.0, 400.0, 3000.0]]], dtype=np.float32)  # (1, 1, 5)
    out = normalise_intensity(hu, {"kind": "window", "low": -200, "high": 400})
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy().ravel(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    # int16 arrays and tensors are accepted too
    out2 = normalise_intensity(torch.as_tensor(hu.astype(np.int16)), {"low": 0, "high": 255})
    np.testing.assert_allclose(out2.numpy().ravel(), [0, 0, 100 / 255, 1, 1], atol=1e-6)


def test_normalise_intensity_unknown_kind():
    with pytest.raises(ConfigError, match="zscore"):
        normalise_intensity(np.zeros((1, 2, 2)), {"kind": "zscore"})


@pytest.mark.parametrize(
    "shape, spacing, target, expected",
    [
        ((128, 128, 100), (4.0, 4.0, 2.5), (2.0, 2.0, 5.0), (256, 256, 50)),
        ((10, 10), (1.4, 1.4), None, (10, 10)),
        ((7, 9), (1.0, 1.0), (2.0, 2.0), (4, 4)),  # 3.5 -> 4, 4.5 -> 4 (round half to even)
        ((3, 3, 3), (1.0, 1.0, 1.0), (100.0, 100.0, 100.0), (1, 1, 1)),  # at least 1
    ],
)
def test_target_shape(shape, spacing, target, expected):
    assert target_shape(shape, spacing, target) == expected


def test_resample_same_shape_is_identity():
    t = torch.rand(2, 5, 6)
    assert resample(t, (5, 6)) is t


def test_resample_round_trip_keeps_structure_in_place():
    shape = (24, 24, 18)
    m = ball(shape, (9, 14, 8), 5)
    t = torch.as_tensor(m[None].astype(np.float32))
    down = resample(t, target_shape(shape, (1, 1, 1), (2, 2, 1.5)), "linear")
    assert tuple(down.shape) == (1, 12, 12, 12)
    back = resample(down, shape, "linear")[0].numpy() >= 0.5
    assert dice(back, m) > 0.9
    # centre of mass stays put (no half-voxel shift)
    np.testing.assert_allclose(np.argwhere(back).mean(0), np.argwhere(m).mean(0), atol=0.3)


def test_resample_nearest_keeps_label_values():
    lab = torch.zeros(1, 8, 8)
    lab[0, 2:6, 2:6] = 3
    up = resample(lab, (16, 16), "nearest")
    assert set(torch.unique(up).tolist()) == {0.0, 3.0}
    assert int((up == 3).sum()) == 4 * 16


def test_preprocess_image_to_model_grid():
    img = np.full((1, 20, 20, 10), -1000, np.int16)
    img[0, 5:15, 5:15, 2:8] = 400
    spec = {"spacing_mm": [2.0, 2.0, 4.0], "intensity": {"kind": "window", "low": -200, "high": 400}}
    out = preprocess(img, (1.0, 1.0, 2.0), spec)
    assert tuple(out.shape) == (1, 10, 10, 5)
    assert out.min() >= 0 and out.max() <= 1
    assert out[0, 5, 5, 2] == pytest.approx(1.0) and out[0, 0, 0, 0] == pytest.approx(0.0)
    # no spacing: same grid; default window is 0-255
    out2 = preprocess(np.full((1, 4, 4), 255.0), (1.4, 1.4), {})
    assert tuple(out2.shape) == (1, 4, 4) and torch.all(out2 == 1)


def test_preprocess_labels():
    lab = np.zeros((2, 16, 16), np.uint8)
    lab[0, 4:12, 4:12] = 1
    same = preprocess_labels(lab, (1.0, 1.0), {})
    assert same.dtype == torch.uint8 and torch.equal(same, torch.as_tensor(lab))
    down = preprocess_labels(lab, (1.0, 1.0), {"spacing_mm": [2.0, 2.0]})
    assert down.dtype == torch.uint8 and tuple(down.shape) == (2, 8, 8)
    expected = np.zeros((8, 8), np.uint8)
    expected[2:6, 2:6] = 1
    np.testing.assert_array_equal(down[0].numpy(), expected)
    assert not down[1].any()
    assert set(torch.unique(down).tolist()) <= {0, 1}


@pytest.mark.parametrize("dims", [2, 3])
def test_training_augmentation_crops_to_patch(dims):
    shape = (12,) * dims
    aug = training_augmentation(dims, [8] * dims, "default")
    aug.set_random_state(0)
    out = aug({"image": torch.rand(1, *shape), "label": torch.ones(2, *shape, dtype=torch.uint8)})
    assert tuple(out["image"].shape) == (1, *[8] * dims)
    assert tuple(out["label"].shape) == (2, *[8] * dims)
    # smaller than the patch: padded up
    out = training_augmentation(dims, [16] * dims, "none")({"image": torch.rand(1, *shape), "label": torch.zeros(1, *shape)})
    assert tuple(out["image"].shape) == (1, *[16] * dims)


def test_no_augmentation_is_identity():
    x = {"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}
    out = training_augmentation(2, None, "none")(dict(x))
    assert torch.equal(torch.as_tensor(out["image"]), x["image"])
