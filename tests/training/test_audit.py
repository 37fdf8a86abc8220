"""Label-quality audit: QAM weights kept beside the model, pairs ranked, synthetic-noise check."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from delineo.cli import main
from delineo.errors import InputError
from delineo.training.audit import _apply_record, _auroc_low_score, audit

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
    base = tiny_config(image_dataset.root, tmp_path / "unused", epochs=2, steps_per_epoch=3)
    base["training"]["weighting"] = None
    import yaml

    cfg_path = tmp_path / "base.yaml"
    cfg_path.write_text(yaml.safe_dump(base))
    rc = main(["audit", "--data", str(image_dataset.root), "--out", str(tmp_path / "audit"), "--config", str(cfg_path),
               "--noise-fraction", "0.5", "--noise-radius", "1-2", "--device", "cpu", "--worst", "2"])
    assert rc in (0, None)
    model = tmp_path / "audit" / "model"
    assert (model / "quality.safetensors").is_file()
    rows = list(csv.DictReader(open(tmp_path / "audit" / "audit.csv")))
    assert len(rows) == len(image_dataset.cases)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores) and [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    summary = json.loads((tmp_path / "audit" / "audit.json").read_text())
    noise = summary["synthetic_noise"]
    # the training split (6 of 8) carries the recorded corruption; half of it is corrupted
    assert noise["evaluated_cases"] == 6 and noise["corrupted"] == 3
    assert 0.0 <= noise["auroc_low_score_for_corrupted"] <= 1.0
    assert len(summary["worst"]) == 2 and all((tmp_path / "audit" / "worst").glob("001_*.png"))

    # auditing again with the trained model gives the same ranking
    again = audit(image_dataset.root, tmp_path / "again", model=model, device="cpu", worst=0)
    rows2 = list(csv.DictReader(open(tmp_path / "again" / "audit.csv")))
    assert [r["case"] for r in rows2] == [r["case"] for r in rows] and again["cases"] == len(rows)


def test_audit_refuses_a_model_without_qam(trained_2d, image_dataset, tmp_path):
    with pytest.raises(InputError, match="quality-awareness"):
        audit(image_dataset.root, tmp_path / "a", model=trained_2d, device="cpu")
