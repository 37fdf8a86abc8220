"""Preprocessing shared by training and inference, and training-time augmentation (MONAI).

A model's ``preprocess`` block (stored in ``model.json``) fixes both steps:

``spacing_mm``  voxel size the network sees (``None``: keep the input grid)
``intensity``   ``{"kind": "window", "low": L, "high": H}``: clip to [L, H], scale to [0, 1]
                (a CT window in HU, or 0-255 for 8-bit X-rays)
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    RandAffined,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandCropByPosNegLabeld,
    RandShiftIntensityd,
    RandSpatialCropd,
    ScaleIntensityRange,
    SpatialPadd,
)

from delineo.errors import ConfigError


def normalise_intensity(image: np.ndarray | torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """Apply a model's intensity normalisation. image: ``(1, *spatial)`` raw values -> float32 tensor."""
    kind = spec.get("kind", "window")
    if kind != "window":
        raise ConfigError(f"unknown intensity normalisation {kind!r} (expected 'window')")
    t = torch.as_tensor(np.asarray(image, dtype=np.float32) if isinstance(image, np.ndarray) else image.float())
    scaler = ScaleIntensityRange(a_min=float(spec["low"]), a_max=float(spec["high"]), b_min=0.0, b_max=1.0, clip=True)
    return torch.as_tensor(scaler(t), dtype=torch.float32)


def target_shape(shape: Sequence[int], spacing_mm: Sequence[float], target_mm: Sequence[float] | None) -> tuple[int, ...]:
    """Grid size covering the same field of view at ``target_mm`` (rounded, at least 1)."""
    if target_mm is None:
        return tuple(int(s) for s in shape)
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing_mm, target_mm))


def resample(t: torch.Tensor, shape: Sequence[int], mode: str = "linear") -> torch.Tensor:
    """Resample ``(C, *spatial)`` to ``shape`` over the same field of view.

    mode: ``linear`` (bi/trilinear, for images and probabilities) or ``nearest`` (label maps).
    Voxel centres are treated as cell centres (``align_corners=False``), so a round trip
    there and back keeps structures in place.
    """
    shape = tuple(int(s) for s in shape)
    if tuple(t.shape[1:]) == shape:
        return t
    spatial = len(shape)
    interp = {"linear": "bilinear" if spatial == 2 else "trilinear", "nearest": "nearest-exact"}[mode]
    x = t[None].float()
    kwargs = {"align_corners": False} if mode == "linear" else {}
    return F.interpolate(x, size=shape, mode=interp, **kwargs)[0]


def model_spacing_mm(spacing_mm: Sequence[float], spec: dict[str, Any]) -> tuple[float, ...]:
    """Voxel size (mm) of the model grid that :func:`preprocess` resamples an image of ``spacing_mm`` to."""
    return tuple(float(v) for v in (spec.get("spacing_mm") or spacing_mm))


def preprocess(image: np.ndarray, spacing_mm: Sequence[float], spec: dict[str, Any]) -> torch.Tensor:
    """Raw ``(1, *spatial)`` image -> normalised float32 tensor on the model grid."""
    t = normalise_intensity(image, spec.get("intensity", {"kind": "window", "low": 0, "high": 255}))
    return resample(t, target_shape(t.shape[1:], spacing_mm, spec.get("spacing_mm")), "linear")


def preprocess_labels(label: np.ndarray, spacing_mm: Sequence[float], spec: dict[str, Any]) -> torch.Tensor:
    """``(C, *spatial)`` binary masks -> uint8 tensor on the model grid (linear + 0.5 threshold)."""
    t = torch.as_tensor(label)
    shape = target_shape(t.shape[1:], spacing_mm, spec.get("spacing_mm"))
    if tuple(t.shape[1:]) == shape:
        return t.to(torch.uint8)
    return (resample(t.float(), shape, "linear") >= 0.5).to(torch.uint8)


def training_augmentation(
    spatial_dims: int, patch_size: Sequence[int] | None, strength: str = "default", foreground: float = 0.0
) -> Compose:
    """MONAI random transforms for ``{"image", "label"}`` dicts of ``(C, *spatial)`` tensors.

    No mirroring: left/right structures (parotids) and the heart are not symmetric.
    patch_size: random crop (after padding) to this size; ``None`` keeps the whole image.
    foreground: fraction of crops centred on a voxel inside any structure (the rest on a random
    voxel), as nnU-Net oversamples foreground so that small organs are seen often enough.
    """
    keys = ["image", "label"]
    transforms: list = []
    if patch_size is not None:
        transforms.append(SpatialPadd(keys, spatial_size=list(patch_size)))
        if foreground > 0:
            transforms.append(
                RandCropByPosNegLabeld(
                    keys, label_key="label", spatial_size=list(patch_size), pos=float(foreground),
                    neg=1.0 - float(foreground), num_samples=1, allow_smaller=True,
                )
            )
        else:
            transforms.append(RandSpatialCropd(keys, roi_size=list(patch_size), random_size=False))
    if strength != "none":
        rotate = np.deg2rad(15.0)
        transforms += [
            RandAffined(
                keys,
                prob=0.3,
                rotate_range=(rotate,) if spatial_dims == 2 else (rotate / 3, rotate / 3, rotate),
                scale_range=(0.15,) * spatial_dims,
                mode=("bilinear", "nearest"),
                padding_mode="border",
            ),
            RandScaleIntensityd("image", factors=0.1, prob=0.3),
            RandShiftIntensityd("image", offsets=0.05, prob=0.3),
            RandGaussianNoised("image", prob=0.15, std=0.02),
        ]
    return Compose(transforms)
