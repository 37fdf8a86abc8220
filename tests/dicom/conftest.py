"""DICOM test helpers: synthetic CT series written as real CT Image Storage files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from delineo.data.io import Image
from system_tools import dcmtk

AFFINE = np.array([[-2.0, 0, 0, 50.0], [0, -2.5, 0, 30.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])
SHAPE = (24, 20, 12)


def phantom() -> tuple[Image, dict[str, np.ndarray]]:
    """HU volume (air, a water body, a bone block) and two masks on its grid."""
    a = np.full(SHAPE, -1000.0, np.float32)
    body = np.zeros(SHAPE, bool)
    body[3:21, 3:17, 1:11] = True
    a[body] = 0.0
    bone = np.zeros(SHAPE, bool)
    bone[8:14, 6:12, 4:9] = True
    a[bone] = 700.0
    ring = body.copy()
    ring[6:18, 6:14, :] = False  # a body wall with a hole in every slice
    return Image(a, AFFINE), {"Mandible": bone, "PTV70": ring}


def needs(tool: str):
    return pytest.mark.skipif(not Path(dcmtk(tool)).is_file(), reason=f"{tool} not installed (make system-deps)")


@pytest.fixture
def ct_dir(tmp_path) -> Path:
    from delineo.dicom.write_ct import write_ct_series

    image, _ = phantom()
    write_ct_series(image, tmp_path / "ct", patient_name="Doe^Jane", patient_id="P123")
    return tmp_path / "ct"


@pytest.fixture(scope="session")
def tiny_ct_model(tmp_path_factory) -> Path:
    """An untrained 3D U-Net whose output bias makes every voxel positive: non-empty contours,
    a PTV (target) and an organ at risk, so both RT ROI Interpreted Types are written."""
    from delineo.models.networks import NetworkSpec, build_network
    from delineo.models.registry import save_model

    net = build_network(NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8], head_bias=8.0))
    meta = {"name": "tiny-ct", "structures": ["PTV70", "Mandible"], "roi_types": {"PTV70": "PTV", "Mandible": "ORGAN"},
            "preprocess": {"intensity": {"kind": "window", "low": -200, "high": 400}}}
    return save_model(tmp_path_factory.mktemp("model") / "tiny-ct", net, meta)
