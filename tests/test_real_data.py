"""The real development data (JSRT chest X-rays, OpenKBP head-and-neck CT), a couple of cases each.

Skipped when ``DELINEO_DATA`` (default ``../shared/data``) does not hold them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from delineo.data.datasets import CaseFolderDataset, ImageFolderDataset, open_dataset
from delineo.settings import models_dir

pytestmark = pytest.mark.data

OPENKBP_STRUCTURES = {"PTV70", "PTV63", "PTV56", "Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx", "Mandible"}


def test_jsrt_layout(real_data):
    root = real_data("jsrt")
    ds = open_dataset(root, pixel_spacing_mm=1.4)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.structures == ["clavicle", "heart", "lung"]
    assert len(ds) >= 150 and all(c.startswith("JPC") for c in ds.cases)
    for i in (0, len(ds) - 1):
        s = ds[i]
        assert s["image"].shape == (1, 256, 256)
        assert s["present"].all()
        assert s["spacing_mm"] == (1.4, 1.4)
        lung, heart = s["label"][2], s["label"][1]
        assert 0.1 < lung.mean() < 0.6 and 0.02 < heart.mean() < 0.3
        assert 0 <= s["image"].min() and s["image"].max() <= 255


def test_openkbp_layout(real_data):
    root = real_data("openkbp")
    train = root / "train"
    cases = sorted(p.name for p in train.iterdir() if (p / "ct.nii.gz").is_file())[:2]
    ds = open_dataset(train, cases=cases)
    assert isinstance(ds, CaseFolderDataset)
    assert ds.cases == cases
    assert "PTV70" in ds.structures and set(ds.structures) <= OPENKBP_STRUCTURES
    s = ds[0]
    case_dir = train / cases[0] / "segmentations"
    assert s["image"].shape == (1, 128, 128, 128)
    assert s["image"].min() == -1024
    assert 3.0 < s["spacing_mm"][0] < 5.0 and 2.0 < s["spacing_mm"][2] < 3.5
    for c, name in enumerate(ds.structures):
        # presence follows the files exactly: a missing file is unknown, not empty
        assert bool(s["present"][c]) == (case_dir / f"{name}.nii.gz").is_file()
        if not s["present"][c]:
            assert not s["label"][c].any()
    assert s["present"][ds.structures.index("PTV70")] and s["label"][ds.structures.index("PTV70")].any()


def test_openkbp_presence_without_reading_pixels(real_data):
    val = real_data("openkbp") / "validation"
    ds = open_dataset(val, structures=sorted(OPENKBP_STRUCTURES))
    assert len(ds) >= 20
    presence = np.array([ds.presence(c) for c in ds.cases])
    ptv70 = sorted(OPENKBP_STRUCTURES).index("PTV70")
    assert presence[:, ptv70].all()  # PTV70 is in every case
    assert not presence.all()  # ... and some structures are not contoured in some cases


def test_bundled_cxr_model_on_held_out_jsrt_images(real_data, tmp_path):
    root = real_data("jsrt")
    model = models_dir() / "cxr-jsrt"
    if not (model / "model.json").is_file():
        pytest.skip(f"no bundled model at {model}")
    from delineo.inference.evaluate import evaluate

    meta = json.loads((model / "model.json").read_text())
    val_cases = meta.get("training", {}).get("data", {}).get("val_cases") or sorted(p.stem for p in (root / "images").glob("*.png"))
    report = evaluate(model, root, tmp_path / "r.json", device="cpu", cases=val_cases[:3])
    assert [c["case"] for c in report["cases"]] == sorted(val_cases[:3])
    assert set(report["structures"]) == {"lung", "heart", "clavicle"}
    assert report["mean_dice"] > 0.5, report["structures"]
