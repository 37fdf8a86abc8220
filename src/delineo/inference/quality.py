"""Per-structure quality estimate: how good is this contour, from the image's prediction alone?

For every predicted structure the estimator gives ``quality`` in [0, 1], an estimate of the Dice the
contour would have against an expert's, and ``review`` (quality below the threshold stored with the
model): the contours to look at first.

Method (chosen by measurement, see ``benchmarks/results/quality/``):

1. *Features that need no fitting*, from the one forward pass the contour comes from (the sigmoid
   probabilities ``p`` on the input grid and the final mask ``m``, after clean-up):

   - ``expected_dice``  2·Σ p·m / (Σ p + Σ m): the Dice the contour would have if the reference were
     drawn voxel by voxel from ``p`` (probabilities below 0.05 count as 0, so that the faint haze over
     millions of background voxels does not swamp small organs)
   - ``confidence``     mean p inside the contour
   - ``outside``        probability mass (p ≥ 0.05) outside the contour, relative to its size
                        (what clean-up removed, or a second candidate region)
   - ``uncertain``      voxels with 0.25 < p < 0.75 (the unsure boundary band), relative to its size
   - ``log_volume``     log of the contour's volume (mm³; +1)
   - ``empty``          1 when nothing was predicted

2. *A small calibration*: ridge regression from those features (and one indicator per structure;
   the volume's z-score against the fitting cases' reference volumes was measured and did not
   help, so it is left out) to Dice, clipped to
   [0, 1]. It is fitted by :func:`delineo.inference.quality_fit.fit_quality` on predictions for cases the model did not train on
   (its validation cases), with k-fold cross-fitting: each fold's calibrator is fitted without that
   fold's cases, the figures reported are out-of-fold, and every fold's calibrator is stored so that
   ``delineo evaluate`` on those same cases uses the calibrator that never saw the case. New images
   get the calibrator fitted on all the cases.

Stored as ``quality.json`` in the model folder (optional per model); ``delineo quality-fit``
writes it and records it in the model card.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy.stats import rankdata

from delineo.errors import InputError
from delineo.models.registry import WEIGHTS

log = logging.getLogger("delineo.quality")
QUALITY_JSON = "quality.json"
FEATURES = ("expected_dice", "confidence", "outside", "uncertain", "log_volume", "empty")
#: numeric inputs of the calibration; ``volume_z``/``abs_volume_z`` (the volume against the fitting cases'
#: reference volumes) can be added: measured, they did not help (benchmarks/quality_methods.py)
INPUTS = ("expected_dice", "confidence", "outside", "uncertain", "empty")
FLOOR = 0.05  # probabilities below this are background haze, not a candidate contour
FLAG_DICE = 0.7  # what "a contour to review" means in the measurements: Dice below this


# ---------------------------------------------------------------------------------------------
# features


def structure_features(probs: torch.Tensor, masks: np.ndarray, spacing_mm: Sequence[float]) -> list[dict[str, float]]:
    """Reference-free features of each channel: ``probs`` float ``(C, *spatial)`` (the sigmoid
    probabilities on the same grid as ``masks``), ``masks`` bool ``(C, *spatial)`` (the final contours).
    One dict per channel with :data:`FEATURES`."""
    voxel_mm3 = float(np.prod(spacing_mm))
    out = []
    for c in range(probs.shape[0]):
        p = probs[c].float()
        m = torch.as_tensor(masks[c], device=p.device)
        p = torch.where(p >= FLOOR, p, torch.zeros((), dtype=p.dtype, device=p.device))
        sum_m = float(m.sum())
        sum_p = float(p.sum())
        sum_pm = float(p[m].sum()) if sum_m else 0.0
        band = float(((p > 0.25) & (p < 0.75)).sum())
        size = max(sum_m, 1.0)
        out.append({
            "expected_dice": 2.0 * sum_pm / (sum_p + sum_m) if sum_m else 0.0,
            "confidence": sum_pm / size,
            "outside": (sum_p - sum_pm) / size,
            "uncertain": band / size,
            "log_volume": math.log1p(sum_m * voxel_mm3),
            "empty": 0.0 if sum_m else 1.0,
        })
    return out


# ---------------------------------------------------------------------------------------------
# calibration


@dataclass
class Calibrator:
    """Ridge regression from features (and a structure indicator) to Dice."""

    structures: list[str]
    volume_mean: dict[str, float]
    volume_sd: dict[str, float]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    cases: list[str] = field(default_factory=list)  # the cases it was fitted on

    def design(self, structure: str, f: dict[str, float]) -> np.ndarray:
        mu = self.volume_mean.get(structure, f["log_volume"])
        sd = self.volume_sd.get(structure, 1.0)
        z = (f["log_volume"] - mu) / sd if not f["empty"] else 0.0
        row = {**f, "volume_z": z, "abs_volume_z": abs(z)}
        x = (np.array([row[k] for k in INPUTS], dtype=float) - np.array(self.mean)) / np.array(self.scale)
        onehot = np.array([1.0 if s == structure else 0.0 for s in self.structures])
        return np.concatenate([x, onehot])

    def predict(self, structure: str, f: dict[str, float]) -> float:
        if f.get("empty"):
            return 0.0  # nothing drawn: review it (Dice 0 wherever the reference has the structure)
        q = float(self.design(structure, f) @ np.array(self.coef) + self.intercept)
        return float(min(1.0, max(0.0, q)))

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("structures", "volume_mean", "volume_sd", "mean", "scale", "coef", "intercept", "cases")}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibrator":
        return cls(**{k: d[k] for k in ("structures", "volume_mean", "volume_sd", "mean", "scale", "coef", "intercept")}, cases=list(d.get("cases", [])))


def fit_calibrator(samples: Sequence[dict[str, Any]], structures: Sequence[str], alpha: float = 1.0) -> Calibrator:
    """Fit on ``samples`` (dicts with ``case``, ``structure``, ``features``, ``dice``; empty
    predictions are left out: they get quality 0 without fitting). ``alpha``: ridge penalty on the
    standardised inputs and the structure indicators (the intercept is not penalised)."""
    vols: dict[str, list[float]] = {}
    for s in samples:
        if s.get("reference_log_volume") is not None:
            vols.setdefault(s["structure"], []).append(s["reference_log_volume"])
    volume_mean = {k: float(np.mean(v)) for k, v in vols.items()}
    volume_sd = {k: float(max(np.std(v), 0.1)) for k, v in vols.items()}
    used = [s for s in samples if not s["features"]["empty"]]
    cal = Calibrator(list(structures), volume_mean, volume_sd, [0.0] * len(INPUTS), [1.0] * len(INPUTS), [], 0.0,
                     sorted({str(s["case"]) for s in samples}))
    if not used:
        cal.coef = [0.0] * (len(INPUTS) + len(structures))
        return cal
    raw = np.stack([cal.design(s["structure"], s["features"])[: len(INPUTS)] for s in used])
    cal.mean = raw.mean(0).tolist()
    cal.scale = [float(v) if v > 1e-8 else 1.0 for v in raw.std(0)]
    X = np.stack([cal.design(s["structure"], s["features"]) for s in used])
    y = np.array([s["dice"] for s in used], dtype=float)
    Xc, yc = X - X.mean(0), y - y.mean()
    coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T @ yc)
    cal.coef = coef.tolist()
    cal.intercept = float(y.mean() - X.mean(0) @ coef)
    return cal


# ---------------------------------------------------------------------------------------------
# the estimator stored with a model


@dataclass
class QualityEstimator:
    """``quality.json``: the calibrator for new images, the out-of-fold calibrators for the cases it
    was fitted on, and the review threshold."""

    calibrator: Calibrator
    threshold: float
    folds: list[Calibrator] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def calibrator_for(self, case: str | None) -> Calibrator:
        """The calibrator that never saw ``case``: a fold's for a case it was fitted on, else the full one."""
        if case is not None:
            for fold in self.folds:
                if str(case) not in fold.cases and str(case) in self.calibrator.cases:
                    return fold
        return self.calibrator

    def estimate(self, structure: str, features: dict[str, float], case: str | None = None) -> dict[str, Any]:
        q = self.calibrator_for(case).predict(structure, features)
        return {"quality": round(q, 4), "review": bool(q < self.threshold)}

    def to_dict(self) -> dict[str, Any]:
        return {"version": 1, **self.meta, "threshold": self.threshold, "inputs": list(INPUTS),
                "calibrator": self.calibrator.to_dict(), "folds": [f.to_dict() for f in self.folds]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "QualityEstimator":
        meta = {k: v for k, v in d.items() if k not in ("version", "threshold", "inputs", "calibrator", "folds")}
        if list(d.get("inputs", INPUTS)) != list(INPUTS):
            raise ValueError(f"quality.json was fitted on inputs {d.get('inputs')}, this version computes {list(INPUTS)}: fit it again")
        return cls(Calibrator.from_dict(d["calibrator"]), float(d["threshold"]),
                   [Calibrator.from_dict(f) for f in d.get("folds", [])], meta)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / QUALITY_JSON
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path


def weights_digest(folder: str | Path) -> str:
    """SHA-256 of a model folder's weights: a quality estimate belongs to the weights it was fitted for."""
    h = hashlib.sha256()
    with open(Path(folder) / WEIGHTS, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: inference settings that change the probabilities the features are computed from, and the
#: post-processing that changes the masks they are measured on
INFERENCE_KEYS = {"patch_size": None, "overlap": 0.5, "mirror": False, "threshold": 0.5, "crop_foreground": None, "postprocess": {}}


def inference_signature(inference: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``inference`` (a model.json ``inference`` block or a Predictor's effective
    settings, which include the model's ``postprocess``: the features are measured on the cleaned
    masks) that the features depend on, with defaults filled in and in JSON form, so that an
    estimator fitted on contours made one way is not applied to contours made another way."""
    sig = {k: inference.get(k, default) for k, default in INFERENCE_KEYS.items()}
    window = sig["patch_size"] is not None
    sig["patch_size"] = [int(v) for v in sig["patch_size"]] if window else None
    sig["overlap"] = float(sig["overlap"]) if window else None  # no sliding window: the overlap does not matter
    sig["threshold"] = float(sig["threshold"])
    sig["mirror"] = bool(sig["mirror"])
    return json.loads(json.dumps(sig))


def load_quality(folder: str | Path | None, inference: dict[str, Any] | None = None) -> QualityEstimator | None:
    """The estimator stored in a model folder, or None when it has none, when it was fitted for
    other weights (the model was retrained since: run ``delineo quality-fit`` again; logged), or
    when ``inference`` (the predictor's effective settings) differs from the settings it was fitted
    with (body box, sliding window, threshold, post-processing...: the features would come from other
    probabilities or other masks)."""
    if folder is None:
        return None
    path = Path(folder) / QUALITY_JSON
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        if list(d.get("inputs", INPUTS)) != list(INPUTS):  # made by another version of this module
            log.warning("%s was fitted on inputs %s, this version computes %s: no quality estimate until "
                        "`delineo quality-fit` is run again for this model", path, d.get("inputs"), list(INPUTS))
            return None
        estimator = QualityEstimator.from_dict(d)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputError(path, f"not a valid quality estimator ({exc})") from exc
    fitted_for = estimator.meta.get("weights_sha256")
    if fitted_for and (Path(folder) / "weights.safetensors").is_file() and fitted_for != weights_digest(folder):
        log.warning("%s was fitted for other weights (the model was retrained): no quality estimate until "
                    "`delineo quality-fit` is run again for this model", path)
        return None
    fitted_with = estimator.meta.get("inference")
    running = inference_signature(inference) if inference is not None else None
    if running is not None and fitted_with is not None:
        # compared on the settings the estimator records (one fitted before the post-processing was
        # recorded is compared without it)
        running = {k: v for k, v in running.items() if k in fitted_with}
        if fitted_with != running:
            log.warning("%s was fitted on contours made with inference settings %s, these are made with %s: no quality "
                        "estimate (run `delineo quality-fit` for these settings)", path, fitted_with, running)
            return None
    return estimator


def quality_text(estimate: dict[str, Any]) -> str:
    """One line for a log, an ROI description: ``quality 0.62 (estimated Dice), REVIEW``."""
    return f"quality {estimate['quality']:.2f} (estimated Dice){', REVIEW' if estimate['review'] else ''}"


# ---------------------------------------------------------------------------------------------
# measurement


def _rank(x: np.ndarray) -> np.ndarray:
    return rankdata(x)


def auroc(scores: Sequence[float], positive: Sequence[bool]) -> float | None:
    """Area under the ROC curve of ``scores`` for ``positive`` (ties count half); None when one class is missing."""
    s, y = np.asarray(scores, float), np.asarray(positive, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    r = _rank(s)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def agreement(quality: Sequence[float], dice: Sequence[float], threshold: float | None = None) -> dict[str, Any]:
    """How well ``quality`` estimates ``dice``: Spearman correlation, mean absolute error, and the
    AUROC of flagging Dice < 0.7 by low quality; with ``threshold``, the sensitivity and specificity
    of ``review`` (quality < threshold) for those contours."""
    q, d = np.asarray(quality, float), np.asarray(dice, float)
    out: dict[str, Any] = {"n": int(len(q)), "n_dice_below_0.7": int((d < FLAG_DICE).sum())}
    if len(q) == 0:
        return {**out, "spearman": None, "mae": None, "auroc_dice_below_0.7": None, "auroc_dice_below_0.9": None}
    if len(q) > 2 and np.std(q) > 0 and np.std(d) > 0:
        rq, rd = _rank(q), _rank(d)
        out["spearman"] = float(np.corrcoef(rq, rd)[0, 1])
    else:
        out["spearman"] = None
    out["mae"] = float(np.abs(q - d).mean())
    out["auroc_dice_below_0.7"] = auroc(-q, d < FLAG_DICE)
    out["auroc_dice_below_0.9"] = auroc(-q, d < 0.9)  # for models whose contours are rarely below 0.7
    if threshold is not None:
        bad, flagged = d < FLAG_DICE, q < threshold
        out["review_fraction"] = float(flagged.mean())
        out["sensitivity"] = float((flagged & bad).sum() / bad.sum()) if bad.any() else None
        out["specificity"] = float((~flagged & ~bad).sum() / (~bad).sum()) if (~bad).any() else None
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def agreement_report(rows: Sequence[dict[str, Any]], structures: Sequence[str], threshold: float | None = None) -> dict[str, Any]:
    """:func:`agreement` per structure and overall, from rows with ``structure``, ``quality``, ``dice``."""
    rows = [r for r in rows if r.get("quality") is not None and r.get("dice") is not None]
    per = {s: agreement([r["quality"] for r in rows if r["structure"] == s], [r["dice"] for r in rows if r["structure"] == s], threshold)
           for s in structures}
    return {"overall": agreement([r["quality"] for r in rows], [r["dice"] for r in rows], threshold), "structures": per}


def choose_threshold(quality: Sequence[float], dice: Sequence[float], sensitivity: float = 0.9) -> float:
    """The lowest review threshold that flags at least ``sensitivity`` of the contours with Dice < 0.7
    (a missed bad contour costs more than one more look); 0.7 when there are none to learn from."""
    q, d = np.asarray(quality, float), np.asarray(dice, float)
    bad = np.sort(q[d < FLAG_DICE])
    if len(bad) == 0:
        return FLAG_DICE
    k = int(math.ceil(sensitivity * len(bad))) - 1
    return float(round(bad[k] + 1e-4, 4))


# ---------------------------------------------------------------------------------------------
# fitting


def cross_fit(samples: Sequence[dict[str, Any]], structures: Sequence[str], folds: int = 5, alpha: float = 1.0,
              seed: int = 0) -> tuple[Calibrator, list[Calibrator], list[dict[str, Any]]]:
    """The calibrator on all ``samples``, one per fold of cases (fitted without them), and the
    out-of-fold rows (``case``, ``structure``, ``dice``, ``quality``) for the measurement."""
    cases = sorted({s["case"] for s in samples})
    order = np.random.default_rng(seed).permutation(len(cases))
    k = max(2, min(folds, len(cases)))
    groups = [[cases[j] for j in order[i::k]] for i in range(k)]
    fold_cals, rows = [], []
    for held in groups:
        held_set = set(held)
        cal = fit_calibrator([s for s in samples if s["case"] not in held_set], structures, alpha)
        fold_cals.append(cal)
        for s in samples:
            if s["case"] in held_set:
                rows.append({"case": s["case"], "structure": s["structure"], "dice": s["dice"],
                             "quality": cal.predict(s["structure"], s["features"])})
    return fit_calibrator(samples, structures, alpha), fold_cals, rows
