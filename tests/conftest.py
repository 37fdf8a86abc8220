"""Shared fixtures: tiny synthetic datasets in both on-disk layouts, tiny models, real-data lookup.

Everything here is small on purpose (16^3 volumes, 32x32 images, channels [4, 8, 16]) so the
whole suite runs in well under two minutes on a couple of CPU cores.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from delineo.settings import data_dir
from waits import LONG_TEST_DIRS, LONG_TEST_S

# ---- pytest configuration ----------------------------------------------------------------------


def pytest_configure(config):
    # MONAI and torch.jit emit deprecation noise on import/use that says nothing about delineo.
    for line in (
        "ignore::FutureWarning:monai.*",
        "ignore::DeprecationWarning:monai.*",
        "ignore::DeprecationWarning:torch.*",
        "ignore::UserWarning:monai.*",
    ):
        config.addinivalue_line("filterwarnings", line)


def pytest_collection_modifyitems(config, items):
    """The server, worker and DICOM node tests wait on other processes for up to LONG_HANG_S: they
    get LONG_TEST_S instead of the global limit (pyproject.toml), unless they name their own."""
    for item in items:
        if item.get_closest_marker("timeout") is None and Path(str(item.fspath)).parent.name in LONG_TEST_DIRS:
            item.add_marker(pytest.mark.timeout(LONG_TEST_S))


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """The machine is shared with a long training job: keep torch to one thread."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ---- 3D case-folder dataset ------------------------------------------------------------------

SHAPE_3D = (16, 16, 16)
SPACING_3D = (2.0, 2.0, 3.0)
STRUCTURES_3D = ["Ball", "Box"]
CT_WINDOW = {"kind": "window", "low": -200, "high": 400}


def affine_3d(spacing=SPACING_3D, origin=(-10.0, 20.0, -30.0)) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    return aff


def ball_mask(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return d2 <= radius**2


def box_mask(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


@dataclass
class CaseDataset:
    """What the 3D fixture wrote: ``root/<case>/ct.nii.gz`` + ``segmentations/<ROI>.nii.gz``."""

    root: Path
    cases: list[str]
    structures: list[str]
    affine: np.ndarray
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # case -> roi -> bool (all, even unwritten)
    missing: dict[str, list[str]] = field(default_factory=dict)  # case -> ROIs with no file

    def ct_path(self, case: str) -> Path:
        return self.root / case / "ct.nii.gz"

    def seg_path(self, case: str, roi: str) -> Path:
        return self.root / case / "segmentations" / f"{roi}.nii.gz"


def write_case_dataset(root: Path, n_cases: int = 4, missing: dict[str, list[str]] | None = None, seed: int = 0) -> CaseDataset:
    """Write a case-folder dataset: a bright sphere ("Ball", 300 HU) and a box ("Box", 150 HU) on
    a dark noisy background (-100 HU), int16 CT; masks uint8 {0,1}. ``missing``: ROIs to leave out."""
    rng = np.random.default_rng(seed)
    aff = affine_3d()
    cases = [f"case{i:02d}" for i in range(n_cases)]
    missing = {cases[-1]: ["Box"]} if missing is None else missing
    ds = CaseDataset(Path(root), cases, list(STRUCTURES_3D), aff, missing=missing)
    for i, case in enumerate(cases):
        ball = ball_mask(SHAPE_3D, (5 + i % 3, 6 + (i % 2), 8), 3.2)
        box = box_mask(SHAPE_3D, (9, 9 - i % 2, 3 + i % 3), (14, 14 - i % 2, 9 + i % 3))
        ct = np.full(SHAPE_3D, -100.0) + rng.normal(0, 10, SHAPE_3D)
        ct[box] = 150 + rng.normal(0, 10, int(box.sum()))
        ct[ball] = 300 + rng.normal(0, 10, int(ball.sum()))
        (ds.root / case / "segmentations").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(ct.round().astype(np.int16), aff), str(ds.ct_path(case)))
        ds.masks[case] = {"Ball": ball, "Box": box & ~ball}
        for roi, m in ds.masks[case].items():
            if roi in missing.get(case, []):
                continue
            nib.save(nib.Nifti1Image(m.astype(np.uint8), aff), str(ds.seg_path(case, roi)))
    return ds


@pytest.fixture
def case_dataset(tmp_path) -> CaseDataset:
    """A fresh 4-case 3D dataset (``case03`` has no ``Box`` file) in this test's tmp_path."""
    return write_case_dataset(tmp_path / "cases")


@pytest.fixture(scope="session")
def shared_case_dataset(tmp_path_factory) -> CaseDataset:
    """The same dataset, written once per session; tests must not modify it."""
    return write_case_dataset(tmp_path_factory.mktemp("shared") / "cases")


# ---- 2D image-folder dataset -------------------------------------------------------------------

SHAPE_2D = (32, 32)
STRUCTURES_2D = ["disc", "square"]


@dataclass
class ImageDataset:
    """What the 2D fixture wrote: ``root/images/<id>.png`` + ``root/<class>/<id>.png`` (0/255)."""

    root: Path
    cases: list[str]
    structures: list[str]
    masks: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def image_path(self, case: str) -> Path:
        return self.root / "images" / f"{case}.png"

    def mask_path(self, case: str, cls: str) -> Path:
        return self.root / cls / f"{case}.png"


def write_image_dataset(root: Path, n_cases: int = 8, seed: int = 0) -> ImageDataset:
    """A bright disc (230) and a mid-grey square (130) on a dark noisy background (~20), 32x32."""
    rng = np.random.default_rng(seed)
    cases = [f"img{i:02d}" for i in range(n_cases)]
    ds = ImageDataset(Path(root), cases, list(STRUCTURES_2D))
    for d in ["images", *STRUCTURES_2D]:
        (ds.root / d).mkdir(parents=True, exist_ok=True)
    for i, case in enumerate(cases):
        disc = ball_mask(SHAPE_2D, (9 + i % 4, 10 + (i * 3) % 5), 5.5)
        square = box_mask(SHAPE_2D, (18 + i % 3, 16 + i % 4), (28 + i % 3, 27 + i % 4))
        img = np.clip(20 + rng.normal(0, 6, SHAPE_2D), 0, 255)
        img[square] = 130 + rng.normal(0, 6, int(square.sum()))
        img[disc] = 230 + rng.normal(0, 6, int(disc.sum()))
        PILImage.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(ds.image_path(case))
        ds.masks[case] = {"disc": disc, "square": square & ~disc}
        for cls, m in ds.masks[case].items():
            PILImage.fromarray(m.astype(np.uint8) * 255).save(ds.mask_path(case, cls))
    return ds


@pytest.fixture
def image_dataset(tmp_path) -> ImageDataset:
    return write_image_dataset(tmp_path / "xray")


@pytest.fixture(scope="session")
def shared_image_dataset(tmp_path_factory) -> ImageDataset:
    return write_image_dataset(tmp_path_factory.mktemp("shared") / "xray")


# ---- configs and tiny trained models ---------------------------------------------------------


def tiny_config_2d(data_root: Path, out_root: Path, **training) -> dict:
    """A config dict for a 2-3 epoch run of a [4, 8, 16] U-Net on the synthetic image folder."""
    return {
        "name": "tiny2d",
        "output": str(out_root / "model"),
        "work_dir": str(out_root / "work"),
        "data": {"train": str(data_root), "val_fraction": 0.25, "split_seed": 0},
        "network": {"channels": [4, 8, 16]},
        "preprocess": {"intensity": {"kind": "window", "low": 0, "high": 255}},
        "postprocess": {"keep_largest": {"disc": 1, "square": 1}},
        "training": {
            "epochs": 3, "batch_size": 2, "lr": 0.01, "augment": "none", "seed": 0, "device": "cpu",
            "schedule": "constant", **training,
        },
    }


@pytest.fixture
def tiny_config() -> Callable[..., dict]:
    return tiny_config_2d


@pytest.fixture(scope="session")
def trained_2d(shared_image_dataset, tmp_path_factory) -> Path:
    """A tiny 2D model trained once per session on the synthetic image folder (model folder path)."""
    from delineo.training import TrainConfig, train

    out = tmp_path_factory.mktemp("trained2d")
    cfg = tiny_config_2d(shared_image_dataset.root, out, epochs=6, steps_per_epoch=6)
    return train(TrainConfig.from_dict(cfg))


# ---- real development data ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_data() -> Callable[[str], Path]:
    """``real_data("jsrt")`` -> that folder under ``DELINEO_DATA``, or skip the test when absent."""

    def get(name: str) -> Path:
        root = data_dir() / name
        if not root.is_dir():
            pytest.skip(f"real data {name!r} not found at {root} (set DELINEO_DATA)")
        return root

    return get


