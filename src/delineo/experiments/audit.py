"""Label-quality audit: rank a dataset's image-label pairs from most to least suspicious.

Two scores per pair, both on the model grid:

- ``agreement``: Dice between the model's own prediction and the *given* label, averaged over
  the contoured structures. Works with any trained model. A network fits the consensus shape
  before it memorises individual errors, so a label far from its prediction is suspect (the
  idea behind confident learning and small-loss selection).
- ``agreement_z``: the same per-structure Dice, each structure standardised over the audited
  pairs before averaging (:func:`delineo.training.robust_losses.agreement`), so that a structure
  every label agrees with less (small, thin) does not decide the ranking on its own.
- ``surface_z``: the symmetric mean surface distance between the prediction and the given label
  per structure, on a log scale (:func:`delineo.metrics.segmentation.label_agreement`), each
  structure standardised as for ``agreement_z``: an eroded or dilated contour lies as far from
  the prediction on a wide structure as on a thin one, where Dice forgives the wide one's shift.
- ``qam``: the raw score of the quality-awareness module, for a model trained with
  ``weighting: {kind: qam}`` (its QAM is kept in ``quality.safetensors`` beside the weights).

:func:`audit` writes ``audit.csv`` ranked by one of them (lowest first), overlay PNGs of the
worst pairs, and a summary. When the model was trained on synthetically corrupted labels
(``training.label_noise``), the recorded corruption of each training case (``model.json``) is
re-applied, so each score can be checked against the truth: the fraction of corrupted labels
in the lower-scored half and the AUROC of "low score" for "corrupted". Scores of training
cases are in-sample (the model saw those labels), which is how an audit of a dataset runs.

With no model, :func:`audit` first trains one on the data from a base config (plain, or with
QAM+OCM for ``weighting="qam"``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delineo.contours.overview import write_overview
from delineo.data.datasets import open_dataset
from delineo.data.io import Image
from delineo.data.noise import corrupt_mask
from delineo.data.transforms import model_spacing_mm, preprocess, preprocess_labels
from delineo.errors import ConfigError, InputError
from delineo.experiments.benchmark import load_base
from delineo.inference.predictor import Predictor
from delineo.machine import resolve_device
from delineo.metrics.segmentation import label_agreement
from delineo.models.registry import ModelBundle, load_model
from delineo.training.config import TrainConfig
from delineo.training.loop import QUALITY_WEIGHTS, train
from delineo.training.robust_losses import agreement
from delineo.training.weighting import build_weighting


def has_quality_module(bundle: ModelBundle) -> bool:
    """Whether ``bundle`` was trained with a QAM whose weights are kept beside it."""
    spec = (bundle.meta.get("training", {}).get("config", {}).get("training", {}) or {}).get("weighting")
    return (bundle.path / QUALITY_WEIGHTS).is_file() and bool(spec) and spec.get("kind") in ("qam", "qam_ocm")


def load_quality_module(bundle: ModelBundle, device: torch.device) -> torch.nn.Module:
    """The QAM trained with ``bundle`` (eval mode). Raises InputError if the model has none."""
    from safetensors.torch import load_file

    path = bundle.path / QUALITY_WEIGHTS
    spec = (bundle.meta.get("training", {}).get("config", {}).get("training", {}) or {}).get("weighting")
    if not has_quality_module(bundle):
        raise InputError(bundle.path, "this model was not trained with a quality-awareness module (weighting: qam); "
                         "rank by agreement, train one with weighting: qam, or run `delineo audit` without --model")
    n = len(bundle.structures)
    module = build_weighting(spec, in_channels=1 + n, n_structures=n, spatial_dims=bundle.spec.spatial_dims)
    module.load_state_dict(load_file(str(path)))
    return module.to(device).eval()


def _auroc_low_score(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """AUROC of ``-score`` for the positive class (Mann-Whitney U); None without both classes."""
    from scipy.stats import mannwhitneyu

    pos, neg = scores[positive], scores[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return None
    u = mannwhitneyu(neg, pos, alternative="two-sided").statistic  # pairs where a clean one scores higher
    return float(u / (len(pos) * len(neg)))


def _apply_record(label: np.ndarray, operations: list[str]) -> np.ndarray:
    """Re-apply a recorded corruption (``"erode:r"`` / ``"dilate:r"`` / ``"none"`` per structure)."""
    noisy = label.copy()
    for c, op in enumerate(operations):
        if op != "none":
            kind, r = op.split(":")
            noisy[c] = corrupt_mask(label[c], int(r), kind == "dilate")
    return noisy


def train_audit_model(
    data: str | Path, out: str | Path, base_config: str | Path | None = None, *, noise_fraction: float | None = None,
    noise_radius: tuple[int, int] = (1, 8), epochs: int | None = None, device: str | None = None,
    weighting: str = "none", ocm_lambda: float = 2.0, seed: int = 0,
) -> Path:
    """Train a segmentation model on ``data``, plain (``weighting="none"``) or with QAM+OCM
    (``"qam"``), optionally corrupting a fraction of the training labels first to evaluate the
    audit; returns the model folder ``out/model``.
    base_config: a training config (YAML) whose data/network/training settings are used; None: the
    seed's 2D U-Net (:data:`delineo.experiments.benchmark.DEFAULT_BASE`)."""
    d = load_base(base_config)
    out = Path(out)
    d["name"] = f"audit-{Path(data).name}"
    d["output"] = str(out / "model")
    d["work_dir"] = str(out / "run")
    d["data"] = {**d.get("data", {}), "train": str(data), "val": None}
    training = dict(d.get("training", {}))
    if weighting not in ("none", "qam"):
        raise ConfigError(f"audit training weighting must be 'none' or 'qam', got {weighting!r}")
    training["weighting"] = {"kind": "qam", "ocm_lambda": ocm_lambda} if weighting == "qam" else None
    training["seed"] = seed
    if noise_fraction:
        training["label_noise"] = {"fraction": float(noise_fraction), "radius": list(noise_radius), "seed": seed}
    if epochs:
        training["epochs"] = int(epochs)
    if device:
        training["device"] = device
    if weighting == "qam" and int(training.get("batch_size", 8)) < 2:
        raise ConfigError("the quality-awareness module compares samples within a batch: batch_size must be >= 2")
    d["training"] = training
    return train(TrainConfig.from_dict(d, where=str(base_config)), command=f"delineo audit --data {data} --config {base_config or '(default 2D U-Net)'}")


SCORES = ("agreement", "agreement_z", "surface_z", "qam")
#: audit.csv column of each score
SCORE_COLUMNS = {"agreement": "agreement", "agreement_z": "agreement_z", "surface_z": "surface_z", "qam": "qam_score"}


def audit(
    data: str | Path, out: str | Path, *, model: str | Path | None = None, base_config: str | Path | None = None,
    noise_fraction: float | None = None, noise_radius: tuple[int, int] = (1, 8), epochs: int | None = None,
    device: str = "auto", worst: int = 12, rank_by: str = "agreement_z", weighting: str = "none", ocm_lambda: float = 2.0,
) -> dict[str, Any]:
    """Score every image-label pair of ``data`` and rank them, most suspicious first.

    rank_by: ``agreement`` (Dice of the model's prediction vs the given label, any model),
    ``agreement_z`` (the default: the same, each structure standardised over the pairs first),
    ``surface_z`` (the log mean surface distance, standardised likewise) or ``qam`` (the model's
    quality-awareness module). weighting: how to train a model when none
    is given (``none`` or ``qam``, with the OCM bound ``ocm_lambda``). Writes ``OUT/audit.csv`` (rank, case, score = the ranking
    score, agreement, agreement_z, surface_z, per-structure agreement (Dice) and mean surface
    distance (``asd_mm_<structure>``; the grid's diagonal when only one of prediction and label is
    empty), qam_score where available, and for synthetic
    noise: corrupted, label Dice vs clean), ``OUT/worst/<rank>_<case>.png`` overlays of the
    ``worst`` lowest-ranked pairs and ``OUT/audit.json`` (summary). Lower = less trusted.
    """
    if rank_by not in SCORES:
        raise ConfigError(f"rank_by must be one of {', '.join(SCORES)}, got {rank_by!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = train_audit_model(data, out, base_config, noise_fraction=noise_fraction, noise_radius=noise_radius,
                                  epochs=epochs, device=None if device == "auto" else device,
                                  weighting="qam" if rank_by == "qam" else weighting, ocm_lambda=ocm_lambda)
    dev = resolve_device(device)
    bundle = load_model(model, dev)
    qam = load_quality_module(bundle, dev) if rank_by == "qam" or has_quality_module(bundle) else None
    predictor = Predictor(bundle, device=str(dev), amp=False)
    ds = open_dataset(data, bundle.structures, None, bundle.pixel_spacing_mm, bundle.orientation)
    if len(ds) == 0:
        raise InputError(data, "no cases to audit")
    records = {r["case"]: r for r in (bundle.meta.get("training", {}).get("label_noise") or [])}
    train_root = Path(str(bundle.meta.get("training", {}).get("data", {}).get("train", ""))).resolve()
    same_data = Path(data).resolve() == train_root
    rows, dice, surface, contoured = [], [], [], []
    for i in range(len(ds)):
        s = ds[i]
        row, per, near, present = _score_pair(s, records.get(s["case"]) if same_data else None, bundle, predictor, qam, dev)
        dice.append(per)
        surface.append(near)
        contoured.append(present)
        rows.append(row)
    _add_agreement_scores(rows, dice, surface, contoured)
    _rank(rows, rank_by)
    _write_audit_csv(out / "audit.csv", rows, bundle.structures, qam is not None, bool(records and same_data))

    summary: dict[str, Any] = {"data": str(data), "model": str(bundle.path), "cases": len(rows), "ranked_by": rank_by,
                               "csv": str(out / "audit.csv")}
    evaluated = [r for r in rows if "corrupted" in r and r["agreement"] is not None]
    if evaluated:
        summary["synthetic_noise"] = _synthetic_noise_summary(evaluated)
    summary["worst"] = [str(p) for p in _write_worst(ds, rows[:worst], out / "worst", predictor, records if same_data else {})]
    (out / "audit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _score_pair(
    s: dict[str, Any], rec: dict[str, Any] | None, bundle: ModelBundle, predictor: Predictor,
    qam: torch.nn.Module | None, dev: torch.device,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray]:
    """Score one pair ``s`` of the dataset on the model grid, with its recorded corruption ``rec``
    re-applied: its audit.csv row, per-structure Dice and -log surface distance (``(n_structures,)``
    each) and which structures are contoured (bool ``(n_structures,)``)."""
    label = s["label"]
    if rec is not None:
        label = _apply_record(label, rec["operations"])
    present = np.asarray(s["present"], bool)
    x = preprocess(s["image"], s["spacing_mm"], bundle.preprocess)
    y = preprocess_labels(label * present.reshape(-1, *([1] * (label.ndim - 1))), s["spacing_mm"], bundle.preprocess)
    spacing = model_spacing_mm(s["spacing_mm"], bundle.preprocess)
    with torch.no_grad():
        probs = predictor.probabilities_on_model_grid(x)
        per = label_agreement(probs, y, spacing, "dice", predictor.threshold).numpy()
        near = label_agreement(probs, y, spacing, "surface", predictor.threshold).numpy()
        qam_score = float(qam.score(x[None].to(dev), y[None].to(dev))[0]) if qam is not None else None
    asd_mm = np.exp(-near) - 0.5 * min(spacing)  # back from -log(d + h)
    row: dict[str, Any] = {
        "case": s["case"], "structures_contoured": int(present.sum()),
        **{f"agreement_{n}": (float(d) if p else None) for n, d, p in zip(bundle.structures, per, present)},
        **{f"asd_mm_{n}": (round(float(d), 3) if p else None) for n, d, p in zip(bundle.structures, asd_mm, present)},
    }
    if qam_score is not None:
        row["qam_score"] = qam_score
    if rec is not None:
        row["corrupted"] = bool(rec["corrupted"])
        known = [d for d, p in zip(rec["dice_vs_clean"], present) if p]
        row["label_dice_vs_clean"] = float(np.mean(known)) if known else None
    return row, per, near, present


def _add_agreement_scores(rows: list[dict[str, Any]], dice: list[np.ndarray], surface: list[np.ndarray],
                          contoured: list[np.ndarray]) -> None:
    """Set ``agreement``, ``agreement_z`` and ``surface_z`` of every row; they need every pair's
    per-structure values (the z-scores standardise each structure over them)."""
    contoured_t = torch.as_tensor(np.stack(contoured))
    for name, per_structure, aggregate in (("agreement", dice, "mean"), ("agreement_z", dice, "zscore"), ("surface_z", surface, "zscore")):
        scores = agreement(torch.as_tensor(np.stack(per_structure)), contoured_t, aggregate).tolist()
        for r, v in zip(rows, scores):
            r[name] = None if np.isnan(v) else float(v)


def _rank(rows: list[dict[str, Any]], rank_by: str) -> None:
    """Sort ``rows`` by the ranking score, lowest first, and number them from 1."""
    for r in rows:
        r["score"] = r.get(SCORE_COLUMNS[rank_by])
    # pairs with nothing contoured have no agreement: they go last, not first
    rows.sort(key=lambda r: (r["score"] is None, r["score"] if r["score"] is not None else 0.0))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank


def _write_audit_csv(path: Path, rows: list[dict[str, Any]], structures: list[str], with_qam: bool, with_noise: bool) -> None:
    """``audit.csv``: one line per ranked pair (columns: :func:`audit`)."""
    fields = (["rank", "case", "score", "agreement", "agreement_z", "surface_z"] + (["qam_score"] if with_qam else [])
              + ["structures_contoured"] + [f"agreement_{n}" for n in structures] + [f"asd_mm_{n}" for n in structures]
              + (["corrupted", "label_dice_vs_clean"] if with_noise else []))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _synthetic_noise_summary(evaluated: list[dict[str, Any]]) -> dict[str, Any]:
    """How well each score finds the labels known to be corrupted, over the ``evaluated`` rows."""
    corrupted = np.array([r["corrupted"] for r in evaluated])
    return {
        "evaluated_cases": len(evaluated),
        "corrupted": int(corrupted.sum()),
        "scores": {name: _check_score(np.array([r[key] for r in evaluated]), corrupted)
                   for name, key in SCORE_COLUMNS.items() if key in evaluated[0]},
        "note": "training cases of the model (in-sample), with the corruption recorded in model.json re-applied",
    }


def _check_score(scores: np.ndarray, corrupted: np.ndarray) -> dict[str, Any]:
    """How well a score (low = suspect) finds the corrupted labels: lower-half count and AUROC."""
    half = len(scores) // 2
    lower = np.zeros(len(scores), bool)
    lower[np.argsort(scores, kind="stable")[:half]] = True
    return {
        "corrupted_in_lower_half": int((corrupted & lower).sum()),
        "fraction_corrupted_in_lower_half": float((corrupted & lower).sum() / max(1, corrupted.sum())),
        "best_possible_fraction": float(min(half, corrupted.sum()) / max(1, corrupted.sum())),
        "auroc_low_score_for_corrupted": _auroc_low_score(scores, corrupted),
    }


def _write_worst(ds, rows: list[dict[str, Any]], folder: Path, predictor: Predictor, records: dict) -> list[Path]:
    """Overlay PNG of each listed pair: the image with its given (possibly corrupted) labels as
    solid outlines and the model's prediction dashed, so the disagreement behind the rank shows."""
    folder.mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(ds.cases)}
    paths = []
    for r in rows:
        s = ds[index[r["case"]]]
        label = _apply_record(s["label"], records[r["case"]]["operations"]) if r["case"] in records else s["label"]
        masks = {n: label[c].astype(bool) for c, n in enumerate(predictor.structures) if s["present"][c]}
        image = Image(s["image"][0], s["affine"])
        predicted = predictor.predict(image, list(masks)) if masks else {}
        tmp = folder / f".{r['rank']}"
        written = write_overview(image, masks, tmp, title=f"rank {r['rank']}: {r['case']} ({_describe(r)})", per_view=False,
                                 dashed=predicted, line_labels=("given label", "model prediction"))
        target = folder / f"{r['rank']:03d}_{r['case']}.png"
        written[0].replace(target)
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
        paths.append(target)
    return paths


def _describe(row: dict[str, Any]) -> str:
    parts = [f"agreement {row['agreement']:.3f}" if row.get("agreement") is not None else "nothing contoured"]
    if row.get("qam_score") is not None:
        parts.append(f"QAM {row['qam_score']:.3f}")
    return ", ".join(parts)
