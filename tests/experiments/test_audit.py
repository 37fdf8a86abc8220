"""Label-quality audit: agreement and QAM scores, pairs ranked, synthetic-noise check."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image as PILImage

from delineo.cli import main
from delineo.errors import ConfigError, InputError
from delineo.experiments.audit import _apply_record, _auroc_low_score, audit

pytestmark = pytest.mark.slow


def test_auroc_and_record_replay():
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    assert _auroc_low_score(scores, np.array([True, True, False, False])) == 1.0
    assert _auroc_low_score(scores, np.array([False, False, True, True])) == 0.0
    assert _auroc_low_score(scores, np.array([False] * 4)) is None
    label = np.zeros((2, 16, 16), np.uint8)
    label[:, 4:12, 4:12] = 1
    out = _apply_record(label, ["dilate:2", "none"])
    assert out[0].sum() > label[0].sum() and (out[1] == label[1]).all()


def test_audit_trains_a_qam_and_ranks_noisy_labels(tmp_path, tiny_config, image_dataset):
    """--weighting qam: the model keeps its QAM, every score is reported, ranking by agreement_z (the default)."""
    base = tiny_config(image_dataset.root, tmp_path / "unused", epochs=2, steps_per_epoch=3)
    base["training"]["weighting"] = None
    import yaml

    cfg_path = tmp_path / "base.yaml"
    cfg_path.write_text(yaml.safe_dump(base))
    rc = main(["audit", "--data", str(image_dataset.root), "--out", str(tmp_path / "audit"), "--config", str(cfg_path),
               "--noise-fraction", "0.5", "--noise-radius", "1-2", "--device", "cpu", "--worst", "2", "--weighting", "qam",
               "--ocm-lambda", "0.5"])
    assert rc in (0, None)
    model = tmp_path / "audit" / "model"
    assert (model / "quality.safetensors").is_file()
    trained = json.loads((model / "model.json").read_text())["training"]["config"]["training"]["weighting"]
    assert trained == {"kind": "qam", "ocm_lambda": 0.5}
    rows = list(csv.DictReader(open(tmp_path / "audit" / "audit.csv")))
    assert len(rows) == len(image_dataset.cases)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores) and [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert scores == [float(r["agreement_z"]) for r in rows] and all(r["qam_score"] != "" for r in rows)
    # the mean agreement is the mean of the per-structure agreements
    r0 = rows[0]
    assert float(r0["agreement"]) == pytest.approx((float(r0["agreement_disc"]) + float(r0["agreement_square"])) / 2)
    # agreement_z: each structure standardised over the pairs, then averaged
    disc = np.array([float(r["agreement_disc"]) for r in rows])
    square = np.array([float(r["agreement_square"]) for r in rows])
    z = ((disc - disc.mean()) / disc.std() + (square - square.mean()) / square.std()) / 2
    np.testing.assert_allclose([float(r["agreement_z"]) for r in rows], z, rtol=1e-4, atol=1e-5)
    summary = json.loads((tmp_path / "audit" / "audit.json").read_text())
    noise = summary["synthetic_noise"]
    # the training split (6 of 8) carries the recorded corruption; half of it is corrupted
    assert noise["evaluated_cases"] == 6 and noise["corrupted"] == 3
    assert set(noise["scores"]) == {"agreement", "agreement_z", "surface_z", "qam"}
    for check in noise["scores"].values():
        assert 0.0 <= check["auroc_low_score_for_corrupted"] <= 1.0
        assert check["best_possible_fraction"] == 1.0  # 3 corrupted, a lower half of 3
    assert len(summary["worst"]) == 2 and all((tmp_path / "audit" / "worst").glob("001_*.png"))

    # auditing again with the trained model gives the same ranking
    again = audit(image_dataset.root, tmp_path / "again", model=model, device="cpu", worst=0)
    rows2 = list(csv.DictReader(open(tmp_path / "again" / "audit.csv")))
    assert [r["case"] for r in rows2] == [r["case"] for r in rows] and again["cases"] == len(rows)


def test_audit_refuses_qam_ranking_for_a_model_without_qam(trained_2d, image_dataset, tmp_path):
    with pytest.raises(InputError, match="quality-awareness"):
        audit(image_dataset.root, tmp_path / "a", model=trained_2d, device="cpu", rank_by="qam")
    with pytest.raises(ConfigError, match="rank_by"):
        audit(image_dataset.root, tmp_path / "a", model=trained_2d, device="cpu", rank_by="loss")


def test_agreement_puts_a_misplaced_label_first(trained_2d, shared_image_dataset, tmp_path):
    """A label drawn in the wrong place (any model, no QAM) ranks as the most suspicious pair."""
    data = tmp_path / "xray"
    shutil.copytree(shared_image_dataset.root, data)
    wrong = np.zeros((32, 32), np.uint8)
    wrong[0:8, 22:32] = 255  # the top-right corner: no disc there in any image
    PILImage.fromarray(wrong).save(data / "disc" / "img03.png")
    summary = audit(data, tmp_path / "a", model=trained_2d, device="cpu", worst=1)
    rows = list(csv.DictReader(open(tmp_path / "a" / "audit.csv")))
    assert summary["ranked_by"] == "agreement_z" and "qam_score" not in rows[0]  # the default
    assert rows[0]["case"] == "img03" and float(rows[0]["agreement_disc"]) < 0.1
    assert min(float(r["agreement_disc"]) for r in rows[1:]) > 0.5
    assert (tmp_path / "a" / "worst" / "001_img03.png").is_file()
    assert [float(r["score"]) for r in rows] == [float(r["agreement_z"]) for r in rows]
    audit(data, tmp_path / "m", model=trained_2d, device="cpu", worst=0, rank_by="agreement")
    rows = list(csv.DictReader(open(tmp_path / "m" / "audit.csv")))
    assert rows[0]["case"] == "img03" and [float(r["score"]) for r in rows] == [float(r["agreement"]) for r in rows]
    # by surface distance: the misplaced label lies far from the prediction (its mean surface distance in mm is in the CSV)
    audit(data, tmp_path / "s", model=trained_2d, device="cpu", worst=0, rank_by="surface_z")
    rows = list(csv.DictReader(open(tmp_path / "s" / "audit.csv")))
    assert rows[0]["case"] == "img03" and [float(r["score"]) for r in rows] == [float(r["surface_z"]) for r in rows]
    assert float(rows[0]["asd_mm_disc"]) > 2 * max(float(r["asd_mm_disc"]) for r in rows[1:])
