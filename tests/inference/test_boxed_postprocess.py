"""Issue 34: post-processing inside each structure's box gives the contours of the old full-grid path.

The reference below is the predictor's post-processing as it was before (probabilities of every
structure resampled over the whole body box on the input grid, thresholded, exclusive groups,
largest components, features, then back to the input's order), kept here, in the test, to compare
against. Both run on the same network output (captured from the predictor), so any difference is
the post-processing's. Contours: Dice >= 0.999 per structure (same grid and affine, so the same in
patient coordinates); quality features to 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from delineo.data.io import Image, read_image
from delineo.data.orientation import to_orientation
from delineo.data.transforms import resample
from delineo.inference.predictor import Predictor, foreground_box, keep_exclusive, keep_largest_components, remove_small_components
from delineo.inference.quality import structure_features
from delineo.metrics.segmentation import dice
from delineo.models.networks import NetworkSpec
from delineo.models.registry import ModelBundle

STRUCTURES = ["PTV70", "PTV63", "PTV56", "Cord", "Parotid", "Tiny", "Never"]


class BlobNet(nn.Module):
    """Smooth logits of blobs at fixed places of the (normalised) field of view: three overlapping
    targets competing in an exclusive group, a long thin "cord", a "parotid" with a second small
    island, a structure a few voxels across, and one never above the threshold."""

    def __init__(self):
        super().__init__()
        self.spec = NetworkSpec(spatial_dims=3, out_channels=len(STRUCTURES), channels=[4, 8, 16])

    def forward(self, x):
        shape = x.shape[2:]
        g = torch.meshgrid(*[(torch.arange(n, dtype=torch.float32) + 0.5) / n for n in shape], indexing="ij")

        def blob(centre, radii):
            return 1.0 - sum(((a - c) / r) ** 2 for a, c, r in zip(g, centre, radii))

        cord = 1.0 - ((g[0] - 0.5) / 0.04) ** 2 - ((g[1] - 0.7) / 0.04) ** 2 - ((g[2] - 0.5) / 0.45) ** 4
        parotid = torch.maximum(blob((0.3, 0.4, 0.6), (0.1, 0.08, 0.12)), blob((0.7, 0.3, 0.3), (0.03, 0.03, 0.05)))
        logits = [
            blob((0.45, 0.45, 0.5), (0.2, 0.18, 0.25)) * 6,
            blob((0.5, 0.5, 0.45), (0.25, 0.2, 0.3)) * 5,
            blob((0.55, 0.5, 0.5), (0.3, 0.25, 0.35)) * 4,
            cord * 8,
            parotid * 8,
            blob((0.2, 0.7, 0.2), (0.025, 0.025, 0.04)) * 6,
            torch.full(shape, -20.0),
        ]
        return torch.stack(logits)[None].expand(x.shape[0], -1, *shape) * (1.0 + 0.01 * x)


def blob_bundle(spacing_mm=(4.0, 4.0, 2.5)) -> ModelBundle:
    meta = {
        "name": "blobs", "structures": STRUCTURES,
        "preprocess": {"orientation": "LPI", "spacing_mm": list(spacing_mm), "intensity": {"kind": "window", "low": -500, "high": 1000}},
        "inference": {"threshold": 0.5, "crop_foreground": {"threshold": -500, "margin_mm": 10}},
        "postprocess": {"keep_largest": {"Parotid": 1, "Cord": 1, "Tiny": 1}, "exclusive": [["PTV70", "PTV63", "PTV56"]],
                        "min_component_cc": {"PTV56": 0.5, "PTV63": 0.5}},
    }
    return ModelBundle(None, meta, BlobNet())


def reference(predictor: Predictor, image: Image, probs_model: torch.Tensor, wanted):
    """The full-grid post-processing of the predictor before issue 34 (masks, features)."""
    image, reo = to_orientation(image, predictor.bundle.orientation)
    crop = predictor.crop_foreground
    box = foreground_box(image.array, image.spacing_mm, float(crop["threshold"]), float(crop.get("margin_mm", 10.0)))
    body = image.array[box]
    probs = resample(probs_model, body.shape, "linear")
    masks = (probs >= predictor.threshold).cpu().numpy()
    masks = keep_exclusive(probs, masks, predictor.structures, predictor.bundle.postprocess.get("exclusive", []))
    masks = keep_largest_components(masks, predictor.structures, predictor.bundle.postprocess.get("keep_largest", {}))
    masks = remove_small_components(masks, predictor.structures, predictor.bundle.postprocess.get("min_component_cc", {}), image.spacing_mm)
    index = {n: i for i, n in enumerate(predictor.structures)}
    channels = [index[n] for n in wanted]
    feats = dict(zip(wanted, structure_features(probs[channels], masks[channels], image.spacing_mm)))
    full = np.zeros((masks.shape[0], *image.shape), dtype=bool)
    full[(slice(None), *box)] = masks
    full = reo.backward(full)
    return {n: full[index[n]] for n in wanted}, feats


def compare(predictor: Predictor, image: Image, wanted=None):
    captured = {}
    original = predictor.probabilities_on_model_grid

    def capture(x):
        captured["probs"] = original(x)
        return captured["probs"]

    predictor.probabilities_on_model_grid = capture
    masks, info = predictor.predict_with_quality(image, wanted, features=True)
    wanted = list(masks)
    ref_masks, ref_feats = reference(predictor, image, captured["probs"], wanted)
    for name in wanted:
        assert masks[name].shape == image.shape and masks[name].dtype == bool
        if ref_masks[name].any() or masks[name].any():
            assert dice(masks[name], ref_masks[name]) >= 0.999, name
        for key, value in ref_feats[name].items():
            assert info[name]["features"][key] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, key)
    return masks, ref_masks


def synthetic_ct(shape=(96, 80, 40), spacing=(1.5, 1.5, 2.0), flip=False) -> Image:
    rng = np.random.default_rng(0)
    array = np.full(shape, -1000.0, dtype=np.float32)
    x0, y0 = shape[0] // 10, shape[1] // 10
    body = (slice(x0, shape[0] - x0), slice(y0, shape[1] - y0), slice(None))
    array[body] = 20.0 + rng.normal(0, 10, array[body].shape)  # the body, a box of soft tissue
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like: flipped against the model's LPI
    if flip:
        affine = np.diag([spacing[0], spacing[1], -spacing[2], 1.0])
        affine[:3, 3] = [-50.0, 30.0, 80.0]
    return Image(array, affine)


@pytest.mark.parametrize("flip", [False, True])
def test_boxed_postprocess_matches_full_grid(flip):
    masks, ref = compare(Predictor(blob_bundle(), "cpu"), synthetic_ct(flip=flip))
    assert masks["PTV70"].any() and masks["Cord"].any() and masks["Tiny"].any() and not masks["Never"].any()
    for a, b in (("PTV70", "PTV63"), ("PTV63", "PTV56"), ("PTV70", "PTV56")):
        assert not (masks[a] & masks[b]).any()  # the exclusive group still excludes


def test_boxed_postprocess_same_grid_and_subset():
    """The model grid equal to the input grid (no resampling) and a subset of the structures
    (one member of an exclusive group still competes with the others)."""
    image = synthetic_ct(shape=(48, 40, 32), spacing=(4.0, 4.0, 2.5))
    compare(Predictor(blob_bundle(), "cpu"), image, ["PTV63", "Parotid"])


@pytest.mark.data
@pytest.mark.timeout(900)
def test_boxed_postprocess_on_a_real_512_ct(real_data):
    """hn-ct on a real OpenKBP case resampled to 512 x 512 (60 slices of 3 mm, to keep it short)."""
    ct = real_data("openkbp") / "validation" / "pt_201" / "ct.nii.gz"
    if not ct.exists():
        pytest.skip("OpenKBP validation case pt_201 not present")
    image = read_image(ct)
    sub = np.asarray(image.array, np.float32)[:, :, 40:100]
    arr = resample(torch.as_tensor(sub)[None], (512, 512, sub.shape[2]), "linear")[0].numpy()
    scale = np.array([sub.shape[0] / 512, sub.shape[1] / 512, 1.0])
    affine = image.affine.copy()
    affine[:3, :3] = image.affine[:3, :3] * scale[None, :]
    affine[:3, 3] = (image.affine @ np.append(0.5 * scale - 0.5 + [0, 0, 40], 1.0))[:3]
    masks, _ = compare(Predictor("hn-ct", "cpu"), Image(arr, affine))
    assert sum(m.any() for m in masks.values()) >= 5
