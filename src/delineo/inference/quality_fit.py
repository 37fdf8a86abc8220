"""Fitting a model's quality estimate (``delineo quality-fit``): contour held-out cases with the
model, measure each contour's Dice against the reference, and fit the calibration of
:mod:`delineo.inference.quality` on them (cross-fitted). Above the predictor, which uses the fitted
estimate; the estimator itself stays in :mod:`delineo.inference.quality`."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from delineo.data.datasets import open_dataset
from delineo.data.io import Image
from delineo.errors import InputError
from delineo.inference.predictor import Predictor
from delineo.inference.quality import (
    FLAG_DICE,
    QUALITY_JSON,
    QualityEstimator,
    agreement_report,
    choose_threshold,
    cross_fit,
    inference_signature,
    weights_digest,
)
from delineo.machine import hardware_description
from delineo.metrics.segmentation import dice as dice_score
from delineo.models.registry import resolve_model
from delineo.progress import Steps


def collect_samples(predictor, data: str | Path, cases: Sequence[str] | None = None, *, progress: bool = True) -> list[dict[str, Any]]:
    """Run ``predictor`` over a dataset: per case and structure contoured in its reference, the
    features, the Dice against the reference, and the reference's log volume."""
    spacing = predictor.bundle.pixel_spacing_mm
    dataset = open_dataset(data, None, cases, pixel_spacing_mm=spacing)
    wanted = [s for s in predictor.structures if s in dataset.structures]
    dataset = open_dataset(data, wanted, cases, pixel_spacing_mm=spacing)
    samples = []
    steps = Steps(len(dataset), "quality features", unit="case") if progress else None
    for i in range(len(dataset)):
        sample = dataset[i]
        image = Image(sample["image"][0], sample["affine"])
        masks, info = predictor.predict_with_quality(image, wanted, features=True)
        voxel_mm3 = float(np.prod(sample["spacing_mm"]))
        for c, name in enumerate(wanted):
            if not sample["present"][c]:
                continue
            ref = sample["label"][c].astype(bool)
            samples.append({
                "case": str(sample["case"]), "structure": name, "features": info[name]["features"],
                "dice": float(dice_score(masks[name], ref)),
                "reference_log_volume": math.log1p(float(ref.sum()) * voxel_mm3),
            })
        if steps is not None:
            steps.step(str(sample["case"]))
    if steps is not None:
        steps.close()
    return samples


def fit_quality(
    model: str | Path,
    data: str | Path,
    *,
    cases: Sequence[str] | None = None,
    folds: int = 5,
    alpha: float = 1.0,
    sensitivity: float = 0.9,
    device: str = "cpu",
    save: bool = True,
    command: str | None = None,
    save_features: str | Path | None = None,
    features_from: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit the quality estimator of ``model`` on ``data`` (cases the model did not train on) and
    store it as ``quality.json`` in the model folder, recorded in its ``model.json``. Returns the
    out-of-fold measurement (Spearman, MAE, AUROC per structure and overall).
    ``save_features``: also write the per-case features and Dice (JSON); ``features_from``: fit from
    such a file instead of contouring the cases again (refused when it was made with other weights)."""
    folder = resolve_model(model)
    t0 = time.perf_counter()
    predictor = Predictor(str(folder), device)
    digest = weights_digest(folder)
    signature = inference_signature(predictor.inference_settings)
    if features_from is not None:
        saved = json.loads(Path(features_from).read_text())
        if saved.get("weights_sha256") != digest:
            raise InputError(features_from, "these features were computed with other weights: fit without --features-from")
        if saved.get("inference") is not None and saved["inference"] != signature:
            raise InputError(features_from, f"these features were computed with inference settings {saved['inference']}, "
                                            f"the model now runs {signature}: fit without --features-from")
        samples = [x for x in saved["samples"] if cases is None or x["case"] in set(cases)]
    else:
        samples = collect_samples(predictor, data, cases, progress=progress)
    if not samples:
        raise InputError(data, "no case with reference contours of the model's structures to fit on")
    if save_features is not None:
        Path(save_features).parent.mkdir(parents=True, exist_ok=True)
        Path(save_features).write_text(json.dumps({"model": predictor.bundle.name, "weights_sha256": digest, "data": str(data),
                                                   "inference": signature, "samples": samples}, indent=1) + "\n")
    structures = [s for s in predictor.structures if any(x["structure"] == s for x in samples)]
    full, fold_cals, rows = cross_fit(samples, structures, folds, alpha)
    threshold = choose_threshold([r["quality"] for r in rows], [r["dice"] for r in rows], sensitivity)
    measured = agreement_report(rows, structures, threshold)
    meta = {
        "method": "ridge calibration of reference-free features of the prediction (expected Dice, confidence, "
                  "mass outside, uncertain band, empty) with a per-structure offset",
        "model": predictor.bundle.name,
        "weights_sha256": digest,
        "inference": signature,
        "data": str(data),
        "features_from": str(features_from) if features_from is not None else None,
        "n_cases": len({s["case"] for s in samples}),
        "alpha": alpha,
        "folds": len(fold_cals),
        "threshold_rule": f"lowest threshold flagging >= {sensitivity:.0%} of out-of-fold contours with Dice < {FLAG_DICE}",
        "out_of_fold": measured,
        "command": command,
        "hardware": hardware_description(predictor.device),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    estimator = QualityEstimator(full, threshold, fold_cals, meta)
    result = {**meta, "threshold": threshold, "rows": rows}
    if save:
        result["path"] = str(estimator.save(folder))
        card = folder / "model.json"
        card_meta = json.loads(card.read_text())
        card_meta["quality"] = {k: meta[k] for k in ("method", "data", "n_cases", "folds", "threshold_rule", "command", "hardware")}
        card_meta["quality"].update({"file": QUALITY_JSON, "threshold": threshold,
                                     "out_of_fold": measured["overall"]})
        card.write_text(json.dumps(card_meta, indent=2) + "\n")
    return result
