"""Metrics against cases computed by hand (and a brute-force surface-distance reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from delineo.metrics.segmentation import (
    average_surface_distance,
    dice,
    dice_per_structure,
    hd95,
    label_agreement,
    structure_metrics,
    surface_dice,
    volume_cc,
)

SPACING = (1.0, 2.0, 3.0)


def cube(lo, size=4, shape=(12, 12, 12)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, a + size) for a in lo)] = True
    return m


def surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """Brute force: for every surface voxel of ``a`` (a voxel with a 6-neighbour outside ``a``),
    the distance in mm to the nearest surface voxel of ``b``."""
    ea = np.argwhere(a & ~ndimage.binary_erosion(a)) * np.asarray(spacing)
    eb = np.argwhere(b & ~ndimage.binary_erosion(b)) * np.asarray(spacing)
    return np.sqrt(((ea[:, None, :] - eb[None, :, :]) ** 2).sum(-1)).min(1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cubes_offset_by_one_voxel(axis):
    """Two 4^3 cubes, the second shifted by one voxel along ``axis`` with spacing (1, 2, 3) mm."""
    lo = [3, 3, 3]
    a = cube(lo)
    lo[axis] += 1
    b = cube(lo)
    # overlap 3*4*4 of 64 voxels each: 2*48/128
    assert dice(a, b) == pytest.approx(0.75)
    # a whole face (16 of 56 surface voxels, > 5%) is exactly one spacing step from the other surface
    assert hd95(a, b, SPACING) == pytest.approx(SPACING[axis])
    assert hd95(b, a, SPACING) == pytest.approx(SPACING[axis])
    d_ab, d_ba = surface_distances(a, b, SPACING), surface_distances(b, a, SPACING)
    assert d_ab.max() == pytest.approx(SPACING[axis])
    both = np.concatenate([d_ab, d_ba])
    assert average_surface_distance(a, b, SPACING) == pytest.approx(both.mean(), rel=1e-5)
    for tol in (0.5, 1.5, 2.5, 3.5):
        expected = float((both <= tol).mean())
        assert surface_dice(a, b, SPACING, tolerance_mm=tol) == pytest.approx(expected, abs=1e-5)


def test_offset_along_slice_axis_by_hand():
    """The axis-2 case worked out fully by hand: 16 face voxels at 3 mm, 4 at 1 mm, 36 at 0, each way."""
    a, b = cube((3, 3, 3)), cube((3, 3, 4))
    assert average_surface_distance(a, b, SPACING) == pytest.approx((16 * 3 + 4 * 1) / 56, rel=1e-5)
    assert surface_dice(a, b, SPACING, tolerance_mm=2.0) == pytest.approx(40 / 56, abs=1e-5)
    assert surface_dice(a, b, SPACING, tolerance_mm=3.0) == pytest.approx(1.0)


def test_identical_masks():
    a = cube((2, 3, 4))
    assert dice(a, a) == 1.0
    assert hd95(a, a, SPACING) == 0.0
    assert average_surface_distance(a, a, SPACING) == 0.0
    assert surface_dice(a, a, SPACING) == 1.0


def test_partial_overlap_dice_by_hand():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[0:4, 0:5] = True  # 20 px
    b[2:6, 0:5] = True  # 20 px, overlap 2*5 = 10
    assert dice(a, b) == pytest.approx(2 * 10 / 40)
    # 2D hd95: shifted by 2 rows at 0.5 mm/row
    assert hd95(a, b, (0.5, 1.0)) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "pred_empty, ref_empty, expected",
    [
        (True, True, {"dice": 1.0, "hd95_mm": 0.0, "asd_mm": 0.0, "surface_dice": 1.0}),
        (True, False, {"dice": 0.0, "hd95_mm": math.inf, "asd_mm": math.inf, "surface_dice": 0.0}),
        (False, True, {"dice": 0.0, "hd95_mm": math.inf, "asd_mm": math.inf, "surface_dice": 0.0}),
    ],
)
def test_empty_masks_follow_the_documented_table(pred_empty, ref_empty, expected, recwarn):
    a = cube((3, 3, 3))
    empty = np.zeros_like(a)
    pred = empty if pred_empty else a
    ref = empty if ref_empty else a
    m = structure_metrics(pred, ref, SPACING)
    for key, value in expected.items():
        assert m[key] == value, key
    # decided before MONAI sees them: no NaN/inf warnings from MONAI
    assert not [w for w in recwarn if "nan" in str(w.message).lower() or "inf" in str(w.message).lower()]


def test_volume_cc_and_area_cm2():
    a = cube((3, 3, 3))  # 64 voxels of 1*2*3 = 6 mm^3 -> 384 mm^3 = 0.384 cc
    assert volume_cc(a, SPACING) == pytest.approx(0.384)
    m2 = np.zeros((20, 20), bool)
    m2[:10, :10] = True  # 100 px of 1.4^2 mm^2 = 196 mm^2 = 1.96 cm^2
    assert volume_cc(m2, (1.4, 1.4)) == pytest.approx(1.96)
    m = structure_metrics(a, cube((3, 3, 3), size=2), SPACING)
    assert m["volume_pred_cc"] == pytest.approx(0.384)
    assert m["volume_ref_cc"] == pytest.approx(8 * 6 / 1000)
    assert m["volume_diff_cc"] == pytest.approx(0.384 - 0.048)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((4, 4), bool), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match="shape"):
        hd95(cube((1, 1, 1)), cube((1, 1, 1), shape=(12, 12, 13)), SPACING)


def test_accepts_tensors_and_non_bool():
    a = cube((3, 3, 3)).astype(np.uint8) * 255
    b = torch.as_tensor(cube((3, 3, 4)))
    assert dice(a, b) == pytest.approx(0.75)


def test_dice_per_structure_batch():
    a, b = cube((3, 3, 3)), cube((3, 3, 4))
    empty = np.zeros_like(a)
    pred = torch.as_tensor(np.stack([np.stack([a, a]), np.stack([empty, a])]))  # (B=2, C=2, ...)
    ref = torch.as_tensor(np.stack([np.stack([b, a]), np.stack([empty, empty])]))
    d = dice_per_structure(pred, ref)
    assert d.shape == (2, 2)
    assert d[0, 0].item() == pytest.approx(0.75)
    assert d[0, 1].item() == pytest.approx(1.0)
    assert d[1, 0].item() == pytest.approx(1.0)  # both empty
    assert d[1, 1].item() == pytest.approx(0.0)  # prediction where reference is empty


def _disc(n: int, r: int) -> np.ndarray:
    from skimage.morphology import disk

    m = np.zeros((n, n), np.uint8)
    m[n // 2 - r: n // 2 + r + 1, n // 2 - r: n // 2 + r + 1] = disk(r)
    return m


def _agree(pred_r: int | None, label_r: int, measure: str = "surface", spacing: float = 1.0, n: int = 64) -> float:
    probs = torch.zeros(1, n, n) if pred_r is None else torch.as_tensor(_disc(n, pred_r), dtype=torch.float32)[None]
    label = torch.as_tensor(_disc(n, label_r))[None]
    return float(label_agreement(probs, label, (spacing, spacing), measure)[0])


def test_label_agreement_surface_rates_a_shift_alike_whatever_the_size():
    """-log(mean surface distance in mm + half a pixel): a label eroded by 3 px scores the same on a
    small and a large disc, where Dice forgives the large one; distances are in mm; an empty
    prediction scores as far as the grid's diagonal."""
    exact, small, large = _agree(10, 10), _agree(8, 5), _agree(28, 25)
    assert exact == pytest.approx(-math.log(0.5))
    assert small == pytest.approx(large, abs=0.15) and small < exact - 1.0
    assert _agree(8, 5, "dice") < _agree(28, 25, "dice") - 0.2  # Dice: the small disc's label looks far worse
    assert _agree(8, 5, spacing=2.0) == pytest.approx(small - math.log(2.0))
    assert _agree(None, 10) == pytest.approx(-math.log(math.hypot(64, 64) + 0.5))
    nothing = label_agreement(torch.zeros(1, 8, 8), torch.zeros(1, 8, 8, dtype=torch.uint8), (1, 1), "surface")
    assert float(nothing[0]) == pytest.approx(exact)  # both empty: distance 0


def test_label_agreement_dice_hard_and_soft():
    probs = torch.full((2, 8, 8), 0.5)  # predicted everywhere at the threshold
    label = torch.zeros(2, 8, 8, dtype=torch.uint8)
    label[0] = 1  # structure 0 fills the image, structure 1 is empty
    torch.testing.assert_close(label_agreement(probs, label, (1, 1), "dice"), torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(label_agreement(probs, label, (1, 1), "soft_dice"), torch.tensor([2 / 3, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="agreement measure"):
        label_agreement(probs, label, (1, 1), "hausdorff")


@pytest.mark.parametrize("where", ["inside", "at the grid's edge", "torch tensors"])
def test_surface_metrics_on_the_union_box_equal_monai_on_the_whole_grid(where):
    """The surface distances are taken inside the box around both masks: the values must be MONAI's
    own on the uncropped grid, for a shifted, speckled structure with a stray island far away, and
    for one that touches the grid's faces (where no margin fits)."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(3)
    ref = np.zeros((40, 36, 30), bool)
    ref[(slice(10, 25), slice(12, 30), slice(5, 20)) if where != "at the grid's edge" else (slice(0, 20), slice(20, 36), slice(0, 30))] = True
    pred = np.roll(ref, 3, axis=0) & (rng.random(ref.shape) > 0.05)
    pred[35:38, 2:4, 25:28] = True
    spacing = (1.5, 1.0, 2.5)
    p, r = torch.as_tensor(pred)[None, None].float(), torch.as_tensor(ref)[None, None].float()
    whole = {
        "hd95": float(compute_hausdorff_distance(p, r, include_background=True, spacing=list(spacing), percentile=95)[0, 0]),
        "asd": float(compute_average_surface_distance(p, r, include_background=True, spacing=list(spacing), symmetric=True)[0, 0]),
        "sd": float(compute_surface_dice(torch.cat([1 - p, p], 1), torch.cat([1 - r, r], 1), class_thresholds=[2.5],
                                         include_background=False, spacing=list(spacing))[0, 0]),
    }
    a, b = (torch.as_tensor(pred), torch.as_tensor(ref)) if where == "torch tensors" else (pred, ref)
    assert hd95(a, b, spacing) == pytest.approx(whole["hd95"], abs=1e-6)
    assert average_surface_distance(a, b, spacing) == pytest.approx(whole["asd"], abs=1e-6)
    assert surface_dice(a, b, spacing, 2.5) == pytest.approx(whole["sd"], abs=1e-6)
    m = structure_metrics(pred, ref, spacing, tolerance_mm=2.5)  # one cut for all its surface metrics
    assert (m["hd95_mm"], m["asd_mm"], m["surface_dice"]) == pytest.approx((whole["hd95"], whole["asd"], whole["sd"]), abs=1e-6)
    assert m["volume_pred_cc"] == pytest.approx(pred.sum() * 1.5 * 2.5 / 1000) and m["dice"] == pytest.approx(dice(pred, ref))
