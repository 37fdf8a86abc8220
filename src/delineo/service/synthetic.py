"""Synthetic studies and a tiny 3D model, for the stress test, demos and tests (no patient data).

The CT is a bright ball (300 HU) and a box (150 HU) in a noisy dark background (-100 HU);
the tiny model is a [4, 8, 16]-channel 3D U-Net with structures ``Ball`` and ``Box``, either
untrained (random contours, instant) or trained for a few seconds on such volumes.
"""

from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

import numpy as np

SPACING = (2.0, 2.0, 3.0)
STRUCTURES = ["Ball", "Box"]
WINDOW = {"kind": "window", "low": -200, "high": 400}


def synthetic_volume(size: int = 32, seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """(ct int16 HU, {structure: bool mask}, affine) on a ``size``^3 grid."""
    rng = np.random.default_rng(seed)
    shape = (size, size, size)
    grid = np.indices(shape)
    c = np.array([0.35, 0.4, 0.5]) * size + rng.uniform(-0.05, 0.05, 3) * size
    ball = sum((g - ci) ** 2 for g, ci in zip(grid, c)) <= (0.2 * size) ** 2
    lo = (np.array([0.55, 0.55, 0.2]) * size).astype(int)
    hi = (np.array([0.85, 0.85, 0.6]) * size).astype(int)
    box = np.zeros(shape, bool)
    box[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    box &= ~ball
    ct = np.full(shape, -100.0) + rng.normal(0, 10, shape)
    ct[box] = 150 + rng.normal(0, 10, int(box.sum()))
    ct[ball] = 300 + rng.normal(0, 10, int(ball.sum()))
    affine = np.diag([*SPACING, 1.0])
    affine[:3, 3] = [-size, -size, -1.5 * size]
    return ct.round().astype(np.int16), {"Ball": ball, "Box": box}, affine


def synthetic_nifti_bytes(size: int = 32, seed: int = 0) -> bytes:
    """A synthetic CT as the bytes of a ``.nii.gz`` file."""
    import nibabel as nib

    ct, _, affine = synthetic_volume(size, seed)
    return gzip.compress(nib.Nifti1Image(ct, affine).to_bytes(), compresslevel=1)


def write_synthetic_dataset(root: Path, n_cases: int = 4, size: int = 24) -> Path:
    import nibabel as nib

    for i in range(n_cases):
        ct, masks, affine = synthetic_volume(size, seed=i)
        case = Path(root) / f"case{i:02d}"
        (case / "segmentations").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(ct, affine), str(case / "ct.nii.gz"))
        for name, m in masks.items():
            nib.save(nib.Nifti1Image(m.astype(np.uint8), affine), str(case / "segmentations" / f"{name}.nii.gz"))
    return Path(root)


def tiny_model(folder: str | Path, *, name: str = "tiny-ct", train_epochs: int = 0, seed: int = 0) -> Path:
    """Write a tiny 3D model folder (``model.json`` + weights). ``train_epochs`` > 0 trains it on
    synthetic volumes first (a few seconds a epoch on a CPU), so its contours follow the shapes."""
    import torch

    from delineo.models.networks import NetworkSpec, build_network
    from delineo.models.registry import save_model

    folder = Path(folder)
    meta = {
        "name": name,
        "description": "tiny synthetic 3D model (Ball, Box) for tests and the stress benchmark; not clinical",
        "structures": list(STRUCTURES),
        "roi_types": {"Ball": "PTV", "Box": "ORGAN"},
        "preprocess": {"intensity": WINDOW},
        "inference": {"patch_size": None, "threshold": 0.5},
        "postprocess": {"keep_largest": {"Ball": 1, "Box": 1}},
    }
    if train_epochs <= 0:
        torch.manual_seed(seed)
        net = build_network(NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8, 16]))
        return save_model(folder, net.eval(), meta)
    from delineo.training import TrainConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        data = write_synthetic_dataset(Path(tmp) / "data", n_cases=4, size=24)
        cfg = {
            "name": name,
            "output": str(folder),
            "work_dir": str(Path(tmp) / "work"),
            "data": {"train": str(data), "val_fraction": 0.25, "split_seed": 0},
            "network": {"spatial_dims": 3, "channels": [4, 8, 16]},
            "preprocess": {"intensity": WINDOW},
            "postprocess": {"keep_largest": {"Ball": 1, "Box": 1}},
            "training": {"epochs": train_epochs, "batch_size": 2, "lr": 0.01, "augment": "none", "seed": seed,
                         "device": "cpu", "schedule": "constant", "steps_per_epoch": 8},
        }
        out = train(TrainConfig.from_dict(cfg))
    import json

    card = Path(out) / "model.json"
    m = json.loads(card.read_text())
    m.update({k: meta[k] for k in ("description", "roi_types")})
    card.write_text(json.dumps(m, indent=2) + "\n")
    return Path(out)
