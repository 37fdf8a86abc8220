"""Inference: model grid <-> input grid, whole-volume vs sliding window, mirroring, clean-up."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from delineo.data.io import Image, read_image
from delineo.errors import InputError
from delineo.inference.predictor import (
    Predictor, foreground_box, keep_exclusive, keep_largest_components, predict_probabilities, remove_small_components,
)
from delineo.metrics.segmentation import dice
from delineo.models.networks import NetworkSpec, build_network
from delineo.models.registry import ModelBundle, save_model

WINDOW = {"kind": "window", "low": -200, "high": 400}
BALL_WINDOW = {"kind": "window", "low": 150, "high": 300}  # Ball (300 HU) -> 1, Box (150) and background (-100) -> 0


class ThresholdNet(nn.Module):
    """A stand-in 'network' whose logits threshold the normalised intensity at 0.5, voxel by voxel
    (with ``BALL_WINDOW``, halfway between Ball and the rest): channel 0 is "Dark" (below), channel 1
    is "Ball" (above).
    Its ideal output is known, so the geometry of the pipeline around it can be checked exactly."""

    def __init__(self, spatial_dims=3, channels=(4, 8, 16), slope=40.0):
        super().__init__()
        self.slope = slope
        self.spec = NetworkSpec(spatial_dims=spatial_dims, out_channels=2, channels=list(channels))
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return torch.cat([(0.5 - x) * self.slope, (x - 0.5) * self.slope], dim=1)


def threshold_bundle(spacing_mm=None, slope=40.0, **meta) -> ModelBundle:
    m = {"name": "threshold", "structures": ["Dark", "Ball"], "preprocess": {"spacing_mm": spacing_mm, "intensity": BALL_WINDOW}}
    m.update(meta)
    return ModelBundle(None, m, ThresholdNet(slope=slope))


@pytest.fixture
def ct(shared_case_dataset):
    case = shared_case_dataset.cases[0]
    return read_image(shared_case_dataset.ct_path(case)), shared_case_dataset.masks[case]


def test_same_grid_reproduces_the_threshold_exactly(ct):
    image, masks = ct
    out = Predictor(threshold_bundle(), "cpu").predict(image)
    assert list(out) == ["Dark", "Ball"]
    np.testing.assert_array_equal(out["Ball"], masks["Ball"])
    np.testing.assert_array_equal(out["Dark"], ~masks["Ball"])
    assert out["Ball"].dtype == bool


@pytest.mark.parametrize("model_spacing", [(4.0, 4.0, 6.0), (1.0, 1.0, 1.5), (3.0, 2.0, 2.0)])
def test_output_on_input_grid_when_model_spacing_differs(ct, model_spacing):
    image, masks = ct  # 16^3 at (2, 2, 3) mm
    predictor = Predictor(threshold_bundle(list(model_spacing)), "cpu")
    out = predictor.predict(image)
    assert out["Ball"].shape == image.shape == (16, 16, 16)
    model_grid = tuple(round(16 * s / t) for s, t in zip(image.spacing_mm, model_spacing))
    assert predictor.bundle.network.calls[-1][2:] == tuple(int(np.ceil(n / 4) * 4) for n in model_grid)  # padded to divisor
    # the structure comes back where it was (no shift or flip from the round trip)
    assert dice(out["Ball"], masks["Ball"]) > 0.8
    np.testing.assert_allclose(np.argwhere(out["Ball"]).mean(0), np.argwhere(masks["Ball"]).mean(0), atol=0.5)
    assert set(predictor.timings) == {"preprocess", "model", "postprocess"}


def test_sliding_window_matches_whole_volume(ct):
    image, masks = ct
    whole = Predictor(threshold_bundle(), "cpu", patch_size=None).predict(image)
    bundle = threshold_bundle(inference={"patch_size": [8, 8, 8], "overlap": 0.25})
    predictor = Predictor(bundle, "cpu")
    assert predictor.patch_size == [8, 8, 8] and predictor.overlap == 0.25
    windowed = predictor.predict(image)
    assert all(c[2:] == (8, 8, 8) for c in bundle.network.calls)  # really ran on patches
    for name in whole:
        assert windowed[name].shape == whole[name].shape == image.shape
        np.testing.assert_array_equal(windowed[name], whole[name])


def test_sliding_window_vs_whole_volume_real_network(tmp_path):
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8, 16]))
    folder = save_model(tmp_path / "m", net, {"structures": ["a", "b"], "preprocess": {"intensity": WINDOW}})
    image = Image(np.random.default_rng(0).integers(-200, 400, (20, 18, 12)).astype(np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))
    whole = Predictor(folder, "cpu").predict(image)
    windowed = Predictor(folder, "cpu", patch_size=[8, 8, 8]).predict(image)
    for name in ("a", "b"):
        assert whole[name].shape == windowed[name].shape == (20, 18, 12)


def test_mirror_tta_averages_all_flips():
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=2, out_channels=1, channels=[4, 8])).eval()
    x = torch.rand(1, 1, 8, 8)
    tta = predict_probabilities(net, x, mirror=True)
    expected = torch.zeros_like(tta)
    flips = [(), (2,), (3,), (2, 3)]
    with torch.no_grad():
        for axes in flips:
            p = torch.sigmoid(net(torch.flip(x, axes) if axes else x))
            expected += torch.flip(p, axes) if axes else p
    torch.testing.assert_close(tta, expected / 4)
    assert not torch.allclose(tta, predict_probabilities(net, x, mirror=False))


def test_mirror_predictor_runs_all_eight_flips_in_3d(ct):
    image, masks = ct
    bundle = threshold_bundle(inference={"mirror": True})
    predictor = Predictor(bundle, "cpu")
    assert predictor.mirror
    out = predictor.predict(image)
    assert len(bundle.network.calls) == 8
    np.testing.assert_array_equal(out["Ball"], masks["Ball"])  # a pointwise net is flip-invariant


def test_threshold_and_structure_subset(ct):
    image, masks = ct
    # slope 1: p = sigmoid(norm - 0.5) with norm = clip((HU - 150) / 150, 0, 1)
    out = Predictor(threshold_bundle(slope=1.0), "cpu", threshold=0.6).predict(image, ["Ball"])
    assert list(out) == ["Ball"]
    norm = np.clip((image.array.astype(np.float64) - 150) / 150, 0, 1)
    expected = 1 / (1 + np.exp(-(norm - 0.5))) >= 0.6  # i.e. HU above ~286
    assert 0 < expected.sum() < masks["Ball"].sum()
    np.testing.assert_array_equal(out["Ball"], expected)
    default = Predictor(threshold_bundle(slope=1.0), "cpu").predict(image, ["Ball"])
    np.testing.assert_array_equal(default["Ball"], masks["Ball"])
    with pytest.raises(InputError, match="Heart"):
        Predictor(threshold_bundle(), "cpu").predict(image, ["Ball", "Heart"])


def test_wrong_dimensionality(ct):
    image, _ = ct
    predictor = Predictor(threshold_bundle(), "cpu")
    with pytest.raises(InputError, match="3D"):
        predictor.predict(Image(np.zeros((16, 16), np.uint8), np.eye(4)))
    bundle2d = ModelBundle(None, {"structures": ["a", "b"]}, ThresholdNet(spatial_dims=2))
    with pytest.raises(InputError, match="2D"):
        Predictor(bundle2d, "cpu").predict(image)


def test_keep_largest_components_by_hand():
    m = np.zeros((3, 20, 20), bool)
    m[0, 1:5, 1:4] = True  # 12 px
    m[0, 10:12, 10:13] = True  # 6 px
    m[0, 17:19, 17] = True  # 2 px
    m[1] = m[0]
    m[2, 5:7, 5:7] = True
    out = keep_largest_components(m, ["two", "one", "untouched"], {"two": 2, "one": 1})
    assert out[0].sum() == 18 and out[0][1:5, 1:4].all() and out[0][10:12, 10:13].all() and not out[0][17:19, 17].any()
    assert out[1].sum() == 12 and out[1][1:5, 1:4].all()
    np.testing.assert_array_equal(out[2], m[2])
    assert m[0].sum() == 20  # input untouched
    empty = np.zeros((1, 5, 5), bool)
    np.testing.assert_array_equal(keep_largest_components(empty, ["x"], {"x": 1}), empty)


def test_remove_small_components_by_hand():
    # at 2 mm voxels (8 mm³): a 64-voxel cube (0.512 cm³), an 8-voxel cube (0.064 cm³) and two voxels
    # touching only at a corner (one 26-connected component, 0.016 cm³)
    m = np.zeros((2, 20, 20, 20), bool)
    m[0, 1:5, 1:5, 1:5] = True
    m[0, 10:12, 10:12, 10:12] = True
    m[0, 15, 15, 15] = m[0, 16, 16, 16] = True
    m[1] = m[0]
    spacing = (2.0, 2.0, 2.0)
    kept = {v: remove_small_components(m, ["a", "b"], {"a": v}, spacing)[0].sum() for v in (0.0, 0.016, 0.017, 0.064, 0.065, 0.6)}
    assert kept == {0.0: 74, 0.016: 74, 0.017: 72, 0.064: 72, 0.065: 64, 0.6: 0}  # a component exactly at the volume stays
    np.testing.assert_array_equal(remove_small_components(m, ["a", "b"], {"a": 0.1}, spacing)[1], m[1])  # not listed
    assert m[0].sum() == 74  # input untouched
    # the voxel's volume counts: at 1 x 1 x 4 mm the 8-voxel cube is 0.032 cm³
    assert remove_small_components(m, ["a"], {"a": 0.033}, (1.0, 1.0, 4.0))[0].sum() == 64
    # 2D: areas in cm² (10 x 10 px of 1 mm = 1 cm²)
    m2 = np.zeros((1, 30, 30), bool)
    m2[0, :10, :10] = True
    m2[0, 20:22, 20:22] = True
    assert remove_small_components(m2, ["a"], {"a": 0.05}, (1.0, 1.0))[0].sum() == 100


def test_keep_exclusive_by_hand():
    # three dose levels and an organ, 1 x 4 voxels: the levels overlap where two are above threshold
    probs = torch.tensor([
        [[0.9, 0.6, 0.1, 0.7]],   # high
        [[0.7, 0.8, 0.2, 0.7]],   # mid (ties with high in the last voxel: the first listed wins)
        [[0.1, 0.55, 0.6, 0.2]],  # low
        [[0.9, 0.9, 0.9, 0.9]],   # organ, outside every group
    ])
    masks = (probs >= 0.5).numpy()
    out = keep_exclusive(probs, masks, ["high", "mid", "low", "organ"], [["high", "mid", "low"], ["missing", "x"]])
    np.testing.assert_array_equal(out[0], [[True, False, False, True]])
    np.testing.assert_array_equal(out[1], [[False, True, False, False]])
    np.testing.assert_array_equal(out[2], [[False, False, True, False]])
    np.testing.assert_array_equal(out[3], masks[3])
    assert not (out[:3].sum(0) > 1).any()
    assert masks[1, 0, 0]  # input untouched
    # only one member above threshold: it keeps the voxel
    p2 = torch.tensor([[[0.45]], [[0.6]]])
    np.testing.assert_array_equal(keep_exclusive(p2, (p2 >= 0.5).numpy(), ["a", "b"], [["a", "b"]]), [[[False]], [[True]]])
    np.testing.assert_array_equal(keep_exclusive(probs, masks, ["high", "mid", "low", "organ"], []), masks)


@pytest.fixture
def speckled(shared_case_dataset):
    """The ball case with a small bright speck (8 voxels) in a corner, away from the ball, and its
    reference masks."""
    case = shared_case_dataset.cases[0]
    image = read_image(shared_case_dataset.ct_path(case))
    arr = image.array.copy()
    arr[0:2, 0:2, 0:2] = 300
    return image.like(arr), shared_case_dataset.masks[case]


def test_keep_largest_in_predictor(speckled):
    image, reference = speckled
    plain = Predictor(threshold_bundle(), "cpu").predict(image)
    assert plain["Ball"][0, 0, 0]
    cleaned = Predictor(threshold_bundle(postprocess={"keep_largest": {"Ball": 1}}), "cpu").predict(image)
    assert not cleaned["Ball"][0:2, 0:2, 0:2].any()
    np.testing.assert_array_equal(cleaned["Ball"], reference["Ball"])
    np.testing.assert_array_equal(cleaned["Dark"], plain["Dark"])  # not listed: left alone
    assert not cleaned["Dark"][0:2, 0:2, 0:2].any()


def test_min_component_cc_in_predictor(speckled):
    image, reference = speckled
    speck_cc = 8 * float(np.prod(image.spacing_mm)) / 1000.0
    kept = Predictor(threshold_bundle(postprocess={"min_component_cc": {"Ball": speck_cc}}), "cpu").predict(image)
    assert kept["Ball"][0:2, 0:2, 0:2].all()  # exactly at the volume: kept
    cleaned = Predictor(threshold_bundle(postprocess={"min_component_cc": {"Ball": speck_cc * 1.01}}), "cpu").predict(image)
    assert not cleaned["Ball"][0:2, 0:2, 0:2].any()
    np.testing.assert_array_equal(cleaned["Ball"], reference["Ball"])


def test_predictor_on_model_folder(tmp_path, ct):
    image, _ = ct
    torch.manual_seed(0)
    net = build_network(NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8, 16], residual=True))
    meta = {
        "name": "untrained",
        "structures": ["Ball", "Box"],
        "preprocess": {"spacing_mm": [3.0, 3.0, 3.0], "intensity": WINDOW},
        "inference": {"patch_size": [8, 8, 8], "overlap": 0.5, "mirror": True, "threshold": 0.5},
        "postprocess": {"keep_largest": {"Ball": 1, "Box": 1}},
    }
    folder = save_model(tmp_path / "untrained", net, meta)
    predictor = Predictor(str(folder), "cpu")
    assert predictor.structures == ["Ball", "Box"]
    assert predictor.patch_size == [8, 8, 8] and predictor.mirror and predictor.threshold == 0.5
    assert predictor.device == torch.device("cpu")
    out = predictor.predict(image)
    for name in ("Ball", "Box"):
        assert out[name].shape == image.shape and out[name].dtype == bool
        if out[name].any():
            from scipy import ndimage

            assert ndimage.label(out[name], structure=np.ones((3, 3, 3)))[1] == 1


def test_trained_2d_model_segments_training_images(trained_2d, shared_image_dataset):
    predictor = Predictor(str(trained_2d), "cpu")
    case = shared_image_dataset.cases[0]
    out = predictor.predict(read_image(shared_image_dataset.image_path(case)))
    assert out["disc"].shape == (32, 32)
    assert dice(out["disc"], shared_image_dataset.masks[case]["disc"]) > 0.5


def test_foreground_box_by_hand():
    array = np.full((20, 20, 10), -1000.0)
    array[5:9, 6:12, 3] = 0.0  # the "body"
    # margin 4 mm: 2 voxels at 2 mm, 2 voxels at 3 mm (rounded up)
    assert foreground_box(array, (2.0, 2.0, 3.0), -500, 4.0) == (slice(3, 11), slice(4, 14), slice(1, 6))
    # clipped to the array
    assert foreground_box(array, (2.0, 2.0, 3.0), -500, 100.0) == (slice(0, 20), slice(0, 20), slice(0, 10))
    # nothing above the threshold: the whole array
    assert foreground_box(np.full((4, 4, 4), -1000.0), (1.0, 1.0, 1.0), -500, 4.0) == (slice(None),) * 3


def test_crop_foreground_runs_the_network_on_the_body_only():
    """A CT whose body (0 HU, a ball of 300 HU inside) fills a corner of the air (-1000 HU): with
    ``crop_foreground`` the network sees the body box only, the ball comes back on the same voxels,
    and everything outside the box is background."""
    array = np.full((40, 36, 30), -1000.0, dtype=np.float32)
    array[4:20, 8:26, 2:18] = 0.0
    ball = np.zeros(array.shape, bool)
    ball[8:14, 12:20, 6:12] = True
    array[ball] = 300.0
    image = Image(array, np.diag([2.0, 2.0, 3.0, 1.0]))
    whole = Predictor(threshold_bundle(), "cpu")
    cropped = Predictor(threshold_bundle(inference={"crop_foreground": {"threshold": -500, "margin_mm": 4}}), "cpu")
    a, b = whole.predict(image), cropped.predict(image)
    np.testing.assert_array_equal(b["Ball"], ball)
    np.testing.assert_array_equal(a["Ball"], b["Ball"])
    box = (slice(2, 22), slice(6, 28), slice(0, 20))  # body box + 2 voxels (4 mm at 2 mm; 2 at 3 mm)
    inside = np.zeros(array.shape, bool)
    inside[box] = True
    np.testing.assert_array_equal(b["Dark"], a["Dark"] & inside)
    assert b["Dark"].shape == image.shape
    assert cropped.bundle.network.calls[-1][2:] == (20, 24, 20)  # 20 x 22 x 20 padded to the divisor 4
