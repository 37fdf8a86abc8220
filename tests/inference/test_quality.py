"""Per-structure quality estimate (issue 21): features, calibration, out-of-fold honesty, where it shows."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from delineo.inference import quality as Q
from delineo.inference.predictor import Predictor
from delineo.models.networks import NetworkSpec
from delineo.models.registry import ModelBundle


def _features(probs, masks, spacing=(1.0, 1.0, 1.0)):
    return Q.structure_features(torch.as_tensor(np.asarray(probs, np.float32)), np.asarray(masks, bool), spacing)


def test_features_of_a_confident_an_unsure_and_an_empty_contour():
    m = np.zeros((3, 10, 10, 10), bool)
    m[:, 2:6, 2:6, 2:6] = True
    p = np.zeros(m.shape, np.float32)
    p[0][m[0]] = 1.0                      # sure of every voxel
    p[1][m[1]] = 0.6                      # unsure inside
    p[1, 7:9, 7:9, 7:9] = 0.4             # and a second candidate outside
    m[2] = False                          # nothing drawn
    sure, unsure, empty = _features(p, m, (2.0, 1.0, 1.0))
    assert sure["expected_dice"] == pytest.approx(1.0) and sure["confidence"] == pytest.approx(1.0)
    assert sure["outside"] == 0 and sure["uncertain"] == 0 and sure["empty"] == 0
    assert sure["log_volume"] == pytest.approx(np.log1p(64 * 2.0))
    assert unsure["expected_dice"] < 0.75 and unsure["confidence"] == pytest.approx(0.6)
    assert unsure["outside"] == pytest.approx(8 * 0.4 / 64, rel=1e-5) and unsure["uncertain"] == pytest.approx(72 / 64)
    assert empty["empty"] == 1 and empty["expected_dice"] == 0


def test_haze_below_the_floor_does_not_count():
    m = np.zeros((1, 40, 40, 40), bool)
    m[0, :3, :3, :3] = True
    p = np.full(m.shape, 0.02, np.float32)  # faint haze over 64000 voxels would swamp 27
    p[m] = 0.99
    (f,) = _features(p, m)
    assert f["expected_dice"] > 0.99 and f["outside"] == pytest.approx(0, abs=1e-6)


def _synthetic_samples(n_cases=30, seed=0):
    """Dice that follows expected_dice (plus noise), two structures of different typical quality."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_cases):
        for s, offset in (("Good", 0.2), ("Poor", -0.2)):
            e = float(np.clip(rng.uniform(0.3, 0.9) + offset / 2, 0.05, 0.99))
            dice = float(np.clip(e + offset / 4 + rng.normal(0, 0.03), 0, 1))
            f = {"expected_dice": e, "confidence": 0.5 + e / 2, "outside": 1 - e, "uncertain": 1 - e,
                 "log_volume": float(np.log1p(1000 + rng.normal(0, 50))), "empty": 0.0}
            out.append({"case": f"c{i:02d}", "structure": s, "features": f, "dice": dice,
                        "reference_log_volume": float(np.log1p(1000 + rng.normal(0, 50)))})
    return out


def test_cross_fitting_is_out_of_fold_and_follows_dice():
    samples = _synthetic_samples()
    full, folds, rows = Q.cross_fit(samples, ["Good", "Poor"], folds=5)
    assert len(folds) == 5 and len(rows) == len(samples)
    held = [set(full.cases) - set(f.cases) for f in folds]  # what each fold's calibrator never saw
    assert set().union(*held) == set(full.cases) and sum(map(len, held)) == len(full.cases)  # a partition
    m = Q.agreement_report(rows, ["Good", "Poor"])
    assert m["overall"]["spearman"] > 0.9 and m["overall"]["mae"] < 0.05
    assert m["overall"]["auroc_dice_below_0.7"] > 0.9
    assert all(0 <= r["quality"] <= 1 for r in rows)


def test_agreement_figures_by_hand():
    a = Q.agreement([0.9, 0.8, 0.3, 0.6], [0.95, 0.75, 0.2, 0.65], threshold=0.65)
    assert a["spearman"] == pytest.approx(1.0) and a["mae"] == pytest.approx((0.05 + 0.05 + 0.1 + 0.05) / 4)
    assert a["auroc_dice_below_0.7"] == 1.0 and a["n_dice_below_0.7"] == 2
    assert a["sensitivity"] == 1.0 and a["specificity"] == 1.0 and a["review_fraction"] == 0.5
    assert Q.auroc([0.1, 0.2], [True, True]) is None
    assert Q.auroc([1, 1, 1, 1], [True, False, True, False]) == 0.5  # ties count half
    assert Q.choose_threshold([0.1, 0.2, 0.3, 0.9], [0.1, 0.2, 0.5, 0.9], sensitivity=1.0) == pytest.approx(0.3001)
    assert Q.choose_threshold([0.9], [0.95]) == 0.7  # nothing bad to learn from


def _estimator(samples=None, threshold=0.6):
    samples = samples or _synthetic_samples()
    full, folds, _ = Q.cross_fit(samples, ["Good", "Poor"], folds=3)
    return Q.QualityEstimator(full, threshold, folds, {"model": "x"})


def test_stored_estimator_round_trip_and_the_calibrator_that_never_saw_a_case(tmp_path):
    est = _estimator()
    loaded = Q.load_quality(est.save(tmp_path).parent)
    f = _synthetic_samples()[0]["features"]
    assert loaded.estimate("Good", f) == est.estimate("Good", f)
    assert loaded.calibrator_for("new-case") is loaded.calibrator
    fold = loaded.calibrator_for("c00")
    assert fold is not loaded.calibrator and "c00" not in fold.cases
    assert loaded.estimate("Good", {**f, "empty": 1.0}) == {"quality": 0.0, "review": True}
    assert Q.load_quality(tmp_path / "nothing-here") is None and Q.load_quality(None) is None


def test_an_estimator_fitted_for_other_weights_is_not_used(tmp_path, caplog):
    (tmp_path / "weights.safetensors").write_bytes(b"old weights")
    est = _estimator()
    est.meta["weights_sha256"] = Q.weights_digest(tmp_path)
    est.save(tmp_path)
    assert Q.load_quality(tmp_path) is not None
    (tmp_path / "weights.safetensors").write_bytes(b"retrained weights")
    assert Q.load_quality(tmp_path) is None
    assert "quality-fit" in caplog.text


def test_an_estimator_fitted_with_other_inference_settings_is_not_used(tmp_path, caplog):
    """Fitted on whole-volume contours: not applied to sliding-window or body-box ones (other
    probabilities, other features); an estimator from before the settings were recorded still loads."""
    est = _estimator()
    est.meta["inference"] = Q.inference_signature({"patch_size": None, "overlap": 0.25})
    est.save(tmp_path)
    assert Q.load_quality(tmp_path, {"patch_size": None, "overlap": 0.5, "mirror": False, "threshold": 0.5}) is not None
    assert Q.load_quality(tmp_path, {"patch_size": [64, 64, 64], "overlap": 0.5}) is None
    assert "inference settings" in caplog.text
    assert Q.load_quality(tmp_path, {"crop_foreground": {"threshold": -500, "margin_mm": 10}}) is None
    assert Q.load_quality(tmp_path, {"threshold": 0.4}) is None
    # the post-processing makes the masks the features are measured on
    assert Q.load_quality(tmp_path, {"postprocess": {"keep_largest": {"PTV70": 1}}}) is None
    est.meta["inference"] = Q.inference_signature({"postprocess": {"keep_largest": {"PTV70": 1}}})
    est.save(tmp_path)
    assert Q.load_quality(tmp_path, {"postprocess": {"keep_largest": {"PTV70": 1}}}) is not None
    assert Q.load_quality(tmp_path, {"postprocess": {"keep_largest": {"PTV70": 2}}}) is None
    # fitted before the post-processing was recorded: compared on what it records
    est.meta["inference"] = {k: v for k, v in Q.inference_signature({}).items() if k != "postprocess"}
    est.save(tmp_path)
    assert Q.load_quality(tmp_path, {"postprocess": {"keep_largest": {"PTV70": 1}}}) is not None
    assert Q.load_quality(tmp_path, {"threshold": 0.4}) is None
    del est.meta["inference"]
    est.save(tmp_path)
    assert Q.load_quality(tmp_path, {"patch_size": [64, 64, 64]}) is not None


class Blob(nn.Module):
    """A 'network' that draws a sure cube for "Good" and an unsure one for "Poor"."""

    spec = NetworkSpec(spatial_dims=3, out_channels=2, channels=[4, 8])

    def forward(self, x):
        out = torch.full((x.shape[0], 2, *x.shape[2:]), -20.0)
        out[:, 0, 4:10, 4:10, 4:10] = 20.0
        out[:, 1, 4:10, 4:10, 4:10] = 0.3
        out[:, 1, 11:14, 11:14, 11:14] = -0.2
        return out


def _blob_predictor():
    meta = {"name": "blob", "structures": ["Good", "Poor"], "preprocess": {"orientation": "LPI", "intensity": {"kind": "window", "low": -1000, "high": 1000}}}
    predictor = Predictor(ModelBundle(None, meta, Blob()), "cpu", amp=False)
    assert predictor.quality is None  # nothing stored with it
    return predictor


def test_predictor_gives_quality_from_the_same_pass(shared_case_dataset):
    from delineo.data.io import read_image

    image = read_image(shared_case_dataset.ct_path(shared_case_dataset.cases[0]))
    predictor = _blob_predictor()
    plain = predictor.predict(image)
    assert "quality" not in predictor.timings
    masks, info = predictor.predict_with_quality(image)
    assert info == {}  # no estimator, no features asked for
    masks, info = predictor.predict_with_quality(image, features=True)
    assert info["Good"]["features"]["expected_dice"] > info["Poor"]["features"]["expected_dice"]
    predictor.quality = _estimator(threshold=0.5)
    masks, info = predictor.predict_with_quality(image)
    for name in plain:
        np.testing.assert_array_equal(masks[name], plain[name])
    assert set(info["Good"]) == {"features", "quality", "review"} and 0 <= info["Good"]["quality"] <= 1
    assert info["Good"]["quality"] > info["Poor"]["quality"] and info["Poor"]["review"]
    assert "quality" in predictor.timings


def test_quality_in_summary_overview_and_rt_structure_set(tmp_path, caplog):
    import pydicom

    from delineo.api import contour_image
    from delineo.data.io import Image
    from delineo.dicom.series import read_series
    from delineo.dicom.write_ct import write_ct_series

    predictor = _blob_predictor()
    predictor.quality = _estimator(threshold=0.5)
    affine = np.diag([-2.0, -2.0, 3.0, 1.0])
    image = Image(np.random.default_rng(0).normal(0, 20, (16, 16, 16)).astype(np.float32), affine)
    write_ct_series(image, tmp_path / "ct")
    series = read_series(tmp_path / "ct")
    summary = contour_image(series.image, tmp_path / "out", predictor=predictor, series=series)
    good, poor = summary["structures"]["Good"], summary["structures"]["Poor"]
    assert not good["review"] and poor["review"] and good["quality"] > poor["quality"]
    assert summary["quality_threshold"] == 0.5
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["structures"]["Poor"]["review"] is True
    rois = {r.ROIName: r for r in pydicom.dcmread(summary["rtstruct"]).StructureSetROISequence}
    assert "quality" in rois["Good"].ROIDescription and "REVIEW" not in rois["Good"].ROIDescription
    assert "REVIEW" in rois["Poor"].ROIDescription and f"{poor['quality']:.2f}" in rois["Poor"].ROIDescription
    assert "quality estimate for Poor" in caplog.text
    assert (tmp_path / "out" / "overview.png").is_file()


def test_overview_marks_flagged_structures(tmp_path, monkeypatch):
    import matplotlib.legend

    from delineo.contours.overview import write_overview
    from delineo.data.io import Image

    legends = []
    original = matplotlib.legend.Legend.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        legends.append(self)

    monkeypatch.setattr(matplotlib.legend.Legend, "__init__", spy)
    img = np.zeros((20, 20), np.float32)
    a, b = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    a[2:8, 2:8] = True
    b[10:16, 10:16] = True
    write_overview(Image(img, np.eye(4)), {"A": a, "B": b}, tmp_path, review={"B": "(quality 0.41)"})
    labels = [(t.get_text(), t.get_color()) for t in legends[0].get_texts()]
    assert labels[0] == ("! B REVIEW (quality 0.41)", "#c00000")  # flagged first, in red
    assert labels[1][0] == "A"


def test_fit_evaluate_and_contour_with_a_trained_model(tmp_path, trained_2d, shared_image_dataset, monkeypatch):
    """End to end on a tiny trained 2D model: quality-fit writes quality.json and the model card,
    evaluate reports quality beside dice (out-of-fold on the fitting cases), contour puts it in summary.json."""
    from delineo import api
    from delineo.cli import main

    model = tmp_path / "model"
    shutil.copytree(trained_2d, model)
    out = tmp_path / "fit.json"
    args = ["quality-fit", "--model", str(model), "--data", str(shared_image_dataset.root), "--folds", "4", "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["delineo", *args])
    rc = main(args)
    assert rc == 0
    stored = json.loads((model / "quality.json").read_text())
    assert len(stored["folds"]) == 4 and stored["weights_sha256"] == Q.weights_digest(model)
    meta = json.loads((model / "model.json").read_text())
    assert stored["inference"] == Q.inference_signature({**meta["inference"], "postprocess": meta["postprocess"]})
    card = json.loads((model / "model.json").read_text())["quality"]
    assert card["file"] == "quality.json" and "quality-fit" in card["command"] and "spearman" in card["out_of_fold"]
    fit = json.loads(out.read_text())
    report = api.evaluate(str(model), shared_image_dataset.root, tmp_path / "report.json", device="cpu", progress=False)
    case = report["cases"][0]
    assert 0 <= case["disc"]["quality"] <= 1 and isinstance(case["disc"]["review"], bool)
    assert set(report["quality"]["structures"]) == {"disc", "square"}
    assert {"spearman", "mae", "auroc_dice_below_0.7"} <= set(report["quality"]["overall"])
    assert "out-of-fold for the 8 case" in report["quality"]["calibration"]
    # evaluate on the fitting cases gives the same out-of-fold estimates quality-fit measured
    by_fit = {(r["case"], r["structure"]): r["quality"] for r in fit["rows"]}
    for row in report["cases"]:
        for s in ("disc", "square"):
            assert row[s]["quality"] == pytest.approx(by_fit[(row["case"], s)], abs=1e-4)
    summary = api.contour(shared_image_dataset.image_path(shared_image_dataset.cases[0]), tmp_path / "c", model=str(model), device="cpu")
    assert {"quality", "review"} <= set(summary["structures"]["disc"])
