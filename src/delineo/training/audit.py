"""Label-quality audit: rank a dataset's image-label pairs by a trained QAM's score.

A model trained with ``weighting: {kind: qam}`` keeps its quality module beside the weights
(``quality.safetensors``). :func:`audit` scores every image + *given* label pair of a dataset
with it (on the model's grid, as in training), writes ``audit.csv`` ranked from most to least
suspicious (lowest score first) and overlay PNGs of the worst pairs, and returns a summary.

When the model was trained on synthetically corrupted labels (``training.label_noise``), the
audit re-applies the recorded corruption of each training case (the operations in
``model.json``), so the ranking can be checked against the truth: the fraction of corrupted
labels that land in the lower-scored half, and the AUROC of "low score" for "corrupted".

With no model, :func:`audit` first trains one (QAM+OCM) on the data from a base config.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delineo.data.datasets import open_dataset
from delineo.data.io import Image
from delineo.data.noise import corrupt_mask
from delineo.data.transforms import preprocess, preprocess_labels
from delineo.errors import ConfigError, InputError
from delineo.inference.predictor import resolve_device
from delineo.models.registry import ModelBundle, load_model
from delineo.training.loop import QUALITY_WEIGHTS
from delineo.training.weighting import build_weighting


def load_quality_module(bundle: ModelBundle, device: torch.device) -> torch.nn.Module:
    """The QAM trained with ``bundle`` (eval mode). Raises InputError if the model has none."""
    from safetensors.torch import load_file

    path = bundle.path / QUALITY_WEIGHTS
    spec = (bundle.meta.get("training", {}).get("config", {}).get("training", {}) or {}).get("weighting")
    if not path.is_file() or not spec or spec.get("kind") not in ("qam", "qam_ocm"):
        raise InputError(bundle.path, "this model was not trained with a quality-awareness module (weighting: qam); "
                         "train one or run `delineo audit` without --model")
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


def train_quality_model(
    data: str | Path, out: str | Path, base_config: str | Path | None = None, *, noise_fraction: float | None = None,
    noise_radius: tuple[int, int] = (1, 8), epochs: int | None = None, device: str | None = None,
    ocm_lambda: float = 2.0, seed: int = 0,
) -> Path:
    """Train a segmentation model with QAM+OCM on ``data`` (optionally corrupting a fraction of the
    training labels first, to evaluate the audit); returns the model folder ``out/model``.
    base_config: a training config (YAML) whose data/network/training settings are used; None: the
    seed's 2D U-Net (:data:`delineo.training.benchmark.DEFAULT_BASE`)."""
    from delineo.training.benchmark import load_base
    from delineo.training.config import TrainConfig
    from delineo.training.loop import train

    d = load_base(base_config)
    out = Path(out)
    d["name"] = f"audit-{Path(data).name}"
    d["output"] = str(out / "model")
    d["work_dir"] = str(out / "run")
    d["data"] = {**d.get("data", {}), "train": str(data), "val": None}
    training = dict(d.get("training", {}))
    training["weighting"] = {"kind": "qam", "ocm_lambda": ocm_lambda}
    training["seed"] = seed
    if noise_fraction:
        training["label_noise"] = {"fraction": float(noise_fraction), "radius": list(noise_radius), "seed": seed}
    if epochs:
        training["epochs"] = int(epochs)
    if device:
        training["device"] = device
    if int(training.get("batch_size", 8)) < 2:
        raise ConfigError("the quality-awareness module compares samples within a batch: batch_size must be >= 2")
    d["training"] = training
    return train(TrainConfig.from_dict(d, where=str(base_config)), command=f"delineo audit --data {data} --config {base_config or '(default 2D U-Net)'}")


def audit(
    data: str | Path, out: str | Path, *, model: str | Path | None = None, base_config: str | Path | None = None,
    noise_fraction: float | None = None, noise_radius: tuple[int, int] = (1, 8), epochs: int | None = None,
    device: str = "auto", worst: int = 12,
) -> dict[str, Any]:
    """Score every image-label pair of ``data`` with a trained QAM and rank them.

    Writes ``OUT/audit.csv`` (rank, case, score, and for synthetic noise: corrupted, label Dice
    vs clean), ``OUT/worst/<rank>_<case>.png`` overlays of the ``worst`` lowest-scored pairs and
    ``OUT/audit.json`` (summary). Lower score = less trusted.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        model = train_quality_model(data, out, base_config, noise_fraction=noise_fraction, noise_radius=noise_radius,
                                    epochs=epochs, device=None if device == "auto" else device)
    dev = resolve_device(device)
    bundle = load_model(model, dev)
    qam = load_quality_module(bundle, dev)
    pixel_spacing = bundle.pixel_spacing_mm
    ds = open_dataset(data, bundle.structures, None, pixel_spacing)
    if len(ds) == 0:
        raise InputError(data, "no cases to audit")
    records = {r["case"]: r for r in (bundle.meta.get("training", {}).get("label_noise") or [])}
    train_root = Path(str(bundle.meta.get("training", {}).get("data", {}).get("train", ""))).resolve()
    same_data = Path(data).resolve() == train_root
    rows = []
    for i in range(len(ds)):
        s = ds[i]
        label = s["label"]
        rec = records.get(s["case"]) if same_data else None
        if rec is not None:
            label = _apply_record(label, rec["operations"])
        x = preprocess(s["image"], s["spacing_mm"], bundle.preprocess)
        y = preprocess_labels(label * s["present"].reshape(-1, *([1] * (label.ndim - 1))), s["spacing_mm"], bundle.preprocess)
        with torch.no_grad():
            score = float(qam.score(x[None].to(dev), y[None].to(dev))[0])
        row = {"case": s["case"], "score": score, "structures_contoured": int(np.sum(s["present"]))}
        if rec is not None:
            row["corrupted"] = bool(rec["corrupted"])
            known = [d for d, p in zip(rec["dice_vs_clean"], s["present"]) if p]
            row["label_dice_vs_clean"] = float(np.mean(known)) if known else None
        rows.append(row)
    rows.sort(key=lambda r: r["score"])
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    fields = ["rank", "case", "score", "structures_contoured"] + (["corrupted", "label_dice_vs_clean"] if records and same_data else [])
    with open(out / "audit.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    summary: dict[str, Any] = {"data": str(data), "model": str(bundle.path), "cases": len(rows), "csv": str(out / "audit.csv")}
    evaluated = [r for r in rows if "corrupted" in r]
    if evaluated:
        scores = np.array([r["score"] for r in evaluated])
        corrupted = np.array([r["corrupted"] for r in evaluated])
        half = len(evaluated) // 2
        lower = np.zeros(len(evaluated), bool)
        lower[np.argsort(scores, kind="stable")[:half]] = True
        summary["synthetic_noise"] = {
            "evaluated_cases": len(evaluated),
            "corrupted": int(corrupted.sum()),
            "corrupted_in_lower_half": int((corrupted & lower).sum()),
            "fraction_corrupted_in_lower_half": float((corrupted & lower).sum() / max(1, corrupted.sum())),
            "auroc_low_score_for_corrupted": _auroc_low_score(scores, corrupted),
            "note": "training cases of the model, with the corruption recorded in model.json re-applied",
        }
    summary["worst"] = [str(p) for p in _write_worst(ds, rows[:worst], out / "worst", bundle, records if same_data else {})]
    (out / "audit.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _write_worst(ds, rows: list[dict[str, Any]], folder: Path, bundle: ModelBundle, records: dict) -> list[Path]:
    """Overlay PNG of each listed pair: the image with its given (possibly corrupted) labels."""
    from delineo.contours.overview import write_overview

    folder.mkdir(parents=True, exist_ok=True)
    index = {c: i for i, c in enumerate(ds.cases)}
    paths = []
    for r in rows:
        s = ds[index[r["case"]]]
        label = _apply_record(s["label"], records[r["case"]]["operations"]) if r["case"] in records else s["label"]
        masks = {n: label[c].astype(bool) for c, n in enumerate(bundle.structures) if s["present"][c]}
        image = Image(s["image"][0], s["affine"])
        tmp = folder / f".{r['rank']}"
        written = write_overview(image, masks, tmp, title=f"rank {r['rank']}: {r['case']} (QAM score {r['score']:.3f})", per_view=False)
        target = folder / f"{r['rank']:03d}_{r['case']}.png"
        written[0].replace(target)
        for p in tmp.glob("*"):
            p.unlink()
        tmp.rmdir()
        paths.append(target)
    return paths
