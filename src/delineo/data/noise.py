"""Synthetic label noise (the thesis's protocol, Pick-and-Learn, MICCAI 2019).

A fraction ``alpha`` of the training samples is chosen; for each chosen sample and each
structure, the mask is eroded or dilated (chosen at random) with a disc (2D) or ball (3D)
whose radius in voxels is drawn uniformly from ``[r_min, r_max]``. Seeded and deterministic.

In a training config: ``training.label_noise: {fraction, radius: [r_min, r_max], seed}``;
``ignore_corrupted: true`` marks the corrupted samples' structures as not contoured, so only the
clean labels teach the network (the oracle reference of the noise benchmark: the best any
sample selection could do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import ball, disk

from delineo.metrics.segmentation import dice


@dataclass
class NoiseRecord:
    """What happened to one sample's labels."""

    case: str
    corrupted: bool
    operations: list[str]  # per structure: "erode:r", "dilate:r" or "none"
    dice_vs_clean: list[float]  # per structure, noisy vs clean


def corrupt_mask(mask: np.ndarray, radius: int, dilate: bool) -> np.ndarray:
    """Erode or dilate one binary mask ``(*spatial)`` with a disc/ball of ``radius`` voxels."""
    footprint = disk(radius) if mask.ndim == 2 else ball(radius)
    op = ndimage.binary_dilation if dilate else ndimage.binary_erosion
    return op(mask.astype(bool), structure=footprint)


def corrupt_labels(
    cases: list[str],
    labels: list[np.ndarray],
    present: list[np.ndarray],
    fraction: float,
    radius: tuple[int, int],
    seed: int = 0,
) -> tuple[list[np.ndarray], list[NoiseRecord]]:
    """Corrupt ``fraction`` of the samples. labels: list of ``(C, *spatial)`` -> new list and records.

    Samples are chosen from the case ids (sorted), so the choice does not depend on load order.
    """
    if not 0 <= fraction <= 1:
        raise ValueError(f"noise fraction must be in [0, 1], got {fraction}")
    r_min, r_max = int(radius[0]), int(radius[1])
    rng = np.random.default_rng(seed)
    order = sorted(range(len(cases)), key=lambda i: cases[i])
    n_noisy = int(round(fraction * len(cases)))
    chosen = set(order[i] for i in rng.permutation(len(cases))[:n_noisy])
    out, records = [], []
    for i in order:  # draw in case order: deterministic
        lab = labels[i]
        if i not in chosen:
            out.append((i, lab))
            records.append((i, NoiseRecord(cases[i], False, ["none"] * len(lab), [1.0] * len(lab))))
            continue
        noisy = lab.copy()
        ops, dices = [], []
        for c in range(lab.shape[0]):
            dilate = bool(rng.integers(0, 2))
            r = int(rng.integers(r_min, r_max + 1))
            if present[i][c]:
                noisy[c] = corrupt_mask(lab[c], r, dilate)
            ops.append(f"{'dilate' if dilate else 'erode'}:{r}" if present[i][c] else "none")
            dices.append(dice(noisy[c], lab[c]))
        out.append((i, noisy))
        records.append((i, NoiseRecord(cases[i], True, ops, dices)))
    out.sort(key=lambda t: t[0])
    records.sort(key=lambda t: t[0])
    return [o for _, o in out], [r for _, r in records]
