"""Segmentation metrics for one structure: prediction and reference are boolean arrays on one grid.

All computations go through MONAI (``compute_dice``, ``compute_hausdorff_distance``,
``compute_average_surface_distance``, ``compute_surface_dice``) with the voxel spacing, so
distances are in mm. Empty masks are decided here, before MONAI sees them (MONAI returns
NaN/inf with warnings for those), with these conventions:

=================  =====  ======  =====  ============
case               dice   hd95    asd    surface dice
=================  =====  ======  =====  ============
both empty         1.0    0.0     0.0    1.0
one of them empty  0.0    inf     inf    0.0
=================  =====  ======  =====  ============

Surface distances are computed inside the box around both masks plus a margin of
``SURFACE_MARGIN`` voxels (MONAI's ``generate_spatial_bounding_box``): every edge voxel and its
neighbours stay inside, so the values equal the whole grid's, at a cost that follows the
structures' size instead of the grid's.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from monai.transforms.utils import generate_spatial_bounding_box

# MONAI 1.5 warns about its own deprecated argument on every surface-distance call
warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)

SURFACE_MARGIN = 2  # voxels kept around the union of both masks for the surface distances (>= 1)


def _pair(
    pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor, crop: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both masks as ``(1, 1, *spatial)`` float tensors; with ``crop`` only the box around their
    union plus ``SURFACE_MARGIN`` voxels (both must hold a voxel)."""
    p = torch.as_tensor(np.ascontiguousarray(pred) if not isinstance(pred, torch.Tensor) else pred).bool()
    r = torch.as_tensor(np.ascontiguousarray(ref) if not isinstance(ref, torch.Tensor) else ref).bool()
    if p.shape != r.shape:
        raise ValueError(f"prediction shape {tuple(p.shape)} != reference shape {tuple(r.shape)}")
    if crop:
        # MONAI's box reaches past the grid by the margin where a mask touches a face (meant for padding)
        start, end = generate_spatial_bounding_box((p | r)[None], margin=SURFACE_MARGIN)
        box = tuple(slice(max(0, int(a)), int(b)) for a, b in zip(start, end))
        p, r = p[box], r[box]
    return p[None, None].float(), r[None, None].float()


def _empties(pred, ref) -> tuple[bool, bool]:
    return not bool(np.any(np.asarray(pred))), not bool(np.any(np.asarray(ref)))


def dice(pred: np.ndarray | torch.Tensor, ref: np.ndarray | torch.Tensor) -> float:
    """Dice = 2|P∩R| / (|P|+|R|); 1.0 when both are empty."""
    p, r = _pair(pred, ref)
    return float(compute_dice(p, r, include_background=True, ignore_empty=False)[0, 0])


def dice_per_structure(pred: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Dice per sample and structure. pred, ref: ``(B, C, *spatial)`` binary -> ``(B, C)`` float."""
    return compute_dice(pred.float(), ref.float(), include_background=True, ignore_empty=False)


def _distance(fn, pred, ref, spacing_mm: Sequence[float], **kwargs) -> float:
    pe, re = _empties(pred, ref)
    if pe and re:
        return 0.0
    if pe or re:
        return math.inf
    p, r = _pair(pred, ref, crop=True)
    return float(fn(p, r, include_background=True, spacing=[float(s) for s in spacing_mm], **kwargs)[0, 0])


def hd95(pred, ref, spacing_mm: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance between surfaces, in mm."""
    return _distance(compute_hausdorff_distance, pred, ref, spacing_mm, percentile=95)


def average_surface_distance(pred, ref, spacing_mm: Sequence[float]) -> float:
    """Symmetric average surface distance, in mm."""
    return _distance(compute_average_surface_distance, pred, ref, spacing_mm, symmetric=True)


def surface_dice(pred, ref, spacing_mm: Sequence[float], tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice: fraction of both surfaces within ``tolerance_mm`` of the other."""
    pe, re = _empties(pred, ref)
    if pe and re:
        return 1.0
    if pe or re:
        return 0.0
    p, r = _pair(pred, ref, crop=True)
    # MONAI's surface Dice expects one-hot input with a background channel it can skip
    p2 = torch.cat([1 - p, p], dim=1)
    r2 = torch.cat([1 - r, r], dim=1)
    value = compute_surface_dice(
        p2, r2, class_thresholds=[float(tolerance_mm)], include_background=False, spacing=[float(s) for s in spacing_mm]
    )
    return float(value[0, 0])


def patient_points(mask: np.ndarray, affine: np.ndarray, decimals: int = 2) -> set[tuple[float, ...]]:
    """World positions (mm, rounded to ``decimals``) of the voxels of a 3D bool mask on a grid with ``affine``."""
    ijk = np.argwhere(np.asarray(mask))
    xyz = (np.asarray(affine)[:3, :3] @ ijk.T).T + np.asarray(affine)[:3, 3]
    return {tuple(p) for p in np.round(xyz, decimals)}


def patient_dice(mask_a: np.ndarray, affine_a: np.ndarray, mask_b: np.ndarray, affine_b: np.ndarray) -> float:
    """Dice of two masks compared in patient (world) coordinates: for grids whose voxel centres
    coincide but whose arrays are stored in different orders (flipped, axes swapped, a DICOM series
    sorted the other way). ValueError when the grids' voxel centres differ. 1.0 for two empty masks."""
    shape_a, shape_b = np.asarray(mask_a).shape, np.asarray(mask_b).shape
    grid_a = patient_points(_corner_mask(shape_a), affine_a)
    grid_b = patient_points(_corner_mask(shape_b), affine_b)
    if grid_a != grid_b or sorted(shape_a) != sorted(shape_b):
        raise ValueError("the two masks are not on the same voxel centres (different grids, not a reordering)")
    a, b = patient_points(mask_a, affine_a), patient_points(mask_b, affine_b)
    if not a and not b:
        return 1.0
    return 2.0 * len(a & b) / (len(a) + len(b))


def _corner_mask(shape: Sequence[int]) -> np.ndarray:
    m = np.zeros(tuple(shape), bool)
    for idx in np.ndindex(*(2,) * len(shape)):
        m[tuple(0 if i == 0 else -1 for i in idx)] = True
    return m


def volume_cc(mask: np.ndarray, spacing_mm: Sequence[float]) -> float:
    """Volume in cm³ (cc) of a 3D mask; for a 2D mask, area in cm²."""
    return float(np.count_nonzero(mask)) * float(np.prod(spacing_mm)) / (1000.0 if len(spacing_mm) == 3 else 100.0)


def structure_metrics(
    pred, ref, spacing_mm: Sequence[float], tolerance_mm: float = 2.0, voxel_tolerance: bool = False,
) -> dict[str, float]:
    """All metrics for one structure: dice, hd95_mm, asd_mm, surface_dice (at ``tolerance_mm``),
    volume difference; with ``voxel_tolerance`` also ``surface_dice_voxel``, the surface Dice at a
    tolerance of one voxel (the largest voxel dimension, ``max(spacing_mm)``: ~4 mm on OpenKBP)."""
    pred = np.asarray(pred).astype(bool)
    ref = np.asarray(ref).astype(bool)
    v_pred, v_ref = volume_cc(pred, spacing_mm), volume_cc(ref, spacing_mm)
    out = {"dice": dice(pred, ref)}
    if pred.any() and ref.any():  # the surface metrics' box, cut once (each metric's own cut is then the whole box)
        pred, ref = (t[0, 0].bool().numpy() for t in _pair(pred, ref, crop=True))
    out.update({
        "hd95_mm": hd95(pred, ref, spacing_mm),
        "asd_mm": average_surface_distance(pred, ref, spacing_mm),
        "surface_dice": surface_dice(pred, ref, spacing_mm, tolerance_mm),
        "volume_pred_cc": v_pred,
        "volume_ref_cc": v_ref,
        "volume_diff_cc": v_pred - v_ref,
    })
    if voxel_tolerance:
        out["surface_dice_voxel"] = surface_dice(pred, ref, spacing_mm, float(max(spacing_mm)))
    return out


AGREEMENT_MEASURES = ("dice", "soft_dice", "surface")


def label_agreement(
    probs: torch.Tensor, label: torch.Tensor, spacing_mm: Sequence[float], measure: str = "dice", threshold: float = 0.5,
) -> torch.Tensor:
    """How closely a network's prediction agrees with a (possibly wrong) label, per structure;
    higher is closer for every measure. probs ``(C, *spatial)`` in [0, 1], label ``(C, *spatial)``
    binary -> ``(C,)`` float64.

    ``dice``: Dice of the thresholded prediction (1 when both are empty). ``soft_dice``: Dice of the
    probabilities, ``2 sum(p g) / (sum p + sum g)`` (an empty label then scores 0, however little
    the network predicts there). ``surface``: ``-log(d + h)``, with ``d`` the symmetric mean surface
    distance in mm between the thresholded prediction and the label and ``h`` half the smallest
    voxel size (``d`` = the grid's diagonal when exactly one of them is empty). A disc of radius r
    moves a contour by r whatever the structure's size, so the distance rates erosion and dilation
    of large and small structures alike, where Dice forgives a wide structure's shift.
    """
    if measure not in AGREEMENT_MEASURES:
        raise ValueError(f"agreement measure must be one of {', '.join(AGREEMENT_MEASURES)}, got {measure!r}")
    probs, label = probs.detach().cpu(), torch.as_tensor(label).cpu()
    if measure == "soft_dice":
        p, g = probs.double().flatten(1), label.double().flatten(1)
        return 2 * (p * g).sum(1) / (p.sum(1) + g.sum(1)).clamp_min(1e-6)
    pred = probs >= threshold
    if measure == "dice":
        return dice_per_structure(pred[None], label[None].bool())[0].double()
    pred, ref = pred.numpy(), label.numpy().astype(bool)
    spacing = [float(v) for v in spacing_mm]
    diagonal = math.sqrt(sum((n * v) ** 2 for n, v in zip(ref.shape[1:], spacing)))
    d = np.array([average_surface_distance(pred[c], ref[c], spacing) for c in range(ref.shape[0])])
    return -torch.as_tensor(np.log(np.minimum(d, diagonal) + 0.5 * min(spacing)), dtype=torch.float64)
